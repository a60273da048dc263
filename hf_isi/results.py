"""The results folder of a probing run: write it, read it back (locally or from a Hub dataset repo).

Layout (what ``scripts/probe.py`` produces and ``hf_isi.results.load_results`` reads)::

    <output_dir>/
        results/data.parquet     one row per model x layer (Report.to_dataset(), nullable float64 metrics)
        summary.json             {"models": {name: Report.summary()}, "alignment": {...}, "run": {...}}
        README.md                dataset card; its YAML ``configs`` make ``datasets.load_dataset(output_dir)`` work
        plots/<model>.png        per-model curves with the phase bands shaded
        plots/comparison_<metric>.png   all models over absolute and relative depth

The same folder uploaded as a Hub dataset repo loads with ``datasets.load_dataset(repo_id)`` and
``load_results(repo_id)``. ``summary.json`` is written last (atomically): a folder with it is complete.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .cards import CardSource, relative_paths, results_card
from .phases import align_phases, align_tradeoffs
from .report import Report, json_safe, results_features
from .utils import write_atomically

logger = logging.getLogger(__name__)

__all__ = [
    "COMPARISON_METRICS",
    "RESULTS_DIR",
    "RESULTS_SPLIT",
    "build_summary",
    "load_results",
    "model_counts",
    "plot_filename",
    "publishable_summary",
    "write_plots",
    "write_results",
    "write_summary",
]

RESULTS_DIR = "results"
#: the split name the card's ``configs`` give the results table (``load_dataset(dir)["train"]``)
RESULTS_SPLIT = "train"
#: metrics drawn in ``plots/comparison_<metric>.png`` (when any model has a finite value)
COMPARISON_METRICS: tuple[str, ...] = ("centered_similarity", "isi", "isi_attention", "probe_cls_acc",
                                       "probe_mean_acc")


def plot_filename(model: str) -> str:
    """A file-system-safe name for a model's plot: ``google/vit-base-patch16-224`` -> ``google_vit-base-...png``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_.") + ".png"


def build_summary(reports: Sequence[Report], run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"models": {name: summary}, "alignment": {"phases": {curve: ...}, "tradeoff": ...}, "run": run}``.

    Phase boundaries are aligned across models for every fitted curve (the reference is the shallowest
    model); the trade-off layer uses the ISI and the better of the CLS / mean-pool probe accuracies.
    """
    curves = sorted({c for r in reports for c in r.phases})
    phases = {c: align_phases({r.model: r.phases[c] for r in reports if c in r.phases}) for c in curves}
    layers = {r.model: r.table["layer"].tolist() for r in reports}
    isi = {r.model: r.table["isi"].to_numpy(dtype=float) for r in reports}
    acc = {r.model: r.table[["probe_cls_acc", "probe_mean_acc"]].max(axis=1, skipna=True).to_numpy(dtype=float)
           for r in reports}
    return {
        "models": {r.model: r.summary() for r in reports},
        "alignment": {"phases": phases, "tradeoff": align_tradeoffs(isi, acc, layers)},
        "run": dict(run or {}),
    }


def publishable_summary(summary: Mapping[str, Any], base: str | os.PathLike) -> dict[str, Any]:
    """``summary`` with the local paths of its ``run`` block and of each model's provenance rewritten by
    :func:`hf_isi.cards.relative_paths` (relative to ``base``, the results folder, or starting with ``~``), so
    that no absolute path of the machine is published. Model names are kept: they key the table's rows."""
    keep = list(summary.get("models", {}))
    out = dict(summary)
    out["run"] = relative_paths(summary.get("run", {}), base, keep)
    out["models"] = {name: {**info, "provenance": relative_paths(info.get("provenance", {}), base, keep)}
                     for name, info in summary.get("models", {}).items()}
    return out


def write_summary(summary: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``summary.json``: strict JSON (no NaN), written atomically."""
    write_atomically(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def write_results(reports: Sequence[Report], output_dir: str | os.PathLike, *, run: Mapping[str, Any] | None = None,
                  plots: bool = True, verify: bool = True, relative_to: str | os.PathLike | None = None) -> Path:
    """Write the results folder of ``reports`` into ``output_dir`` (created if needed) and return its path.

    Args:
        reports: one report per model; model names must be distinct.
        run: run-level provenance for ``summary.json`` (command line, processes, wall time, dataset, ...).
        plots: draw ``plots/``.
        verify: load the folder back with ``datasets.load_dataset`` (in a throw-away cache) and check it.
        relative_to: the folder the provenance's paths are written relative to (default ``output_dir``; a
            script that writes into a staging folder and renames it passes the final folder). See
            :func:`publishable_summary`: ``summary.json`` and ``README.md`` hold no absolute local path.
    """
    names = [r.model for r in reports]
    if not reports or len(set(names)) != len(names):
        raise ValueError(f"write_results needs reports of distinct models, got {names}")
    out = Path(output_dir)
    (out / RESULTS_DIR).mkdir(parents=True, exist_ok=True)
    summary = publishable_summary(json_safe(build_summary(reports, run)), relative_to or out)

    table = _results_table(reports)
    table.to_parquet(str(out / RESULTS_DIR / "data.parquet"))
    card = results_card(summary, [{"config_name": "default", "default": True,
                                   "data_files": [{"split": RESULTS_SPLIT, "path": f"{RESULTS_DIR}/*.parquet"}]}],
                        model_counts(table.data.table), sources=[CardSource(summary["run"])],
                        footer=f"Written by hf_isi {_version()} (`hf_isi.results.write_results`).")
    write_atomically(out / "README.md", str(card))
    if plots:
        write_plots(reports, out / "plots")
    if verify:
        _verify(out, len(table), table.column_names)
    write_summary(summary, out / "summary.json")
    return out


def write_plots(reports: Sequence[Report], folder: str | os.PathLike, *, per_model: bool = True) -> list[Path]:
    """``plots/``: each model's curves (``<model>.png``, with ``per_model``) and, for every metric of
    :data:`COMPARISON_METRICS` that some model has, ``comparison_<metric>.png``. Returns the files written."""
    from .plotting import plot_comparison, plot_report

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = [(plot_filename(r.model), lambda r=r: plot_report(r)) for r in reports] if per_model else []
    figures += [(f"comparison_{metric}.png", lambda metric=metric: plot_comparison(reports, metric))
                for metric in COMPARISON_METRICS if any(r.table[metric].notna().any() for r in reports)]
    written = []
    for name, draw in figures:
        draw().savefig(folder / name, dpi=110)  # a plain Figure: nothing to close, no pyplot state
        written.append(folder / name)
    return written


def model_counts(table: Any) -> dict[str, tuple[int, int | None]]:
    """``{model: (rows, images)}`` of a results table (a ``pyarrow.Table``), in the table's model order."""
    models, images = table["model"].to_pylist(), table["num_images"].to_pylist()
    out: dict[str, tuple[int, int | None]] = {}
    for model, n in zip(models, images):
        rows, first = out.get(model, (0, n))
        out[model] = (rows + 1, first)
    return out


def load_results(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> dict[str, Report]:
    """Reports by model name from a results folder, or from a Hub dataset repo with the same layout.

    A local path is read in place; anything else is treated as a Hub dataset id and fetched with
    ``huggingface_hub.snapshot_download(repo_type="dataset")`` (``summary.json`` and ``results/`` only).
    """
    root = Path(path_or_repo_id)
    if not root.exists():
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(str(path_or_repo_id), repo_type="dataset", revision=revision,
                                      allow_patterns=["summary.json", f"{RESULTS_DIR}/*"]))
    summary_file = root / "summary.json"
    files = sorted((root / RESULTS_DIR).glob("*.parquet"))
    if not summary_file.is_file() or not files:
        raise ValueError(f"{path_or_repo_id} is not a results folder: it needs summary.json and "
                         f"{RESULTS_DIR}/*.parquet (is the run finished?)")
    summary = json.loads(summary_file.read_text())
    table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    reports = {}
    for name, model_summary in summary["models"].items():
        rows = table[table["model"] == name].sort_values("layer")
        reports[name] = Report.from_summary(rows, model_summary)
    return reports


# -- pieces ----------------------------------------------------------------------------------------------
def _results_table(reports: Sequence[Report]) -> Any:
    import datasets

    table = datasets.concatenate_datasets([r.to_dataset() for r in reports])
    if table.features != results_features():  # every report builds these features; a guard, not a cast
        raise RuntimeError("the reports' tables do not have the results features")
    return table


def _verify(out: Path, num_rows: int, columns: Sequence[str]) -> None:
    """What a user will do: ``datasets.load_dataset(output_dir)``. A private cache keeps no trace behind."""
    import datasets

    with tempfile.TemporaryDirectory(prefix="hf_isi_verify_") as cache:
        ds = datasets.load_dataset(str(out), split=RESULTS_SPLIT, cache_dir=cache)
        ok = ds.num_rows == num_rows and list(ds.column_names) == list(columns)
        del ds
    if not ok:
        raise RuntimeError(f"datasets.load_dataset({str(out)!r}) does not give back the {num_rows} results rows")


def _version() -> str:
    from . import __version__

    return __version__
