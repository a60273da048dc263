"""Centred token similarity: how alike the patch tokens of one image are, layer by layer."""

from __future__ import annotations

import numpy as np
import torch

from ..states import LayerStates
from .base import Accumulator, float64_zeros

_EPS = 1e-12


def centered_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine of the centred tokens of each image, ``[B, N, D] -> [B]`` (float64).

    Per image, centre the tokens on their mean, ``u_i = t_i - mean_j t_j``, normalise
    ``v_i = u_i / |u_i|`` and average the cosine over ordered pairs ``i != j``::

        S = (|sum_i v_i|^2 - N) / (N (N - 1))

    which is O(N D) instead of O(N^2 D). Its floor, reached when the centred tokens have equal norms and
    cancel, is ``-1 / (N - 1)``. Tokens equal to their mean (zero after centring) count as zero vectors.
    """
    t = tokens.to(torch.float64)
    n = t.shape[1]
    if n < 2:
        return torch.full((t.shape[0],), float("nan"), dtype=torch.float64, device=t.device)
    u = t - t.mean(dim=1, keepdim=True)
    v = u / u.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    total = v.sum(dim=1).pow(2).sum(dim=-1)
    nonzero = (u.norm(dim=-1) > _EPS).sum(dim=1).to(torch.float64)
    return (total - nonzero) / (n * (n - 1))


class SimilarityAccumulator(Accumulator):
    """Streams :func:`centered_similarity` of the patch tokens at every layer (``-1..L``), averaged over images.

    Columns: ``centered_similarity``.
    """

    name = "similarity"

    def setup(self, states: LayerStates) -> None:
        super().setup(states)
        self.add_state("total", float64_zeros(states.num_layers + 2, device=states.device))
        self.add_state("count", float64_zeros(1, device=states.device))

    def update(self, states: LayerStates) -> None:
        for i, layer in enumerate(states.layers):
            self.total[i] += centered_similarity(states.patch_tokens(layer)).sum()
        self.count += states.batch_size

    def compute(self) -> dict[str, np.ndarray]:
        count = float(self.count.item())
        if count == 0:
            return {"centered_similarity": self.missing_column()}
        return {"centered_similarity": (self.total / count).cpu().numpy()}
