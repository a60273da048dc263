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
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .phases import align_phases, align_tradeoffs
from .report import Report, json_safe, results_features

logger = logging.getLogger(__name__)

__all__ = ["RESULTS_DIR", "RESULTS_SPLIT", "COMPARISON_METRICS", "write_results", "load_results", "build_summary",
           "plot_filename"]

RESULTS_DIR = "results"
#: the split name the card's ``configs`` give the results table (``load_dataset(dir)["train"]``)
RESULTS_SPLIT = "train"
#: metrics drawn in ``plots/comparison_<metric>.png`` (when any model has a finite value)
COMPARISON_METRICS: tuple[str, ...] = ("centered_similarity", "isi", "isi_attention", "probe_cls_acc",
                                       "probe_mean_acc")
#: cap on the skipped-image ids the card lists (summary.json keeps what the run recorded)
_CARD_MAX_IDS = 20


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


def write_results(reports: Sequence[Report], output_dir: str | os.PathLike, *, run: Mapping[str, Any] | None = None,
                  plots: bool = True, verify: bool = True) -> Path:
    """Write the results folder of ``reports`` into ``output_dir`` (created if needed) and return its path.

    Args:
        reports: one report per model; model names must be distinct.
        run: run-level provenance for ``summary.json`` (command line, processes, wall time, dataset, ...).
        plots: draw ``plots/``.
        verify: load the folder back with ``datasets.load_dataset`` (in a throw-away cache) and check it.
    """
    names = [r.model for r in reports]
    if not reports or len(set(names)) != len(names):
        raise ValueError(f"write_results needs reports of distinct models, got {names}")
    out = Path(output_dir)
    (out / RESULTS_DIR).mkdir(parents=True, exist_ok=True)
    summary = json_safe(build_summary(reports, run))

    table = _results_table(reports)
    table.to_parquet(str(out / RESULTS_DIR / "data.parquet"))
    _card(reports, summary).save(out / "README.md")
    if plots:
        _plots(reports, out / "plots")
    if verify:
        _verify(out, len(table), table.column_names)
    _write_atomically(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
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


def _plots(reports: Sequence[Report], folder: Path) -> None:
    import matplotlib.pyplot as plt

    from .plotting import plot_comparison, plot_report

    folder.mkdir(parents=True, exist_ok=True)
    for report in reports:
        fig = plot_report(report)
        fig.savefig(folder / plot_filename(report.model), dpi=110)
        plt.close(fig)
    for metric in COMPARISON_METRICS:
        if any(report.table[metric].notna().any() for report in reports):
            fig = plot_comparison(reports, metric)
            fig.savefig(folder / f"comparison_{metric}.png", dpi=110)
            plt.close(fig)


def _card(reports: Sequence[Report], summary: Mapping[str, Any]) -> Any:
    """The dataset card: YAML ``configs`` pointing at ``results/*.parquet``, the verdicts and the provenance."""
    from huggingface_hub import DatasetCard, DatasetCardData

    run = summary.get("run", {})
    num_rows = sum(len(r.table) for r in reports)
    data = DatasetCardData(
        pretty_name="hf_isi layer-wise diagnostics",
        tags=["hf-isi", "interpretability", "vision-transformer"],
        size_categories=["n<1K" if num_rows < 1000 else "1K<n<10K"],
        configs=[{"config_name": "default", "default": True,
                  "data_files": [{"split": RESULTS_SPLIT, "path": f"{RESULTS_DIR}/*.parquet"}]}],
    )
    phase_curve = next(iter(reports)).provenance.get("phase_curve", "centered_similarity")
    lines = [
        "# hf_isi layer-wise diagnostics",
        "",
        "Per-layer information-flow diagnostics of vision transformers, computed by hf_isi's "
        "`scripts/probe.py`: one row per model x layer (`layer` -1 = patch "
        "embeddings before position embeddings, 0 = with them, l = output of block l). Missing values are null. "
        "`summary.json` holds the Cliff/Plateau/Climb phases of every curve, their alignment across models and "
        "the provenance; `plots/` the figures.",
        "",
        "```python",
        "import datasets",
        f'rows = datasets.load_dataset("<this repo or folder>", split="{RESULTS_SPLIT}")',
        "from hf_isi.results import load_results",
        'reports = load_results("<this repo or folder>")   # {model: hf_isi.Report}',
        "```",
        "",
        f"## Phases ({phase_curve})",
        "",
        "| model | layers | images | pattern | plateau starts | climb starts | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        fit = report.phases.get(phase_curve)
        lines.append("| {} | {} | {} | {} | {} | {} | {} |".format(
            report.model, report.num_layers, int(report.table["num_images"].iloc[0]),
            "yes" if fit is not None and fit.pattern else "no",
            _or_dash(fit.plateau_start if fit else None), _or_dash(fit.climb_start if fit else None),
            (fit.reason if fit else "not fitted").replace("|", "\\|")))
    dataset = run.get("dataset") or {}
    skipped = run.get("skipped_ids") or []
    lines += [
        "",
        "## Provenance",
        "",
        f"- dataset: `{dataset.get('dataset', '?')}` split `{dataset.get('split', '?')}`, "
        f"{run.get('num_images', '?')} images used, {run.get('num_images_skipped', 0)} unreadable skipped"
        + (f" ({', '.join(map(str, skipped[:_CARD_MAX_IDS]))}{', ...' if len(skipped) > _CARD_MAX_IDS else ''})"
           if skipped else ""),
        f"- processes: {run.get('num_processes', '?')}, dtype: {run.get('dtype', '?')}, seed: {run.get('seed', '?')}, "
        f"wall time: {run.get('wall_time_s', '?')} s",
        f"- command: `{run.get('command_line', '?')}`",
        "",
        "| model | revision | class | attention | dtype |",
        "|---|---|---|---|---|",
    ]
    for report in reports:
        p = report.provenance
        lines.append(f"| {report.model} | {_or_dash(p.get('revision'))} | {_or_dash(p.get('model_class'))} | "
                     f"{_or_dash(p.get('attn_implementation'))} | {_or_dash(p.get('dtype'))} |")
    versions = {k[: -len("_version")]: v for k, v in next(iter(reports)).provenance.items() if k.endswith("_version")}
    if versions:
        lines += ["", "Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
