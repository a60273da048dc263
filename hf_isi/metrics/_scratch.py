"""Compute precision of the metrics' per-batch work, and reusable scratch buffers for its temporaries.

Precision (``AnalysisConfig.precision``):

* ``"float64"``: every per-batch product and sum in float64 (the reference arithmetic);
* ``"mixed"``: the two costly per-batch kernels, the ISI's Gram products and the attention metrics' ``x ln x``
  sweeps, run in float32; every running sum across batches (and across processes) stays float64. The rounding
  therefore does not grow with the number of images: it is bounded by one Gram buffer (<= 1024 images) or one
  attention row. The captured states of a float32 model carry float32 precision to begin with.

Scratch buffers: every batch, the accumulators convert token tensors to the compute dtype (``[B, T, D]``,
megabytes each, dozens per batch). On CPU a fresh buffer of that size comes from ``mmap`` and is page-faulted
and zeroed on first touch, which costs about as much as the arithmetic done on it; copying into a buffer kept
from the previous batch does not. On GPUs PyTorch's caching allocator already reuses memory, so there the plain
conversion is used. A scratch value is only valid until the next request for the same key: callers use it
immediately and keep only results computed from it, never the buffer itself. Not part of any accumulator's state.
"""

from __future__ import annotations

import numpy as np
import torch

PRECISIONS = ("mixed", "float64")


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype of the costly per-batch kernels under ``precision`` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return torch.float32 if precision == "mixed" else torch.float64


class Scratch:
    """A few named, growing CPU buffers (one per key and dtype)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def float64(self, t: torch.Tensor, key: str) -> torch.Tensor:
        """A float64 copy of ``t`` that the caller may modify in place (see :meth:`cast`)."""
        return self.cast(t, key, torch.float64)

    def cast(self, t: torch.Tensor, key: str, dtype: torch.dtype) -> torch.Tensor:
        """A ``dtype`` copy of ``t`` that the caller may modify in place: in the buffer ``key`` on CPU
        (overwritten by the next call with ``key``), a fresh tensor elsewhere."""
        if t.device.type != "cpu":
            return t.to(dtype, copy=True)
        out = self.empty(t.shape, key, dtype)
        out.copy_(t)
        return out

    def empty(self, shape: tuple[int, ...] | torch.Size, key: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """An uninitialised contiguous CPU tensor of ``shape`` and ``dtype`` in the buffer ``key``."""
        numel = 1
        for s in shape:
            numel *= int(s)
        buf = self._buffers.get((key, dtype))
        if buf is None or buf.numel() < numel:
            buf = self._buffers[(key, dtype)] = torch.empty(max(numel, 1), dtype=dtype)
        return buf[:numel].view(tuple(shape))


def add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scratch: Scratch, key: str) -> None:
    """``out += a @ b``, the product in ``a``'s dtype (float32 under mixed precision), the sum in ``out``'s.

    On CPU the float32 product goes through a scratch buffer and is added with numpy, whose mixed-dtype add is
    about 5x faster than torch's (8 vs 40 ms for a 3136^2 block, one thread).
    """
    if a.dtype == out.dtype:
        out.addmm_(a, b)
        return
    if out.device.type != "cpu":
        out.add_(a @ b)
        return
    prod = torch.mm(a, b, out=scratch.empty((a.shape[0], b.shape[1]), key, a.dtype))
    target = out.numpy()
    np.add(target, prod.numpy(), out=target)
