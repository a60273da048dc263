"""The metric registry: every accumulator class, hence every family, column and captured input hf_isi knows.

Adding a metric family is one module in :mod:`hf_isi.metrics` (an :class:`~hf_isi.metrics.base.Accumulator`
declaring its :class:`~hf_isi.metrics.base.MetricFamily`) plus one line in :data:`ACCUMULATORS`; the engine
builds it (``Accumulator.from_config``), ``AnalysisConfig`` accepts its name, and the report's table and the
results dataset carry its columns.
"""

from __future__ import annotations

from collections import Counter

from .attention import AttentionAccumulator
from .base import Accumulator, MetricFamily
from .isi import ReconstructionISIAccumulator
from .pe import PEDominanceAccumulator
from .probes import PooledFeatureAccumulator
from .similarity import SimilarityAccumulator

#: the accumulator classes, in the order of the report's columns
ACCUMULATORS: tuple[type[Accumulator], ...] = (
    SimilarityAccumulator,
    ReconstructionISIAccumulator,
    AttentionAccumulator,
    PooledFeatureAccumulator,  # the "probes" and "collapse" families share its statistics
    PEDominanceAccumulator,
)

#: family name -> its declaration, in column order
FAMILIES: dict[str, MetricFamily] = {f.name: f for acc in ACCUMULATORS for f in acc.families}
#: family name -> the accumulator class that computes it
ACCUMULATOR_OF: dict[str, type[Accumulator]] = {f.name: acc for acc in ACCUMULATORS for f in acc.families}
#: every family name, the default of ``AnalysisConfig.metrics``
ALL_METRICS: tuple[str, ...] = tuple(FAMILIES)

_repeated = [name for names in ([f.name for acc in ACCUMULATORS for f in acc.families],
                                 [c for f in FAMILIES.values() for c in (*f.all_columns, *f.per_head_columns)])
             for name, n in Counter(names).items() if n > 1]
if _repeated:
    raise RuntimeError(f"metric registry: family or column names declared twice: {_repeated}")
