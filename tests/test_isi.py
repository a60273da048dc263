"""Reconstruction ISI against scikit-learn's Ridge and r2_score on the same projected data."""

import numpy as np
import pytest
import torch
from _compare import assert_columns_close
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from hf_isi.metrics.isi import ReconstructionISIAccumulator
from hf_isi.states import FIT, TEST, VAL, LayerStates, TokenLayout, example_keys


def mixing_states(n_images=300, grid=(2, 2), dim=5, layers=3, seed=0, start=0, offset=0.0) -> LayerStates:
    """z0 plus layers that mix tokens increasingly (so all-to-all beats self-only) with noise. ``offset``
    gives every position its own mean (like the always-dark border of a digit)."""
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    z0 = torch.randn(n_images, n, dim, generator=g) * torch.linspace(0.5, 2.0, dim)
    z0 = z0 + offset * torch.randn(n, dim, generator=g)
    hidden = []
    x = z0
    for i in range(layers + 1):
        mix = torch.eye(n) + 0.4 * i * torch.randn(n, n, generator=torch.Generator().manual_seed(100 + i))
        x = torch.einsum("ij,bjd->bid", mix, x) + 0.3 * torch.randn(n_images, n, dim, generator=g)
        cls = torch.randn(n_images, 1, dim, generator=g)
        hidden.append(torch.cat([cls, x], dim=1))
    return LayerStates(z0, tuple(hidden), TokenLayout(1, 0, grid, (2, 2)),
                       keys=example_keys(range(start, start + n_images)))


def sklearn_reference(acc: ReconstructionISIAccumulator, states: LayerStates, index: int, alpha_rel: float):
    """R2_all and R2_self computed by scikit-learn from the accumulator's projections.

    Self-only: one ``Ridge`` over all (image, position) rows after removing each position's fit-split mean
    from inputs and targets (a per-position intercept), so it is the block-diagonal all-to-all map."""
    y = acc.targets(states).numpy()
    x = acc.inputs(states, index).numpy()
    split = states.split.numpy()
    n, k = acc.num_targets, acc.dim
    fit, test = split == FIT, split == TEST

    def ridge(xf, yf, xt, intercept=True):
        xc = xf - xf.mean(0)
        lam = alpha_rel * np.trace(xc.T @ xc) / xf.shape[1]
        return Ridge(alpha=lam, fit_intercept=intercept, solver="cholesky").fit(xf, yf).predict(xt)

    pred_all = ridge(x[fit], y[fit], x[test])
    tokens = lambda a: a.reshape(a.shape[0] * n, k)
    mx, my = x[fit].mean(0), y[fit].mean(0)  # per (position, dim)
    pred_self = ridge(tokens(x[fit] - mx), tokens(y[fit] - my), tokens(x[test] - mx), intercept=False)
    pred_self = pred_self.reshape(-1, n * k) + my
    r2 = lambda p: r2_score(y[test], p, multioutput="variance_weighted")
    return r2(pred_all), r2(pred_self)


#: agreement with scikit-learn: float64 to 1e-6 relative; mixed precision (float32 Gram products, float64
#: sums) to 1e-6 absolute (it measures ~1e-7 on this data)
TOLERANCE = {"float64": {"rtol": 1e-6, "atol": 1e-9}, "mixed": {"rtol": 0, "atol": 1e-6}}


@pytest.mark.parametrize("precision", ["float64", "mixed"])
@pytest.mark.parametrize("alpha, offset", [(1e-3, 0.0), (1.0, 0.0), (1e-3, 3.0)])
def test_matches_sklearn_ridge(alpha, offset, precision):
    states = mixing_states(offset=offset)
    acc = ReconstructionISIAccumulator(dim=3, penalties=(alpha,), seed=7, precision=precision)
    acc.setup(states)
    acc.update(states)
    cols = acc.compute()
    reference = ReconstructionISIAccumulator(dim=3, penalties=(alpha,), seed=7)  # float64 projections
    reference.setup(states)
    tol = TOLERANCE[precision]
    for index in range(len(states.layers)):
        r2_all, r2_self = sklearn_reference(reference, states, index, alpha)
        np.testing.assert_allclose(cols["isi_r2_all"][index], r2_all, **tol)
        np.testing.assert_allclose(cols["isi_r2_self"][index], r2_self, **tol)
        np.testing.assert_allclose(cols["isi"][index], r2_all - r2_self, **tol)
    # normalised variant: each R^2 divided by its value at the +PE layer (index 1)
    want = cols["isi_r2_all"] / cols["isi_r2_all"][1] - cols["isi_r2_self"] / cols["isi_r2_self"][1]
    np.testing.assert_allclose(cols["isi_normalized"], want, rtol=1e-12)
    # mixing grows with depth here, so scrambling must show: the deepest layer gains from all tokens
    assert cols["isi"][-1] > 0.05


def test_penalty_chosen_on_validation_split():
    states = mixing_states(n_images=200, seed=3)
    grid = (1e-4, 1e-1, 10.0, 1000.0)
    acc = ReconstructionISIAccumulator(dim=3, penalties=grid, seed=1)
    acc.setup(states)
    acc.update(states)
    cols = acc.compute()
    y = acc.targets(states).numpy()
    split = states.split.numpy()
    for index in (0, 3):
        x = acc.inputs(states, index).numpy()
        xf, yf = x[split == FIT], y[split == FIT]
        xc = xf - xf.mean(0)
        scale = np.trace(xc.T @ xc) / xf.shape[1]
        val_sse = [((Ridge(alpha=a * scale).fit(xf, yf).predict(x[split == VAL]) - y[split == VAL]) ** 2).sum()
                   for a in grid]
        assert cols["isi_penalty_all"][index] == grid[int(np.argmin(val_sse))]


@pytest.mark.parametrize("precision", ["float64", "mixed"])
def test_streaming_and_merge_equal_one_batch(precision):
    whole = mixing_states(n_images=240, seed=5)

    def part(lo, hi):
        return LayerStates(whole.patch_embeddings[lo:hi], tuple(h[lo:hi] for h in whole.hidden_states),
                           whole.layout, keys=whole.keys[lo:hi])

    def run(batches, calibration=whole):
        acc = ReconstructionISIAccumulator(dim=3, seed=2, precision=precision)
        acc.buffer_images = 50  # several flushes, at batch boundaries that differ between the runs
        acc.setup(calibration)
        for b in batches:
            acc.update(b)
        return acc

    one = run([whole]).compute()
    many = run([part(i, i + 17) for i in range(0, 240, 17)]).compute()
    merged = run([part(0, 100)]).merge(run([part(100, 240)])).compute()
    assert_columns_close(many, one, precision, ("isi", "isi_r2_all", "isi_r2_self"))
    assert_columns_close(merged, one, precision, ("isi", "isi_r2_all", "isi_r2_self"))


def test_merge_refuses_different_calibration():
    a, b = mixing_states(seed=1), mixing_states(seed=2)
    left, right = ReconstructionISIAccumulator(dim=3), ReconstructionISIAccumulator(dim=3)
    left.setup(a)
    right.setup(b)
    with pytest.raises(ValueError, match="calibration"):
        left.merge(right)


def test_self_only_missing_when_token_count_changes():
    states = mixing_states(n_images=120)
    # a "hierarchical" last layer with fewer tokens (patch merging)
    merged = states.hidden_states[-1][:, :3]
    states = LayerStates(states.patch_embeddings, states.hidden_states[:-1] + (merged,), states.layout,
                         keys=states.keys)
    acc = ReconstructionISIAccumulator(dim=2)
    acc.setup(states)
    acc.update(states)
    cols = acc.compute()
    assert np.isnan(cols["isi_r2_self"][-1]) and np.isnan(cols["isi"][-1])
    assert np.isfinite(cols["isi_r2_all"][-1])


@pytest.mark.parametrize("precision", ["float64", "mixed"])
def test_blocked_gram_sums_match_numpy(monkeypatch, precision):
    """Gram sums wide enough to be updated in several symmetric blocks (upper blocks computed, lower ones
    mirrored) equal numpy's ``x^T x`` / ``x^T y`` on the same projected rows, per split."""
    from hf_isi.metrics import isi

    monkeypatch.setattr(isi, "_MIN_GRAM_BLOCK", 8)  # P = 9 positions x 4 dims = 36 columns -> 4 blocks
    states = mixing_states(n_images=90, grid=(3, 3), dim=6, layers=2, seed=11)
    acc = ReconstructionISIAccumulator(dim=4, seed=3, precision=precision)
    acc.buffer_images = 40  # flushes when full and when flush() is called
    acc.setup(states)
    for lo in range(0, 90, 25):
        acc.update(LayerStates(states.patch_embeddings[lo:lo + 25], tuple(h[lo:lo + 25] for h in states.hidden_states),
                               states.layout, keys=states.keys[lo:lo + 25]))
    acc.flush()  # xx and xy are plain states: the last buffered rows are added explicitly (issue 17)
    assert len(isi._block_bounds(acc.xx[0].shape[-1])) == 4
    reference = ReconstructionISIAccumulator(dim=4, seed=3)  # float64 projections of the same rows
    reference.setup(states)
    y = reference.targets(states).numpy()
    split = states.split.numpy()
    tol = {"float64": 1e-10, "mixed": 1e-5}[precision]
    for i in range(len(states.layers)):
        x = reference.inputs(states, i).numpy()
        for s in range(3):
            xs, ys = x[split == s], y[split == s]
            scale = np.abs(xs).max() ** 2 * len(xs)
            np.testing.assert_allclose(acc.xx[i][s].numpy(), xs.T @ xs, rtol=0, atol=tol * scale)
            np.testing.assert_allclose(acc.xy[i][s].numpy(), xs.T @ ys, rtol=0, atol=tol * scale)
            bounds = isi._block_bounds(x.shape[1])
            for j, (r0, r1) in enumerate(bounds):  # the lower off-diagonal blocks are exact mirrors
                for c0, c1 in bounds[j + 1:]:
                    assert torch.equal(acc.xx[i][s][c0:c1, r0:r1], acc.xx[i][s][r0:r1, c0:c1].T)
