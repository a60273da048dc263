"""The adapter on tiny random models of every supported family, saved and loaded back by path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from hf_isi import AnalysisConfig, ModelAdapter, ModelError, analyze
from hf_isi.models import ActivationError

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8)
FAMILIES = {
    # name: (config, expected prefix tokens, has CLS, has absolute PE)
    "vit": (lambda: tf.ViTConfig(intermediate_size=64, **SMALL), 1, True, True),
    "vit-cls-head": (lambda: tf.ViTConfig(intermediate_size=64, num_labels=3,
                                          architectures=["ViTForImageClassification"], **SMALL), 1, True, True),
    "deit": (lambda: tf.DeiTConfig(intermediate_size=64, **SMALL), 2, True, True),
    "beit": (lambda: tf.BeitConfig(intermediate_size=64, **SMALL), 1, True, False),
    "dinov2": (lambda: tf.Dinov2Config(mlp_ratio=2, **SMALL), 1, True, True),
    "dinov2-registers": (lambda: tf.Dinov2WithRegistersConfig(mlp_ratio=2, num_register_tokens=4, **SMALL), 5, True,
                         True),
    "clip-vision": (lambda: tf.CLIPVisionConfig(intermediate_size=64, **SMALL), 1, True, True),
    "swin": (lambda: tf.SwinConfig(embed_dim=16, depths=[2, 2], num_heads=[2, 4], image_size=32, patch_size=4,
                                   window_size=4), 0, False, False),
}


def save_family(name: str, path) -> str:
    torch.manual_seed(0)
    config = FAMILIES[name][0]()
    if name == "vit-cls-head":
        model = tf.ViTForImageClassification(config)
    else:
        model = tf.AutoModel.from_config(config)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: save_family(name, root / name) for name in FAMILIES}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_capture_every_family(saved, name):
    _, prefix, has_cls, has_pe = FAMILIES[name]
    adapter = ModelAdapter.from_pretrained(saved[name])
    assert adapter.config._attn_implementation == "eager"
    pixels = torch.randn(2, 3, 32, 32)
    states = adapter.capture(pixels)
    assert states.layout.num_prefix_tokens == prefix
    assert (states.layout.cls_index == 0) if has_cls else (states.layout.cls_index is None)
    assert states.layout.num_patches == states.patch_embeddings.shape[1]
    assert len(states.attentions) == states.num_layers == len(states.hidden_states) - 1
    assert len(states.attention_residuals) == states.num_layers
    assert (states.position_embeddings is not None) == has_pe
    for (x, xa), attn in zip(states.attention_residuals, states.attentions):
        assert x.shape == xa.shape
        torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)), atol=1e-5, rtol=0)


def test_vit_states_are_the_documented_quantities(saved):
    adapter = ModelAdapter.from_pretrained(saved["vit"])
    model = adapter.tower
    pixels = torch.randn(2, 3, 32, 32)
    states = adapter.capture(pixels)
    with torch.no_grad():
        # z0 is the patch projection; hidden_states[0] adds [CLS] and the position embeddings to it
        z0 = model.embeddings.patch_embeddings(pixels)
        torch.testing.assert_close(states.patch_embeddings, z0)
        pe = model.embeddings.position_embeddings[0]
        torch.testing.assert_close(states.hidden_states[0][:, 1:], z0 + pe[1:])
        torch.testing.assert_close(states.position_embeddings, pe[1:])
        # residual pair of block 1: x = hidden_states[0], x + a = x + attention(LN(x))
        block = model.layers[0]
        x, xa = states.attention_residuals[0]
        torch.testing.assert_close(x, states.hidden_states[0])
        a = block.attention(block.layernorm_before(x))[0]
        torch.testing.assert_close(xa, x + a)


def test_full_clip_checkpoint_loads_its_vision_tower(tmp_path):
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    tf.CLIPModel(tf.CLIPConfig(vision_config=vision, text_config=text)).save_pretrained(tmp_path)
    adapter = ModelAdapter.from_pretrained(tmp_path)
    assert type(adapter.model).__name__ == "CLIPVisionModel"
    assert adapter.capture(torch.randn(1, 3, 32, 32)).num_layers == 2


@pytest.mark.parametrize("name", list(FAMILIES))
def test_analyze_every_family(saved, name):
    _, _, has_cls, has_pe = FAMILIES[name]
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(40, 3, 32, 32, generator=g)
    labels = torch.arange(40) % 2
    report = analyze(saved[name], pixels, labels, batch_size=16)
    t = report.table
    assert list(t["layer"]) == list(range(-1, report.num_layers + 1))
    assert t["num_images"].iloc[0] == 40
    assert t["centered_similarity"].notna().all()
    assert t["attn_entropy"].iloc[2:].between(0, 1).all() and t["attn_entropy"].iloc[:2].isna().all()
    assert t["probe_mean_acc"].notna().all()
    if has_cls:
        assert t["ccc"].iloc[2:].notna().all() and t["probe_cls_acc"].iloc[1:].notna().all()
    else:  # CLS metrics are missing, not zero
        assert t["ccc"].isna().all() and t["probe_cls_acc"].isna().all() and t["nc1_cls"].isna().all()
    assert (report.scalars["pe_dominance"] is not None) == has_pe
    assert report.provenance["attn_implementation"] == "eager"


def test_attentions_that_come_back_empty_fail_loudly(saved):
    adapter = ModelAdapter.from_pretrained(saved["vit"])
    adapter.model.set_attn_implementation("sdpa")  # sdpa returns attentions=() with only a warning
    with pytest.raises(ModelError, match="attention probabilities are unavailable"):
        adapter.capture(torch.randn(1, 3, 32, 32))


def test_not_a_vision_transformer(tmp_path):
    tf.ResNetModel(tf.ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8)).save_pretrained(
        tmp_path / "resnet")
    with pytest.raises(ModelError, match="not a vision transformer"):
        ModelAdapter.from_pretrained(tmp_path / "resnet").capture(torch.randn(1, 3, 32, 32))
    tf.BertModel(tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match="not images"):
        ModelAdapter.from_pretrained(tmp_path / "bert")


def test_unknown_model_id_is_one_line():
    with pytest.raises(ModelError) as err:
        ModelAdapter.from_pretrained("no-such-org/no-such-vit")
    assert "cannot load model 'no-such-org/no-such-vit'" in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_pixel_values(saved):
    adapter = ModelAdapter.from_pretrained(saved["vit"])
    with pytest.raises(ValueError, match=r"expects \(32, 32\)"):
        adapter.capture(torch.randn(1, 3, 24, 24))
    with pytest.raises(ValueError, match="channels"):
        adapter.capture(torch.randn(1, 1, 32, 32))
    with pytest.raises(ActivationError, match="NaN or inf"):
        adapter.capture(torch.full((1, 3, 32, 32), float("nan")))


def test_position_embedding_scaling_is_temporary(saved):
    adapter = ModelAdapter.from_pretrained(saved["vit"])
    before = adapter.position_embeddings().detach().clone()
    pixels = torch.randn(1, 3, 32, 32)
    with adapter.scaled_position_embeddings(0.0):
        zero = adapter.capture(pixels)
        np.testing.assert_allclose(zero.hidden_states[0][:, 1:].numpy(), zero.patch_embeddings.numpy(), atol=1e-6)
    torch.testing.assert_close(adapter.position_embeddings(), before)


def test_bf16_capture_runs(saved):
    adapter = ModelAdapter.from_pretrained(saved["vit"], dtype="bf16")
    states = adapter.capture(torch.randn(2, 3, 32, 32))
    assert states.hidden_states[0].dtype == torch.bfloat16
    config = AnalysisConfig(metrics=["similarity", "attention"])
    report = analyze(adapter, torch.randn(8, 3, 32, 32), config=config)
    assert report.table["attn_entropy"].iloc[2:].notna().all()


def test_untrained_reference_model_says_how_to_train_it(tmp_path, monkeypatch):
    from hf_isi import zoo

    monkeypatch.setattr(zoo, "reference_models_root", lambda: tmp_path)
    with pytest.raises(ModelError, match="not trained.*train_reference.py --models isi-vit-d4") as err:
        ModelAdapter.from_pretrained("isi-vit-d4")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_all_finite_matches_numpy(dtype):
    from hf_isi.states import all_finite

    g = torch.Generator().manual_seed(0)
    big = torch.finfo(dtype).max / 2  # finite, but any sum of two of them overflows: the exact fallback decides
    cases = [torch.randn(4, 5, 6, generator=g), torch.full((3, 4), big, dtype=dtype), torch.zeros(0)]
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(4, 5, 6, generator=g)
        t[2, 3, 1] = bad
        cases.append(t)
    cases.append(torch.tensor([float("inf"), -float("inf")]))  # a NaN sum from two infinities
    for t in cases:
        t = t.to(dtype)
        assert all_finite(t) == bool(np.isfinite(t.double().numpy()).all())
    assert all_finite(torch.arange(5))  # integers are always finite


def test_anatomy_is_resolved_once_and_names_override_it(saved, monkeypatch):
    from hf_isi.models import ModuleNames

    adapter = ModelAdapter.from_pretrained(saved["vit"])
    pixels = torch.randn(2, 3, 32, 32)
    expected = adapter.capture(pixels)

    def no_walk(*args, **kwargs):
        raise AssertionError("capture() searched the module tree")

    from hf_isi import models

    for helper in ("_attention_norms", "_recorded_class", "_is_norm"):  # the search helpers, used in __init__ only
        monkeypatch.setattr(models, helper, no_walk)
    for method in ("_embedder", "_layer_modules", "_norm_pairs", "_final_norm", "_position_parameter"):
        monkeypatch.setattr(ModelAdapter, method, no_walk)
    states = adapter.capture(pixels)
    torch.testing.assert_close(states.attention_residuals[1][1], expected.attention_residuals[1][1])
    torch.testing.assert_close(states.position_embeddings, expected.position_embeddings)
    monkeypatch.undo()

    names = ModuleNames(embedder="embeddings.patch_embeddings", layers="layers",
                        attention_norms=("layernorm_before", "layernorm_after"), final_norm="layernorm",
                        position_embeddings="embeddings.position_embeddings")
    named = ModelAdapter(adapter.model, names=names)
    assert named.embedder is adapter.embedder and named.final_norm is adapter.final_norm
    assert named.norm_pairs == adapter.norm_pairs and named.layer_modules == adapter.layer_modules
    assert named.position_embeddings() is adapter.position_embeddings()
    states = named.capture(pixels)
    for a, b in zip(states.attention_residuals, expected.attention_residuals):
        torch.testing.assert_close(a, b)
    # "" says the model has none; unknown names are one-line ModelErrors that name the field
    assert ModelAdapter(adapter.model, names=ModuleNames(position_embeddings="")).capture(
        pixels).position_embeddings is None
    for bad, field in ((ModuleNames(layers="encoder.blocks"), "layers"),
                       (ModuleNames(attention_norms=("norm1", "norm2")), "attention_norms"),
                       (ModuleNames(position_embeddings="embeddings.pos"), "position_embeddings")):
        with pytest.raises(ModelError, match=rf"ModuleNames\.{field}"):
            ModelAdapter(adapter.model, names=bad)


def test_load_model_applies_or_refuses_its_arguments(saved):
    from hf_isi.models import DTYPES, load_model

    assert DTYPES["bf16"] is torch.bfloat16  # still importable from hf_isi.models
    model = tf.AutoModel.from_pretrained(saved["vit"])
    adapter = load_model(model, dtype="bf16", device="cpu", attentions=False)
    assert adapter.dtype == torch.bfloat16 and adapter.device == torch.device("cpu") and not adapter.attentions
    assert load_model(adapter, dtype=torch.float32).dtype == torch.float32  # an adapter's model, in place
    assert load_model(adapter) is adapter
    with pytest.raises(ValueError, match="revision"):
        load_model(model, revision="main")
    with pytest.raises(ValueError, match="without attentions"):
        load_model(adapter, attentions=True)
    with pytest.raises(ValueError, match="name configure a new adapter"):
        load_model(adapter, name="other")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(model, dtype="int8")
    # analyze keeps a loaded model's dtype unless asked
    half = tf.AutoModel.from_pretrained(saved["vit"]).to(torch.bfloat16)
    report = analyze(half, torch.randn(8, 3, 32, 32), config=AnalysisConfig(metrics=["similarity"]))
    assert report.provenance["dtype"] == "bfloat16"
