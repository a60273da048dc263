"""Centred token similarity: how alike the patch tokens of one image are, layer by layer."""

from __future__ import annotations

import numpy as np
import torch

from ..states import LayerStates
from ._scratch import Scratch
from .base import Accumulator, MetricFamily, float64_zeros

_EPS = 1e-12


def centered_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine of the centred tokens of each image, ``[B, N, D] -> [B]`` (float64).

    Per image, centre the tokens on their mean, ``u_i = t_i - mean_j t_j``, normalise
    ``v_i = u_i / |u_i|`` and average the cosine over ordered pairs ``i != j``::

        S = (|sum_i v_i|^2 - N) / (N (N - 1))

    which is O(N D) instead of O(N^2 D). Its floor, reached when the centred tokens have equal norms and
    cancel, is ``-1 / (N - 1)``. Tokens equal to their mean (zero after centring) count as zero vectors.
    """
    return _centered_similarity(tokens, None)


def _centered_similarity(tokens: torch.Tensor, scratch: Scratch | None) -> torch.Tensor:
    """:func:`centered_similarity`; with ``scratch``, the float64 copy is centred in place in a reused buffer
    and ``sum_i v_i`` is one batched product ``(1/|u_i|)^T u`` instead of a normalised copy of the tokens."""
    n = tokens.shape[1]
    if n < 2:
        return torch.full((tokens.shape[0],), float("nan"), dtype=torch.float64, device=tokens.device)
    u = tokens.to(torch.float64) if scratch is None else scratch.float64(tokens, "similarity")
    u = u - u.mean(dim=1, keepdim=True) if scratch is None else u.sub_(u.mean(dim=1, keepdim=True))
    norms = torch.linalg.vector_norm(u, dim=-1)
    weights = 1.0 / norms.clamp_min(_EPS)
    total = torch.matmul(weights.unsqueeze(1), u).squeeze(1).pow(2).sum(dim=-1)
    nonzero = (norms > _EPS).sum(dim=1).to(torch.float64)
    return (total - nonzero) / (n * (n - 1))


class SimilarityAccumulator(Accumulator):
    """Streams :func:`centered_similarity` of the patch tokens at every layer (``-1..L``), averaged over images.

    Columns: ``centered_similarity``.
    """

    families = (MetricFamily("similarity", columns=("centered_similarity",)),)
    # states (registered by setup)
    total: torch.Tensor  # [L + 2] summed over images
    count: torch.Tensor  # [1] images

    def __init__(self) -> None:
        super().__init__()
        self._scratch = Scratch()  # reusable CPU buffers, not state

    def setup(self, states: LayerStates) -> None:
        super().setup(states)
        self.add_state("total", float64_zeros(states.num_layers + 2, device=states.device))
        self.add_state("count", float64_zeros(1, device=states.device))

    def update(self, states: LayerStates) -> None:
        for i, layer in enumerate(states.layers):
            self.total[i] += _centered_similarity(states.patch_tokens(layer), self._scratch).sum()
        self.count += states.batch_size

    def compute(self) -> dict[str, np.ndarray]:
        count = float(self.count.item())
        if count == 0:
            return {"centered_similarity": self.missing_column()}
        return {"centered_similarity": (self.total / count).cpu().numpy()}
