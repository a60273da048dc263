"""Small helpers shared across hf_isi: dtype names, one-line error messages, atomic file writes."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import torch

#: dtype names accepted on the command line and in the API (long and short spellings)
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A ``torch.dtype`` from a name of :data:`DTYPES` (or a dtype, returned as is)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its class name if the message is empty), cut to ``limit``
    characters with an ellipsis: what a one-line error report shows, never a traceback."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if limit is not None and len(line) > limit:
        line = line[: max(0, limit - 3)] + "..."
    return line


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` so that readers see the old file or the new one, never a part:
    a fresh temporary file in the same folder (created with the usual umask-based permissions), flushed to
    disk, then renamed over ``path``."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
