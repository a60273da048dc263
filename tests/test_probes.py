"""Linear probes against scikit-learn's RidgeClassifier; Neural Collapse against direct numpy formulas."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, RidgeClassifier

from hf_isi.metrics import collapse
from hf_isi.metrics.probes import PooledFeatureAccumulator, control_labels
from hf_isi.states import FIT, TEST, LayerStates, TokenLayout, example_keys

C = 4


def labelled_states(n_images=400, dim=6, layers=2, seed=0, start=0, signal=1.5) -> LayerStates:
    """Tokens whose class signal grows with depth; the CLS token carries a weaker copy."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n_images,), generator=g)
    centres = torch.randn(C, dim, generator=torch.Generator().manual_seed(99))
    z0 = torch.randn(n_images, 4, dim, generator=g)
    hidden = []
    for i in range(layers + 1):
        patches = torch.randn(n_images, 4, dim, generator=g) + signal * i * centres[labels][:, None]
        cls = torch.randn(n_images, 1, dim, generator=g) + 0.5 * signal * i * centres[labels][:, None]
        hidden.append(torch.cat([cls, patches], 1))
    return LayerStates(z0, tuple(hidden), TokenLayout(1, 0, (2, 2), (1, 1)), labels=labels,
                       keys=example_keys(range(start, start + n_images)))


def run(states_list, calibration=None, **kw) -> PooledFeatureAccumulator:
    acc = PooledFeatureAccumulator(num_classes=C, **kw)
    acc.setup(calibration or states_list[0])
    for s in states_list:
        acc.update(s)
    return acc


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_probe_matches_sklearn_ridge_classifier(pooling):
    states = labelled_states()
    alpha = 0.1
    cols = run([states], penalties=(alpha,)).compute()
    split = states.split.numpy()
    y = states.labels.numpy()
    control = control_labels(states.keys, C, seed=0).numpy()
    for layer in states.layers:
        x = (states.cls_token(layer) if pooling == "cls" else states.mean_pool(layer))
        if x is None:
            assert np.isnan(cols[f"probe_{pooling}_acc"][layer + 1])
            continue
        x = x.double().numpy()
        fit, test = split == FIT, split == TEST
        lam = alpha * np.trace(np.cov(x[fit].T, bias=True) * fit.sum()) / x.shape[1]
        accs = []
        for target in (y, control):
            clf = RidgeClassifier(alpha=lam, fit_intercept=True, solver="cholesky").fit(x[fit], target[fit])
            accs.append((clf.predict(x[test]) == target[test]).mean())
        np.testing.assert_allclose(cols[f"probe_{pooling}_acc"][layer + 1], accs[0], rtol=1e-6)
        np.testing.assert_allclose(cols[f"probe_{pooling}_control_acc"][layer + 1], accs[1], rtol=1e-6)
        np.testing.assert_allclose(cols[f"probe_{pooling}_selectivity"][layer + 1], accs[0] - accs[1], rtol=1e-6)
    # the class signal grows with depth, control labels carry none
    assert cols[f"probe_{pooling}_acc"][-1] > 0.8
    assert cols[f"probe_{pooling}_control_acc"][-1] < 0.45


def test_probe_close_to_logistic_regression():
    """Not the same estimator, so only a sanity band: both linear probes should agree on easy data."""
    states = labelled_states(seed=4)
    cols = run([states]).compute()
    split, y = states.split.numpy(), states.labels.numpy()
    x = states.mean_pool(2).double().numpy()
    lr = LogisticRegression(max_iter=2000).fit(x[split == FIT], y[split == FIT])
    assert abs(cols["probe_mean_acc"][-1] - lr.score(x[split == TEST], y[split == TEST])) < 0.05


def reference_collapse(x: np.ndarray, y: np.ndarray, w: np.ndarray):
    classes = np.unique(y)
    mu_g = x.mean(0)
    means = np.stack([x[y == c].mean(0) for c in classes])
    sw = sum((x[y == c] - means[i]).T @ (x[y == c] - means[i]) for i, c in enumerate(classes)) / len(x)
    m = means - mu_g
    sb = m.T @ m / len(classes)
    nc1 = np.trace(sw @ np.linalg.pinv(sb)) / len(classes)
    gram = m @ m.T
    etf = np.eye(len(classes)) - 1 / len(classes)
    nc2 = np.linalg.norm(gram / np.linalg.norm(gram) - etf / np.linalg.norm(etf))
    nc3 = np.linalg.norm(w / np.linalg.norm(w) - m / np.linalg.norm(m))
    return nc1, nc2, nc3, means


def test_neural_collapse_matches_numpy():
    states = labelled_states(n_images=300, seed=2)
    acc = run([states], penalties=(1.0,))
    cols = acc.compute()
    y = states.labels.numpy()
    for j, (pooling, layer) in enumerate(acc.features):
        x = (states.cls_token(layer) if pooling == "cls" else states.mean_pool(layer)).double().numpy()
        w = acc.probe(j, 0).weight.T.numpy()
        nc1, nc2, nc3, means = reference_collapse(x, y, w)
        np.testing.assert_allclose(cols[f"nc1_{pooling}"][layer + 1], nc1, rtol=1e-6)
        np.testing.assert_allclose(cols[f"nc2_{pooling}"][layer + 1], nc2, rtol=1e-6)
        np.testing.assert_allclose(cols[f"nc3_{pooling}"][layer + 1], nc3, rtol=1e-6)
        test = states.split.numpy() == TEST
        pred = acc.probe(j, 0).predict(torch.from_numpy(x[test])).argmax(1).numpy()
        nearest = np.argmin(((x[test][:, None] - means[None]) ** 2).sum(-1), axis=1)
        np.testing.assert_allclose(cols[f"nc4_{pooling}"][layer + 1], (nearest == pred).mean(), rtol=1e-12)
    # collapse strengthens with the class signal
    assert cols["nc1_mean"][-1] < cols["nc1_mean"][1]


def test_nc2_is_zero_for_a_simplex_etf():
    c, d = 4, 6
    means = torch.zeros(c, d, dtype=torch.float64)
    means[:, :c] = torch.eye(c) - 1 / c  # equinorm, equiangular, centred
    counts = torch.full((c,), 10.0, dtype=torch.float64)
    gram = (means * counts[:, None]).T @ means  # no within-class scatter
    g = collapse.class_geometry(counts, means * counts[:, None], gram)
    assert collapse.nc2(g) < 1e-12
    assert abs(collapse.nc1(g)) < 1e-12


def test_streaming_merge_and_reservoir_are_order_free():
    whole = labelled_states(n_images=360, seed=7)

    def part(lo, hi):
        return LayerStates(whole.patch_embeddings[lo:hi], tuple(h[lo:hi] for h in whole.hidden_states), whole.layout,
                           labels=whole.labels[lo:hi], keys=whole.keys[lo:hi])

    one = run([whole]).compute()
    many = run([part(i, i + 50) for i in range(0, 360, 50)], whole).compute()
    merged = run([part(200, 360)], whole).merge(run([part(0, 200)], whole)).compute()
    for name, want in one.items():
        np.testing.assert_allclose(many[name], want, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(merged[name], want, rtol=1e-6, err_msg=name)
    # a capped reservoir keeps the same images (the smallest keys) whatever the order
    small_a = run([part(0, 180), part(180, 360)], whole, max_test_images=10).test.keys
    small_b = run([part(180, 360), part(0, 180)], whole, max_test_images=10).test.keys
    assert torch.equal(small_a, small_b) and len(small_a) == 10


def test_fewer_than_two_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        PooledFeatureAccumulator(num_classes=1)


def test_out_of_range_label_is_a_clear_error():
    states = labelled_states(n_images=10)
    acc = PooledFeatureAccumulator(num_classes=2)
    acc.setup(states)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        acc.update(states)


def test_constant_feature_has_no_collapse_metrics():
    """The [CLS] token before any block is the same for every image: NC is undefined there, not 0."""
    states = labelled_states(n_images=120)
    hidden = list(states.hidden_states)
    hidden[0] = hidden[0].clone()
    hidden[0][:, 0] = 3.0
    states = LayerStates(states.patch_embeddings, tuple(hidden), states.layout, labels=states.labels,
                         keys=states.keys)
    cols = run([states]).compute()
    for i in range(1, 5):
        assert np.isnan(cols[f"nc{i}_cls"][1])
        assert np.isfinite(cols[f"nc{i}_cls"][2])
    # the probe on a constant feature predicts one class: accuracy is that class's test frequency
    test = states.split.numpy() == TEST
    freq = np.bincount(states.labels.numpy()[test], minlength=C) / test.sum()
    assert cols["probe_cls_acc"][1] in set(np.round(freq, 12)) or np.isclose(freq, cols["probe_cls_acc"][1]).any()
