"""Matplotlib figures of reports: per-model curves with the phase bands shaded, and model comparisons over
absolute and relative depth.

Every function returns a plain ``matplotlib.figure.Figure`` drawn on an Agg canvas: no pyplot, so importing
hf_isi never changes the backend of a notebook, figures are not kept in pyplot's global registry (nothing to
close), and drawing is safe from several threads. ``fig.savefig(...)`` writes it; notebooks display it as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .phases import PhaseFit
from .report import Report

PHASE_COLORS = {"cliff": "#d62728", "plateau": "#7f7f7f", "climb": "#2ca02c"}
#: the panels of :func:`plot_report`: (title, columns drawn in it)
DEFAULT_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Centred token similarity", ("centered_similarity",)),
    ("Information Scrambling Index", ("isi", "isi_attention")),
    ("Reconstruction R² of z0", ("isi_r2_all", "isi_r2_self")),
    ("Linear probes (test top-1)", ("probe_cls_acc", "probe_mean_acc", "probe_mean_control_acc")),
    ("Attention graph", ("aci", "ccc", "attn_entropy")),
    ("Neural collapse NC1", ("nc1_cls", "nc1_mean")),
)


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A ``Figure`` with its own Agg canvas (what ``plt.figure`` gives, without pyplot's global state)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def layer_label(layer: int) -> str:
    return "pre-PE" if layer == -1 else str(layer)


def shade_phases(ax: Axes, fit: PhaseFit | None) -> None:
    """Shade the Cliff / Plateau / Climb bands of ``fit`` (nothing when the curve shows no such pattern)."""
    if fit is None or not fit.pattern:
        return
    layers = np.asarray(fit.layers)
    for phase, color in PHASE_COLORS.items():
        members = layers[[lab == phase for lab in fit.labels]]
        if members.size:
            ax.axvspan(members.min() - 0.5, members.max() + 0.5, color=color, alpha=0.08, lw=0)


def _layer_axis(ax: Axes, layers: Sequence[int]) -> None:
    step = max(1, len(layers) // 12)
    ticks = list(layers)[::step]
    ax.set_xticks(ticks, [layer_label(t) for t in ticks], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_xlabel("layer")
    ax.grid(alpha=0.25)


def plot_report(report: Report, panels: Sequence[tuple[str, Sequence[str]]] = DEFAULT_PANELS,
                title: str | None = None) -> Figure:
    """One panel per metric group over layers (pre-PE, 0..L), the phase bands of the report's phase curve
    shaded in every panel; empty panels (metrics not computed) say so."""
    fit = report.phases.get(report.provenance.get("phase_curve", "centered_similarity"))
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig = new_figure((4.2 * cols, 3.1 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    layers = report.table["layer"].tolist()
    for ax, (name, columns) in zip(axes.flat, panels):
        shade_phases(ax, fit)
        drawn = 0
        for column in columns:
            values = report.table[column].to_numpy(dtype=float)
            if np.isfinite(values).any():
                ax.plot(layers, values, marker="o", ms=3, label=column)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes, color="0.5")
        elif len(columns) > 1:
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=10)
        _layer_axis(ax, layers)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    verdict = fit.reason if fit is not None else ""
    fig.suptitle(title or f"{report.model}: {verdict}", fontsize=11)
    fig.tight_layout()
    return fig


def plot_comparison(reports: Sequence[Report], metric: str = "centered_similarity") -> Figure:
    """``metric`` of several models over absolute depth (layers) and relative depth (layer / L), with each
    model's phase boundaries marked (dashed: plateau start, dotted: climb start)."""
    fig = new_figure((11, 3.8))
    ax_abs, ax_rel = fig.subplots(1, 2)
    for report in reports:
        layers = report.table["layer"].to_numpy()
        values = report.table[metric].to_numpy(dtype=float)
        (line,) = ax_abs.plot(layers, values, marker="o", ms=3, label=report.model)
        depth = max(report.num_layers, 1)
        ax_rel.plot(layers / depth, values, marker="o", ms=3, color=line.get_color(), label=report.model)
        fit = report.phases.get(metric)
        if fit is not None and fit.pattern:
            for boundary, style in zip(fit.boundaries or (), ("--", ":")):
                ax_abs.axvline(boundary, color=line.get_color(), ls=style, alpha=0.6)
                ax_rel.axvline(boundary / depth, color=line.get_color(), ls=style, alpha=0.6)
    _layer_axis(ax_abs, sorted({int(v) for r in reports for v in r.table["layer"]}))
    ax_abs.set_title(f"{metric} over layers")
    ax_rel.set_xlabel("relative depth (layer / L)")
    ax_rel.set_title(f"{metric} over relative depth")
    ax_rel.grid(alpha=0.25)
    ax_abs.legend(fontsize=8)
    fig.tight_layout()
    return fig
