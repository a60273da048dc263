"""The loop: model adapter -> layer states -> metric accumulators -> (all-reduce) -> Report."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .metrics._scratch import compute_dtype
from .metrics.attention import AttentionAccumulator
from .metrics.base import Accumulator
from .metrics.isi import ReconstructionISIAccumulator
from .metrics.pe import PEDominanceAccumulator
from .metrics.probes import PooledFeatureAccumulator
from .metrics.ridge import DEFAULT_PENALTIES
from .metrics.similarity import SimilarityAccumulator
from .models import ModelAdapter, load_model
from .report import Report
from .states import LayerStates, example_keys

logger = logging.getLogger(__name__)

ALL_METRICS = ("similarity", "isi", "attention", "probes", "collapse", "pe")


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

    @property
    def needs_attentions(self) -> bool:
        return "attention" in self.metrics

    @property
    def needs_labels(self) -> bool:
        return "probes" in self.metrics or "collapse" in self.metrics


def build_accumulators(config: AnalysisConfig, num_classes: int | None) -> dict[str, Accumulator]:
    """One accumulator per requested family (probes and collapse share their statistics)."""
    m = set(config.metrics)
    accs: dict[str, Accumulator] = {}
    if "similarity" in m:
        accs["similarity"] = SimilarityAccumulator()
    if "isi" in m:
        accs["isi"] = ReconstructionISIAccumulator(config.isi_dim, tuple(config.isi_penalties), config.seed,
                                                   config.precision)
    if "attention" in m:
        accs["attention"] = AttentionAccumulator(config.precision)
    if config.needs_labels:
        if num_classes is None:
            logger.warning("no labels: probes and neural-collapse metrics are skipped")
        else:
            accs["probes"] = PooledFeatureAccumulator(
                num_classes, tuple(config.probe_penalties), config.seed, config.probe_max_test_images,
                config.probe_final_norm, probes="probes" in m, collapse="collapse" in m,
            )
    if "pe" in m:
        accs["pe"] = PEDominanceAccumulator()
    return accs


class Analyzer:
    """The streaming analysis of one model: ``setup`` once, ``update`` per batch, ``sync`` across processes,
    ``report`` at the end. Its state is the accumulators' states, so it merges, saves and resumes.

    Example:
        >>> analyzer = Analyzer(adapter, AnalysisConfig(), num_classes=10)     # doctest: +SKIP
        >>> analyzer.setup(calibration_pixel_values)                           # doctest: +SKIP
        >>> for pixels, labels, ids in batches:                                # doctest: +SKIP
        ...     analyzer.update(pixels, labels, ids)
        >>> report = analyzer.report()                                         # doctest: +SKIP
    """

    def __init__(self, adapter: ModelAdapter, config: AnalysisConfig | None = None,
                 num_classes: int | None = None) -> None:
        self.adapter = adapter
        self.config = config or AnalysisConfig()
        self.num_classes = num_classes
        if self.config.needs_attentions and not adapter.attentions:
            raise ValueError(f"{adapter.name} was loaded without attentions but attention metrics were requested")
        self.accumulators = build_accumulators(self.config, num_classes)
        self.num_images = torch.zeros(1, dtype=torch.float64, device=adapter.device)
        self.seconds = 0.0

    def capture(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                ids: Sequence[object] | None = None) -> LayerStates:
        """Layer states of one batch; ``ids`` (stable example ids) decide each image's split."""
        ids = range(len(pixel_values)) if ids is None else ids
        if len(ids) != len(pixel_values) or (labels is not None and len(labels) != len(pixel_values)):
            raise ValueError(f"batch of {len(pixel_values)} images with {len(ids)} ids and "
                             f"{'no' if labels is None else len(labels)} labels: they must match")
        states = self.adapter.capture(pixel_values, labels=labels, keys=example_keys(ids, self.config.seed))
        states.split_fractions = (self.config.fit_fraction, self.config.val_fraction)
        return states

    @property
    def is_setup(self) -> bool:
        return all(a.is_setup for a in self.accumulators.values())

    def setup(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Allocate every accumulator from a calibration batch, which must be the same on every process."""
        states = self.capture(pixel_values[: max(1, self.config.calibration_images)],
                              None if labels is None else labels[: max(1, self.config.calibration_images)])
        for acc in self.accumulators.values():
            acc.setup(states)

    def update(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
               ids: Sequence[object] | None = None) -> None:
        start = time.perf_counter()
        states = self.capture(pixel_values, labels, ids)
        self.update_states(states)
        self.seconds += time.perf_counter() - start

    def update_states(self, states: LayerStates) -> None:
        if not self.is_setup:
            raise RuntimeError("call setup() with a calibration batch before update()")
        for acc in self.accumulators.values():
            acc.update(states)
        self.num_images += states.batch_size

    def merge(self, other: Analyzer) -> Analyzer:
        for name, acc in self.accumulators.items():
            acc.merge(other.accumulators[name])
        self.num_images += other.num_images.to(self.num_images.device)
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

        for acc in self.accumulators.values():
            acc.sync(all_reduce, all_gather)
        self.num_images = all_reduce(self.num_images)

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "num_classes": self.num_classes, "num_images": self.num_images,
                "accumulators": {name: acc.state_dict() for name, acc in self.accumulators.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config) or state["num_classes"] != self.num_classes:
            raise ValueError("the saved analysis was made with another configuration; start afresh (--overwrite)")
        self.num_images = state["num_images"].to(self.adapter.device)
        for name, acc in self.accumulators.items():
            acc.load_state_dict(state["accumulators"][name])

    def report(self, **provenance: Any) -> Report:
        """Finalise every metric into a :class:`~hf_isi.report.Report` (pure: the states are unchanged)."""
        start = time.perf_counter()
        columns: dict[str, Any] = {}
        scalars: dict[str, Any] = {}
        per_head: dict[str, Any] = {}
        seconds_by_metric: dict[str, float] = {}
        for name, acc in self.accumulators.items():
            began = time.perf_counter()
            columns.update(acc.compute())
            scalars.update(acc.scalars())
            if isinstance(acc, AttentionAccumulator):
                per_head.update(acc.per_head())
            # finalising is not always cheap (the ISI's eigendecompositions: minutes on CPU at isi_dim=16)
            seconds_by_metric[name] = round(time.perf_counter() - began, 3)
            logger.info("%s: %s finalised in %.1f s", self.adapter.name, name, seconds_by_metric[name])
        num_layers = next(a.num_layers for a in self.accumulators.values()) if self.accumulators else 0
        info = {**self.adapter.provenance(), **_library_versions(), "metrics": list(self.config.metrics),
                "config": asdict(self.config), "num_classes": self.num_classes,
                "seconds_forward_and_accumulate": round(self.seconds, 3),
                "seconds_finalise": round(time.perf_counter() - start, 3),
                "seconds_finalise_by_metric": seconds_by_metric, **provenance}
        return Report.from_columns(self.adapter.name, columns, num_layers=num_layers,
                                   num_images=int(self.num_images.item()), scalars=scalars, provenance=info,
                                   per_head=per_head, phase_curve=self.config.phase_curve)


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for lib in ("hf_isi", "torch", "transformers", "datasets", "accelerate", "numpy"):
        try:
            out[f"{lib}_version"] = md.version(lib)
        except md.PackageNotFoundError:
            pass
    return out


def analyze(
    model: Any,
    images: Any,
    labels: Sequence[int] | torch.Tensor | None = None,
    *,
    config: AnalysisConfig | None = None,
    ids: Sequence[object] | None = None,
    num_classes: int | None = None,
    batch_size: int = 32,
    dtype: str = "float32",
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
    adapter = load_model(model, attentions=config.needs_attentions, dtype=dtype, device=device) \
        if not isinstance(model, ModelAdapter) else model
    if device is not None and adapter.device != torch.device(device):
        adapter.model.to(device)
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
