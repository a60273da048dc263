"""Reusable float64 scratch buffers for the metrics' per-batch temporaries.

Every batch, the accumulators convert token tensors to float64 (``[B, T, D]``, megabytes each, dozens per
batch). On CPU a fresh buffer of that size comes from ``mmap`` and is page-faulted and zeroed on first touch,
which costs about as much as the arithmetic done on it; copying into a buffer kept from the previous batch
does not. On GPUs PyTorch's caching allocator already reuses memory, so there the plain conversion is used.

A scratch value is only valid until the next request for the same key: callers use it immediately and keep
only results computed from it, never the buffer itself. Not part of any accumulator's state.
"""

from __future__ import annotations

import torch


class Scratch:
    """A few named, growing float64 buffers (one per key)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def float64(self, t: torch.Tensor, key: str) -> torch.Tensor:
        """A float64 copy of ``t`` that the caller may modify in place: in the buffer ``key`` on CPU (overwritten
        by the next call with ``key``), a fresh tensor elsewhere."""
        if t.device.type != "cpu":
            return t.to(torch.float64, copy=True)
        out = self.empty(t.shape, key)
        out.copy_(t)
        return out

    def empty(self, shape: tuple[int, ...] | torch.Size, key: str) -> torch.Tensor:
        """An uninitialised contiguous CPU float64 tensor of ``shape`` in the buffer ``key``."""
        numel = 1
        for s in shape:
            numel *= int(s)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(max(numel, 1), dtype=torch.float64)
        return buf[:numel].view(tuple(shape))
