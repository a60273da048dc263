"""What one batch looks like once captured: the only thing metric accumulators ever see.

Layer indexing follows SCIENCE.md: ``-1`` is the pre-PE patch embeddings ``z0``, ``0`` the embeddings with
position embeddings (prefix tokens prepended), ``l = 1..L`` the output of block ``l`` (residual stream, before
the final LayerNorm). Metrics never ask which model family produced a batch; they read the token layout.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

SPLITS = ("fit", "val", "test")
FIT, VAL, TEST = 0, 1, 2


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of a model's sequence come from.

    Attributes:
        num_prefix_tokens: tokens before the patches (CLS, DeiT's distillation token, DINOv2 registers).
        cls_index: position of the [CLS] token, or ``None`` for models without one (Swin, mean-pool heads).
        patch_grid: (rows, cols) of the patch grid at the embedding layer.
        patch_size: (height, width) of one patch in pixels.
    """

    num_prefix_tokens: int
    cls_index: int | None
    patch_grid: tuple[int, int]
    patch_size: tuple[int, int]

    @property
    def num_patches(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]


_NO_KEYS = torch.empty(0, dtype=torch.int64)  # LayerStates' default keys: replaced by those of 0..B-1


@dataclass
class LayerStates:
    """One batch of layer states, as produced by :class:`hf_isi.ModelAdapter` (or built by hand).

    Attributes:
        patch_embeddings: ``z0``, the patch embeddings before position embeddings, ``[B, N, D0]``.
        hidden_states: ``L + 1`` tensors ``[B, T_l, D_l]``: entry 0 is the +PE embedding output.
        layout: the token layout.
        attentions: ``L`` softmax attention tensors ``[B * windows, H, T_q, T_k]`` (entry ``l - 1`` belongs to
            layer ``l``), or ``None`` when not captured.
        attention_residuals: ``L`` pairs ``(x, x + a)``: the residual stream entering the attention branch and
            right after it, each ``[B', T', D']``; ``None`` when not captured.
        labels: class labels ``[B]`` (int64) or ``None``.
        keys: per-image 64-bit hash keys ``[B]`` derived from stable example ids; they decide the
            fit/val/test split and the order of bounded test-feature reservoirs (default, or ``None``: the
            keys of the ids ``0..B-1``).
        final_norm: the model's final LayerNorm (for probes on normalised features), if it has one.
        position_embeddings: the absolute position embeddings of the patch positions ``[N, D]`` (prefix rows
            removed), or ``None`` when the model has none.
        split_fractions: fractions of images in the fit and validation splits (the rest is test).
    """

    patch_embeddings: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]
    layout: TokenLayout
    attentions: tuple[torch.Tensor, ...] | None = None
    attention_residuals: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    labels: torch.Tensor | None = None
    keys: torch.Tensor = field(default_factory=lambda: _NO_KEYS)
    final_norm: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    position_embeddings: torch.Tensor | None = field(default=None, repr=False)
    split_fractions: tuple[float, float] = (0.6, 0.2)

    def __post_init__(self) -> None:
        if self.keys is None or self.keys is _NO_KEYS:
            self.keys = example_keys(range(self.batch_size))

    @property
    def batch_size(self) -> int:
        return self.patch_embeddings.shape[0]

    @property
    def num_layers(self) -> int:
        """``L``: the number of blocks (layers ``1..L``)."""
        return len(self.hidden_states) - 1

    @property
    def layers(self) -> range:
        """Every layer index, ``-1`` (pre-PE) to ``L``."""
        return range(-1, self.num_layers + 1)

    @property
    def device(self) -> torch.device:
        return self.patch_embeddings.device

    def tokens(self, layer: int) -> torch.Tensor:
        """All tokens of ``layer`` (``-1``: the pre-PE patch embeddings)."""
        return self.patch_embeddings if layer < 0 else self.hidden_states[layer]

    def patch_tokens(self, layer: int) -> torch.Tensor:
        """The patch tokens of ``layer``, prefix tokens removed: ``[B, N_l, D_l]``."""
        return self.patch_embeddings if layer < 0 else self.hidden_states[layer][:, self.layout.num_prefix_tokens :]

    def cls_token(self, layer: int) -> torch.Tensor | None:
        """The [CLS] token ``[B, D]``, or ``None`` where there is none (pre-PE layer, CLS-free models)."""
        if layer < 0 or self.layout.cls_index is None:
            return None
        return self.hidden_states[layer][:, self.layout.cls_index]

    def mean_pool(self, layer: int) -> torch.Tensor:
        """The mean of the patch tokens ``[B, D]``."""
        return self.patch_tokens(layer).mean(dim=1)

    def head(self, count: int) -> LayerStates:
        """The first ``count`` images of the batch (attention rows per image kept together for windowed models)."""
        b = self.batch_size
        if count >= b:
            return self

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t[: count * (t.shape[0] // b)]

        return replace(
            self,
            patch_embeddings=self.patch_embeddings[:count],
            hidden_states=tuple(h[:count] for h in self.hidden_states),
            attentions=None if self.attentions is None else tuple(rows(a) for a in self.attentions),
            attention_residuals=None if self.attention_residuals is None
            else tuple((rows(x), rows(y)) for x, y in self.attention_residuals),
            labels=None if self.labels is None else self.labels[:count],
            keys=self.keys[:count],
        )

    @property
    def split(self) -> torch.Tensor:
        """Per-image split index (0 fit, 1 val, 2 test) from the hash keys."""
        return split_of(self.keys, self.split_fractions).to(self.device)


def patch_token_sequence(patch_embeddings: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """``z0`` as tokens ``[B, N, D0]``, and the patch grid when the embedder returned a conv map ``[B, D0, h, w]``
    (CLIP's plain ``Conv2d``), which is flattened row by row."""
    if patch_embeddings.ndim == 4:
        grid = (int(patch_embeddings.shape[2]), int(patch_embeddings.shape[3]))
        return patch_embeddings.flatten(2).transpose(1, 2), grid
    return patch_embeddings, None


def layer_states_from_outputs(
    patch_embeddings: torch.Tensor,
    hidden_states: Sequence[torch.Tensor],
    *,
    num_prefix_tokens: int | None = None,
    patch_grid: tuple[int, int] | None = None,
    patch_size: tuple[int, int] = (1, 1),
    attentions: Sequence[torch.Tensor] | None = None,
    attention_residuals: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    labels: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    position_embeddings: torch.Tensor | None = None,
    final_norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
    split_fractions: tuple[float, float] = (0.6, 0.2),
) -> LayerStates:
    """One batch of :class:`LayerStates` from a model's raw outputs (views, no copies).

    Args:
        patch_embeddings: ``z0`` as the patch embedder returns it: tokens ``[B, N, D0]`` or a conv map
            ``[B, D0, h, w]`` (see :func:`patch_token_sequence`).
        hidden_states: ``output_hidden_states``: ``L + 1`` tensors ``[B, T_l, D_l]``.
        num_prefix_tokens: default ``T_0 - N``; when given it must agree.
        patch_grid: default: the conv map's grid, else a square grid if ``N`` is a square, else ``(1, N)``;
            when given it must hold the ``N`` patches.
        patch_size: pixels per patch (only scales attention distances).
        position_embeddings: an absolute position table ``[..., D]``; its last ``N`` rows are the patches'.
        The rest: as in :class:`LayerStates`. The [CLS] token is the first prefix token, if any.
    """
    z0, conv_grid = patch_token_sequence(patch_embeddings)
    n, t0 = z0.shape[1], hidden_states[0].shape[1]
    if num_prefix_tokens is None:
        num_prefix_tokens = t0 - n
    if num_prefix_tokens < 0 or num_prefix_tokens != t0 - n:
        raise ValueError(f"hidden_states[0] has {t0} tokens and patch_embeddings {n} patches: num_prefix_tokens "
                         f"must be {t0 - n}" + (" (more patches than tokens?)" if t0 < n else ""))
    grid = patch_grid or conv_grid or default_patch_grid(n)
    grid = (int(grid[0]), int(grid[1]))
    if grid[0] * grid[1] != n:
        raise ValueError(f"patch_grid {grid} does not hold the {n} patches")
    pe = None
    if position_embeddings is not None:
        pe = position_embeddings.detach().reshape(-1, position_embeddings.shape[-1])[-n:]
    layout = TokenLayout(num_prefix_tokens, 0 if num_prefix_tokens > 0 else None, grid,
                         (int(patch_size[0]), int(patch_size[1])))
    return LayerStates(
        patch_embeddings=z0,
        hidden_states=tuple(hidden_states),
        layout=layout,
        attentions=None if attentions is None else tuple(attentions),
        attention_residuals=None if attention_residuals is None else tuple(attention_residuals),
        labels=labels,
        keys=_NO_KEYS if keys is None else keys,
        final_norm=final_norm,
        position_embeddings=pe,
        split_fractions=split_fractions,
    )


def default_patch_grid(num_patches: int) -> tuple[int, int]:
    """A square grid when ``num_patches`` is a square, else one row."""
    side = math.isqrt(num_patches)
    return (side, side) if side * side == num_patches else (1, num_patches)


_KEY_SCALE = float(2**63)


def example_keys(ids: Sequence[object] | range, seed: int = 0) -> torch.Tensor:
    """Stable 63-bit keys from example ids: the same id gets the same key on any machine or process count."""
    keys = [
        int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little") >> 1
        for i in ids
    ]
    return torch.tensor(keys, dtype=torch.int64)


def split_of(keys: torch.Tensor, fractions: tuple[float, float] = (0.6, 0.2)) -> torch.Tensor:
    """Split index per key: ``u = key / 2**63`` in [0, 1); fit if ``u < f_fit``, val if ``u < f_fit + f_val``."""
    u = keys.double().cpu() / _KEY_SCALE
    fit, val = fractions
    return torch.where(u < fit, FIT, torch.where(u < fit + val, VAL, TEST)).to(torch.int64)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite (non-float tensors always are).

    A finite sum proves it, since NaN and inf propagate through a sum: one vectorised reduction, about 38x
    cheaper than ``isfinite(t).all()`` on CPU (60 us vs 2.3 ms for a ViT-S batch of 16). Only a non-finite sum,
    which huge finite values can also overflow to (fp16 above 65504), pays for the exact check.
    """
    if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
