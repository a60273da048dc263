"""The metric Space ``<ns>/isi``: the evaluate module's shim ``isi.py``, ``app.py``, ``requirements.txt``, the
metric card and a copy of the hf_isi package (the shim and the app import it).

The metric card has one source, the packaged ``hf_isi/evaluate_module/isi/README.md`` (what
``evaluate.load(hf_isi.ISI_METRIC_PATH)`` and an installed hf_isi ship); the Space's ``README.md`` is copied
from it, and the checkout's ``isi/README.md`` is a generated copy for ``evaluate.load("isi")`` from the
repository root: :func:`sync_metric_card` writes it (``python -m hf_isi.hub.metric_space --sync``) and
``--check`` says whether it is current.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checks import check_space
from .folders import (
    METRIC_SPACE_NAME,
    HubFolder,
    PublishError,
    RepoKind,
    Target,
    copy_package,
    default_source,
    fresh_dir,
    package_dir,
    repo_root,
)

#: the files of the Space taken from the checkout's ``isi/`` (the card comes from the package)
ISI_FILES = ("isi.py", "app.py", "requirements.txt")


def metric_card(package: Path | None = None) -> Path:
    """The metric card's one source: ``<package>/evaluate_module/isi/README.md``."""
    return (package or package_dir()) / "evaluate_module" / "isi" / "README.md"


def sync_metric_card(isi_dir: str | os.PathLike, *, check: bool = False) -> bool:
    """Make ``<isi_dir>/README.md`` a copy of the packaged metric card; with ``check``, only say whether it is
    one. Returns whether it was (already) current."""
    target, source = Path(isi_dir) / "README.md", metric_card()
    current = target.is_file() and target.read_bytes() == source.read_bytes()
    if not current and not check:
        shutil.copyfile(source, target)
    return current


def targets(out: Path, options: Any) -> list[Target]:
    def build() -> HubFolder:
        isi_dir = options.isi_dir if options.isi_dir is not None else default_source(repo_root(), "isi")
        return build_metric_space(out, isi_dir=isi_dir)

    return [Target(METRIC_SPACE_NAME, out / "spaces" / METRIC_SPACE_NAME, build)]


def build_metric_space(out_dir: str | os.PathLike, *, isi_dir: str | os.PathLike,
                       package: str | os.PathLike | None = None) -> HubFolder:
    """The metric Space: :data:`ISI_FILES` from ``isi_dir``, ``README.md`` from the packaged metric card, and a
    copy of the ``hf_isi`` package (``package``, default the importable one)."""
    isi_dir = Path(isi_dir)
    pkg = Path(package) if package else package_dir()
    missing = [n for n in ISI_FILES if not (isi_dir / n).is_file()]
    if missing:
        raise PublishError(f"{isi_dir} lacks {', '.join(missing)}: the metric Space needs {', '.join(ISI_FILES)}")
    if not metric_card(pkg).is_file():
        raise PublishError(f"{metric_card(pkg)} is missing: it is the metric card of the Space")
    folder = HubFolder("metric", METRIC_SPACE_NAME, fresh_dir(Path(out_dir), "spaces", METRIC_SPACE_NAME),
                       sources=[isi_dir, metric_card(pkg)])
    for name in ISI_FILES:
        shutil.copy2(isi_dir / name, folder.path / name)
    shutil.copy2(metric_card(pkg), folder.path / "README.md")
    stale = isi_dir / "README.md"
    if stale.is_file() and stale.read_bytes() != metric_card(pkg).read_bytes():
        folder.warnings.append(f"{stale} differs from the packaged metric card (the Space gets the packaged one); "
                               "run python -m hf_isi.hub.metric_space --sync")
    copy_package(pkg, folder.path / "hf_isi")
    return folder


def validate_metric_space(folder: HubFolder) -> None:
    """The metric Space: its card parses as a Gradio Space, and in a fresh Python that sees only the folder
    (its own ``hf_isi/`` copy, not the checkout or an installed hf_isi) ``app.py`` imports without launching
    and ``evaluate.load(folder)`` loads the module by path, offline, and computes on random inputs."""
    if folder.path.name != "isi" or not (folder.path / "isi.py").is_file():
        folder.errors.append("the metric folder must be called isi and hold isi.py (evaluate.load(<folder>) "
                             "loads <folder>/<folder name>.py)")
    out = check_space(folder, "metric", must_list=("evaluate",))
    if out is not None:
        folder.checks.append(f"app.py imports in a fresh Python with only the folder on sys.path (hf_isi from "
                             f"{out['hf_isi']}; Blocks: {out['blocks']})")
        folder.checks.append(f"evaluate.load(folder) loads {out['module']!r} by path offline and computes "
                             f"(isi_mean on random inputs: {out['isi_mean']:.3f})")
        if not out["models"]:
            folder.warnings.append("no trained reference model in the copied package: the app offers none")


KIND = RepoKind("metric", "space", "the isi metric Space", targets, validate_metric_space)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_isi.hub.metric_space",
                                     description="Keep <checkout>/isi/README.md a copy of the packaged metric card.")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if the copy is out of date")
    parser.add_argument("--isi_dir", default=None, help="default: <checkout>/isi")
    args = parser.parse_args(argv)
    try:
        isi_dir = Path(args.isi_dir) if args.isi_dir else default_source(repo_root(), "isi")
    except PublishError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    current = sync_metric_card(isi_dir, check=args.check)
    print(f"{isi_dir / 'README.md'}: " + ("up to date" if current else "OUT OF DATE" if args.check else "written"))
    return 1 if args.check and not current else 0


if __name__ == "__main__":
    sys.exit(main())
