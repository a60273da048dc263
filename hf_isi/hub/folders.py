"""What every repo kind shares: the built folder (:class:`HubFolder`), the errors, the kind registry's entry
type, names, the output folder, file listing and hashing, and the copy of the hf_isi package."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATASET_NAME = "hf-isi-results"
#: the metric Space must be called like its module file: ``evaluate.load("<ns>/isi")`` fetches ``isi.py``
METRIC_SPACE_NAME = "isi"
DEFAULT_SPACE_NAME = "hf-isi-demo"
#: never uploaded, even if something put them into a built folder (on top of huggingface_hub's own defaults)
UPLOAD_IGNORE_PATTERNS = ["**/__pycache__/**", "__pycache__/**", "*.pyc", "**/*.pyc", ".DS_Store"]
#: the marker that says ``out_dir`` was made by this package (so rebuilding may replace folders in it)
OUT_DIR_MARKER = ".hf_isi_publish"
_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", ".git"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class PublishError(Exception):
    """An input that cannot be published, or a refusal; the message is one line meant for the user."""


@dataclass(frozen=True)
class Target:
    """One folder a kind will build: its repo name, where it goes, and the call that builds it."""

    name: str
    path: Path
    build: Callable[[], HubFolder]


@dataclass(frozen=True)
class RepoKind:
    """One kind of repository hf_isi publishes: an entry of :data:`hf_isi.hub.kinds.REPO_KINDS`.

    Attributes:
        name: the kind as the command line says it (``--what``).
        repo_type: the Hub repo type (``dataset``, ``model``, ``space``).
        words: what it is, for commit messages.
        targets: ``targets(out_dir, options)``: the folders to build (``options``: :class:`BuildOptions`).
        validate: checks a built folder offline, recording into its ``errors`` / ``checks`` / ``warnings``.
    """

    name: str
    repo_type: str
    words: str
    targets: Callable[[Path, Any], list[Target]]
    validate: Callable[[HubFolder], None]

    @property
    def space_sdk(self) -> str | None:
        return "gradio" if self.repo_type == "space" else None


@dataclass
class HubFolder:
    """One Hub-ready folder: what it will become on the Hub and what validation found.

    Attributes:
        kind: ``"dataset"``, ``"metric"``, ``"space"`` or ``"models"`` (a key of the kind registry).
        name: the repo name, without the namespace.
        path: the built folder (it exists unless the build itself failed).
        errors: why the folder must not be uploaded (build or validation failures); empty when it may be.
        checks: the validation steps that passed, in words.
        warnings: things worth knowing that do not block the upload.
        sources: the inputs it was built from (results folders, model folder, ...).
        meta: what validation compares against (the dataset configs written, ...).
        manifest: ``{relative path: sha256}`` of the folder as validated; the upload refuses a folder that
            changed since.
    """

    kind: str
    name: str
    path: Path
    errors: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, str] | None = None

    @property
    def spec(self) -> RepoKind:
        from .kinds import REPO_KINDS  # the registry imports every kind module, which import this one

        return REPO_KINDS[self.kind]

    @property
    def repo_type(self) -> str:
        return self.spec.repo_type

    @property
    def space_sdk(self) -> str | None:
        return self.spec.space_sdk

    @property
    def validated(self) -> bool:
        return self.manifest is not None

    @property
    def ok(self) -> bool:
        """Built and validated without errors: the only state in which it may be uploaded."""
        return self.validated and not self.errors

    def repo_id(self, namespace: str | None) -> str:
        return f"{namespace or '<namespace>'}/{self.name}"

    def files(self) -> list[tuple[str, int]]:
        """``(relative path, size in bytes)`` of every file ``HfApi.upload_folder`` will send, sorted (the
        same ignore patterns, applied by huggingface_hub's own ``filter_repo_objects``)."""
        from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
        from huggingface_hub.utils import filter_repo_objects

        every = sorted(p.relative_to(self.path).as_posix() for p in self.path.glob("**/*") if p.is_file())
        kept = filter_repo_objects(every, ignore_patterns=UPLOAD_IGNORE_PATTERNS + list(DEFAULT_IGNORE_PATTERNS))
        return [(rel, (self.path / rel).stat().st_size) for rel in kept]


# ---------------------------------------------------------------------------------------------------------
# locations and names
# ---------------------------------------------------------------------------------------------------------
def package_dir() -> Path:
    """The ``hf_isi`` package folder that is copied into the Spaces (the importable one)."""
    return Path(__file__).resolve().parents[1]


def repo_root() -> Path | None:
    """The hf_isi checkout this package was installed from (it holds ``isi/`` and ``spaces_app/``), if any."""
    root = package_dir().parent
    return root if (root / "isi").is_dir() and (root / "spaces_app").is_dir() else None


def default_source(root: Path | None, name: str) -> Path:
    """``<checkout>/<name>`` (``isi``, ``spaces_app``, ``model_cards``), or a clear refusal outside a checkout."""
    if root is None:
        raise PublishError(f"cannot find {name}/: run from an hf_isi checkout or pass its folder explicitly")
    return root / name


def check_name(name: str | None, what: str = "repo name") -> None:
    if not name or not _NAME.match(name) or ".." in name or "--" in name or name.endswith(".git"):
        raise PublishError(f"invalid {what} {name!r}: letters, digits, '-', '_' and '.', at most 96 characters")


def model_name(model: str | os.PathLike) -> str:
    """The repo name of a model: a reference model's name, or a folder's name."""
    name = Path(str(model)).name
    if not _NAME.match(name or ""):
        raise PublishError(f"cannot make a repo name from model {str(model)!r}")
    return name


def version() -> str:
    from .. import __version__

    return __version__


# ---------------------------------------------------------------------------------------------------------
# the output folder
# ---------------------------------------------------------------------------------------------------------
def claim_out_dir(out: Path) -> None:
    """Make ``out`` ours (the marker file); a non-empty folder that is not ours is refused, never touched."""
    if out.exists() and not out.is_dir():
        raise PublishError(f"out_dir {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / OUT_DIR_MARKER).is_file():
        raise PublishError(f"out_dir {out} is not empty and was not made by the publish script; choose another")
    out.mkdir(parents=True, exist_ok=True)
    (out / OUT_DIR_MARKER).write_text("Hub-ready folders built by hf_isi's scripts/publish.py; safe to delete.\n")


def fresh_dir(out: Path, *parts: str) -> Path:
    """An empty ``out/<parts...>`` (an older build there is removed: ``out`` is ours, see the marker);
    returned absolute."""
    if not (out / OUT_DIR_MARKER).is_file():
        claim_out_dir(out)
    path = out.joinpath(*parts).resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------
def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of the files below ``root`` (sorted), without caches and ``.git``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        out += [Path(dirpath, n).relative_to(root).as_posix() for n in filenames if not n.endswith(_SKIP_SUFFIXES)]
    return sorted(out)


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks (huggingface_hub's ``sha_fileobj``, as its uploads hash files)."""
    from huggingface_hub.utils.sha import sha_fileobj

    with open(path, "rb") as fh:
        return sha_fileobj(fh).hex()


def hash_folder(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``root`` (caches included: they must not appear)."""
    return {Path(dirpath, n).relative_to(root).as_posix(): sha256_file(Path(dirpath, n))
            for dirpath, _, filenames in os.walk(root) for n in filenames}


def copy_package(source: Path, dest: Path) -> None:
    """Copy the hf_isi package (with its reference models) to ``dest``, without caches and build leftovers."""
    if not (source / "__init__.py").is_file():
        raise PublishError(f"{source} is not the hf_isi package")
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*", "*.egg-info"))


def copy_files(source: Path, dest: Path, names: Sequence[str]) -> None:
    for rel in names:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, dest / rel)
