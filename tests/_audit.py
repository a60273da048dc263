"""Which files this process opens: a ``sys.addaudithook`` hook (it sees ``open``, ``os.open``, ``io.open``, PIL,
datasets, ...), recording only while a test asks it to. Audit hooks cannot be removed, so one is installed once."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_OPENED: list[str] = []
_RECORDING = threading.Event()


def _hook(event: str, args: tuple) -> None:
    if _RECORDING.is_set() and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_hook)


@contextmanager
def recording_opens() -> Iterator[list[str]]:
    """The paths opened (by any thread of this process) inside the ``with`` block."""
    _OPENED.clear()
    _RECORDING.set()
    try:
        yield _OPENED
    finally:
        _RECORDING.clear()
