"""Cliff / Plateau / Climb phases of a per-layer curve, and their alignment across models.

A curve ``y_l`` over layers ``l`` (``-1`` pre-PE, ``0`` +PE, ``1..L`` blocks; non-finite entries dropped) is
fitted by the exact best *continuous* piecewise-linear least-squares function with two knots (three
segments). Knots sit at data points; every admissible pair is tried (``L <= 64`` gives at most ~2,000 pairs,
solved as one batched QR), so the optimum over data-point knots is exact, not a local search. The pattern is
called Cliff-Plateau-Climb when the first segment falls, the last rises, the middle is flat relative to both,
and the fit explains enough variance; otherwise the fit says in words which of these fails. Cross-model
helpers report where the boundaries (and the "information-task trade-off" layer) sit in absolute and relative
depth, and how far they move from the shallowest model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["PhaseFit", "fit_phases", "align_phases", "tradeoff_layer", "align_tradeoffs"]

MIN_POINTS = 5
_TIE_RTOL = 1e-12


@dataclass(frozen=True)
class PhaseFit:
    """A two-knot continuous piecewise-linear fit of one curve and its Cliff/Plateau/Climb verdict.

    Attributes:
        curve: the name of the fitted curve (e.g. ``"centered_similarity"``).
        layers: the layer index of every input point.
        values: the input values, ``None`` where not finite.
        boundaries: layer indices ``(knot1, knot2)`` of the best fit: knot1 is where the plateau starts, knot2
            where the climb starts (the knot point itself is the last plateau point). Reported whenever a fit
            exists, even if ``pattern`` is False, for diagnosis; ``None`` with fewer than 5 finite points.
        slopes: the three segment slopes, per layer step.
        quality: ``R^2 = 1 - SSE / SST`` of the fit over the finite points.
        pattern: whether the curve shows Cliff-Plateau-Climb (see :func:`fit_phases`).
        reason: a plain-words explanation of ``pattern``.
        labels: ``"cliff"`` / ``"plateau"`` / ``"climb"`` per input point when ``pattern``; otherwise (and at
            non-finite points) ``"none"``.
        fitted: the fitted value at every input point, ``None`` where the input is not finite or unfitted.
    """

    curve: str
    layers: list[int]
    values: list[float | None]
    boundaries: tuple[int, int] | None
    slopes: tuple[float, float, float] | None
    quality: float | None
    pattern: bool
    reason: str
    labels: list[str]
    fitted: list[float | None]

    @property
    def plateau_start(self) -> int | None:
        """Layer where the plateau starts (knot1); ``None`` when there is no Cliff-Plateau-Climb pattern."""
        return self.boundaries[0] if self.pattern and self.boundaries is not None else None

    @property
    def climb_start(self) -> int | None:
        """Layer where the climb starts (knot2), or ``None`` when there is no Cliff-Plateau-Climb pattern."""
        return self.boundaries[1] if self.pattern and self.boundaries is not None else None

    @property
    def num_layers(self) -> int:
        """``L``: the largest layer index of the curve (the depth used for relative positions)."""
        return max(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain Python types, non-finite numbers as ``None``)."""
        return {
            "curve": self.curve,
            "layers": [int(l) for l in self.layers],
            "values": [_num(v) for v in self.values],
            "boundaries": None if self.boundaries is None else [int(b) for b in self.boundaries],
            "slopes": None if self.slopes is None else [_num(s) for s in self.slopes],
            "quality": _num(self.quality),
            "pattern": bool(self.pattern),
            "reason": str(self.reason),
            "labels": [str(s) for s in self.labels],
            "fitted": [_num(v) for v in self.fitted],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PhaseFit:
        """Inverse of :meth:`to_dict`."""
        b, s = d.get("boundaries"), d.get("slopes")
        return cls(
            curve=str(d["curve"]),
            layers=[int(l) for l in d["layers"]],
            values=[_num(v) for v in d["values"]],
            boundaries=None if b is None else (int(b[0]), int(b[1])),
            slopes=None if s is None else (float(s[0]), float(s[1]), float(s[2])),
            quality=_num(d.get("quality")),
            pattern=bool(d["pattern"]),
            reason=str(d["reason"]),
            labels=[str(x) for x in d["labels"]],
            fitted=[_num(v) for v in d["fitted"]],
        )


def _num(v: Any) -> float | None:
    """Plain float, or ``None`` for missing / non-finite values."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _layers_for(n: int, layers: Sequence[int] | None) -> list[int]:
    """Default layer indices ``-1, 0, ..., n - 2`` (pre-PE, +PE, blocks); otherwise validated ``layers``."""
    if layers is None:
        return list(range(-1, n - 1))
    out = [int(l) for l in layers]
    if len(out) != n:
        raise ValueError(f"{len(out)} layers for {n} values")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError("layers must be strictly increasing")
    return out


def _curve(values: Any) -> np.ndarray:
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"expected a 1-D curve, got shape {y.shape}")
    return y


def _basis(x: np.ndarray, t1: float, t2: float) -> np.ndarray:
    """Design matrix ``[1, x, max(x - t1, 0), max(x - t2, 0)]``."""
    return np.stack([np.ones_like(x), x, np.maximum(x - t1, 0.0), np.maximum(x - t2, 0.0)], axis=-1)


def _best_two_knots(x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """Exhaustive search: the knot positions ``1 <= k1 < k2 <= M - 2`` minimising the SSE.

    Ties (SSE within ``1e-12 * max(SSE_min, SST)``) go to the lexicographically smallest ``(k1, k2)``.
    """
    m = len(x)
    pairs = np.array([(i, j) for i in range(1, m - 2) for j in range(i + 1, m - 1)])
    t1, t2 = x[pairs[:, 0]][:, None], x[pairs[:, 1]][:, None]
    xs = x[None, :]
    design = np.stack(
        [np.ones((len(pairs), m)), np.broadcast_to(xs, (len(pairs), m)), np.maximum(xs - t1, 0.0),
         np.maximum(xs - t2, 0.0)],
        axis=-1,
    )  # [P, M, 4], full column rank: each segment holds at least two points
    q, _ = np.linalg.qr(design)
    yc = y - y.mean()
    resid = yc[None, :] - np.einsum("pmk,pk->pm", q, np.einsum("pmk,m->pk", q, yc))
    sse = np.einsum("pm,pm->p", resid, resid)
    tol = _TIE_RTOL * max(float(sse.min()), float(yc @ yc))
    best = int(np.flatnonzero(sse <= sse.min() + tol)[0])
    return int(pairs[best, 0]), int(pairs[best, 1])


def fit_phases(
    values: Any,
    layers: Sequence[int] | None = None,
    *,
    curve: str = "centered_similarity",
    min_quality: float = 0.5,
    plateau_ratio: float = 0.5,
) -> PhaseFit:
    """Fit three continuous linear segments to a per-layer curve and decide whether it is Cliff-Plateau-Climb.

    Definition. Keep the ``M`` finite points ``(x_i, y_i)``, ``x_i`` their layer indices in increasing order
    (``layers`` defaults to ``-1, 0, 1, ..., L``). For every pair of knots at data points,
    ``t1 = x_k1, t2 = x_k2`` with ``1 <= k1 < k2 <= M - 2``, solve the linear least squares
    ``y ~ a + b x + c max(x - t1, 0) + d max(x - t2, 0)`` and keep the pair with the smallest
    ``SSE = sum_i (y_i - f(x_i))^2`` (ties within ``1e-12`` relative: smallest ``(k1, k2)``). Slopes are
    ``s1 = b``, ``s2 = b + c``, ``s3 = b + c + d`` (per layer); ``quality = R^2 = 1 - SSE / SST`` with
    ``SST = sum_i (y_i - mean y)^2`` (1.0 when ``SST = 0``).

    The curve is Cliff-Plateau-Climb iff ``s1 < 0``, ``s3 > 0``,
    ``|s2| <= plateau_ratio * min(|s1|, |s3|)`` and ``R^2 >= min_quality`` (and the curve is not constant).
    Then points before knot1 are ``"cliff"``, knot1..knot2 ``"plateau"``, after knot2 ``"climb"``.

    Note: the x coordinate is the layer index, not the position among finite points; the two agree up to a
    shift when the finite layers are contiguous, and a gap (a missing layer inside a segment) then does not
    bend the fit.

    Args:
        values: the curve, one value per layer (NaN / inf for missing layers).
        layers: layer index of each value, strictly increasing; default ``-1 .. len(values) - 2``.
        curve: name recorded in the result.
        min_quality: the smallest ``R^2`` that counts as a pattern.
        plateau_ratio: how flat the middle segment must be relative to the outer two.
    """
    y_all = _curve(values)
    layer_list = _layers_for(len(y_all), layers)
    finite = np.isfinite(y_all)
    vals = [float(v) if f else None for v, f in zip(y_all, finite)]
    none_labels = ["none"] * len(y_all)
    m = int(finite.sum())
    if m < MIN_POINTS:
        return PhaseFit(
            curve, layer_list, vals, None, None, None, False,
            f"too few points: {m} finite value(s), a three-segment fit needs at least {MIN_POINTS}",
            none_labels, [None] * len(y_all),
        )

    idx = np.flatnonzero(finite)
    x = np.asarray(layer_list, dtype=np.float64)[idx]
    y = y_all[idx]
    k1, k2 = _best_two_knots(x, y)
    mean = float(y.mean())
    design = _basis(x, x[k1], x[k2])
    coef, *_ = np.linalg.lstsq(design, y - mean, rcond=None)
    fit = design @ coef + mean
    sse = float(np.sum((y - fit) ** 2))
    sst = float(np.sum((y - mean) ** 2))
    quality = 1.0 if sst == 0.0 else 1.0 - sse / sst
    s1 = float(coef[1])
    s2 = s1 + float(coef[2])
    s3 = s2 + float(coef[3])
    b1, b2 = layer_list[idx[k1]], layer_list[idx[k2]]

    failures: list[str] = []
    scale = float(np.max(np.abs(y)))
    if float(np.ptp(y)) <= _TIE_RTOL * scale:
        failures.append("constant curve: all finite values are equal, so there is no cliff, plateau or climb")
    else:
        if not s1 < 0:
            failures.append(f"no cliff: the first segment does not drop (slope {s1:+.3g})")
        if not s3 > 0:
            failures.append(f"no climb: the last segment does not rise (slope {s3:+.3g})")
        if s1 < 0 < s3 and not abs(s2) <= plateau_ratio * min(abs(s1), abs(s3)):
            failures.append(
                f"no plateau: the middle segment (slope {s2:+.3g}) is not flat next to the cliff and climb "
                f"(|slope| > {plateau_ratio:g} * min(|{s1:.3g}|, |{s3:.3g}|))"
            )
        if not quality >= min_quality:
            failures.append(f"poor fit: R^2 {quality:.3f} < min_quality {min_quality:g}")
    pattern = not failures
    if pattern:
        reason = (
            f"cliff-plateau-climb: cliff (slope {s1:+.3g}) until layer {b1}, plateau (slope {s2:+.3g}) "
            f"from layer {b1} to {b2}, climb (slope {s3:+.3g}) after layer {b2}; R^2 {quality:.3f}"
        )
        labels = list(none_labels)
        for pos, i in enumerate(idx):
            labels[i] = "cliff" if pos < k1 else ("plateau" if pos <= k2 else "climb")
    else:
        reason = "; ".join(failures)
        labels = none_labels
    fitted: list[float | None] = [None] * len(y_all)
    for i, v in zip(idx, fit):
        fitted[i] = float(v)
    return PhaseFit(curve, layer_list, vals, (b1, b2), (s1, s2, s3), float(quality), pattern, reason, labels,
                    fitted)


def _relative(layer: int | None, depth: int) -> float | None:
    return None if layer is None or depth == 0 else float(layer) / float(depth)


def _diff(a: float | int | None, b: float | int | None) -> Any:
    return None if a is None or b is None else a - b


def _reference(depths: Mapping[str, int]) -> str | None:
    """The shallowest model (fewest layers; ties broken by name)."""
    return min(depths, key=lambda k: (depths[k], k)) if depths else None


def align_phases(fits: Mapping[str, PhaseFit]) -> dict[str, Any]:
    """Align Cliff/Plateau/Climb boundaries across models.

    For each model with depth ``L = max(layers)``: ``plateau_start`` / ``climb_start`` in layers (``None``
    when its curve shows no pattern) and relative depth ``layer / L``. The reference is the model with the
    fewest layers (ties by name); for every other model ``m``, ``shift = boundary_m - boundary_ref`` in layers
    and in relative depth (``None`` if either side has no pattern).

    Returns:
        ``{"reference": name, "models": {name: {...}}, "shifts": {name: {"plateau_start": ...,
        "climb_start": ..., "plateau_start_relative": ..., "climb_start_relative": ...}}}`` (JSON-ready).
    """
    models: dict[str, dict[str, Any]] = {}
    for name, fit in fits.items():
        depth = fit.num_layers
        ps, cs = fit.plateau_start, fit.climb_start
        models[name] = {
            "num_layers": int(depth),
            "pattern": bool(fit.pattern),
            "plateau_start": ps,
            "climb_start": cs,
            "plateau_start_relative": _relative(ps, depth),
            "climb_start_relative": _relative(cs, depth),
            "quality": _num(fit.quality),
            "reason": fit.reason,
        }
    ref = _reference({k: v["num_layers"] for k, v in models.items()})
    shifts: dict[str, dict[str, Any]] = {}
    if ref is not None:
        r = models[ref]
        for name, mdl in models.items():
            if name == ref:
                continue
            shifts[name] = {
                key: _diff(mdl[key], r[key])
                for key in ("plateau_start", "climb_start", "plateau_start_relative", "climb_start_relative")
            }
    return {"reference": ref, "models": models, "shifts": shifts}


def tradeoff_layer(
    isi: Any,
    accuracy: Any,
    layers: Sequence[int] | None = None,
    *,
    tol: float = 0.01,
) -> int | None:
    """The "information-task trade-off" layer: probe accuracy has stopped improving, the ISI keeps rising.

    Definition. Over layers with finite accuracy ``A``, ``l*`` is the first layer before the last one such
    that ``A_l <= A_{l*} + tol`` for every later finite ``A_l``. It is returned iff ``ISI_{l*}`` is finite and
    the ISI at the last finite layer (after ``l*``) is strictly larger: ``ISI_last > ISI_{l*}``. ``None`` when
    accuracy never plateaus before its last layer, or the ISI does not rise after ``l*``.

    Args:
        isi: ISI per layer (NaN where missing).
        accuracy: probe accuracy per layer (NaN where missing), same length.
        layers: layer index of each entry; default ``-1 .. len - 2``.
        tol: improvements of at most ``tol`` (absolute accuracy) do not count.
    """
    s = _curve(isi)
    a = _curve(accuracy)
    if len(s) != len(a):
        raise ValueError(f"isi has {len(s)} layers, accuracy {len(a)}")
    layer_list = _layers_for(len(a), layers)
    acc_idx = np.flatnonzero(np.isfinite(a))
    if len(acc_idx) < 2:
        return None
    # suffix max of the later accuracies: l* qualifies iff max_{later} A <= A_{l*} + tol
    later_max = np.maximum.accumulate(a[acc_idx][::-1])[::-1][1:]
    ok = later_max <= a[acc_idx][:-1] + tol
    if not ok.any():
        return None
    star = int(acc_idx[int(np.argmax(ok))])
    isi_idx = np.flatnonzero(np.isfinite(s))
    if not np.isfinite(s[star]) or len(isi_idx) == 0 or isi_idx[-1] <= star:
        return None
    return layer_list[star] if s[isi_idx[-1]] > s[star] else None


def align_tradeoffs(
    isi_by_model: Mapping[str, Any],
    acc_by_model: Mapping[str, Any],
    layers_by_model: Mapping[str, Sequence[int] | None] | None = None,
    *,
    tol: float = 0.01,
) -> dict[str, Any]:
    """Trade-off layers (:func:`tradeoff_layer`) per model and their shift from the shallowest model.

    For each model with depth ``L = max(layers)``: ``tradeoff_layer`` and ``tradeoff_relative = l* / L``. The
    reference is the model with the fewest layers (ties by name); ``shift = l*_m - l*_ref`` in layers and in
    relative depth, ``None`` where either is ``None``.

    Returns:
        ``{"reference": name, "models": {name: {"num_layers", "tradeoff_layer", "tradeoff_relative"}},
        "shifts": {name: {"tradeoff_layer": ..., "tradeoff_relative": ...}}}`` (JSON-ready).
    """
    models: dict[str, dict[str, Any]] = {}
    for name, isi in isi_by_model.items():
        layers = None if layers_by_model is None else layers_by_model.get(name)
        layer_list = _layers_for(len(_curve(isi)), layers)
        depth = max(layer_list)
        lstar = tradeoff_layer(isi, acc_by_model[name], layer_list, tol=tol)
        models[name] = {
            "num_layers": int(depth),
            "tradeoff_layer": lstar,
            "tradeoff_relative": _relative(lstar, depth),
        }
    ref = _reference({k: v["num_layers"] for k, v in models.items()})
    shifts: dict[str, dict[str, Any]] = {}
    if ref is not None:
        r = models[ref]
        for name, mdl in models.items():
            if name != ref:
                shifts[name] = {k: _diff(mdl[k], r[k]) for k in ("tradeoff_layer", "tradeoff_relative")}
    return {"reference": ref, "models": models, "shifts": shifts}
