"""The loop: model adapter -> layer states -> metric accumulators -> (all-reduce) -> Report."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from .metrics._scratch import compute_dtype
from .metrics.base import Accumulator, Capture
from .metrics.registry import ACCUMULATOR_OF, ACCUMULATORS, ALL_METRICS, FAMILIES
from .metrics.ridge import DEFAULT_PENALTIES
from .models import ModelAdapter, load_model
from .report import Report
from .states import LayerStates, example_keys
from .utils import library_versions

logger = logging.getLogger(__name__)

__all__ = ["ALL_METRICS", "AnalysisConfig", "Analyzer", "ModelSource", "analyze", "build_accumulators"]


@dataclass
class AnalysisConfig:
    """What to compute and how. Every field is also a ``scripts/probe.py`` argument."""

    metrics: list[str] = field(default_factory=lambda: list(ALL_METRICS),
                               metadata={"help": f"Metric families to compute, any of {', '.join(ALL_METRICS)}."})
    isi_dim: int = field(default=16, metadata={"help": "Random-projection size k per token for the reconstruction ISI."})
    isi_penalties: list[float] = field(default_factory=lambda: list(DEFAULT_PENALTIES),
                                       metadata={"help": "Relative ridge penalties tried for the ISI maps."})
    probe_penalties: list[float] = field(default_factory=lambda: list(DEFAULT_PENALTIES),
                                         metadata={"help": "Relative ridge penalties tried for the linear probes."})
    probe_final_norm: bool = field(default=False, metadata={"help": "Probe features after the model's final LayerNorm."})
    probe_max_test_images: int = field(default=5000, metadata={"help": "Cap on test-split features kept for probes."})
    fit_fraction: float = field(default=0.6, metadata={"help": "Fraction of images fitting the probes/ISI maps."})
    val_fraction: float = field(default=0.2, metadata={"help": "Fraction choosing penalties (the rest is test)."})
    seed: int = field(default=0, metadata={"help": "Seed of the split hash, projections and control labels."})
    calibration_images: int = field(default=64, metadata={"help": "Images that fix the ISI target scaling."})
    phase_curve: str = field(default="centered_similarity", metadata={"help": "Curve that defines the phase column."})
    precision: str = field(default="mixed", metadata={
        "help": "Arithmetic of the costly per-batch kernels (ISI Gram products, attention x ln x): 'mixed' = "
                "float32 products, float64 running sums (about 2x faster on CPU); 'float64' = all float64."})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics) - set(ALL_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(ALL_METRICS)}")
        if not (0 < self.fit_fraction and 0 <= self.val_fraction and self.fit_fraction + self.val_fraction < 1):
            raise ValueError("fit_fraction and val_fraction must be positive and sum to less than 1")
        compute_dtype(self.precision)  # one-line error for an unknown precision

    def requires(self, capture: Capture) -> bool:
        """Whether a requested family needs ``capture`` ("attentions", "attention_residuals", "labels")."""
        return any(capture in FAMILIES[m].requires for m in self.metrics)

    @property
    def needs_attentions(self) -> bool:
        return self.requires("attentions")

    @property
    def needs_labels(self) -> bool:
        return self.requires("labels")


def build_accumulators(config: AnalysisConfig, num_classes: int | None) -> dict[str, Accumulator]:
    """One accumulator per registered class with a requested family (families sharing a class share one
    accumulator), keyed by its name. Without ``num_classes``, families that need labels are left out."""
    wanted = set(config.metrics)
    unlabelled = sorted(m for m in wanted if num_classes is None and "labels" in FAMILIES[m].requires)
    if unlabelled:
        logger.warning("no labels: the %s metrics are skipped", ", ".join(unlabelled))
        wanted -= set(unlabelled)
    return {cls.name: cls.from_config(config, num_classes, frozenset(f.name for f in cls.families) & wanted)
            for cls in ACCUMULATORS if any(ACCUMULATOR_OF[m] is cls for m in wanted)}


class ModelSource(Protocol):
    """What an :class:`Analyzer` needs of a model: :class:`~hf_isi.ModelAdapter` is one."""

    #: the name results are reported under
    name: str
    #: whether :meth:`capture` returns attention probabilities and the attention residual pairs
    attentions: bool

    @property
    def device(self) -> torch.device: ...

    def provenance(self) -> dict[str, Any]: ...

    def capture(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                keys: torch.Tensor | None = None) -> LayerStates: ...


class Analyzer:
    """The streaming analysis of one model: ``setup`` once, ``update`` per batch, ``sync`` across processes,
    ``report`` at the end. Its state is the accumulators' states, so it merges, saves and resumes. It is the
    only door to the accumulators.

    Without a model source, batches arrive as ready :class:`~hf_isi.states.LayerStates`
    (:meth:`setup_states`, :meth:`update_states`), as in the evaluate module.

    Example:
        >>> analyzer = Analyzer(adapter, AnalysisConfig(), num_classes=10)     # doctest: +SKIP
        >>> analyzer.setup(calibration_pixel_values)                           # doctest: +SKIP
        >>> for pixels, labels, ids in batches:                                # doctest: +SKIP
        ...     analyzer.update(pixels, labels, ids)
        >>> report = analyzer.report()                                         # doctest: +SKIP
    """

    #: the reported model name of an analysis without a model source
    STATES_ONLY = "layer_states"

    def __init__(self, adapter: ModelSource | None = None, config: AnalysisConfig | None = None,
                 num_classes: int | None = None) -> None:
        self.adapter = adapter
        self.config = config or AnalysisConfig()
        self.num_classes = num_classes
        if adapter is not None and self.config.needs_attentions and not adapter.attentions:
            raise ValueError(f"{adapter.name} was loaded without attentions but attention metrics were requested")
        self._accumulators = build_accumulators(self.config, num_classes)
        self.num_images = 0
        self.seconds = 0.0

    @property
    def name(self) -> str:
        return self.STATES_ONLY if self.adapter is None else self.adapter.name

    @property
    def num_layers(self) -> int | None:
        """``L`` as set up from the calibration batch (``None`` before :meth:`setup`)."""
        return next((a.num_layers for a in self._accumulators.values()), None)

    @property
    def is_setup(self) -> bool:
        return all(a.is_setup for a in self._accumulators.values())

    # -- batches -----------------------------------------------------------------------------------------
    def capture(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                ids: Sequence[object] | None = None) -> LayerStates:
        """Layer states of one batch; ``ids`` (stable example ids) decide each image's split."""
        if self.adapter is None:
            raise ValueError("this analysis has no model: pass layer states to setup_states() and update_states()")
        ids = range(len(pixel_values)) if ids is None else ids
        if len(ids) != len(pixel_values) or (labels is not None and len(labels) != len(pixel_values)):
            raise ValueError(f"batch of {len(pixel_values)} images with {len(ids)} ids and "
                             f"{'no' if labels is None else len(labels)} labels: they must match")
        states = self.adapter.capture(pixel_values, labels=labels, keys=example_keys(ids, self.config.seed))
        states.split_fractions = (self.config.fit_fraction, self.config.val_fraction)
        return states

    def setup(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Allocate every accumulator from a calibration batch, which must be the same on every process."""
        count = max(1, self.config.calibration_images)
        self.setup_states(self.capture(pixel_values[:count], None if labels is None else labels[:count]))

    def setup_states(self, states: LayerStates) -> None:
        """:meth:`setup` from the layer states of a calibration batch (its first ``calibration_images`` images)."""
        states = states.head(max(1, self.config.calibration_images))
        for acc in self._accumulators.values():
            acc.setup(states)

    def calibration(self) -> dict[str, Any]:
        """What :meth:`setup` fixed (random projections, target scaling, shifts), with the configuration: process
        0 shares it so that every process adopts the same calibration (:meth:`load_calibration`)."""
        return {"config": asdict(self.config), "num_classes": self.num_classes,
                "fixed": {name: acc.fixed_states() for name, acc in self._accumulators.items()}}

    def load_calibration(self, calibration: dict[str, Any]) -> None:
        """Adopt another analyzer's :meth:`calibration` (same configuration and model) right after
        :meth:`setup`; a ``ValueError`` if its states do not fit this one's."""
        if calibration["config"] != asdict(self.config) or calibration["num_classes"] != self.num_classes:
            raise ValueError("the calibration was made with another configuration")
        for name, acc in self._accumulators.items():
            acc.load_fixed_states(calibration["fixed"][name])

    def update(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
               ids: Sequence[object] | None = None) -> None:
        start = time.perf_counter()
        states = self.capture(pixel_values, labels, ids)
        self.update_states(states)
        self.seconds += time.perf_counter() - start

    def update_states(self, states: LayerStates) -> None:
        if not self.is_setup:
            raise RuntimeError("call setup() with a calibration batch before update()")
        for acc in self._accumulators.values():
            acc.update(states)
        self.num_images += states.batch_size

    def flush(self) -> None:
        """Fold the work the accumulators buffer across batches into their states (merge, sync, state_dict
        and report do it themselves; this is for timing that work)."""
        for acc in self._accumulators.values():
            acc.flush()

    # -- combination and persistence ---------------------------------------------------------------------
    def merge(self, other: Analyzer) -> Analyzer:
        for name, acc in self._accumulators.items():
            acc.merge(other._accumulators[name])
        self.num_images += other.num_images
        return self

    def sync(self, accelerator: Any) -> None:
        """All-reduce every accumulator across the processes of an ``accelerate.Accelerator``."""
        if accelerator is None or accelerator.num_processes == 1:
            return
        from accelerate.utils import gather_object

        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            return accelerator.reduce(t.contiguous(), reduction="sum")

        def all_gather(obj: Any) -> list[Any]:
            return gather_object([obj])

        for acc in self._accumulators.values():
            acc.sync(all_reduce, all_gather)
        count = torch.tensor([float(self.num_images)], dtype=torch.float64, device=accelerator.device)
        self.num_images = int(all_reduce(count).item())

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "num_classes": self.num_classes, "num_images": self.num_images,
                "accumulators": {name: acc.state_dict() for name, acc in self._accumulators.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config) or state["num_classes"] != self.num_classes:
            raise ValueError("the saved analysis was made with another configuration; start afresh (--overwrite)")
        self.num_images = int(state["num_images"])
        for name, acc in self._accumulators.items():
            acc.load_state_dict(state["accumulators"][name])

    # -- results -----------------------------------------------------------------------------------------
    def report(self, **provenance: Any) -> Report:
        """Finalise every metric into a :class:`~hf_isi.report.Report` (pure: the states are unchanged)."""
        start = time.perf_counter()
        columns: dict[str, Any] = {}
        scalars: dict[str, Any] = {}
        per_head: dict[str, Any] = {}
        seconds_by_metric: dict[str, float] = {}
        for name, acc in self._accumulators.items():
            began = time.perf_counter()
            computed, heads = acc.compute(), acc.per_head()
            undeclared = set(computed).union(heads) - {c for f in acc.families
                                                       for c in (*f.all_columns, *f.per_head_columns)}
            if undeclared:
                raise RuntimeError(f"{name} computed columns its MetricFamily does not declare: {sorted(undeclared)}")
            columns.update(computed)
            per_head.update(heads)
            scalars.update(acc.scalars())
            # finalising is not always cheap (the ISI's eigendecompositions: minutes on CPU at isi_dim=16)
            seconds_by_metric[name] = round(time.perf_counter() - began, 3)
            logger.info("%s: %s finalised in %.1f s", self.name, name, seconds_by_metric[name])
        source = self.adapter.provenance() if self.adapter is not None else \
            {"model": self.name, "source": "precomputed layer states"}
        info = {**source, **{f"{k}_version": v for k, v in library_versions().items()}, "metrics": list(self.config.metrics),
                "config": asdict(self.config), "num_classes": self.num_classes,
                "seconds_forward_and_accumulate": round(self.seconds, 3),
                "seconds_finalise": round(time.perf_counter() - start, 3),
                "seconds_finalise_by_metric": seconds_by_metric, **provenance}
        return Report.from_columns(self.name, columns, num_layers=self.num_layers or 0,
                                   num_images=self.num_images, scalars=scalars, provenance=info,
                                   per_head=per_head, phase_curve=self.config.phase_curve)


def analyze(
    model: Any,
    images: Any,
    labels: Sequence[int] | torch.Tensor | None = None,
    *,
    config: AnalysisConfig | None = None,
    ids: Sequence[object] | None = None,
    num_classes: int | None = None,
    batch_size: int = 32,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Report:
    """Analyse a vision transformer on a set of images, in one streaming pass.

    Args:
        model: a checkpoint path, Hub id, built-in reference name (``hf_isi.zoo``), loaded model or adapter.
        images: PIL images, numpy arrays or file paths (converted to RGB and preprocessed with the model's
            image processor), or a ``[N, C, H, W]`` tensor of ready ``pixel_values``.
        labels: integer class labels (enable the probes and Neural Collapse).
        config: what to compute (:class:`AnalysisConfig`).
        ids: stable example ids (default: the positions); they decide the fit/val/test split.
        dtype, device: of the forward pass (default: float32 for a checkpoint, a loaded model's own dtype, and
            the model's device); a loaded model or adapter is converted in place.

    Returns:
        A :class:`~hf_isi.report.Report` with the per-layer table, the phases and the provenance.

    Example:
        >>> import hf_isi
        >>> from hf_isi.zoo import digits_dataset
        >>> digits = digits_dataset()[:200]
        >>> report = hf_isi.analyze("isi-vit-d4", digits["image"], digits["label"])
        >>> report.table[["layer", "centered_similarity", "probe_mean_acc"]].shape
        (6, 3)
    """
    from . import data

    config = config or AnalysisConfig()
    # an adapter without attentions meets the Analyzer's own, clearer refusal of attention metrics
    adapter = load_model(model, attentions=None if isinstance(model, ModelAdapter) else config.needs_attentions,
                         dtype=dtype, device=device)
    n = len(images)
    if n == 0:
        raise ValueError("no images to analyse")
    ids = list(range(n)) if ids is None else list(ids)
    label_tensor = None if labels is None else torch.as_tensor(list(labels) if not isinstance(labels, torch.Tensor)
                                                               else labels, dtype=torch.int64)
    if label_tensor is not None:
        if len(label_tensor) != n:
            raise ValueError(f"{n} images but {len(label_tensor)} labels")
        if config.needs_labels and len(torch.unique(label_tensor)) < 2:
            raise ValueError("probes and neural collapse need at least 2 classes among the labels; pass more "
                             "varied labels or leave 'probes' and 'collapse' out of config.metrics")
        num_classes = num_classes or int(label_tensor.max()) + 1

    if isinstance(images, torch.Tensor):
        def pixels(lo: int, hi: int) -> torch.Tensor:
            return images[lo:hi]
    else:
        processor = adapter.image_processor or data.default_image_processor(adapter.image_size)

        def pixels(lo: int, hi: int) -> torch.Tensor:
            return data.preprocess(processor, [data.load_image(im, f"image {ids[i]}")
                                               for i, im in zip(range(lo, hi), images[lo:hi])])

    analyzer = Analyzer(adapter, config, num_classes if label_tensor is not None else None)
    calib = min(n, max(1, config.calibration_images))
    analyzer.setup(pixels(0, calib), None if label_tensor is None else label_tensor[:calib])
    starts: Iterable[int] = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=(n + batch_size - 1) // batch_size, desc=adapter.name, unit="batch")
    for lo in starts:
        hi = min(n, lo + batch_size)
        analyzer.update(pixels(lo, hi), None if label_tensor is None else label_tensor[lo:hi], ids[lo:hi])
    return analyzer.report()
