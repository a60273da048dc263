"""Report: the finalised per-layer table of one model, its phases, model-level values and provenance."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .metrics.registry import FAMILIES
from .phases import PhaseFit, fit_phases, tradeoff_layer

#: the per-layer metric columns, in table order: every family's metric columns, then their tuning columns
#: (chosen penalties); every report has all of them (missing = null)
METRIC_COLUMNS: tuple[str, ...] = (*(c for f in FAMILIES.values() for c in f.columns),
                                   *(c for f in FAMILIES.values() for c in f.tuning_columns))
#: the per-layer per-head columns (a list of per-head values per layer, or null)
PER_HEAD_COLUMNS: tuple[str, ...] = tuple(c for f in FAMILIES.values() for c in f.per_head_columns)
#: curves whose Cliff/Plateau/Climb phases are fitted and reported
PHASE_CURVES: tuple[str, ...] = ("centered_similarity", "isi", "isi_attention", "attn_entropy", "aci", "ccc",
                                 "probe_cls_acc", "probe_mean_acc")
TABLE_COLUMNS: tuple[str, ...] = ("model", "layer", "num_images", *METRIC_COLUMNS, *PER_HEAD_COLUMNS, "phase")


def json_safe(v: Any) -> Any:
    """Strict-JSON values: numpy scalars to Python, NaN/inf to None (so ``json.dumps(allow_nan=False)`` cannot
    fail on them), recursively through dicts, lists and tuples."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def results_features() -> Any:
    """The ``datasets.Features`` of a results table (nullable float64 metrics, per-head lists)."""
    import datasets

    feats = {"model": datasets.Value("string"), "layer": datasets.Value("int32"),
             "num_images": datasets.Value("int64")}
    feats.update({c: datasets.Value("float64") for c in METRIC_COLUMNS})
    feats.update({c: datasets.List(datasets.Value("float64")) for c in PER_HEAD_COLUMNS})
    feats["phase"] = datasets.Value("string")
    return datasets.Features(feats)


@dataclass
class Report:
    """The analysis of one model.

    Attributes:
        model: the model's name.
        table: one row per layer (``-1`` pre-PE, ``0`` +PE, ``1..L``), columns :data:`TABLE_COLUMNS`;
            missing values are NaN (null in the dataset), never 0.
        phases: Cliff/Plateau/Climb fit per curve (:data:`PHASE_CURVES`).
        scalars: model-level values (PE dominance, the information-task trade-off layer).
        provenance: model id and revision, library versions, dtype, attention implementation, config, ...
    """

    model: str
    table: pd.DataFrame
    phases: dict[str, PhaseFit] = field(default_factory=dict)
    scalars: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_columns(cls, model: str, columns: Mapping[str, np.ndarray], *, num_layers: int, num_images: int,
                     scalars: Mapping[str, Any] | None = None, provenance: Mapping[str, Any] | None = None,
                     per_head: Mapping[str, list] | None = None,
                     phase_curve: str = "centered_similarity") -> Report:
        layers = list(range(-1, num_layers + 1))
        table = pd.DataFrame({"model": model, "layer": layers, "num_images": num_images})
        for name in METRIC_COLUMNS:
            table[name] = np.asarray(columns.get(name, np.full(len(layers), np.nan)), dtype=np.float64)
        for name in PER_HEAD_COLUMNS:
            values = (per_head or {}).get(name) or [None] * len(layers)
            table[name] = pd.Series(values, dtype=object)
        phases = {c: fit_phases(table[c].to_numpy(), layers, curve=c) for c in PHASE_CURVES}
        if phase_curve not in phases:
            phases[phase_curve] = fit_phases(table[phase_curve].to_numpy(), layers, curve=phase_curve)
        table["phase"] = phases[phase_curve].labels
        scalars = dict(scalars or {})
        best_acc = np.fmax(table["probe_cls_acc"].to_numpy(), table["probe_mean_acc"].to_numpy())
        scalars["tradeoff_layer"] = tradeoff_layer(table["isi"].to_numpy(), best_acc, layers)
        return cls(model, table, phases, scalars, dict(provenance or {}, phase_curve=phase_curve))

    # -- access ------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return int(self.table["layer"].max())

    def curve(self, name: str) -> pd.Series:
        """One metric over layers (index: layer)."""
        return self.table.set_index("layer")[name]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: model-level values, phases of each curve, provenance."""
        return json_safe({"model": self.model, "num_layers": self.num_layers, **self.scalars,
                       "phases": {c: f.to_dict() for c, f in self.phases.items()}, "provenance": self.provenance})

    def __repr__(self) -> str:
        fit = self.phases.get(self.provenance.get("phase_curve", "centered_similarity"))
        verdict = fit.reason if fit is not None else "no phase fit"
        return f"Report(model={self.model!r}, layers=-1..{self.num_layers}, images={self.table['num_images'][0]}, " \
               f"phases: {verdict})"

    # -- conversion and persistence -------------------------------------------------------------------
    def to_pandas(self) -> pd.DataFrame:
        return self.table.copy()

    def to_dataset(self) -> Any:
        """The table as a ``datasets.Dataset`` with explicit, nullable features."""
        import datasets

        rows = [{k: json_safe(v) for k, v in row.items()} for row in self.table.to_dict(orient="records")]
        return datasets.Dataset.from_list(rows, features=results_features())

    def save(self, directory: str | Path) -> Path:
        """Write ``results.parquet`` and ``summary.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_dataset().to_parquet(str(directory / "results.parquet"))
        (directory / "summary.json").write_text(json.dumps(self.summary(), indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Report:
        directory = Path(directory)
        table = pd.read_parquet(directory / "results.parquet")
        return cls.from_summary(table, json.loads((directory / "summary.json").read_text()))

    @classmethod
    def from_summary(cls, table: pd.DataFrame, summary: Mapping[str, Any]) -> Report:
        """Rebuild a report from its table rows and its :meth:`summary`."""
        table = table.reset_index(drop=True)
        for name in METRIC_COLUMNS:
            table[name] = table[name].astype("float64")
        reserved = {"model", "num_layers", "phases", "provenance"}
        scalars = {k: v for k, v in summary.items() if k not in reserved}
        phases = {c: PhaseFit.from_dict(d) for c, d in summary.get("phases", {}).items()}
        return cls(summary["model"], table, phases, scalars, dict(summary.get("provenance", {})))
