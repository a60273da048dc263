"""Shared helpers: dtype names, one-line errors, atomic writes."""

from __future__ import annotations

import os

import pytest
import torch

from hf_isi.utils import DTYPES, first_line, resolve_dtype, write_atomically


def test_resolve_dtype():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float32") is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    assert set(DTYPES.values()) == {torch.float32, torch.bfloat16, torch.float16}
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")


def test_first_line():
    assert first_line(ValueError("bad input\n  Traceback ...")) == "bad input"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("x" * 20), limit=10) == "x" * 7 + "..."
    assert first_line(ValueError("short"), limit=10) == "short"


def test_write_atomically(tmp_path):
    path = tmp_path / "out.json"
    write_atomically(path, "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    write_atomically(str(path), b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert os.listdir(tmp_path) == ["out.json"]  # no temporary left behind
    with pytest.raises(TypeError):
        write_atomically(path, 3)  # type: ignore[arg-type]
    assert path.read_bytes() == b"\x00bytes" and os.listdir(tmp_path) == ["out.json"]
