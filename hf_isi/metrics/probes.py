"""CLS vs mean-pool linear probes (and the Neural Collapse metrics that share their statistics)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..states import FIT, SPLITS, TEST, VAL, LayerStates
from . import collapse
from .base import Accumulator, MetricFamily, Reservoir, float64_zeros
from .ridge import DEFAULT_PENALTIES, RidgeFit, RidgeStats, select_ridge

if TYPE_CHECKING:
    from ..engine import AnalysisConfig

POOLINGS = ("cls", "mean")
PROBES = MetricFamily(
    "probes",
    columns=tuple(f"probe_{p}_{m}" for m in ("acc", "control_acc", "selectivity") for p in POOLINGS),
    tuning_columns=tuple(f"probe_{p}_penalty" for p in POOLINGS),
    requires=("labels",),
)
COLLAPSE = MetricFamily("collapse", columns=tuple(f"nc{i}_{p}" for i in range(1, 5) for p in POOLINGS),
                        requires=("labels",))
_MASK64 = (1 << 64) - 1


def control_labels(keys: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """Control-task labels: a seeded hash of each image's key, uniform over the ``C`` classes.

    The streaming counterpart of permuting the labels with a fixed seed: same label set, no relation to the
    image, and the same label for the same image whatever the batch order or process count.
    """
    out = []
    for key in keys.tolist():  # splitmix64 finaliser
        z = (key ^ (seed * 0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append((z ^ (z >> 31)) % num_classes)
    return torch.tensor(out, dtype=torch.int64)


def one_vs_all_stats(n, sx, xx, counts, class_sums) -> RidgeStats:
    """Ridge statistics for targets ``y_ic = +1 if label_i == c else -1`` (scikit-learn's RidgeClassifier),
    from class statistics alone: ``sum x y_c = 2 S_c - sum x``, ``sum y_c = 2 n_c - n``, ``sum y_c^2 = n``."""
    return RidgeStats(n, sx, 2 * counts - n, xx, 2 * class_sums.T - sx[:, None], n * torch.ones_like(counts))


class PooledFeatureAccumulator(Accumulator):
    """Streams, per layer and pooling (the [CLS] token; the mean of the patch tokens), per split: counts,
    ``sum x``, ``sum x x^T`` and per-class sums for the true and the control labels, plus a bounded reservoir
    of test-split features (the smallest hash keys, so it is the same sample on any process count).

    Probes (columns ``probe_{cls,mean}_acc``, ``..._control_acc``, ``..._selectivity``, ``..._penalty``):
    a one-vs-all ridge classifier with intercept (scikit-learn's ``RidgeClassifier``) fitted in closed form on
    the fit split, penalty chosen by squared error on the validation split (as ``RidgeClassifierCV`` chooses by
    squared error), top-1 accuracy on the test reservoir. Control: the same probe on :func:`control_labels`;
    ``selectivity = accuracy - control accuracy``.

    Neural collapse (columns ``nc{1,2,3,4}_{cls,mean}``, :mod:`hf_isi.metrics.collapse`) over all images;
    NC3 uses the probe's classifier rows, NC4 compares nearest-class-mean with the probe on the test reservoir.
    """

    families = (PROBES, COLLAPSE)
    # states (registered by setup), one entry per feature (pooling, layer) of dimension D_j
    shift: list[torch.Tensor]  # fixed [D_j]: the calibration mean
    counts: torch.Tensor  # [true/control, split, class]
    sx: list[torch.Tensor]  # [split, D_j]
    xx: list[torch.Tensor]  # [split, D_j, D_j]
    class_sums: list[torch.Tensor]  # [true/control, split, class, D_j]
    test: Reservoir  # test-split features, labels and control labels

    def __init__(
        self,
        num_classes: int,
        penalties: tuple[float, ...] = DEFAULT_PENALTIES,
        seed: int = 0,
        max_test_images: int = 5000,
        final_norm: bool = False,
        probes: bool = True,
        collapse: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"linear probes need at least 2 classes, got num_classes={num_classes}; "
                "pass labels with two or more classes, or leave 'probes' and 'collapse' out of the metrics"
            )
        self.num_classes, self.penalties, self.seed = int(num_classes), tuple(penalties), int(seed)
        self.max_test_images, self.final_norm = int(max_test_images), bool(final_norm)
        self.want_probes, self.want_collapse = probes, collapse
        self.features: list[tuple[str, int]] = []

    @classmethod
    def from_config(cls, config: AnalysisConfig, num_classes: int | None,
                    families: frozenset[str]) -> PooledFeatureAccumulator:
        assert num_classes is not None  # the engine builds label families only with labels
        return cls(num_classes, tuple(config.probe_penalties), config.seed, config.probe_max_test_images,
                   config.probe_final_norm, probes=PROBES.name in families, collapse=COLLAPSE.name in families)

    # -- features ----------------------------------------------------------------------------------------
    def pooled(self, states: LayerStates, pooling: str, layer: int) -> torch.Tensor:
        x = states.cls_token(layer) if pooling == "cls" else states.mean_pool(layer)
        assert x is not None  # features only hold (cls, layer) where the layer has a [CLS] token
        if self.final_norm and states.final_norm is not None and layer >= 0:
            x = states.final_norm(x)
        return x

    def setup(self, states: LayerStates) -> None:
        super().setup(states)
        dev, c = states.device, self.num_classes
        self.features = [
            (p, layer) for p in POOLINGS for layer in states.layers if not (p == "cls" and states.cls_token(layer) is None)
        ]
        # Accumulate features shifted by their calibration mean: ridge with intercept and the NC metrics are
        # shift-invariant, and sums of x x^T stay free of the cancellation a large constant offset causes.
        shifts = [self.pooled(states, p, layer).to(torch.float64).mean(0) for p, layer in self.features]
        dims = [len(shift) for shift in shifts]
        self.add_state("shift", shifts, "fixed")
        self.add_state("counts", float64_zeros(2, 3, c, device=dev))  # [true/control, split, class]
        self.add_state("sx", [float64_zeros(3, d, device=dev) for d in dims])
        self.add_state("xx", [float64_zeros(3, d, d, device=dev) for d in dims])
        self.add_state("class_sums", [float64_zeros(2, 3, c, d, device=dev) for d in dims])
        self.add_reservoir("test", self.max_test_images)

    def extra_state(self) -> dict:
        return {"features": [list(f) for f in self.features]}

    def load_extra_state(self, extra: dict) -> None:
        self.features = [(p, int(layer)) for p, layer in extra["features"]]

    def update(self, states: LayerStates) -> None:
        if states.labels is None:
            raise ValueError("probes and neural-collapse metrics need labels; this batch has none")
        labels = states.labels.to(states.device, torch.int64)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}); got {labels.min().item()}..{labels.max().item()}"
            )
        control = control_labels(states.keys, self.num_classes, self.seed).to(states.device)
        split = states.split
        onehots = [torch.nn.functional.one_hot(y, self.num_classes).double() for y in (labels, control)]
        for t, oh in enumerate(onehots):
            for s in range(len(SPLITS)):
                self.counts[t, s] += oh[split == s].sum(0)
        test = split == TEST
        kept: dict[str, torch.Tensor] = {}
        for j, (pooling, layer) in enumerate(self.features):
            x = self.pooled(states, pooling, layer)
            xd = x.to(torch.float64) - self.shift[j]
            for s in range(len(SPLITS)):
                m = split == s
                xs = xd[m]
                self.sx[j][s] += xs.sum(0)
                self.xx[j][s] += xs.T @ xs
                for t, oh in enumerate(onehots):
                    self.class_sums[j][t, s] += oh[m].T @ xs
            kept[f"f{j}"] = x[test].float()
        self.test.add(states.keys[test.cpu()], label=labels[test], control=control[test], **kept)

    # -- finalise ----------------------------------------------------------------------------------------
    def probe(self, j: int, task: int) -> RidgeFit | None:
        """The ridge classifier of feature ``j`` for the true (task 0) or control (task 1) labels, acting on
        the raw (unshifted) features."""
        def stats(s: int) -> RidgeStats:
            counts = self.counts[task, s]
            return one_vs_all_stats(counts.sum(), self.sx[j][s], self.xx[j][s], counts, self.class_sums[j][task, s])

        if int((self.counts[task, FIT] > 0).sum()) < 2:
            return None
        fit = select_ridge(stats(FIT), stats(VAL), self.penalties)
        fit.bias = fit.bias - fit.weight.T @ self.shift[j]  # statistics were accumulated around the shift
        return fit

    def compute(self) -> dict[str, np.ndarray]:
        wanted = [f for f, want in ((PROBES, self.want_probes), (COLLAPSE, self.want_collapse)) if want]
        cols = {name: self.missing_column() for f in wanted for name in f.all_columns}
        # every test-set quantity below is order-free, so the reservoir is read in slot order (no sorted copy)
        test_data = self.test.slots()[1]
        for j, (pooling, layer) in enumerate(self.features):
            i = layer + 1
            x_test = test_data[f"f{j}"].to(self.shift[j]) if len(self.test) else None
            fit = self.probe(j, 0)
            pred = None
            if fit is not None and x_test is not None:
                pred = fit.predict(x_test.to(fit.weight)).argmax(1).cpu()
                if self.want_probes:
                    control_fit = self.probe(j, 1)
                    cols[f"probe_{pooling}_acc"][i] = float((pred == test_data["label"]).double().mean())
                    cols[f"probe_{pooling}_penalty"][i] = fit.alpha
                    if control_fit is not None:
                        control_pred = control_fit.predict(x_test.to(fit.weight)).argmax(1).cpu()
                        acc = float((control_pred == test_data["control"]).double().mean())
                        cols[f"probe_{pooling}_control_acc"][i] = acc
                        cols[f"probe_{pooling}_selectivity"][i] = cols[f"probe_{pooling}_acc"][i] - acc
            if not self.want_collapse:
                continue
            counts = self.counts[0].sum(0)
            if int((counts > 0).sum()) < 2:
                continue
            geometry = collapse.class_geometry(counts, self.class_sums[j][0].sum(0), self.xx[j].sum(0))
            if not geometry.separated:
                continue
            cols[f"nc1_{pooling}"][i] = collapse.nc1(geometry)
            cols[f"nc2_{pooling}"][i] = collapse.nc2(geometry)
            if fit is not None:
                cols[f"nc3_{pooling}"][i] = collapse.nc3(geometry, fit.weight.T)
                if x_test is not None and pred is not None:
                    cols[f"nc4_{pooling}"][i] = collapse.nc4(geometry, x_test - self.shift[j], pred)
        return cols
