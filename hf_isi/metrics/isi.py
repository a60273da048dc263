"""Information Scrambling Index (reconstruction variant, the paper's): how much recovering the pre-PE patch
embeddings from a layer gains from looking at *all* tokens rather than each token alone."""

from __future__ import annotations

import numpy as np
import torch

from ..states import FIT, SPLITS, TEST, VAL, LayerStates
from .base import Accumulator, float64_zeros
from .ridge import DEFAULT_PENALTIES, RidgeStats, select_ridge


def gaussian_projection(dim: int, k: int, seed: int, salt: int) -> torch.Tensor:
    """A fixed ``[dim, k]`` Gaussian projection with entries N(0, 1/k), reproducible from (seed, salt, dim)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + salt * 10_007 + dim) % (2**63))
    return torch.randn(dim, k, generator=g, dtype=torch.float64) / k**0.5


def _block_diagonal_sum(m: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Sum of the ``n`` diagonal ``k x k`` blocks of an ``[n k, n k]`` matrix."""
    return m.reshape(n, k, n, k).diagonal(dim1=0, dim2=2).sum(-1)


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
    """

    name = "isi"

    def __init__(self, dim: int = 16, penalties: tuple[float, ...] = DEFAULT_PENALTIES, seed: int = 0) -> None:
        super().__init__()
        self.dim, self.penalties, self.seed = int(dim), tuple(penalties), int(seed)
        self.num_targets = 0
        self.tokens_per_layer: list[int] = []

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
        """Standardised, projected ``z0`` of a batch, concatenated over positions: ``[B, N k]``."""
        z0 = states.patch_embeddings.to(torch.float64)
        y = ((z0 - self.target_mean) / self.target_scale) @ self.target_projection
        return y.reshape(z0.shape[0], -1)

    def inputs(self, states: LayerStates, index: int) -> torch.Tensor:
        """Projected patch tokens of layer ``index - 1``, concatenated over positions, minus their calibration
        mean: ``[B, N_l k]``."""
        tokens = states.patch_tokens(states.layers[index]).to(torch.float64)
        return (tokens @ self.input_projections[index]).reshape(tokens.shape[0], -1) - self.input_shifts[index]

    def update(self, states: LayerStates) -> None:
        y = self.targets(states)
        masks = [states.split == s for s in range(len(SPLITS))]
        for s, m in enumerate(masks):
            ys = y[m]
            self.n[s] += ys.shape[0]
            self.sy[s] += ys.sum(0)
            self.yy[s] += (ys * ys).sum(0)
        for i in range(len(states.layers)):
            x = self.inputs(states, i)
            for s, m in enumerate(masks):
                xs = x[m]
                self.xx[i][s] += xs.T @ xs
                self.xy[i][s] += xs.T @ y[m]
                self.sx[i][s] += xs.sum(0)

    def stats(self, index: int, split: int, self_only: bool = False) -> RidgeStats:
        """The sufficient statistics of one layer and split, for the all-to-all or the self-only problem."""
        s = RidgeStats(self.n[split], self.sx[index][split], self.sy[split], self.xx[index][split],
                       self.xy[index][split], self.yy[split])
        if not self_only:
            return s
        n, k = self.num_targets, self.dim
        return RidgeStats(
            s.n * n,
            s.sx.reshape(n, k).sum(0),
            s.sy.reshape(n, k).sum(0),
            _block_diagonal_sum(s.xx, n, k),
            _block_diagonal_sum(s.xy, n, k),
            s.yy.reshape(n, k).sum(0),
        )

    def compute(self) -> dict[str, np.ndarray]:
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

