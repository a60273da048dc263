"""PE dominance: how large the absolute position embeddings are next to the patch embeddings they are added to."""

from __future__ import annotations

import numpy as np
import torch

from ..states import LayerStates
from .base import Accumulator, MetricFamily, float64_zeros


class PEDominanceAccumulator(Accumulator):
    """``pe_dominance = mean_i |PE_i| / E|z0_i|``: the mean norm of the patch-position embeddings over the mean
    norm of the pre-PE patch embeddings (over images and patches). A large ratio means adding PE swamps the
    content, which goes with a strong Cliff. Missing for models without absolute position embeddings.

    Model-level values (``scalars()``): ``pe_dominance``, ``pe_norm``, ``patch_embedding_norm``.
    """

    families = (MetricFamily("pe"),)  # model-level values only
    # states (registered by setup), each [1]
    pe_norm: torch.Tensor
    z0_norm_sum: torch.Tensor
    z0_count: torch.Tensor

    def setup(self, states: LayerStates) -> None:
        super().setup(states)
        pe = states.position_embeddings
        norm = torch.tensor([float("nan")] if pe is None else [pe.double().norm(dim=-1).mean().item()])
        self.add_state("pe_norm", norm.to(torch.float64), "fixed")
        self.add_state("z0_norm_sum", float64_zeros(1, device=states.device))
        self.add_state("z0_count", float64_zeros(1, device=states.device))

    def update(self, states: LayerStates) -> None:
        norms = states.patch_embeddings.to(torch.float64).norm(dim=-1)
        self.z0_norm_sum += norms.sum()
        self.z0_count += norms.numel()

    def compute(self) -> dict[str, np.ndarray]:
        return {}

    def scalars(self) -> dict[str, float | None]:
        count = float(self.z0_count.item())
        z0 = float(self.z0_norm_sum.item()) / count if count else float("nan")
        pe = float(self.pe_norm.item())
        ratio = pe / z0 if count and np.isfinite(pe) and z0 > 0 else float("nan")
        clean = lambda v: None if not np.isfinite(v) else v  # noqa: E731
        return {"pe_dominance": clean(ratio), "pe_norm": clean(pe), "patch_embedding_norm": clean(z0)}
