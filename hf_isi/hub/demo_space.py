"""The demo Space ``<ns>/hf-isi-demo``: ``spaces_app/`` (app.py, README.md, requirements.txt, examples/) plus a
copy of the hf_isi package with its reference models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .checks import check_space
from .folders import (
    DEFAULT_SPACE_NAME,
    HubFolder,
    PublishError,
    RepoKind,
    Target,
    check_name,
    copy_package,
    default_source,
    fresh_dir,
    package_dir,
    repo_root,
)

#: files of ``spaces_app/`` that stay behind (a development tool that regenerates examples/)
SPACE_EXCLUDE = ("make_examples.py",)
SPACE_FILES = ("app.py", "README.md", "requirements.txt")


def targets(out: Path, options: Any) -> list[Target]:
    def build() -> HubFolder:
        space_dir = options.space_dir if options.space_dir is not None else default_source(repo_root(), "spaces_app")
        return build_demo_space(out, space_dir=space_dir, name=options.space_name)

    return [Target(options.space_name, out / "spaces" / options.space_name, build)]


def build_demo_space(out_dir: str | os.PathLike, *, space_dir: str | os.PathLike, name: str = DEFAULT_SPACE_NAME,
                     package: str | os.PathLike | None = None) -> HubFolder:
    """The demo Space: ``space_dir`` (``spaces_app/``: app.py, README.md, requirements.txt, examples/) without
    :data:`SPACE_EXCLUDE`, plus a copy of the ``hf_isi`` package with its reference models."""
    check_name(name)
    space_dir = Path(space_dir)
    missing = [n for n in SPACE_FILES if not (space_dir / n).is_file()]
    if missing:
        raise PublishError(f"{space_dir} lacks {', '.join(missing)}: the demo Space needs {', '.join(SPACE_FILES)}")
    if (space_dir / "hf_isi").exists():
        raise PublishError(f"{space_dir} already holds an hf_isi/ folder; the package is copied in at build time")
    folder = HubFolder("space", name, fresh_dir(Path(out_dir), "spaces", name), sources=[space_dir])
    shutil.copytree(space_dir, folder.path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(*SPACE_EXCLUDE, "__pycache__", "*.pyc", ".*"))
    copy_package(Path(package) if package else package_dir(), folder.path / "hf_isi")
    return folder


def validate_demo_space(folder: HubFolder) -> None:
    """The demo Space: its card parses (sdk gradio at the installed gradio version, app_file present),
    requirements.txt is there, and ``app.py`` imports in a fresh Python run from the built folder that cannot
    see the checkout or an installed hf_isi (so it must find the copied ``hf_isi/``)."""
    if not any((folder.path / "examples").glob("*")):
        folder.warnings.append("no examples/ in the Space")
    out = check_space(folder, "space")
    if out is not None:
        folder.checks.append(f"app.py imports in a fresh Python run from the folder, without the checkout on "
                             f"sys.path (hf_isi from {out['hf_isi']}; Blocks: {out['blocks']}; built-in models: "
                             f"{', '.join(out['models']) or 'none'})")
        if not out["models"]:
            folder.warnings.append("no trained reference model in the copied package: the Space offers only Hub ids")


KIND = RepoKind("space", "space", "the demo Space", targets, validate_demo_space)
