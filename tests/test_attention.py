import dataclasses

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, jensenshannon
from scipy.stats import entropy

from hf_isi.metrics.attention import COLUMNS, PER_HEAD, AttentionAccumulator
from hf_isi.states import LayerStates, TokenLayout

RTOL = 1e-6
#: mixed precision (float32 elementwise work and row sums, float64 beyond): agreement with scipy to 1e-6
#: absolute for the unit-scale metrics, 1e-6 relative for distances in pixels
MIXED_ATOL = 1e-6


def grid_positions(rows: int, cols: int, stride: tuple[float, float]) -> np.ndarray:
    """Pixel (y, x) of each patch of a row-major grid."""
    pos = [(r * stride[0], c * stride[1]) for r in range(rows) for c in range(cols)]
    return np.array(pos, dtype=np.float64)


def reference_layer(p, x, y, prefix, cls, positions):
    """Per-head entropy / CCC / ACI / distance and the residual cosine of one layer, by direct loops."""
    p = np.asarray(p, dtype=np.float64)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    maps, heads, t_q, t_k = p.shape
    dist = cdist(positions, positions) if positions is not None else None
    out = {k: np.zeros(heads) for k in ("attn_entropy", "ccc", "aci", "attn_distance")}
    for h in range(heads):
        ent, ccc, jsd, dst = [], [], [], []
        for b in range(maps):
            rows = p[b, h]
            mean_row = rows[prefix:].mean(axis=0)
            for q in range(t_q):
                ent.append(entropy(rows[q]) / np.log(t_k))
            for q in range(prefix, t_q):
                if cls is not None:
                    ccc.append(rows[q, cls])
                jsd.append(jensenshannon(rows[q], mean_row, base=2) ** 2)
                if dist is not None:
                    w = rows[q, prefix:] / rows[q, prefix:].sum()
                    dst.append(sum(w[k] * dist[q - prefix, k] for k in range(t_k - prefix)))
        out["attn_entropy"][h] = np.mean(ent)
        out["ccc"][h] = np.mean(ccc) if ccc else np.nan
        out["aci"][h] = 1 - np.mean(jsd)
        out["attn_distance"][h] = np.mean(dst) if dst else np.nan
    cosines = [
        x[b, i] @ y[b, i] / (np.linalg.norm(x[b, i]) * np.linalg.norm(y[b, i]))
        for b in range(x.shape[0])
        for i in range(x.shape[1])
    ]
    out["attn_residual_cosine"] = float(np.mean(cosines))
    return out


def reference(states: LayerStates, specs):
    """Columns and per-head curves over layers -1..L; ``specs[l-1] = (prefix, cls, positions)``."""
    layers = [
        reference_layer(a.numpy(), x.numpy(), y.numpy(), *spec)
        for a, (x, y), spec in zip(states.attentions, states.attention_residuals, specs)
    ]
    nan2 = [np.nan, np.nan]
    cols = {k: np.array(nan2 + [lay[k].mean() for lay in layers]) for k in ("attn_entropy", "ccc", "aci")}
    cols["attn_distance"] = np.array(nan2 + [lay["attn_distance"].mean() for lay in layers])
    cols["attn_residual_cosine"] = np.array(nan2 + [lay["attn_residual_cosine"] for lay in layers])
    cols["isi_attention"] = (1 - cols["attn_residual_cosine"]) * cols["attn_entropy"]
    per_head = ("attn_entropy", "ccc", "aci", "attn_distance")
    heads = {f"{k}_per_head": [lay[k] for lay in layers] for k in per_head}
    return cols, heads


def vit_specs(states: LayerStates):
    lay = states.layout
    pos = grid_positions(*lay.patch_grid, lay.patch_size)
    return [(lay.num_prefix_tokens, lay.cls_index, pos)] * states.num_layers


def run(*batches: LayerStates, precision: str = "float64") -> AttentionAccumulator:
    acc = AttentionAccumulator(precision)
    acc.setup(batches[0])
    for b in batches:
        acc.update(b)
    return acc


def check(acc: AttentionAccumulator, states: LayerStates, specs) -> dict:
    want, want_heads = reference(states, specs)
    got = acc.compute()
    rtol, atol = (RTOL, 1e-12) if acc.precision == "float64" else (RTOL, MIXED_ATOL)
    assert set(got) == set(COLUMNS)
    for name in COLUMNS:
        assert got[name].shape == (states.num_layers + 2,)
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)
    heads = acc.per_head()
    assert set(heads) == set(PER_HEAD)
    for name in PER_HEAD:
        curve = heads[name]
        assert curve[:2] == [None, None]
        for got_l, want_l in zip(curve[2:], want_heads[name]):
            if np.isnan(want_l).all():
                assert got_l is None, name
            else:
                np.testing.assert_allclose(got_l, want_l, rtol=rtol, atol=atol, err_msg=name)
    return got


def with_layout(states: LayerStates, **changes) -> LayerStates:
    return dataclasses.replace(states, layout=dataclasses.replace(states.layout, **changes))


@pytest.mark.parametrize("precision", ["float64", "mixed"])
@pytest.mark.parametrize("prefix", [1, 2])
def test_vit_matches_reference(make_states, prefix, precision):
    # rectangular grid and non-square patches so rows and columns cannot be swapped unnoticed
    states = with_layout(make_states(batch_size=3, grid=(2, 3), prefix=prefix, heads=3), patch_size=(4, 6))
    got = check(run(states, precision=precision), states, vit_specs(states))
    assert np.isfinite(got["ccc"][2:]).all()
    assert np.isnan(got["ccc"][:2]).all()


def test_no_cls_gives_missing_ccc(make_states):
    states = make_states(batch_size=3, grid=(3, 3), prefix=0)
    assert states.layout.cls_index is None
    got = check(run(states), states, vit_specs(states))
    assert np.isnan(got["ccc"]).all()
    assert np.isfinite(got["aci"][2:]).all() and np.isfinite(got["attn_distance"][2:]).all()


def swin_like_states(batch: int = 2, seed: int = 0) -> LayerStates:
    """4x4 patches of 4 px. Layers 1-2: four 2x2 windows per image (residuals per image, then per window);
    layer 3: after patch merging, one 2x2 window on a 2x2 grid (8 px per token). Head counts differ."""
    g = torch.Generator().manual_seed(seed)
    layout = TokenLayout(num_prefix_tokens=0, cls_index=None, patch_grid=(4, 4), patch_size=(4, 4))

    def attn(maps, heads, t):
        return torch.softmax(2 * torch.randn(maps, heads, t, t, generator=g), dim=-1)

    def pair(*shape):
        x = torch.randn(*shape, generator=g)
        return x, x + 0.7 * torch.randn(*shape, generator=g)

    return LayerStates(
        patch_embeddings=torch.randn(batch, 16, 5, generator=g),
        hidden_states=(torch.randn(batch, 16, 5, generator=g),) * 3
        + (torch.randn(batch, 4, 10, generator=g),),
        layout=layout,
        attentions=(attn(batch * 4, 2, 4), attn(batch * 4, 2, 4), attn(batch, 4, 4)),
        attention_residuals=(pair(batch, 16, 5), pair(batch * 4, 4, 5), pair(batch, 4, 10)),
    )


SWIN_SPECS = [
    (0, None, grid_positions(2, 2, (4, 4))),
    (0, None, grid_positions(2, 2, (4, 4))),
    (0, None, grid_positions(2, 2, (8, 8))),
]


@pytest.mark.parametrize("precision", ["float64", "mixed"])
def test_windowed_attention_matches_reference(precision):
    states = swin_like_states()
    got = check(run(states, precision=precision), states, SWIN_SPECS)
    assert np.isnan(got["ccc"]).all()
    assert [len(h) for h in run(states).per_head()["aci_per_head"][2:]] == [2, 2, 4]


@pytest.mark.parametrize("tokens", [4, 5])
def test_windowed_on_layout_with_cls(make_states, tokens):
    # attention maps per window (B*W rows) on a layout with a CLS: windowed, so no prefix, no CCC.
    # tokens=5 equals prefix + patches, so only the row count (W > 1) reveals the windows; 5 is not a
    # square window, so there is no distance either.
    states = make_states(batch_size=2, grid=(2, 2), prefix=1)
    g = torch.Generator().manual_seed(3)
    shape = (4, 2, tokens, tokens)
    windows = tuple(torch.softmax(torch.randn(shape, generator=g), -1) for _ in states.attentions)
    states = dataclasses.replace(states, attentions=windows)
    # residuals carry 5 tokens per image: stride 4 px * sqrt(4 patches / 5 tokens)
    pos = grid_positions(2, 2, (4 * np.sqrt(4 / 5),) * 2) if tokens == 4 else None
    got = check(run(states), states, [(0, None, pos)] * states.num_layers)
    assert np.isnan(got["ccc"]).all()
    assert np.isfinite(got["attn_distance"][2:]).all() == (tokens == 4)


def concat(a: LayerStates, b: LayerStates) -> LayerStates:
    return LayerStates(
        patch_embeddings=torch.cat([a.patch_embeddings, b.patch_embeddings]),
        hidden_states=tuple(torch.cat(p) for p in zip(a.hidden_states, b.hidden_states)),
        layout=a.layout,
        attentions=tuple(torch.cat(p) for p in zip(a.attentions, b.attentions)),
        attention_residuals=tuple(
            (torch.cat([x1, x2]), torch.cat([y1, y2]))
            for (x1, y1), (x2, y2) in zip(a.attention_residuals, b.attention_residuals)
        ),
    )


@pytest.mark.parametrize("windowed", [False, True])
def test_streaming_equals_batch_and_merge(make_states, windowed):
    if windowed:
        a, b = swin_like_states(2, seed=1), swin_like_states(3, seed=2)
        specs = SWIN_SPECS
    else:
        a, b = make_states(batch_size=4, seed=1, prefix=2), make_states(batch_size=3, seed=2, prefix=2)
        specs = vit_specs(a)
    whole = concat(a, b)
    one = run(whole).compute()
    streamed = run(a, b).compute()
    left, right = run(a), AttentionAccumulator()
    right.setup(a)
    right.update(b)
    merged_acc = left.merge(right)
    merged = merged_acc.compute()
    for name in COLUMNS:
        np.testing.assert_allclose(streamed[name], one[name], rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(merged[name], one[name], rtol=1e-12, err_msg=name)
    check(merged_acc, whole, specs)
    # resume: the saved states alone reproduce the numbers
    restored = AttentionAccumulator()
    restored.load_state_dict(merged_acc.state_dict())
    for name in COLUMNS:
        np.testing.assert_allclose(restored.compute()[name], one[name], rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("precision", ["float64", "mixed"])
def test_distance_when_nearly_all_mass_is_on_cls(make_states, precision):
    # patch rows putting 1 - 1e-6 of their mass on [CLS]: the distance renormalises the remaining 1e-6 over the
    # patch keys, which must not be computed as a difference of nearly equal sums (in float32 that moved the
    # reference models' distances by up to 675 px)
    states = make_states(batch_size=2, grid=(3, 3), prefix=1)
    g = torch.Generator().manual_seed(4)
    shaped = []
    for attn in states.attentions:
        patch = torch.softmax(3 * torch.randn(attn.shape[:-1] + (attn.shape[-1] - 1,), generator=g), dim=-1)
        shaped.append(torch.cat([torch.full(attn.shape[:-1] + (1,), 1 - 1e-6), 1e-6 * patch], dim=-1))
    states = dataclasses.replace(states, attentions=tuple(shaped))
    got = check(run(states, precision=precision), states, vit_specs(states))
    assert np.isfinite(got["attn_distance"][2:]).all()


def test_uniform_attention_golden(make_states):
    states = make_states(batch_size=2, grid=(2, 2), prefix=1, heads=3)
    uniform = tuple(torch.full_like(a, 1 / a.shape[-1]) for a in states.attentions)
    got = run(dataclasses.replace(states, attentions=uniform)).compute()
    np.testing.assert_allclose(got["attn_entropy"][2:], 1, rtol=1e-12)
    np.testing.assert_allclose(got["aci"][2:], 1, rtol=1e-12)
    np.testing.assert_allclose(got["ccc"][2:], 1 / 5, rtol=1e-12)
    # patch keys of a 2x2 grid of 4 px patches: each query sees distances 0, 4, 4, 4*sqrt(2)
    np.testing.assert_allclose(got["attn_distance"][2:], (8 + 4 * np.sqrt(2)) / 4, rtol=1e-12)


def test_one_hot_cls_attention_golden(make_states):
    states = make_states(batch_size=2, grid=(2, 2), prefix=1)
    one_hot = tuple(torch.zeros_like(a).index_fill_(-1, torch.tensor([0]), 1.0) for a in states.attentions)
    got = run(dataclasses.replace(states, attentions=one_hot)).compute()
    np.testing.assert_allclose(got["ccc"][2:], 1, rtol=1e-12)
    np.testing.assert_allclose(got["attn_entropy"][2:], 0, atol=1e-9)
    np.testing.assert_allclose(got["aci"][2:], 1, rtol=1e-12)  # identical rows
    np.testing.assert_allclose(got["isi_attention"][2:], 0, atol=1e-9)


def test_identical_rows_give_full_consensus_and_self_attention_no_distance(make_states):
    states = make_states(batch_size=3, grid=(2, 3), prefix=1, heads=2)
    g = torch.Generator().manual_seed(5)
    shared = tuple(
        torch.softmax(torch.randn(a.shape[0], a.shape[1], 1, a.shape[-1], generator=g), -1).expand_as(a)
        for a in states.attentions
    )
    got = run(dataclasses.replace(states, attentions=shared)).compute()
    np.testing.assert_allclose(got["aci"][2:], 1, rtol=1e-12)
    assert (got["attn_entropy"][2:] < 1).all()
    # every token attends to itself: the prefix key is dropped, every patch looks 0 px away
    eye = tuple(torch.eye(a.shape[-1]).expand_as(a).contiguous() for a in states.attentions)
    got = run(dataclasses.replace(states, attentions=eye)).compute()
    np.testing.assert_allclose(got["attn_distance"][2:], 0, atol=1e-12)
    assert (got["aci"][2:] < 0.5).all()


def test_one_neighbour_distance_is_one_patch_width(make_states):
    # a 1x2 grid with 6 px wide patches: each patch attends only to the other one
    states = with_layout(make_states(batch_size=2, grid=(1, 2), prefix=1), patch_size=(4, 6))
    swap = torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    attn = tuple(swap.expand_as(a).contiguous() for a in states.attentions)
    got = run(dataclasses.replace(states, attentions=attn)).compute()
    np.testing.assert_allclose(got["attn_distance"][2:], 6, rtol=1e-12)
    np.testing.assert_allclose(got["ccc"][2:], 0, atol=1e-12)


def test_residual_cosine_golden(make_states):
    states = make_states(batch_size=2)
    scaled = tuple((x, 3 * x) for x, _ in states.attention_residuals)
    got = run(dataclasses.replace(states, attention_residuals=scaled)).compute()
    np.testing.assert_allclose(got["attn_residual_cosine"][2:], 1, rtol=1e-12)
    np.testing.assert_allclose(got["isi_attention"][2:], 0, atol=1e-12)


def test_first_two_layers_missing_and_empty_accumulator(make_states):
    states = make_states(batch_size=2, num_layers=4)
    acc = AttentionAccumulator()
    acc.setup(states)
    assert all(np.isnan(v).all() and v.shape == (6,) for v in acc.compute().values())
    acc.update(states)
    for name, col in acc.compute().items():
        assert np.isnan(col[:2]).all() and np.isfinite(col[2:]).all(), name


def test_low_precision_attention_accepted(make_states):
    states = make_states(batch_size=2, grid=(3, 3))
    # peaked softmax rows rounded to bf16 sum to 1 only within a few 1e-3
    peaked = tuple(torch.softmax(8 * torch.randn(a.shape), -1).to(torch.bfloat16) for a in states.attentions)
    bf16 = dataclasses.replace(states, attentions=peaked)
    exact = tuple(a.double() / a.double().sum(-1, keepdim=True) for a in peaked)
    check(run(bf16), dataclasses.replace(bf16, attentions=exact), vit_specs(states))


def test_non_softmax_raises(make_states):
    states = make_states(batch_size=2)
    scores = tuple(torch.randn(a.shape) for a in states.attentions)
    acc = AttentionAccumulator()
    acc.setup(states)
    with pytest.raises(ValueError, match="softmax"):
        acc.update(dataclasses.replace(states, attentions=scores))
    off = tuple(a * 1.01 for a in states.attentions)
    with pytest.raises(ValueError, match="softmax"):
        acc.update(dataclasses.replace(states, attentions=off))


def test_missing_attentions_raise(make_states):
    states = make_states(batch_size=2, attentions=False)
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        AttentionAccumulator().setup(states)
    acc = AttentionAccumulator()
    acc.setup(make_states(batch_size=2))
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        acc.update(states)
    no_residuals = dataclasses.replace(make_states(batch_size=2), attention_residuals=None)
    with pytest.raises(ValueError, match="attention_residuals"):
        acc.update(no_residuals)


def test_family_metadata():
    assert AttentionAccumulator.name == "attention"
    assert AttentionAccumulator.requires == ("attentions", "attention_residuals")
