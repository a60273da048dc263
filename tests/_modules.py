"""Import a file that is not in a package (scripts/, spaces_app/, isi/) as a module, for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_module(name: str, path: Path) -> ModuleType:
    """Execute ``path`` as module ``name`` (registered in ``sys.modules`` first, because dataclasses look their
    module up while the file executes)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
