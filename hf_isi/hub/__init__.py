"""Publish a run to the Hugging Face Hub: build Hub-ready folders, validate them offline, then upload them.

Four kinds of repository are published (``scripts/publish.py`` is the command line), one module each, listed
in one registry (:data:`hf_isi.hub.kinds.REPO_KINDS`):

======= ========= ========================== ============== ===================================================
kind    repo type repo id                    module         built folder (``<out_dir>/...``)
======= ========= ========================== ============== ===================================================
dataset dataset   ``<ns>/hf-isi-results``    dataset        ``datasets/hf-isi-results``: ``results/*.parquet``
                                                            (one per model), ``summary.json``, ``plots/``, card
models  model     ``<ns>/<reference model>`` models         ``models/<name>``: the ``save_pretrained`` files +
                                                            ``README.md`` (``model_cards/<name>.md``)
metric  space     ``<ns>/isi``               metric_space   ``spaces/isi``: ``isi.py``, ``app.py``,
                                                            ``requirements.txt``, metric card, ``hf_isi/``
space   space     ``<ns>/hf-isi-demo``       demo_space     ``spaces/hf-isi-demo``: ``spaces_app/`` + ``hf_isi/``
======= ========= ========================== ============== ===================================================

The other modules: ``folders`` (the built folder, names, the output folder, hashing, the package copy),
``checks`` (validation shared by the kinds; ``_isolation`` is the import check run in a fresh Python with
``python -m hf_isi.hub._isolation``), ``kinds`` (the registry and :func:`build_all`) and ``upload`` (the
plan and the upload).

The dataset has one config per model (``results/<config>.parquet``) plus the default config ``all``
(``results/*.parquet``: every row), so ``datasets.load_dataset(repo)`` gives every row,
``datasets.load_dataset(repo, "<model>")`` one model, and ``hf_isi.results.load_results(repo)`` the reports.

Every folder is validated offline before anything is uploaded (:func:`validate_folder`); a folder that fails is
never uploaded, and :func:`upload_folders` refuses to start unless every folder passed. Uploading is one
``HfApi.create_repo(..., exist_ok=True)`` plus one ``HfApi.upload_folder(...)`` per folder. The token is
passed in by the caller (``huggingface_hub.get_token()``: ``HF_TOKEN`` or ``hf auth login``), held in a
:class:`Secret` whose ``repr`` is masked, and scrubbed from every error message.

    >>> from hf_isi import hub
    >>> folders = hub.build_all("outputs/hub", results_dirs=["outputs/probe"], what=["dataset"])  # doctest: +SKIP
    >>> print(hub.format_plan(folders, "me"))                                                    # doctest: +SKIP
    >>> hub.upload_folders(folders, "me", token=hub.Secret(huggingface_hub.get_token()))          # doctest: +SKIP
"""

from __future__ import annotations

from .checks import validate_folder
from .dataset import ALL_CONFIG, build_dataset_folder, config_name_for, validate_dataset_folder
from .demo_space import SPACE_EXCLUDE, build_demo_space, validate_demo_space
from .folders import (
    DEFAULT_DATASET_NAME,
    DEFAULT_SPACE_NAME,
    METRIC_SPACE_NAME,
    UPLOAD_IGNORE_PATTERNS,
    HubFolder,
    PublishError,
    RepoKind,
    package_dir,
    repo_root,
)
from .kinds import KINDS, REPO_KINDS, REPO_TYPES, build_all
from .metric_space import build_metric_space, sync_metric_card, validate_metric_space
from .models import build_model_folder, validate_model_folder
from .upload import Secret, UploadedRepo, UploadError, format_plan, upload_folders

__all__ = [
    "ALL_CONFIG", "DEFAULT_DATASET_NAME", "DEFAULT_SPACE_NAME", "KINDS", "METRIC_SPACE_NAME", "REPO_KINDS",
    "REPO_TYPES", "SPACE_EXCLUDE", "UPLOAD_IGNORE_PATTERNS",
    "HubFolder", "PublishError", "RepoKind", "Secret", "UploadError", "UploadedRepo",
    "build_all", "build_dataset_folder", "build_demo_space", "build_metric_space", "build_model_folder",
    "config_name_for", "format_plan", "package_dir", "repo_root", "sync_metric_card", "upload_folders",
    "validate_dataset_folder", "validate_demo_space", "validate_folder", "validate_metric_space",
    "validate_model_folder",
]
