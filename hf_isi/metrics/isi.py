"""Information Scrambling Index (reconstruction variant, the paper's): how much recovering the pre-PE patch
embeddings from a layer gains from looking at *all* tokens rather than each token alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..states import FIT, SPLITS, TEST, VAL, LayerStates
from ._scratch import Scratch, add_product, compute_dtype
from .base import Accumulator, MetricFamily, float64_zeros
from .ridge import DEFAULT_PENALTIES, RidgeStats, select_ridge

if TYPE_CHECKING:
    from ..engine import AnalysisConfig


def gaussian_projection(dim: int, k: int, seed: int, salt: int) -> torch.Tensor:
    """A fixed ``[dim, k]`` Gaussian projection with entries N(0, 1/k), reproducible from (seed, salt, dim)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + salt * 10_007 + dim) % (2**63))
    return torch.randn(dim, k, generator=g, dtype=torch.float64) / k**0.5


#: the symmetric Gram update works on this many column blocks per side (blocks under 256 columns are not split)
_GRAM_BLOCKS = 8
_MIN_GRAM_BLOCK = 256


def _block_bounds(p: int) -> list[tuple[int, int]]:
    nb = max(1, min(_GRAM_BLOCKS, p // _MIN_GRAM_BLOCK))
    edges = [p * i // nb for i in range(nb + 1)]
    return [(edges[i], edges[i + 1]) for i in range(nb)]


def _mirror_upper_blocks(gram: torch.Tensor, bounds: list[tuple[int, int]]) -> None:
    """Copy the upper off-diagonal blocks of ``[..., P, P]`` matrices onto the lower ones (transposed)."""
    for j, (r0, r1) in enumerate(bounds):
        for c0, c1 in bounds[j + 1:]:
            gram[..., c0:c1, r0:r1].copy_(gram[..., r0:r1, c0:c1].transpose(-1, -2))


def _diagonal_blocks(m: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The ``n`` diagonal ``k x k`` blocks of an ``[n k, n k]`` matrix, as ``[n, k, k]``."""
    return m.reshape(n, k, n, k).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


class ReconstructionISIAccumulator(Accumulator):
    """Streams ridge sufficient statistics for recovering ``z0`` from each layer's patch tokens.

    Targets: ``z0`` standardised per dimension (mean and scale from the calibration batch, identical on every
    process) and projected to ``k`` dims by a fixed seeded Gaussian; inputs: the layer's patch tokens projected
    to ``k`` dims the same way (one projection per width). Images are split fit/val/test by the hash of their id.

    * all-to-all: one ridge map from the concatenated ``N k`` projected tokens of an image to its concatenated
      ``N k`` projected targets;
    * self-only: one ridge map shared by all positions, token ``i`` -> target ``i``. It is the block-diagonal
      special case, so its statistics are sums of the diagonal blocks of the all-to-all ones;
    * performance = held-out R^2 on the test split, pooled over the ``N k`` target columns,
      ``1 - SSE / SST`` with SST taken per column around the test mean (the same SST for both maps);
      the ridge penalty is chosen on the validation split;
    * ``ISI(l) = R2_all(l) - R2_self(l)``; ``isi_normalized(l) = R2_all(l)/R2_all(0) - R2_self(l)/R2_self(0)``
      (each R^2 divided by its value at the +PE layer, as in the paper).

    Columns: ``isi``, ``isi_r2_self``, ``isi_r2_all``, ``isi_normalized``, ``isi_penalty_self``,
    ``isi_penalty_all``. Self-only (hence ISI) is missing at layers whose token count differs from ``z0``'s
    (hierarchical models after patch merging). Memory: per layer and split, ``(N k)^2`` float64 twice.

    Speed: adding a few images to an ``(N k)^2`` Gram is a rank-few update that reads and writes the whole
    matrix (6.6 GB per batch for ViT-B/16 at ``k = 16``), so it is bound by memory bandwidth, not arithmetic.
    The projected rows of up to :attr:`buffer_images` images are therefore kept (bounded:
    ``buffer_images * (sum_l N_l k + N k)`` values of the compute dtype) and added by :meth:`flush`, in one
    matrix product per layer and split, when the buffer is full and before anything reads the Gram sums
    ``xx``/``xy`` (merge, sync, state_dict, compute), so the states and every result are those of adding each
    batch at once, up to summation order. Under ``precision="mixed"`` the projections and those products are float32 (twice the float64 GEMM
    rate on CPU) and each product is added to the float64 sums; the buffer is then 4x larger, so that adding
    a float32 product to the float64 sums (a pass over the state) costs little per image.
    """

    families = (MetricFamily(
        "isi",
        columns=("isi", "isi_r2_self", "isi_r2_all", "isi_normalized"),
        tuning_columns=("isi_penalty_self", "isi_penalty_all"),
    ),)
    # states (registered by setup); N positions of z0, P_l = N_l k inputs of layer l, Q = N k targets
    target_mean: torch.Tensor  # fixed [D0]
    target_scale: torch.Tensor  # fixed [D0]
    target_projection: torch.Tensor  # fixed [D0, k]
    input_projections: list[torch.Tensor]  # fixed [D_l, k]
    input_shifts: list[torch.Tensor]  # fixed [P_l]
    n: torch.Tensor  # [split]
    sy: torch.Tensor  # [split, Q]
    yy: torch.Tensor  # [split, Q]
    sx: list[torch.Tensor]  # [split, P_l]
    xx: list[torch.Tensor]  # [split, P_l, P_l]
    xy: list[torch.Tensor]  # [split, P_l, Q]

    def __init__(self, dim: int = 16, penalties: tuple[float, ...] = DEFAULT_PENALTIES, seed: int = 0,
                 precision: str = "float64") -> None:
        super().__init__()
        self.dim, self.penalties, self.seed = int(dim), tuple(penalties), int(seed)
        self.precision, self.dtype = precision, compute_dtype(precision)
        #: images whose ``x x^T`` / ``x y^T`` contributions are buffered before one large update (see above)
        self.buffer_images = 256 if self.dtype == torch.float64 else 1024
        self.num_targets = 0
        self.tokens_per_layer: list[int] = []
        # the Gram buffer: preallocated rows (one block per layer, targets, split ids) filled batch by batch,
        # so buffering allocates nothing per batch (see _reserve and flush)
        self._rows_x: list[torch.Tensor] = []
        self._rows_y: torch.Tensor | None = None
        self._rows_split: torch.Tensor | None = None
        self._filled = 0
        self._scratch = Scratch()  # reusable CPU buffers, not state
        self.xx, self.xy = [], []  # the Gram sums, registered by setup

    @classmethod
    def from_config(cls, config: AnalysisConfig, num_classes: int | None,
                    families: frozenset[str]) -> ReconstructionISIAccumulator:
        return cls(config.isi_dim, tuple(config.isi_penalties), config.seed, config.precision)

    def flush(self) -> None:
        """Add the buffered images' rows to the Gram sums (one product per layer, split and block).

        ``x^T x`` is symmetric: only its diagonal and upper blocks are summed (9/16 of the arithmetic with
        8 x 8 blocks); the lower blocks of the splits that received rows are then copied from the upper ones.
        """
        if not self._filled:
            return
        assert self._rows_split is not None and self._rows_y is not None
        filled, self._filled = self._filled, 0
        # rows grouped by split with one gather per layer, then each split is a contiguous slice
        split = self._rows_split[:filled]
        order = torch.argsort(split, stable=True)
        ends = torch.cumsum(torch.bincount(split, minlength=len(SPLITS)), 0).tolist()
        ranges = list(zip([0, *ends[:-1]], ends))
        y = self._rows_y[:filled].index_select(0, order)
        for i in range(len(self.xx)):
            x = self._rows_x[i][:filled].index_select(0, order)
            bounds = _block_bounds(x.shape[1])
            for s, (lo, hi) in enumerate(ranges):
                if hi == lo:
                    continue
                xs, ys = x[lo:hi], y[lo:hi]
                gram = self.xx[i][s]
                for j, (r0, r1) in enumerate(bounds):
                    left = xs[:, r0:r1].T
                    for c0, c1 in bounds[j:]:
                        add_product(gram[r0:r1, c0:c1], left, xs[:, c0:c1], self._scratch, "product")
                _mirror_upper_blocks(gram, bounds)
                add_product(self.xy[i][s], xs.T, ys, self._scratch, "product")

    def _reserve(self, rows: int, y: torch.Tensor, xs: list[torch.Tensor]) -> int:
        """Room for ``rows`` more images in the Gram buffer (flushing it first if they do not fit, growing it
        for a batch larger than :attr:`buffer_images`); returns the first free row."""
        if self._filled + rows > (0 if self._rows_y is None else self._rows_y.shape[0]):
            self.flush()
        if self._rows_y is None or rows > self._rows_y.shape[0]:
            capacity = max(rows, self.buffer_images)
            self._rows_y = y.new_empty(capacity, y.shape[1])
            self._rows_x = [x.new_empty(capacity, x.shape[1]) for x in xs]
            self._rows_split = torch.empty(capacity, dtype=torch.int64, device=y.device)
        return self._filled

    def load_state_dict(self, state: dict) -> None:
        self._filled = 0
        super().load_state_dict(state)

    def setup(self, states: LayerStates) -> None:
        super().setup(states)
        k, dev = self.dim, states.device
        z0 = states.patch_embeddings.to(torch.float64)
        flat = z0.reshape(-1, z0.shape[-1])
        scale = flat.std(dim=0, unbiased=False)
        self.add_state("target_mean", flat.mean(dim=0), "fixed")
        self.add_state("target_scale", torch.where(scale > 0, scale, torch.ones_like(scale)), "fixed")
        self.add_state("target_projection", gaussian_projection(z0.shape[-1], k, self.seed, 1).to(dev), "fixed")
        self.num_targets = z0.shape[1]
        q = self.num_targets * k
        self.add_state("n", float64_zeros(3, device=dev))
        self.add_state("sy", float64_zeros(3, q, device=dev))
        self.add_state("yy", float64_zeros(3, q, device=dev))
        projections, shifts, xx, xy, sx = [], [], [], [], []
        self.tokens_per_layer = []
        for layer in states.layers:
            tokens = states.patch_tokens(layer)
            p = tokens.shape[1] * k
            self.tokens_per_layer.append(tokens.shape[1])
            projections.append(gaussian_projection(tokens.shape[-1], k, self.seed, 0).to(dev))
            # inputs are accumulated around their calibration mean (ridge with intercept is shift-invariant;
            # the sums avoid cancellation against a large common offset)
            shifts.append((tokens.to(torch.float64) @ projections[-1]).reshape(tokens.shape[0], -1).mean(0))
            xx.append(float64_zeros(3, p, p, device=dev))
            xy.append(float64_zeros(3, p, q, device=dev))
            sx.append(float64_zeros(3, p, device=dev))
        self.add_state("input_projections", projections, "fixed")
        self.add_state("input_shifts", shifts, "fixed")
        self.add_state("xx", xx)
        self.add_state("xy", xy)
        self.add_state("sx", sx)

    def extra_state(self) -> dict:
        return {"num_targets": self.num_targets, "tokens_per_layer": self.tokens_per_layer}

    def load_extra_state(self, extra: dict) -> None:
        self.num_targets, self.tokens_per_layer = extra["num_targets"], list(extra["tokens_per_layer"])

    def targets(self, states: LayerStates) -> torch.Tensor:
        """Standardised, projected ``z0`` of a batch, concatenated over positions: ``[B, N k]`` (compute dtype)."""
        z0 = self._scratch.cast(states.patch_embeddings, "z0", self.dtype)
        z0 = z0.sub_(self.target_mean.to(self.dtype)).div_(self.target_scale.to(self.dtype))
        y = torch.matmul(z0, self.target_projection.to(self.dtype))
        return y.reshape(z0.shape[0], -1)

    def inputs(self, states: LayerStates, index: int) -> torch.Tensor:
        """Projected patch tokens of layer ``index - 1``, concatenated over positions, minus their calibration
        mean: ``[B, N_l k]`` (compute dtype)."""
        tokens = self._scratch.cast(states.patch_tokens(states.layers[index]), "tokens", self.dtype)
        x = torch.matmul(tokens, self.input_projections[index].to(self.dtype)).reshape(tokens.shape[0], -1)
        return x.sub_(self.input_shifts[index].to(self.dtype))

    def update(self, states: LayerStates) -> None:
        y = self.targets(states)
        split = states.split
        masks = [split == s for s in range(len(SPLITS))]
        for s, m in enumerate(masks):
            ys = y[m]
            self.n[s] += ys.shape[0]
            self.sy[s] += ys.sum(0, dtype=torch.float64)
            self.yy[s] += (ys * ys).sum(0, dtype=torch.float64)
        xs = [self.inputs(states, i) for i in range(len(states.layers))]
        for i, x in enumerate(xs):
            for s, m in enumerate(masks):
                self.sx[i][s] += x[m].sum(0, dtype=torch.float64)
        # x x^T and x y^T: buffered, added by flush() (see the class docstring)
        rows = y.shape[0]
        lo = self._reserve(rows, y, xs)
        assert self._rows_y is not None and self._rows_split is not None  # allocated by _reserve
        self._rows_y[lo:lo + rows] = y
        self._rows_split[lo:lo + rows] = split
        for buffer, x in zip(self._rows_x, xs):
            buffer[lo:lo + rows] = x
        self._filled += rows
        if self._filled >= self._rows_y.shape[0]:
            self.flush()

    def stats(self, index: int, split: int, self_only: bool = False) -> RidgeStats:
        """The sufficient statistics of one layer and split, for the all-to-all or the self-only problem
        (of the flushed sums: :meth:`compute` flushes first).

        Self-only: one map ``W`` shared by the ``N`` positions, with a per-position intercept (as the
        all-to-all map has), i.e. ``y_i - mean_fit(y_i) ~ W^T (x_i - mean_fit(x_i))``. Its statistics are those
        of every split's diagonal ``k x k`` blocks (one per position) shifted by the fit split's per-position
        means, summed over positions; the fit split is then centred, so the ridge fit's own intercept is zero.
        """
        s = RidgeStats(self.n[split], self.sx[index][split], self.sy[split], self.xx[index][split],
                       self.xy[index][split], self.yy[split])
        if not self_only:
            return s
        n, k = self.num_targets, self.dim
        n_fit = self.n[FIT].clamp_min(1)
        per_position = RidgeStats(s.n, s.sx.reshape(n, k), s.sy.reshape(n, k), _diagonal_blocks(s.xx, n, k),
                                  _diagonal_blocks(s.xy, n, k), s.yy.reshape(n, k))
        p = per_position.shifted((self.sx[index][FIT] / n_fit).reshape(n, k), (self.sy[FIT] / n_fit).reshape(n, k))
        return RidgeStats(s.n * n, p.sx.sum(0), p.sy.sum(0), p.xx.sum(0), p.xy.sum(0), p.yy.sum(0))

    def compute(self) -> dict[str, np.ndarray]:
        self.flush()
        cols = {c: self.missing_column() for c in
                ("isi_r2_all", "isi_r2_self", "isi_penalty_all", "isi_penalty_self")}
        for i, tokens in enumerate(self.tokens_per_layer):
            if float(self.n[FIT]) < 2 or float(self.n[TEST]) < 2:
                break
            sst = self.stats(i, TEST).total_sum_of_squares()
            for name, self_only in (("all", False), ("self", True)):
                if self_only and tokens != self.num_targets:
                    continue
                fit = select_ridge(self.stats(i, FIT, self_only), self.stats(i, VAL, self_only), self.penalties)
                sse = fit.sse(self.stats(i, TEST, self_only))
                cols[f"isi_r2_{name}"][i] = 1.0 - float(sse / sst) if float(sst) > 0 else np.nan
                cols[f"isi_penalty_{name}"][i] = fit.alpha
        r2_all, r2_self = cols["isi_r2_all"], cols["isi_r2_self"]
        cols["isi"] = r2_all - r2_self
        with np.errstate(divide="ignore", invalid="ignore"):
            cols["isi_normalized"] = r2_all / r2_all[1] - r2_self / r2_self[1]
        return cols

