"""Offline validation of built folders: the dispatcher (:func:`validate_folder`) and the checks several kinds
share (the Space card, requirements.txt, the copied package, the import check in a fresh Python)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from ..utils import first_line, library_versions
from . import _isolation
from .folders import HubFolder, hash_folder, list_files, package_dir, repo_root

logger = logging.getLogger(__name__)

#: a complete reference model folder inside the copied package
REFERENCE_MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
SUBPROCESS_TIMEOUT_S = 600
#: what the fresh Python of :func:`run_isolated` must not inherit
_DROPPED_ENV = ("PYTHONPATH", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "PYTHONSTARTUP", "SPACE_ID")


def validate_folder(folder: HubFolder) -> HubFolder:
    """Validate a built folder offline with its kind's checks (in place: ``errors``, ``checks``, ``warnings``,
    ``manifest``).

    The folder's content is hashed before and after; validation that changes the folder is itself an error.
    """
    if not folder.path.is_dir():
        if not folder.errors:
            folder.errors.append(f"{folder.path} was not built")
        return folder
    before = hash_folder(folder.path)
    try:
        folder.spec.validate(folder)
    except Exception as err:
        logger.debug("validating %s failed", folder.path, exc_info=True)
        folder.errors.append(f"validation crashed: {type(err).__name__}: {first_line(err, 300)}")
    after = hash_folder(folder.path)
    if after != before:
        changed = sorted({p for p, _ in set(after.items()) ^ set(before.items())})
        folder.errors.append(f"validation changed the folder ({', '.join(changed[:5])})")
    folder.manifest = after
    if not after:
        folder.errors.append("the folder is empty")
    return folder


def check_space_card(folder: HubFolder) -> None:
    """``SpaceCard.load(README.md)``: sdk gradio at the installed gradio's version, ``app_file`` present."""
    from huggingface_hub import SpaceCard

    readme = folder.path / "README.md"
    if not readme.is_file():
        folder.errors.append("no README.md (the Space card)")
        return
    data = SpaceCard.load(readme).data
    problems = []
    if getattr(data, "sdk", None) != "gradio":
        problems.append(f"sdk is {getattr(data, 'sdk', None)!r}, not 'gradio'")
    installed = library_versions(["gradio"]).get("gradio")
    version = str(getattr(data, "sdk_version", None) or "")
    if not version:
        problems.append("no sdk_version")
    elif installed and version != installed:
        problems.append(f"sdk_version {version} is not the tested gradio {installed}")
    app_file = getattr(data, "app_file", None) or "app.py"
    if not (folder.path / app_file).is_file():
        problems.append(f"app_file {app_file} is missing")
    if problems:
        folder.errors.append("Space card (README.md): " + "; ".join(problems))
    else:
        folder.checks.append(f"SpaceCard.load(README.md): sdk gradio {version}, app_file {app_file}")


def check_requirements(folder: HubFolder, must_list: Sequence[str] = ()) -> None:
    """Every line of requirements.txt parses as a requirement, and it lists ``must_list``."""
    from packaging.requirements import InvalidRequirement, Requirement

    path = folder.path / "requirements.txt"
    if not path.is_file():
        folder.errors.append("no requirements.txt")
        return
    names, bad = set(), []
    for raw in path.read_text().splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            names.add(Requirement(line).name.lower().replace("_", "-"))
        except InvalidRequirement:
            bad.append(line)
    missing = [n for n in must_list if n.lower() not in names]
    if bad or missing or not names:
        folder.errors.append("requirements.txt: " + "; ".join(
            ([f"unparsable lines {bad}"] if bad else []) + ([f"does not list {', '.join(missing)}"] if missing else [])
            + ([] if names else ["no requirement"])))
    else:
        folder.checks.append(f"requirements.txt lists {len(names)} packages")


def check_package_copy(folder: HubFolder) -> None:
    """The copied hf_isi: importable files present, every reference model folder complete."""
    import safetensors

    pkg = folder.path / "hf_isi"
    if not (pkg / "__init__.py").is_file():
        folder.errors.append("no hf_isi/ package copy")
        return
    incomplete, models = [], []
    for model in sorted(p for p in (pkg / "reference_models").glob("*") if p.is_dir()):
        missing = [n for n in REFERENCE_MODEL_FILES if not (model / n).is_file()]
        if missing:
            incomplete.append(f"{model.name} (no {', '.join(missing)})")
            continue
        try:
            with safetensors.safe_open(str(model / "model.safetensors"), "pt") as fh:
                if not list(fh.keys()):
                    raise ValueError("no tensors")
        except Exception as err:  # noqa: BLE001 - safetensors raises its own types for a damaged file
            incomplete.append(f"{model.name} (model.safetensors unreadable: {first_line(err, 80)})")
            continue
        models.append(model.name)
    if incomplete:
        folder.errors.append("incomplete reference models in the hf_isi copy (still training?): "
                             + ", ".join(incomplete))
    else:
        folder.checks.append(f"hf_isi/ copied ({len(list_files(pkg))} files; reference models: "
                             f"{', '.join(models) or 'none'})")


def check_space(folder: HubFolder, check: str, must_list: Sequence[str] = ()) -> dict[str, Any] | None:
    """What both Spaces need: the Space card, requirements.txt (listing ``must_list``) and the package copy,
    then, when those passed, the import check ``check`` of :mod:`hf_isi.hub._isolation` (its result)."""
    check_space_card(folder)
    check_requirements(folder, must_list)
    check_package_copy(folder)
    return None if folder.errors else run_isolated(folder, check)


def run_isolated(folder: HubFolder, check: str) -> dict[str, Any] | None:
    """Run ``python -m hf_isi.hub._isolation <check>`` in a fresh Python, cwd = the folder, offline, with
    throw-away caches and no token; its result, or ``None`` with the reason in ``folder.errors``."""
    checkout = repo_root() or package_dir().parent
    with tempfile.TemporaryDirectory(prefix="hf_isi_publish_check_") as scratch:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   HF_EVALUATE_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_UPDATE_DOWNLOAD_COUNTS="False",
                   HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False", HF_HOME=f"{scratch}/hf",
                   XDG_CACHE_HOME=f"{scratch}/cache", MPLCONFIGDIR=f"{scratch}/mpl", GRADIO_TEMP_DIR=f"{scratch}/gr",
                   HF_TOKEN_PATH=f"{scratch}/no-token", TOKENIZERS_PARALLELISM="false")
        path = folder.path.resolve()
        command = [sys.executable, "-m", _isolation.__name__, check, str(path), str(checkout)]
        try:
            proc = subprocess.run(command, check=False, cwd=path, env=env, capture_output=True, text=True,
                                  timeout=SUBPROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            folder.errors.append(f"importing app.py took more than {SUBPROCESS_TIMEOUT_S} s")
            return None
    marker = [line for line in proc.stdout.splitlines() if line.startswith(_isolation.MARKER)]
    if proc.returncode != 0 or not marker:
        tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        folder.errors.append("app.py does not import in a fresh Python that sees only the folder: "
                             + (tail[-1].strip() if tail else f"exit status {proc.returncode}"))
        logger.debug("isolated run of %s failed:\n%s\n%s", folder.path, proc.stdout, proc.stderr)
        return None
    result: dict[str, Any] = json.loads(marker[-1][len(_isolation.MARKER):])
    return result
