"""Publish a run to the Hugging Face Hub: build Hub-ready folders, validate them offline, then upload them.

Four kinds of repository are published (``scripts/publish.py`` is the command line):

======== ============ ======================================= =================================================
kind     repo type    repo id                                 built folder (``<out_dir>/...``)
======== ============ ======================================= =================================================
dataset  dataset      ``<ns>/hf-isi-results``                 ``datasets/hf-isi-results``: ``results/<config>.parquet``
                                                               (one per model), ``summary.json``, ``plots/``, card
metric   space        ``<ns>/isi``                            ``spaces/isi``: ``isi.py``, ``app.py``,
                                                               ``requirements.txt``, metric card, ``hf_isi/``
space    space        ``<ns>/hf-isi-demo``                    ``spaces/hf-isi-demo``: ``spaces_app/`` + ``hf_isi/``
models   model        ``<ns>/<reference model name>``         ``models/<name>``: the ``save_pretrained`` files
                                                               + ``README.md`` (``model_cards/<name>.md``)
======== ============ ======================================= =================================================

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

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_CONFIG",
    "DEFAULT_DATASET_NAME",
    "DEFAULT_SPACE_NAME",
    "KINDS",
    "METRIC_SPACE_NAME",
    "REPO_TYPES",
    "UPLOAD_IGNORE_PATTERNS",
    "HubFolder",
    "PublishError",
    "Secret",
    "UploadError",
    "UploadedRepo",
    "build_all",
    "build_dataset_folder",
    "build_demo_space",
    "build_metric_space",
    "build_model_folder",
    "config_name_for",
    "format_plan",
    "package_dir",
    "repo_root",
    "upload_folders",
    "validate_dataset_folder",
    "validate_demo_space",
    "validate_folder",
    "validate_metric_space",
    "validate_model_folder",
]

#: what can be published, in upload order
KINDS: tuple[str, ...] = ("dataset", "models", "metric", "space")
#: Hub repo type of each kind
REPO_TYPES: dict[str, str] = {"dataset": "dataset", "models": "model", "metric": "space", "space": "space"}
DEFAULT_DATASET_NAME = "hf-isi-results"
#: the metric Space must be called like its module file: ``evaluate.load("<ns>/isi")`` fetches ``isi.py``
METRIC_SPACE_NAME = "isi"
DEFAULT_SPACE_NAME = "hf-isi-demo"
#: the dataset config holding every row (the default config); the others hold one model each
ALL_CONFIG = "all"
#: never uploaded, even if something put them into a built folder
UPLOAD_IGNORE_PATTERNS = ["**/__pycache__/**", "__pycache__/**", "*.pyc", "**/*.pyc", ".DS_Store"]
#: the marker that says ``out_dir`` was made by this module (so rebuilding may replace folders in it)
OUT_DIR_MARKER = ".hf_isi_publish"
#: files of the package never copied into a Space
_PACKAGE_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints"}
_PACKAGE_SKIP_SUFFIXES = (".pyc", ".pyo")
#: files of ``spaces_app/`` that stay behind (a development tool that regenerates examples/)
SPACE_EXCLUDE = ("make_examples.py",)
#: a complete reference model folder inside the copied package
_REFERENCE_MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
_SUBPROCESS_TIMEOUT_S = 600
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class PublishError(Exception):
    """An input that cannot be published, or a refusal; the message is one line meant for the user."""


class UploadError(PublishError):
    """An upload that failed part-way: which repo failed, which were uploaded before it, which were not."""

    def __init__(self, failed: str, uploaded: Sequence[str], pending: Sequence[str], reason: str) -> None:
        self.failed, self.uploaded, self.pending, self.reason = failed, list(uploaded), list(pending), reason
        done = ", ".join(self.uploaded) if self.uploaded else "none"
        rest = ", ".join(self.pending) if self.pending else "none"
        super().__init__(f"upload of {failed} failed ({reason}); already uploaded: {done}; not uploaded: {rest}. "
                         "The local folders are unchanged: fix the cause and re-run (files already on the Hub "
                         "are not sent again).")


class Secret:
    """A token that never shows: ``repr``/``str`` are masked; :meth:`reveal` gives the value to ``HfApi``."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value or None

    def reveal(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "Secret(***)" if self._value else "Secret(None)"

    __str__ = __repr__

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the token replaced by ``***``."""
        return text.replace(self._value, "***") if self._value else text

    def __reduce__(self) -> Any:  # never pickled with its value
        raise TypeError("a Secret cannot be pickled")


@dataclass
class HubFolder:
    """One Hub-ready folder: what it will become on the Hub and what validation found.

    Attributes:
        kind: ``"dataset"``, ``"metric"``, ``"space"`` or ``"models"`` (see :data:`KINDS`).
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
    def repo_type(self) -> str:
        return REPO_TYPES[self.kind]

    @property
    def space_sdk(self) -> str | None:
        return "gradio" if self.repo_type == "space" else None

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
        """``(relative path, size in bytes)`` of every file that would be uploaded, sorted."""
        return [(rel, (self.path / rel).stat().st_size) for rel in _list_files(self.path)]


@dataclass(frozen=True)
class UploadedRepo:
    repo_id: str
    repo_type: str
    url: str
    commit_url: str | None


# ---------------------------------------------------------------------------------------------------------
# locations
# ---------------------------------------------------------------------------------------------------------
def package_dir() -> Path:
    """The ``hf_isi`` package folder that is copied into the Spaces (the importable one)."""
    return Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """The hf_isi checkout this package was installed from (it holds ``isi/`` and ``spaces_app/``), if any."""
    root = package_dir().parent
    return root if (root / "isi").is_dir() and (root / "spaces_app").is_dir() else None


def config_name_for(model: str) -> str:
    """A dataset config name for a model: ``google/vit-base-patch16-224`` -> ``google_vit-base-patch16-224``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_.-")
    return name or "model"


# ---------------------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------------------
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
            the folders it made before; a non-empty ``out_dir`` not made by this module is refused.
        what: any of :data:`KINDS`.
        results_dirs: results folders of ``scripts/probe.py`` (for ``dataset``).
        models: reference model names or ``save_pretrained`` folders (default: every reference model).
        model_cards_dir: where ``<name>.md`` model cards are (default: ``<repo>/model_cards``).
        isi_dir: the evaluate module folder of the checkout (default: ``<repo>/isi``).
        space_dir: the demo Space sources (default: ``<repo>/spaces_app``).
        namespace: only used in the usage examples written into the dataset card.
    """
    what = _check_what(what)
    for name in (dataset_name, space_name):
        _check_name(name)
    if namespace is not None:
        _check_name(namespace, what="namespace")
    out = Path(out_dir)
    _claim_out_dir(out)
    root = repo_root()
    folders: list[HubFolder] = []

    def attempt(kind: str, name: str, path: Path, build: Callable[[], HubFolder]) -> None:
        if path.is_dir():  # a folder from an earlier build must not stand in for one that fails now
            shutil.rmtree(path)
        try:
            folder = build()
        except PublishError as err:
            folder = HubFolder(kind, name, path, errors=[str(err)])
        except Exception as err:
            logger.debug("building %s failed", name, exc_info=True)
            folder = HubFolder(kind, name, path, errors=[f"building failed: {type(err).__name__}: {_line(err)}"])
        folders.append(folder)

    for kind in KINDS:
        if kind not in what:
            continue
        if kind == "dataset":
            attempt(kind, dataset_name, out / "datasets" / dataset_name,
                    lambda: build_dataset_folder(results_dirs, out, name=dataset_name, namespace=namespace))
        elif kind == "models":
            from . import zoo

            names = list(models) if models is not None else zoo.list_reference_models()
            if not names:
                folders.append(HubFolder(kind, "models", out / "models", errors=["no models to publish"]))
            cards = Path(model_cards_dir) if model_cards_dir is not None else _default(root, "model_cards")
            for model in names:
                name = _model_name(model)
                attempt(kind, name, out / "models" / name,
                        lambda model=model, cards=cards: build_model_folder(model, out, model_cards_dir=cards))
        elif kind == "metric":
            attempt(kind, METRIC_SPACE_NAME, out / "spaces" / METRIC_SPACE_NAME,
                    lambda: build_metric_space(out, isi_dir=isi_dir if isi_dir is not None else _default(root, "isi")))
        elif kind == "space":
            attempt(kind, space_name, out / "spaces" / space_name,
                    lambda: build_demo_space(out, space_dir=space_dir if space_dir is not None
                                             else _default(root, "spaces_app"), name=space_name))
    names = [(f.repo_type, f.name) for f in folders]
    for repo in {n for n in names if names.count(n) > 1}:
        for f in folders:
            if (f.repo_type, f.name) == repo:
                f.errors.append(f"two {repo[0]} repos would be called {repo[1]!r}")
    if validate:
        for folder in folders:
            validate_folder(folder)
    return folders


def build_dataset_folder(results_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                         name: str = DEFAULT_DATASET_NAME, namespace: str | None = None) -> HubFolder:
    """The dataset repo: one parquet file (and config) per model, the config ``all`` with every row.

    With one results folder, ``summary.json`` and ``plots/`` are copied unchanged. With several (their model
    names must be distinct), ``summary.json`` is rebuilt with :func:`hf_isi.results.build_summary` (phase
    alignment across every model; ``run`` becomes ``{"merged_from": [run of each folder]}``) and the
    comparison plots are redrawn.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .results import RESULTS_DIR

    _check_name(name)
    if not results_dirs:
        raise PublishError("no results folder given: pass --results_dir (the output_dir of scripts/probe.py)")
    sources = [_read_results_folder(Path(d)) for d in results_dirs]
    owner: dict[str, Path] = {}
    for src in sources:
        for model in src["models"]:
            if model in owner:
                raise PublishError(f"model {model!r} is in two results folders ({owner[model]} and {src['path']}): "
                                   "publish them separately or drop one")
            owner[model] = src["path"]
    folder = HubFolder("dataset", name, _fresh_dir(Path(out_dir) / "datasets" / name, Path(out_dir)),
                       sources=[s["path"] for s in sources])
    (folder.path / RESULTS_DIR).mkdir()
    table = pa.concat_tables([s["table"] for s in sources], promote_options="none")
    configs: list[dict[str, Any]] = [{"config_name": ALL_CONFIG, "default": True,
                                      "data_files": [{"split": _split(), "path": f"{RESULTS_DIR}/*.parquet"}]}]
    used = {ALL_CONFIG}
    config_of: dict[str, str] = {}
    models = [m for s in sources for m in s["models"]]
    for model in models:
        config = config_name_for(model)
        while config in used:
            config += "_"
        used.add(config)
        config_of[model] = config
        rows = table.filter(pa.compute.equal(table["model"], model))
        pq.write_table(rows, folder.path / RESULTS_DIR / f"{config}.parquet")
        configs.append({"config_name": config,
                        "data_files": [{"split": _split(), "path": f"{RESULTS_DIR}/{config}.parquet"}]})
    if len(sources) == 1:
        shutil.copy2(sources[0]["path"] / "summary.json", folder.path / "summary.json")
        if (sources[0]["path"] / "plots").is_dir():
            shutil.copytree(sources[0]["path"] / "plots", folder.path / "plots")
    else:
        _merge_summaries(sources, folder.path)
    summary = json.loads((folder.path / "summary.json").read_text())
    card = _dataset_card(sources, summary, configs, config_of, table.num_rows, namespace, name)
    card.save(folder.path / "README.md")
    folder.meta.update(configs=configs, config_of=config_of, num_rows=table.num_rows, models=models)
    return folder


def build_metric_space(out_dir: str | os.PathLike, *, isi_dir: str | os.PathLike,
                       package: str | os.PathLike | None = None) -> HubFolder:
    """The metric Space ``<ns>/isi``: ``isi.py`` (the one-line shim), ``app.py``, ``requirements.txt`` and the
    metric card from ``isi_dir``, plus a copy of the ``hf_isi`` package (the shim and the app import it)."""
    isi_dir = Path(isi_dir)
    needed = ("isi.py", "README.md", "app.py", "requirements.txt")
    missing = [n for n in needed if not (isi_dir / n).is_file()]
    if missing:
        raise PublishError(f"{isi_dir} lacks {', '.join(missing)}: the metric Space needs {', '.join(needed)}")
    folder = HubFolder("metric", METRIC_SPACE_NAME,
                       _fresh_dir(Path(out_dir) / "spaces" / METRIC_SPACE_NAME, Path(out_dir)), sources=[isi_dir])
    for name in needed:
        shutil.copy2(isi_dir / name, folder.path / name)
    _copy_package(Path(package) if package else package_dir(), folder.path / "hf_isi")
    return folder


def build_demo_space(out_dir: str | os.PathLike, *, space_dir: str | os.PathLike, name: str = DEFAULT_SPACE_NAME,
                     package: str | os.PathLike | None = None) -> HubFolder:
    """The demo Space: ``space_dir`` (``spaces_app/``: app.py, README.md, requirements.txt, examples/) without
    :data:`SPACE_EXCLUDE`, plus a copy of the ``hf_isi`` package with its reference models."""
    _check_name(name)
    space_dir = Path(space_dir)
    missing = [n for n in ("app.py", "README.md", "requirements.txt") if not (space_dir / n).is_file()]
    if missing:
        raise PublishError(f"{space_dir} lacks {', '.join(missing)}: the demo Space needs app.py, README.md and "
                           "requirements.txt")
    if (space_dir / "hf_isi").exists():
        raise PublishError(f"{space_dir} already holds an hf_isi/ folder; the package is copied in at build time")
    folder = HubFolder("space", name, _fresh_dir(Path(out_dir) / "spaces" / name, Path(out_dir)), sources=[space_dir])
    shutil.copytree(space_dir, folder.path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(*SPACE_EXCLUDE, "__pycache__", "*.pyc", ".*"))
    _copy_package(Path(package) if package else package_dir(), folder.path / "hf_isi")
    return folder


def build_model_folder(model: str | os.PathLike, out_dir: str | os.PathLike, *,
                       model_cards_dir: str | os.PathLike | None) -> HubFolder:
    """A model repo: the files of a ``save_pretrained`` folder plus ``README.md`` = ``<model_cards_dir>/<name>.md``.

    ``model`` is a built-in reference model name (its folder inside the package) or a path; the repo name is
    the reference name or the folder's name. A missing card does not stop the build, it fails validation.
    """
    from . import zoo

    name = _model_name(model)
    if str(model) in zoo.list_reference_models():
        try:
            source = zoo.trained_reference_path(str(model))
        except FileNotFoundError as err:
            raise PublishError(str(err)) from None
    else:
        source = Path(model)
        if not (source / "config.json").is_file():
            raise PublishError(f"{source} is not a save_pretrained model folder (no config.json)")
    folder = HubFolder("models", name, _fresh_dir(Path(out_dir) / "models" / name, Path(out_dir)), sources=[source])
    for rel in _list_files(source):
        if rel == "README.md":
            continue  # the card comes from model_cards/
        (folder.path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, folder.path / rel)
    card = Path(model_cards_dir) / f"{name}.md" if model_cards_dir is not None else None
    if card is not None and card.is_file():
        shutil.copy2(card, folder.path / "README.md")
        folder.sources.append(card)
    folder.meta["card_source"] = str(card) if card is not None else None
    return folder


# ---------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------
def validate_folder(folder: HubFolder) -> HubFolder:
    """Validate a built folder offline (in place: ``errors``, ``checks``, ``warnings``, ``manifest``).

    The folder's content is hashed before and after; validation that changes the folder is itself an error.
    """
    if not folder.path.is_dir():
        if not folder.errors:
            folder.errors.append(f"{folder.path} was not built")
        return folder
    before = _hash_folder(folder.path)
    validator = {"dataset": validate_dataset_folder, "metric": validate_metric_space, "space": validate_demo_space,
                 "models": validate_model_folder}[folder.kind]
    try:
        validator(folder)
    except Exception as err:
        logger.debug("validating %s failed", folder.path, exc_info=True)
        folder.errors.append(f"validation crashed: {type(err).__name__}: {_line(err)}")
    after = _hash_folder(folder.path)
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        folder.errors.append(f"validation changed the folder ({', '.join(sorted({p for p, _ in changed})[:5])})")
    folder.manifest = after
    if not after:
        folder.errors.append("the folder is empty")
    return folder


def validate_dataset_folder(folder: HubFolder) -> None:
    """The dataset repo loads like the Hub will load it, and gives back exactly the source rows.

    * ``DatasetCard.load(README.md).data.configs`` equals the configs written (the YAML round-trips);
    * ``datasets.load_dataset(folder, config, split="train")`` for every config (a throw-away cache): the
      features equal the source's, and the rows equal the source rows (all of them for ``all``, one model's
      for the others), compared value by value;
    * ``datasets.load_dataset(folder)`` without a config name loads ``all``;
    * ``hf_isi.results.load_results(folder)`` gives a report per source model; ``summary.json`` is strict JSON.
    """
    import datasets
    from huggingface_hub import DatasetCard

    from .results import load_results

    path = folder.path
    configs = folder.meta.get("configs")
    if not configs:
        folder.errors.append("no dataset configs were recorded at build time")
        return
    card = DatasetCard.load(path / "README.md")
    loaded = [dict(c) for c in (card.data.configs or [])]
    if loaded != configs:
        folder.errors.append(f"README.md configs do not round-trip: wrote {configs}, read back {loaded}")
        return
    folder.checks.append(f"DatasetCard.load(README.md).data.configs round-trips ({len(configs)} configs)")
    source = _read_source_rows(folder.sources)
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in source["rows"]:
        by_model.setdefault(row["model"], []).append(row)
    expected = {ALL_CONFIG: source["rows"],
                **{config: by_model.get(model, []) for model, config in folder.meta["config_of"].items()}}
    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix="hf_isi_publish_") as cache:
            for config in [c["config_name"] for c in configs]:
                ds = datasets.load_dataset(str(path), config, split=_split(), cache_dir=cache)
                if ds.features != source["features"]:
                    folder.errors.append(f"config {config!r}: features differ from the source's")
                    continue
                rows = _sorted_rows(ds.to_list())
                want = _sorted_rows(expected[config])
                if len(rows) != len(want) or not all(_same(a, b) for a, b in zip(rows, want)):
                    folder.errors.append(f"config {config!r}: load_dataset gives {len(rows)} rows that differ from "
                                         f"the {len(want)} source rows")
                    continue
                del ds
            default = datasets.load_dataset(str(path), split=_split(), cache_dir=cache)
            if default.num_rows != len(source["rows"]):
                folder.errors.append(f"load_dataset(folder) gives {default.num_rows} rows, not all "
                                     f"{len(source['rows'])} (the default config must be {ALL_CONFIG!r})")
            del default
    finally:
        if bars:
            datasets.enable_progress_bars()
    if not any(e.startswith(("config ", "load_dataset")) for e in folder.errors):
        folder.checks.append(f"datasets.load_dataset(folder, config) gives back the source rows and features for "
                             f"every config ({len(source['rows'])} rows in {ALL_CONFIG!r}, the default)")
    json.loads((path / "summary.json").read_text(), parse_constant=_reject_constant)
    reports = load_results(path)
    if sorted(reports) != sorted(folder.meta["models"]):
        folder.errors.append(f"load_results(folder) gives models {sorted(reports)}, expected {folder.meta['models']}")
    else:
        folder.checks.append(f"hf_isi.results.load_results(folder) reads {len(reports)} model report(s)")


def validate_metric_space(folder: HubFolder) -> None:
    """The metric Space: its card parses as a Gradio Space, and in a fresh Python that sees only the folder
    (its own ``hf_isi/`` copy, not the checkout or an installed hf_isi) ``app.py`` imports without launching
    and ``evaluate.load(folder)`` loads the module by path, offline, and computes on random inputs."""
    path = folder.path
    _check_space_card(folder)
    _check_requirements(folder, must_list=("evaluate",))
    if path.name != "isi" or not (path / "isi.py").is_file():
        folder.errors.append("the metric folder must be called isi and hold isi.py (evaluate.load(<folder>) "
                             "loads <folder>/<folder name>.py)")
    _check_package_copy(folder)
    if folder.errors:
        return
    out = _run_isolated(folder, _METRIC_PROBE)
    if out is not None:
        folder.checks.append(f"app.py imports in a fresh Python with only the folder on sys.path (hf_isi from "
                             f"{out['hf_isi']}; Blocks: {out['blocks']})")
        folder.checks.append(f"evaluate.load(folder) loads {out['module']!r} by path offline and computes "
                             f"(isi_mean on random inputs: {out['isi_mean']:.3f})")
        if not out["models"]:
            folder.warnings.append("no trained reference model in the copied package: the app offers none")


def validate_demo_space(folder: HubFolder) -> None:
    """The demo Space: its card parses (sdk gradio at the installed gradio version, app_file present),
    requirements.txt is there, and ``app.py`` imports in a fresh Python run from the built folder that cannot
    see the checkout or an installed hf_isi (so it must find the copied ``hf_isi/``)."""
    _check_space_card(folder)
    _check_requirements(folder)
    _check_package_copy(folder)
    if not any((folder.path / "examples").glob("*")):
        folder.warnings.append("no examples/ in the Space")
    if folder.errors:
        return
    out = _run_isolated(folder, _SPACE_PROBE)
    if out is not None:
        folder.checks.append(f"app.py imports in a fresh Python run from the folder, without the checkout on "
                             f"sys.path (hf_isi from {out['hf_isi']}; Blocks: {out['blocks']}; built-in models: "
                             f"{', '.join(out['models']) or 'none'})")
        if not out["models"]:
            folder.warnings.append("no trained reference model in the copied package: the Space offers only Hub ids")


def validate_model_folder(folder: HubFolder) -> None:
    """A model repo: a model card is there and its metadata round-trips (``ModelCard.load`` gives
    ``eval_results``, which serialise and parse back equal), and the model and its image processor load with
    ``from_pretrained(folder, local_files_only=True)``."""
    from huggingface_hub import ModelCard

    path = folder.path
    card_file = path / "README.md"
    if not card_file.is_file():
        where = folder.meta.get("card_source") or "model_cards/<name>.md"
        folder.errors.append(f"no model card: {where} is missing. Write it (huggingface_hub ModelCard with "
                             "eval_results) before publishing; a model is never uploaded without its card")
    else:
        card = ModelCard.load(card_file)
        results = list(card.data.eval_results or [])
        if not results:
            folder.errors.append("the model card has no eval_results (model-index) in its metadata")
        else:
            again = ModelCard(f"---\n{card.data.to_yaml()}\n---\n").data.eval_results or []
            if list(again) != results:
                folder.errors.append("the model card's eval_results do not round-trip through its YAML")
            else:
                folder.checks.append(f"ModelCard.load(README.md) round-trips {len(results)} eval_results "
                                     f"({', '.join(sorted({r.metric_type for r in results}))})")
        if not card.text.strip():
            folder.warnings.append("the model card has metadata but no text")
    _check_model_loads(folder)


# ---------------------------------------------------------------------------------------------------------
# plan and upload
# ---------------------------------------------------------------------------------------------------------
def format_plan(folders: Sequence[HubFolder], namespace: str | None, *, private: bool = False,
                revision: str | None = None) -> str:
    """What would be uploaded: per repo its id, type, local folder, verdict, checks, problems and files."""
    lines = []
    visibility = "private" if private else "public (or the namespace's default)"
    for f in folders:
        status = "OK" if f.ok else ("FAILED" if f.errors else "NOT VALIDATED")
        lines.append(f"{f.repo_type:<7} {f.repo_id(namespace)}  [{status}]  {f.path}")
        for check in f.checks:
            lines.append(f"    ok:      {check}")
        for warning in f.warnings:
            lines.append(f"    warning: {warning}")
        for error in f.errors:
            lines.append(f"    ERROR:   {error}")
        if f.path.is_dir():
            files = f.files()
            shown = files if len(files) <= 40 else files[:30]
            for rel, size in shown:
                lines.append(f"    {rel:<60} {_size(size):>10}")
            if len(files) > len(shown):
                lines.append(f"    ... and {len(files) - len(shown)} more file(s)")
            lines.append(f"    {len(files)} file(s), {_size(sum(s for _, s in files))}")
    lines.append(f"visibility: {visibility}; branch: {revision or 'main'}")
    return "\n".join(lines)


def upload_folders(
    folders: Sequence[HubFolder],
    namespace: str,
    *,
    token: Secret | str | None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
    log: Callable[[str], None] | None = None,
) -> list[UploadedRepo]:
    """Upload validated folders: per folder one ``create_repo(exist_ok=True)`` and one ``upload_folder``.

    Refuses (``PublishError``, before any request) unless every folder passed validation and is unchanged
    since. A failure part-way raises :class:`UploadError`, naming the repo that failed and those already
    uploaded; the local folders are never modified.

    Args:
        token: the Hub token (a :class:`Secret`, or a string, wrapped here); it is never logged.
        private: create new repos as private (an existing repo keeps its visibility).
        revision: a branch to commit to (created from main if missing); default main.
        api: an ``HfApi`` (default: ``HfApi(token=...)``).
    """
    from huggingface_hub import HfApi, constants

    secret = token if isinstance(token, Secret) else Secret(token)
    _check_name(namespace, what="namespace")
    if not folders:
        raise PublishError("nothing to upload")
    bad = [f for f in folders if not f.ok]
    if bad:
        raise PublishError("refusing to upload: " + "; ".join(
            f"{f.repo_id(namespace)} {'failed validation' if f.errors else 'was not validated'}"
            + (f" ({f.errors[0]})" if f.errors else "") for f in bad))
    if not secret:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or do a dry run)")
    if constants.is_offline_mode():
        raise PublishError("HF_HUB_OFFLINE is set: uploading needs the Hub (unset it, or do a dry run)")
    api = api if api is not None else HfApi(token=secret.reveal())
    log = log or (lambda message: logger.info("%s", message))
    done: list[UploadedRepo] = []
    for index, f in enumerate(folders):
        repo_id = f.repo_id(namespace)
        try:
            if _hash_folder(f.path) != f.manifest:
                raise PublishError(f"{f.path} changed after it was validated; rebuild and validate it again")
            log(f"uploading {f.repo_type} {repo_id} ({len(f.manifest or {})} files) ...")
            url = api.create_repo(repo_id, repo_type=f.repo_type, private=True if private else None, exist_ok=True,
                                  space_sdk=f.space_sdk)
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, repo_type=f.repo_type, exist_ok=True)
            info = api.upload_folder(
                folder_path=str(f.path), repo_id=repo_id, repo_type=f.repo_type, revision=revision,
                commit_message=commit_message or f"Publish {_KIND_WORDS[f.kind]} with hf_isi {_version()}",
                ignore_patterns=UPLOAD_IGNORE_PATTERNS)
        except Exception as err:
            logger.debug("upload of %s failed", repo_id, exc_info=True)
            reason = secret.scrub(f"{type(err).__name__}: {_line(err)}")
            pending = [g.repo_id(namespace) for g in folders[index + 1:]]
            raise UploadError(f"{f.repo_type} {repo_id}", [f"{d.repo_type} {d.repo_id}" for d in done], pending,
                              reason) from None
        done.append(UploadedRepo(repo_id, f.repo_type, str(url), getattr(info, "commit_url", None)))
        log(f"uploaded {f.repo_type} {repo_id}: {getattr(info, 'commit_url', None) or url}")
    return done


# ---------------------------------------------------------------------------------------------------------
# helpers: names, folders, hashing
# ---------------------------------------------------------------------------------------------------------
_KIND_WORDS = {"dataset": "the results dataset", "metric": "the isi metric Space", "space": "the demo Space",
               "models": "a reference model"}


def _check_what(what: Iterable[str]) -> list[str]:
    what = list(dict.fromkeys("models" if w == "model" else w for w in what))
    unknown = [w for w in what if w not in KINDS]
    if unknown or not what:
        raise PublishError(f"unknown --what {', '.join(unknown) or '(none)'}; choose from {', '.join(KINDS)}")
    return what


def _check_name(name: str | None, what: str = "repo name") -> None:
    if not name or not _NAME.match(name) or ".." in name or "--" in name or name.endswith(".git"):
        raise PublishError(f"invalid {what} {name!r}: letters, digits, '-', '_' and '.', at most 96 characters")


def _model_name(model: str | os.PathLike) -> str:
    name = Path(str(model)).name
    if not _NAME.match(name or ""):
        raise PublishError(f"cannot make a repo name from model {str(model)!r}")
    return name


def _default(root: Path | None, name: str) -> Path:
    if root is None:
        raise PublishError(f"cannot find {name}/: run from an hf_isi checkout or pass its folder explicitly")
    return root / name


def _claim_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PublishError(f"out_dir {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / OUT_DIR_MARKER).is_file():
        raise PublishError(f"out_dir {out} is not empty and was not made by the publish script; choose another")
    out.mkdir(parents=True, exist_ok=True)
    (out / OUT_DIR_MARKER).write_text("Hub-ready folders built by hf_isi's scripts/publish.py; safe to delete.\n")


def _fresh_dir(path: Path, out: Path) -> Path:
    """An empty ``path`` below ``out`` (an older build there is removed: ``out`` is ours, see the marker);
    returned absolute."""
    if not (out / OUT_DIR_MARKER).is_file():
        _claim_out_dir(out)
    path = path.resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _list_files(root: Path) -> list[str]:
    """Relative POSIX paths of the files below ``root`` (sorted), without caches."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _PACKAGE_SKIP_DIRS and d != ".git")
        for name in filenames:
            if name.endswith(_PACKAGE_SKIP_SUFFIXES):
                continue
            out.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(out)


def _hash_folder(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``root`` (caches included: they must not appear)."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath, name)
            digest = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            out[p.relative_to(root).as_posix()] = digest.hexdigest()
    return out


def _copy_package(source: Path, dest: Path) -> None:
    if not (source / "__init__.py").is_file():
        raise PublishError(f"{source} is not the hf_isi package")
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*", "*.egg-info"))


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _version() -> str:
    from . import __version__

    return __version__


def _split() -> str:
    from .results import RESULTS_SPLIT

    return RESULTS_SPLIT


def _reject_constant(value: str) -> Any:
    raise ValueError(f"summary.json holds {value}, which is not JSON")


# ---------------------------------------------------------------------------------------------------------
# helpers: the dataset
# ---------------------------------------------------------------------------------------------------------
def _read_results_folder(path: Path) -> dict[str, Any]:
    """A results folder of scripts/probe.py, checked: summary.json and results/*.parquet agree."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .results import RESULTS_DIR

    if not path.is_dir():
        raise PublishError(f"results folder {path} does not exist")
    summary_file, files = path / "summary.json", sorted((path / RESULTS_DIR).glob("*.parquet"))
    if not summary_file.is_file() or not files:
        raise PublishError(f"{path} is not a finished results folder of scripts/probe.py: it needs summary.json and "
                           f"{RESULTS_DIR}/*.parquet")
    try:
        summary = json.loads(summary_file.read_text(), parse_constant=_reject_constant)
        models = list(summary["models"])
    except (ValueError, KeyError, TypeError) as err:
        raise PublishError(f"{summary_file} is not a results summary ({_line(err)})") from None
    try:
        table = pa.concat_tables([pq.read_table(f) for f in files])
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise PublishError(f"{path}/{RESULTS_DIR} has an unreadable parquet file ({_line(err)})") from None
    if "model" not in table.column_names or "layer" not in table.column_names:
        raise PublishError(f"{path}/{RESULTS_DIR} is not a results table (no model/layer columns)")
    in_table = list(dict.fromkeys(table["model"].to_pylist()))
    if sorted(in_table) != sorted(models):
        raise PublishError(f"{path}: summary.json lists models {sorted(models)} but the table holds {sorted(in_table)}")
    keys = list(zip(table["model"].to_pylist(), table["layer"].to_pylist()))
    if len(set(keys)) != len(keys):
        raise PublishError(f"{path}: the table has repeated (model, layer) rows")
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    return {"path": path, "summary": summary, "models": models, "table": table, "digests": digests}


def _read_source_rows(sources: Sequence[Path]) -> dict[str, Any]:
    import datasets
    import pyarrow as pa

    tables = [_read_results_folder(p)["table"] for p in sources]
    table = pa.concat_tables(tables)
    return {"rows": table.to_pylist(), "features": datasets.Features.from_arrow_schema(tables[0].schema)}


def _sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (str(r.get("model")), r.get("layer") if r.get("layer") is not None else -10**9))


def _same(a: Any, b: Any) -> bool:
    """Equality of row values, with NaN equal to NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _merge_summaries(sources: Sequence[dict[str, Any]], dest: Path) -> None:
    """Several results folders: one summary (alignment over every model) and redrawn comparison plots."""
    from .report import json_safe
    from .results import COMPARISON_METRICS, build_summary, load_results

    reports = [r for s in sources for r in load_results(s["path"]).values()]
    run = {"merged_from": [{"results_dir": s["path"].name, **s["summary"].get("run", {})} for s in sources]}
    summary = json_safe(build_summary(reports, run))
    (dest / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    plots = dest / "plots"
    for s in sources:
        for png in sorted((s["path"] / "plots").glob("*.png")):
            if not png.name.startswith("comparison_"):
                plots.mkdir(exist_ok=True)
                shutil.copy2(png, plots / png.name)
    import matplotlib.pyplot as plt

    from .plotting import plot_comparison

    for metric in COMPARISON_METRICS:
        if any(r.table[metric].notna().any() for r in reports):
            plots.mkdir(exist_ok=True)
            fig = plot_comparison(reports, metric)
            fig.savefig(plots / f"comparison_{metric}.png", dpi=110)
            plt.close(fig)


def _dataset_card(sources: Sequence[dict[str, Any]], summary: Mapping[str, Any], configs: list[dict[str, Any]],
                  config_of: Mapping[str, str], num_rows: int, namespace: str | None, name: str) -> Any:
    from huggingface_hub import DatasetCard, DatasetCardData

    from .phases import PhaseFit
    from .results import RESULTS_DIR

    repo = f"{namespace or '<namespace>'}/{name}"
    split = _split()
    data = DatasetCardData(
        pretty_name="hf_isi layer-wise diagnostics",
        tags=["hf-isi", "interpretability", "vision-transformer", "tabular"],
        size_categories=["n<1K" if num_rows < 1000 else "1K<n<10K" if num_rows < 10_000 else "10K<n<100K"],
        configs=configs,
    )
    models = summary.get("models", {})
    counts: dict[str, int] = {}
    for s in sources:
        for m, n in zip(*_model_counts(s["table"])):
            counts[m] = n
    first = next(iter(config_of), "<model>")
    lines = [
        "# hf_isi layer-wise diagnostics", "",
        ("Per-layer information-flow diagnostics of vision transformers computed by hf_isi's `scripts/probe.py` "
         "(method: [arXiv 2511.21635](https://arxiv.org/abs/2511.21635)): one row per model x layer (`layer` -1 "
         "= patch embeddings before position embeddings, 0 = with them, l = output of block l). Missing values "
         "are null, never 0. `summary.json` holds every curve's Cliff/Plateau/Climb phases, their alignment "
         "across models and the run's provenance; `plots/` the figures."), "",
        "## Configs", "",
        (f"One parquet file per model (`{RESULTS_DIR}/<config>.parquet`); the default config `{ALL_CONFIG}` "
         f"reads them all. Every config has one split, `{split}`."), "",
        "| config | model | rows |", "|---|---|---|",
        f"| `{ALL_CONFIG}` (default) | every model | {num_rows} |",
        *[f"| `{config}` | {model} | {counts.get(model, '?')} |" for model, config in config_of.items()],
        "", "```python", "import datasets",
        f'rows = datasets.load_dataset("{repo}", split="{split}")            # config "{ALL_CONFIG}": every model',
        f'one = datasets.load_dataset("{repo}", "{config_of.get(first, first)}", split="{split}")',
        "from hf_isi.results import load_results",
        f'reports = load_results("{repo}")   # {{model: hf_isi.Report}} with phases and provenance',
        "```", "",
    ]
    curve = next((m.get("provenance", {}).get("phase_curve") for m in models.values()), None) or "centered_similarity"
    lines += [f"## Phases ({curve})", "", "| model | layers | pattern | plateau starts | climb starts | verdict |",
              "|---|---|---|---|---|---|"]
    for model, info in models.items():
        fit = info.get("phases", {}).get(curve)
        fit = PhaseFit.from_dict(fit) if fit else None
        lines.append("| {} | {} | {} | {} | {} | {} |".format(
            model, info.get("num_layers", "?"), "yes" if fit is not None and fit.pattern else "no",
            _dash(fit.plateau_start if fit else None), _dash(fit.climb_start if fit else None),
            (fit.reason if fit else "not fitted").replace("|", "\\|")))
    lines += ["", "## Provenance", ""]
    for s in sources:
        run = s["summary"].get("run", {}) or {}
        dataset = run.get("dataset") or {}
        lines += [
            f"From the results folder `{s['path'].name}` ({', '.join(s['models'])}):", "",
            (f"- dataset: `{dataset.get('dataset', '?')}` split `{dataset.get('split', '?')}`, "
             f"{run.get('num_images', '?')} images used, {run.get('num_images_skipped', 0)} unreadable skipped"),
            (f"- processes: {run.get('num_processes', '?')}, dtype: {run.get('dtype', '?')}, seed: "
             f"{run.get('seed', '?')}, wall time: {run.get('wall_time_s', '?')} s"),
            f"- command: `{run.get('command_line', '?')}`",
            "- sha256 of the source tables: " + ", ".join(f"`{n}` {d[:16]}" for n, d in s["digests"].items()), "",
        ]
    lines += ["| model | revision | class | attention | dtype | hf_isi | transformers | torch |",
              "|---|---|---|---|---|---|---|---|"]
    for model, info in models.items():
        p = info.get("provenance", {}) or {}
        lines.append(f"| {model} | {_dash(p.get('revision'))} | {_dash(p.get('model_class'))} | "
                     f"{_dash(p.get('attn_implementation'))} | {_dash(p.get('dtype'))} | "
                     f"{_dash(p.get('hf_isi_version'))} | {_dash(p.get('transformers_version'))} | "
                     f"{_dash(p.get('torch_version'))} |")
    lines += ["", (f"Published with hf_isi {_version()} (`scripts/publish.py`), rows unchanged from the results "
                   "folders (checked with `datasets.load_dataset` before the upload)."), ""]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _model_counts(table: Any) -> tuple[list[str], list[int]]:
    models = table["model"].to_pylist()
    names = list(dict.fromkeys(models))
    return names, [models.count(n) for n in names]


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


# ---------------------------------------------------------------------------------------------------------
# helpers: Spaces and models
# ---------------------------------------------------------------------------------------------------------
def _check_space_card(folder: HubFolder) -> None:
    from huggingface_hub import SpaceCard

    readme = folder.path / "README.md"
    if not readme.is_file():
        folder.errors.append("no README.md (the Space card)")
        return
    data = SpaceCard.load(readme).data
    problems = []
    if getattr(data, "sdk", None) != "gradio":
        problems.append(f"sdk is {getattr(data, 'sdk', None)!r}, not 'gradio'")
    installed = _installed("gradio")
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


def _check_requirements(folder: HubFolder, must_list: Sequence[str] = ()) -> None:
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


def _check_package_copy(folder: HubFolder) -> None:
    """The copied hf_isi: importable files present, every reference model folder complete."""
    import safetensors

    pkg = folder.path / "hf_isi"
    if not (pkg / "__init__.py").is_file():
        folder.errors.append("no hf_isi/ package copy")
        return
    incomplete, models = [], []
    for model in sorted(p for p in (pkg / "reference_models").glob("*") if p.is_dir()):
        missing = [n for n in _REFERENCE_MODEL_FILES if not (model / n).is_file()]
        if missing:
            incomplete.append(f"{model.name} (no {', '.join(missing)})")
            continue
        try:
            with safetensors.safe_open(str(model / "model.safetensors"), "pt") as fh:
                if not list(fh.keys()):
                    raise ValueError("no tensors")
        except Exception as err:  # noqa: BLE001
            incomplete.append(f"{model.name} (model.safetensors unreadable: {_line(err, 80)})")
            continue
        models.append(model.name)
    if incomplete:
        folder.errors.append("incomplete reference models in the hf_isi copy (still training?): " + ", ".join(incomplete))
    else:
        folder.checks.append(f"hf_isi/ copied ({len(_list_files(pkg))} files; reference models: "
                             f"{', '.join(models) or 'none'})")


def _check_model_loads(folder: HubFolder) -> None:
    import transformers

    path = folder.path
    if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
        folder.errors.append("no model.safetensors (weights are published as safetensors only)")
        return
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        _load_model_and_processor(folder, transformers)
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _load_model_and_processor(folder: HubFolder, transformers: Any) -> None:
    path = folder.path
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        cls = cls or transformers.AutoModel
        model, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True)
        num = sum(p.numel() for p in model.parameters())
        del model
    except Exception as err:  # noqa: BLE001
        folder.errors.append(f"from_pretrained(folder) fails: {type(err).__name__}: {_line(err)}")
        return
    bad = {k: sorted(v)[:5] for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if bad:
        folder.errors.append(f"from_pretrained(folder) does not load every weight: {bad}")
        return
    folder.checks.append(f"{cls.__name__}.from_pretrained(folder, local_files_only=True) loads ({num:,} parameters)")
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
        folder.checks.append(f"AutoImageProcessor.from_pretrained(folder) loads ({type(processor).__name__})")
    except Exception as err:  # noqa: BLE001
        folder.warnings.append(f"no loadable image processor ({type(err).__name__}: {_line(err, 120)})")


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# The fresh interpreter of the Space checks sees the built folder and site-packages, but neither the checkout
# (its path is dropped from sys.path) nor an editable install of hf_isi (its finder is removed), and it asserts
# that hf_isi came from the folder's copy. It prints one JSON line.
_ISOLATION = """
import importlib.util, json, os, sys
folder, checkout = os.path.realpath(sys.argv[1]), os.path.realpath(sys.argv[2])
def _inside(p, root):
    p = os.path.realpath(p or os.getcwd())
    return p == root or p.startswith(root + os.sep)
sys.meta_path[:] = [f for f in sys.meta_path
                    if "__editable__" not in (getattr(f, "__module__", "") or type(f).__module__)]
sys.path[:] = [folder] + [p for p in sys.path if p and not _inside(p, checkout) and not _inside(p, folder)]
spec = importlib.util.spec_from_file_location("space_app", os.path.join(folder, "app.py"))
app = importlib.util.module_from_spec(spec)
sys.modules["space_app"] = app
spec.loader.exec_module(app)
import gradio, hf_isi
origin = os.path.realpath(hf_isi.__file__)
if not _inside(origin, folder):
    raise SystemExit(f"hf_isi was imported from {origin}, not from the Space's copy")
demo = getattr(app, "demo", None)
if not isinstance(demo, gradio.Blocks):
    raise SystemExit("app.py defines no gradio Blocks called demo")
from hf_isi import zoo
models = zoo.trained_reference_models()
out = {"hf_isi": os.path.relpath(origin, folder), "blocks": type(demo).__name__, "models": models}
"""

_SPACE_PROBE = _ISOLATION + "print('@@' + json.dumps(out))\n"

_METRIC_PROBE = _ISOLATION + """
import evaluate, numpy as np
metric = evaluate.load(folder, isi_dim=2, calibration_images=16)
rng = np.random.default_rng(0)
res = metric.compute(hidden_states=rng.normal(size=(40, 3, 5, 4)), patch_embeddings=rng.normal(size=(40, 4, 4)))
out.update(module=metric.name, isi_mean=float(res["isi_mean"]))
print('@@' + json.dumps(out))
"""


def _run_isolated(folder: HubFolder, code: str) -> dict[str, Any] | None:
    """Run ``code`` in a fresh Python, cwd = the folder, offline, with throw-away caches and no token."""
    checkout = repo_root() or package_dir().parent
    with tempfile.TemporaryDirectory(prefix="hf_isi_publish_check_") as scratch:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "PYTHONSTARTUP", "SPACE_ID")}
        env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   HF_EVALUATE_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_UPDATE_DOWNLOAD_COUNTS="False",
                   HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False", HF_HOME=f"{scratch}/hf",
                   XDG_CACHE_HOME=f"{scratch}/cache", MPLCONFIGDIR=f"{scratch}/mpl", GRADIO_TEMP_DIR=f"{scratch}/gr",
                   HF_TOKEN_PATH=f"{scratch}/no-token", TOKENIZERS_PARALLELISM="false")
        try:
            path = folder.path.resolve()
            proc = subprocess.run([sys.executable, "-c", code, str(path), str(checkout)], check=False, cwd=path,
                                  env=env, capture_output=True, text=True, timeout=_SUBPROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            folder.errors.append(f"importing app.py took more than {_SUBPROCESS_TIMEOUT_S} s")
            return None
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@")]
    if proc.returncode != 0 or not marker:
        tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        folder.errors.append("app.py does not import in a fresh Python that sees only the folder: "
                             + (tail[-1].strip() if tail else f"exit status {proc.returncode}"))
        logger.debug("isolated run of %s failed:\n%s\n%s", folder.path, proc.stdout, proc.stderr)
        return None
    return json.loads(marker[-1][2:])
