import itertools
import json

import numpy as np
import pytest
from scipy import linalg

from hf_isi.phases import PhaseFit, align_phases, align_tradeoffs, fit_phases, tradeoff_layer


def piecewise(x, t1, t2, slopes, start):
    """Continuous three-segment line through (x[0], start) with knots t1 < t2."""
    s1, s2, s3 = slopes
    x = np.asarray(x, dtype=float)
    return start + s1 * (x - x[0]) + (s2 - s1) * np.maximum(x - t1, 0) + (s3 - s2) * np.maximum(x - t2, 0)


def finite_sse(fit: PhaseFit) -> float:
    pts = [(v, f) for v, f in zip(fit.values, fit.fitted) if v is not None]
    return float(sum((v - f) ** 2 for v, f in pts))


def reference_sse(x, y, t1, t2):
    """SSE of the continuous piecewise-linear fit, parameterised by its values at x[0], t1, t2, x[-1]."""
    nodes = [x[0], t1, t2, x[-1]]
    basis = np.stack([np.interp(x, nodes, np.eye(4)[j]) for j in range(4)], axis=1)
    coef, *_ = linalg.lstsq(basis, y)
    r = y - basis @ coef
    return float(r @ r)


CASES = [  # (L, knot1, knot2, slopes)
    (12, 0, 8, (-0.5, 0.002, 0.05)),  # one-step cliff: pre-PE -> +PE
    (24, 3, 17, (-0.08, -0.001, 0.03)),
    (6, 1, 4, (-0.2, 0.0, 0.1)),
    (10, 0, 9, (-0.5, 0.001, 0.2)),  # extreme knots: positions 1 and M - 2 (climb in the last block only)
]


@pytest.mark.parametrize("depth,k1,k2,slopes", CASES)
def test_exact_curve_recovered(depth, k1, k2, slopes):
    layers = np.arange(-1, depth + 1)
    y = piecewise(layers, k1, k2, slopes, 0.6)
    fit = fit_phases(y)
    assert fit.layers == layers.tolist()
    assert fit.boundaries == (k1, k2)
    assert fit.plateau_start == k1 and fit.climb_start == k2
    np.testing.assert_allclose(fit.slopes, slopes, atol=1e-9)
    np.testing.assert_allclose(fit.fitted, y, atol=1e-9)
    assert fit.pattern and fit.quality == pytest.approx(1.0, abs=1e-12)
    assert fit.reason.startswith("cliff-plateau-climb")
    want = ["cliff" if l < k1 else "plateau" if l <= k2 else "climb" for l in layers]
    assert fit.labels == want


def test_noisy_curve_recovered():
    layers = np.arange(-1, 13)
    y = piecewise(layers, 0, 8, (-0.5, 0.002, 0.05), 0.6)
    y = y + np.random.default_rng(0).normal(0, 0.002, len(y))
    fit = fit_phases(y)
    assert fit.pattern and fit.boundaries == (0, 8)
    np.testing.assert_allclose(fit.slopes, (-0.5, 0.002, 0.05), atol=0.01)
    assert fit.quality > 0.99
    assert fit.labels == ["cliff"] + ["plateau"] * 9 + ["climb"] * 4


@pytest.mark.parametrize("seed", range(6))
def test_exhaustive_fit_is_optimal(seed):
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(5, 30))
    layers = np.arange(-1, depth + 1)
    y = piecewise(layers, 1, depth - 3, (-0.1, 0.0, 0.05), 0.4) + rng.normal(0, 0.05, len(layers))
    if seed % 2:  # a missing layer: x must stay the layer index, not the position
        y[depth // 2] = np.nan
    fit = fit_phases(y)
    keep = np.isfinite(y)
    x, yy = layers[keep].astype(float), y[keep]
    pairs = itertools.combinations(range(1, len(x) - 1), 2)
    brute = {(a, b): reference_sse(x, yy, x[a], x[b]) for a, b in pairs}
    best = min(brute.values())
    got = finite_sse(fit)
    assert got <= best + 1e-9 * max(best, 1e-12)
    pos = (int(np.flatnonzero(x == fit.boundaries[0])[0]), int(np.flatnonzero(x == fit.boundaries[1])[0]))
    assert got == pytest.approx(brute[pos], rel=1e-9, abs=1e-12)


def test_missing_layer_inside_segment_keeps_exact_fit():
    layers = np.arange(-1, 17)
    y = piecewise(layers, 2, 12, (-0.1, 0.001, 0.04), 0.5)
    y[[0, 1, 7]] = np.nan  # no pre-PE / +PE value (attention-like), one gap inside the plateau
    fit = fit_phases(y, curve="attention_entropy")
    assert fit.curve == "attention_entropy"
    assert fit.boundaries == (2, 12)
    np.testing.assert_allclose(fit.slopes, (-0.1, 0.001, 0.04), atol=1e-9)
    assert fit.values[0] is None and fit.fitted[7] is None and fit.values[8] == pytest.approx(y[8])
    assert fit.labels[0] == fit.labels[1] == fit.labels[7] == "none"
    assert fit.labels[2:4] == ["cliff", "plateau"]  # layer 1 cliff, layer 2 = knot1 starts the plateau
    assert fit.labels[13] == "plateau" and fit.labels[14] == "climb"  # layer 12 = knot2 still plateau


def test_explicit_layers():
    layers = list(range(3, 15))
    y = piecewise(layers, 5, 11, (-0.3, 0.0, 0.2), 1.0)
    fit = fit_phases(y, layers)
    assert fit.layers == layers and fit.boundaries == (5, 11) and fit.pattern
    with pytest.raises(ValueError):
        fit_phases(y, layers[:-1])
    with pytest.raises(ValueError):
        fit_phases(y, layers[::-1])


def assert_no_pattern(fit, *phrases, absent=()):
    assert not fit.pattern
    assert set(fit.labels) == {"none"}
    for p in phrases:
        assert p in fit.reason, fit.reason
    for p in absent:
        assert p not in fit.reason, fit.reason


def test_monotone_decreasing():
    fit = fit_phases(np.exp(-np.arange(14) / 4.0))
    assert_no_pattern(fit, "no climb", absent=("no cliff",))
    assert fit.slopes[2] < 0


def test_monotone_increasing():
    fit = fit_phases(np.arange(14.0) ** 2)
    assert_no_pattern(fit, "no cliff", absent=("no climb",))


def test_rise_then_fall():
    fit = fit_phases(-((np.arange(14.0) - 6) ** 2))
    assert_no_pattern(fit, "no cliff", "no climb")


def test_constant_curve():
    fit = fit_phases(np.full(10, 0.3))
    assert_no_pattern(fit, "constant")
    assert fit.quality == 1.0 and fit.boundaries == (0, 1)  # ties go to the smallest knot pair


def test_linear_curve_tie_break():
    fit = fit_phases(-0.1 * np.arange(12.0), list(range(1, 13)))
    assert_no_pattern(fit, "no climb")
    assert fit.boundaries == (2, 3)


def test_middle_not_flat():
    y = piecewise(np.arange(-1, 13), 2, 8, (-0.1, -0.08, 0.1), 1.0)
    assert_no_pattern(fit_phases(y), "no plateau", absent=("no cliff", "no climb"))
    assert fit_phases(y, plateau_ratio=0.9).pattern


def test_poor_quality():
    rng = np.random.default_rng(3)
    y = piecewise(np.arange(-1, 13), 1, 8, (-0.05, 0.0, 0.05), 0.3) + rng.normal(0, 0.03, 14)
    loose = fit_phases(y, min_quality=0.0)
    assert loose.pattern, loose.reason
    assert_no_pattern(fit_phases(y, min_quality=0.9999), "poor fit")


def test_too_few_points():
    y = [0.5, 0.1, np.nan, 0.1, 0.3, np.nan]
    fit = fit_phases(y)
    assert_no_pattern(fit, "too few points")
    assert fit.boundaries is None and fit.slopes is None and fit.quality is None
    assert fit.values == [0.5, 0.1, None, 0.1, 0.3, None] and fit.fitted == [None] * 6
    assert fit.plateau_start is None and fit.climb_start is None


def test_no_pattern_hides_boundaries_from_properties():
    fit = fit_phases(np.exp(-np.arange(14) / 4.0))
    assert fit.boundaries is not None
    assert fit.plateau_start is None and fit.climb_start is None


@pytest.mark.parametrize(
    "y",
    [
        piecewise(np.arange(-1, 13), 0, 8, (-0.5, 0.002, 0.05), 0.6),
        np.r_[np.nan, np.nan, np.exp(-np.arange(10) / 3)],
        [0.5, np.nan, 0.1],
    ],
)
def test_dict_round_trip(y):
    fit = fit_phases(y)
    text = json.dumps(fit.to_dict(), allow_nan=False)
    back = PhaseFit.from_dict(json.loads(text))
    assert back == fit
    assert back.boundaries == fit.boundaries and isinstance(back.slopes, (tuple, type(None)))


def test_align_phases():
    small = fit_phases(piecewise(np.arange(-1, 7), 0, 4, (-0.4, 0.0, 0.05), 0.6))
    big = fit_phases(piecewise(np.arange(-1, 13), 2, 9, (-0.2, 0.001, 0.04), 0.6))
    flat = fit_phases(np.exp(-np.arange(26) / 5.0))
    out = align_phases({"vit-d12": big, "vit-d6": small, "vit-d24": flat})
    json.dumps(out, allow_nan=False)
    assert out["reference"] == "vit-d6"
    assert out["models"]["vit-d12"]["climb_start"] == 9
    assert out["models"]["vit-d12"]["climb_start_relative"] == pytest.approx(9 / 12)
    assert out["models"]["vit-d24"]["plateau_start"] is None and out["models"]["vit-d24"]["num_layers"] == 24
    s = out["shifts"]["vit-d12"]
    assert s["plateau_start"] == 2 and s["climb_start"] == 5
    assert s["plateau_start_relative"] == pytest.approx(2 / 12 - 0 / 6)
    assert s["climb_start_relative"] == pytest.approx(9 / 12 - 4 / 6)
    assert set(out["shifts"]) == {"vit-d12", "vit-d24"}
    assert all(v is None for v in out["shifts"]["vit-d24"].values())


def saturating(depth, at, step=0.05, top=0.8):
    layers = np.arange(-1, depth + 1)
    acc = top - step * np.maximum(at - layers, 0)
    isi = 0.1 + 0.02 * (layers + 1)
    return isi, acc


def test_tradeoff_layer():
    isi, acc = saturating(12, 7)
    assert tradeoff_layer(isi, acc) == 7
    wiggle = acc.copy()
    wiggle[11] += 0.005  # layer 10 (index = layer + 1): below tol, still saturated at 7
    assert tradeoff_layer(isi, wiggle) == 7
    assert tradeoff_layer(isi, wiggle, tol=0.001) == 10
    acc_nan = acc.copy()
    acc_nan[[0, 9]] = np.nan
    assert tradeoff_layer(isi, acc_nan) == 7
    assert tradeoff_layer(isi[3:], acc[3:], list(range(2, 13))) == 7


def test_tradeoff_layer_none():
    isi, acc = saturating(12, 7)
    rising = 0.1 + 0.05 * np.arange(14)
    assert tradeoff_layer(isi, rising) is None  # accuracy improves until the last layer
    falling_isi = isi.copy()
    falling_isi[9:] = falling_isi[8] - 0.01 * np.arange(1, 6)
    assert tradeoff_layer(falling_isi, acc) is None  # ISI does not rise after layer 7
    assert tradeoff_layer(isi, [np.nan] * 13 + [0.5]) is None
    with pytest.raises(ValueError):
        tradeoff_layer(isi, acc[:-1])


def test_align_tradeoffs():
    isi_b, acc_b = saturating(12, 7)
    isi_l, acc_l = saturating(24, 17)
    isi_n, acc_n = np.linspace(0, 1, 14), np.linspace(0, 1, 14)
    out = align_tradeoffs(
        {"vit-l": isi_l, "vit-b": isi_b, "vit-n": isi_n},
        {"vit-l": acc_l, "vit-b": acc_b, "vit-n": acc_n},
        {"vit-l": list(range(-1, 25)), "vit-b": None, "vit-n": None},
    )
    json.dumps(out, allow_nan=False)
    assert out["reference"] == "vit-b"  # ties on depth (vit-b, vit-n) go by name
    assert out["models"]["vit-l"]["tradeoff_layer"] == 17 and out["models"]["vit-b"]["tradeoff_layer"] == 7
    assert out["shifts"]["vit-l"]["tradeoff_layer"] == 10
    assert out["shifts"]["vit-l"]["tradeoff_relative"] == pytest.approx(17 / 24 - 7 / 12)
    assert out["models"]["vit-n"]["tradeoff_layer"] is None
    assert out["shifts"]["vit-n"] == {"tradeoff_layer": None, "tradeoff_relative": None}
