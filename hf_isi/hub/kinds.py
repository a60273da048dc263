"""The registry of repo kinds and :func:`build_all`, which builds (and validates) the folders of the kinds
asked for. Adding a kind is one module with ``targets`` / ``validate`` and its ``KIND``, plus one line here."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..utils import first_line
from . import dataset, demo_space, metric_space, models
from .checks import validate_folder
from .folders import (
    DEFAULT_DATASET_NAME,
    DEFAULT_SPACE_NAME,
    HubFolder,
    PublishError,
    RepoKind,
    check_name,
    claim_out_dir,
)

logger = logging.getLogger(__name__)

#: every kind of repo, in upload order
REPO_KINDS: dict[str, RepoKind] = {k.name: k for k in (dataset.KIND, models.KIND, metric_space.KIND, demo_space.KIND)}
KINDS: tuple[str, ...] = tuple(REPO_KINDS)
#: Hub repo type of each kind
REPO_TYPES: dict[str, str] = {name: kind.repo_type for name, kind in REPO_KINDS.items()}


@dataclass(frozen=True)
class BuildOptions:
    """What the kinds' ``targets`` read (the arguments of :func:`build_all`)."""

    results_dirs: Sequence[str | os.PathLike] = ()
    models: Sequence[str | os.PathLike] | None = None
    model_cards_dir: str | os.PathLike | None = None
    isi_dir: str | os.PathLike | None = None
    space_dir: str | os.PathLike | None = None
    dataset_name: str = DEFAULT_DATASET_NAME
    space_name: str = DEFAULT_SPACE_NAME
    namespace: str | None = None


def build_all(
    out_dir: str | os.PathLike,
    *,
    what: Iterable[str] = KINDS,
    results_dirs: Sequence[str | os.PathLike] = (),
    models: Sequence[str | os.PathLike] | None = None,
    model_cards_dir: str | os.PathLike | None = None,
    isi_dir: str | os.PathLike | None = None,
    space_dir: str | os.PathLike | None = None,
    dataset_name: str = DEFAULT_DATASET_NAME,
    space_name: str = DEFAULT_SPACE_NAME,
    namespace: str | None = None,
    validate: bool = True,
) -> list[HubFolder]:
    """Build (and by default validate) the Hub-ready folders of ``what`` under ``out_dir``.

    A build that fails gives a :class:`HubFolder` with the reason in ``errors`` (it is never uploaded); the
    others are still built, so one run shows every problem.

    Args:
        out_dir: where the folders go (``datasets/``, ``models/``, ``spaces/`` below it). Rebuilding replaces
            the folders it made before; a non-empty ``out_dir`` not made by this package is refused.
        what: any of :data:`KINDS`.
        results_dirs: results folders of ``scripts/probe.py`` (for ``dataset``).
        models: reference model names or ``save_pretrained`` folders (default: every reference model).
        model_cards_dir: where ``<name>.md`` model cards are (default: ``<repo>/model_cards``).
        isi_dir: the evaluate module folder of the checkout (default: ``<repo>/isi``).
        space_dir: the demo Space sources (default: ``<repo>/spaces_app``).
        namespace: only used in the usage examples written into the dataset card.
    """
    kinds = _check_what(what)
    for name in (dataset_name, space_name):
        check_name(name)
    if namespace is not None:
        check_name(namespace, what="namespace")
    out = Path(out_dir)
    claim_out_dir(out)
    options = BuildOptions(results_dirs, models, model_cards_dir, isi_dir, space_dir, dataset_name, space_name,
                           namespace)
    folders: list[HubFolder] = []
    for kind in kinds:
        for target in kind.targets(out, options):
            if target.path.is_dir():  # a folder from an earlier build must not stand in for one that fails now
                shutil.rmtree(target.path)
            try:
                folder = target.build()
            except PublishError as err:
                folder = HubFolder(kind.name, target.name, target.path, errors=[str(err)])
            except Exception as err:
                logger.debug("building %s failed", target.name, exc_info=True)
                folder = HubFolder(kind.name, target.name, target.path,
                                   errors=[f"building failed: {type(err).__name__}: {first_line(err, 300)}"])
            folders.append(folder)
    repos = [(f.repo_type, f.name) for f in folders]
    for repo in {r for r in repos if repos.count(r) > 1}:
        for f in folders:
            if (f.repo_type, f.name) == repo:
                f.errors.append(f"two {repo[0]} repos would be called {repo[1]!r}")
    if validate:
        for folder in folders:
            validate_folder(folder)
    return folders


def _check_what(what: Iterable[str]) -> list[RepoKind]:
    asked = list(dict.fromkeys("models" if w == "model" else w for w in what))
    unknown = [w for w in asked if w not in REPO_KINDS]
    if unknown or not asked:
        raise PublishError(f"unknown --what {', '.join(unknown) or '(none)'}; choose from {', '.join(KINDS)}")
    return [kind for name, kind in REPO_KINDS.items() if name in asked]
