"""The results dataset repo ``<ns>/hf-isi-results``: one parquet file and config per model, plus the default
config ``all`` with every row, ``summary.json``, ``plots/`` and the card (:func:`hf_isi.cards.results_card`)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cards import CardSource, results_card
from ..results import (
    RESULTS_DIR,
    RESULTS_SPLIT,
    build_summary,
    load_results,
    model_counts,
    publishable_summary,
    write_plots,
    write_summary,
)
from ..utils import first_line, write_atomically
from .folders import (
    DEFAULT_DATASET_NAME,
    HubFolder,
    PublishError,
    RepoKind,
    Target,
    check_name,
    fresh_dir,
    sha256_file,
    version,
)

#: the dataset config holding every row (the default config); the others hold one model each
ALL_CONFIG = "all"


def config_name_for(model: str) -> str:
    """A dataset config name for a model: ``google/vit-base-patch16-224`` -> ``google_vit-base-patch16-224``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_.-")
    return name or "model"


def targets(out: Path, options: Any) -> list[Target]:
    name = options.dataset_name
    return [Target(name, out / "datasets" / name, lambda: build_dataset_folder(
        options.results_dirs, out, name=name, namespace=options.namespace))]


def build_dataset_folder(results_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                         name: str = DEFAULT_DATASET_NAME, namespace: str | None = None) -> HubFolder:
    """The dataset repo: one parquet file (and config) per model, the config ``all`` with every row.

    With one results folder, ``summary.json`` and ``plots/`` are copied (``summary.json`` unchanged unless it
    holds absolute local paths, which are rewritten relative to the results folder or with ``~``: see
    :func:`hf_isi.results.publishable_summary`). With several (their model names must be distinct),
    ``summary.json`` is rebuilt with :func:`hf_isi.results.build_summary` (phase alignment across every model;
    ``run`` becomes ``{"merged_from": [run of each folder]}``) and the comparison plots are redrawn.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    check_name(name)
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
    folder = HubFolder("dataset", name, fresh_dir(Path(out_dir), "datasets", name),
                       sources=[s["path"] for s in sources])
    (folder.path / RESULTS_DIR).mkdir()
    table = pa.concat_tables([s["table"] for s in sources], promote_options="none")
    configs: list[dict[str, Any]] = [{"config_name": ALL_CONFIG, "default": True,
                                      "data_files": [{"split": RESULTS_SPLIT, "path": f"{RESULTS_DIR}/*.parquet"}]}]
    used = {ALL_CONFIG}
    config_of: dict[str, str] = {}
    models = [m for s in sources for m in s["models"]]
    for model in models:
        config = config_name_for(model)
        while config in used:
            config += "_"
        used.add(config)
        config_of[model] = config
        pq.write_table(table.filter(pc.equal(table["model"], model)), folder.path / RESULTS_DIR / f"{config}.parquet")
        configs.append({"config_name": config,
                        "data_files": [{"split": RESULTS_SPLIT, "path": f"{RESULTS_DIR}/{config}.parquet"}]})
    summary = _copy_summary(sources[0], folder.path) if len(sources) == 1 else _merge_summaries(sources, folder.path)
    card = results_card(
        summary, configs, model_counts(table), config_of=config_of, repo_id=folder.repo_id(namespace),
        sources=[CardSource(s["summary"].get("run", {}) or {}, s["path"].name, s["models"], s["digests"])
                 for s in sources],
        footer=(f"Published with hf_isi {version()} (`scripts/publish.py`), rows unchanged from the results "
                "folders (checked with `datasets.load_dataset` before the upload)."))
    write_atomically(folder.path / "README.md", str(card))
    folder.meta.update(configs=configs, config_of=config_of, num_rows=table.num_rows, models=models)
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

    path = folder.path
    configs = folder.meta.get("configs")
    if not configs:
        folder.errors.append("no dataset configs were recorded at build time")
        return
    loaded = [dict(c) for c in (DatasetCard.load(path / "README.md").data.configs or [])]
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
                ds = datasets.load_dataset(str(path), config, split=RESULTS_SPLIT, cache_dir=cache)
                if ds.features != source["features"]:
                    folder.errors.append(f"config {config!r}: features differ from the source's")
                    continue
                rows, want = _sorted_rows(ds.to_list()), _sorted_rows(expected[config])
                if len(rows) != len(want) or not all(_same(a, b) for a, b in zip(rows, want)):
                    folder.errors.append(f"config {config!r}: load_dataset gives {len(rows)} rows that differ from "
                                         f"the {len(want)} source rows")
                del ds
            default = datasets.load_dataset(str(path), split=RESULTS_SPLIT, cache_dir=cache)
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


KIND = RepoKind("dataset", "dataset", "the results dataset", targets, validate_dataset_folder)


# ---------------------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------------------
def _read_results_folder(path: Path) -> dict[str, Any]:
    """A results folder of scripts/probe.py, checked: summary.json and results/*.parquet agree."""
    import pyarrow as pa
    import pyarrow.parquet as pq

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
        raise PublishError(f"{summary_file} is not a results summary ({first_line(err, 300)})") from None
    try:
        table = pa.concat_tables([pq.read_table(f) for f in files])
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise PublishError(f"{path}/{RESULTS_DIR} has an unreadable parquet file ({first_line(err, 300)})") from None
    if "model" not in table.column_names or "layer" not in table.column_names:
        raise PublishError(f"{path}/{RESULTS_DIR} is not a results table (no model/layer columns)")
    in_table = list(dict.fromkeys(table["model"].to_pylist()))
    if sorted(in_table) != sorted(models):
        raise PublishError(f"{path}: summary.json lists models {sorted(models)} but the table holds {sorted(in_table)}")
    keys = list(zip(table["model"].to_pylist(), table["layer"].to_pylist()))
    if len(set(keys)) != len(keys):
        raise PublishError(f"{path}: the table has repeated (model, layer) rows")
    summary = publishable_summary(summary, path)  # results written before paths were made relative
    return {"path": path, "summary": summary, "models": models, "table": table,
            "digests": {f.name: sha256_file(f) for f in files}}


def _read_source_rows(sources: Sequence[Path]) -> dict[str, Any]:
    import datasets
    import pyarrow as pa

    tables = [_read_results_folder(p)["table"] for p in sources]
    table = pa.concat_tables(tables)
    return {"rows": table.to_pylist(), "features": datasets.Features.from_arrow_schema(tables[0].schema)}


def _copy_summary(source: dict[str, Any], dest: Path) -> dict[str, Any]:
    """One results folder: its ``summary.json`` (byte for byte when it holds no local path) and ``plots/``."""
    if json.loads((source["path"] / "summary.json").read_text()) == source["summary"]:
        shutil.copy2(source["path"] / "summary.json", dest / "summary.json")
    else:
        write_summary(source["summary"], dest / "summary.json")
    if (source["path"] / "plots").is_dir():
        shutil.copytree(source["path"] / "plots", dest / "plots")
    summary: dict[str, Any] = source["summary"]
    return summary


def _merge_summaries(sources: Sequence[dict[str, Any]], dest: Path) -> dict[str, Any]:
    """Several results folders: one summary (alignment over every model) and redrawn comparison plots."""
    from ..report import json_safe

    reports = []
    for s in sources:
        for name, report in load_results(s["path"]).items():
            report.provenance = s["summary"]["models"][name].get("provenance", {})  # its local paths rewritten
            reports.append(report)
    run = {"merged_from": [{"results_dir": s["path"].name, **s["summary"].get("run", {})} for s in sources]}
    summary: dict[str, Any] = json_safe(build_summary(reports, run))
    write_summary(summary, dest / "summary.json")
    plots = dest / "plots"
    for s in sources:
        for png in sorted((s["path"] / "plots").glob("*.png")):
            if not png.name.startswith("comparison_"):
                plots.mkdir(exist_ok=True)
                shutil.copy2(png, plots / png.name)
    write_plots(reports, plots, per_model=False)
    return summary


# ---------------------------------------------------------------------------------------------------------
# comparing rows
# ---------------------------------------------------------------------------------------------------------
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


def _reject_constant(value: str) -> Any:
    raise ValueError(f"summary.json holds {value}, which is not JSON")
