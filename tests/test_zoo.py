"""hf_isi.zoo (digits data, reference-model registry) and scripts/train_reference.py (the training loop)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _modules import load_module

from hf_isi import zoo
from hf_isi.zoo import (
    DEFAULT_MODELS,
    REFERENCE_MODELS,
    ReferenceModel,
    digits_dataset,
    list_reference_models,
    load_reference_model,
    reference_model_path,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_script():
    """scripts/train_reference.py imported as a module (scripts/ is not a package)."""
    yield load_module("hf_isi_train_reference", ROOT / "scripts" / "train_reference.py")
    sys.modules.pop("hf_isi_train_reference", None)


@pytest.fixture(scope="module")
def splits():
    return {s: digits_dataset(s) for s in ("all", "train", "test")}


# --------------------------------------------------------------------------------------------------------
# digits_dataset
# --------------------------------------------------------------------------------------------------------


def test_digits_sizes_and_features(splits):
    import datasets

    assert len(splits["all"]) == 1797
    assert len(splits["train"]) == 1437 and len(splits["test"]) == 360
    feats = splits["all"].features
    assert isinstance(feats["image"], datasets.Image)
    assert isinstance(feats["label"], datasets.ClassLabel)
    assert feats["label"].names == [str(i) for i in range(10)]
    assert feats["id"] == datasets.Value("string")


def test_digits_split_disjoint_covering_and_stratified(splits):
    train_ids, test_ids = set(splits["train"]["id"]), set(splits["test"]["id"])
    all_ids = list(splits["all"]["id"])
    assert len(train_ids) == 1437 and len(test_ids) == 360  # no duplicates
    assert train_ids.isdisjoint(test_ids)
    assert train_ids | test_ids == set(all_ids)
    assert all_ids == [f"digits-{i:04d}" for i in range(1797)]
    # Stratified: every class is ~20 % in the test split (within one image of the exact share).
    all_counts = np.bincount(splits["all"]["label"], minlength=10)
    test_counts = np.bincount(splits["test"]["label"], minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1.0), (test_counts, all_counts)


def test_digits_ids_stable_and_match_load_digits(splits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    again = digits_dataset("test")
    assert list(again["id"]) == list(splits["test"]["id"])
    assert list(again["label"]) == list(splits["test"]["label"])
    # A different seed gives a different split, but ids still name the same images.
    other = digits_dataset("test", seed=1)
    assert set(other["id"]) != set(splits["test"]["id"])
    for row in list(splits["test"].select(range(5))) + list(other.select(range(5))):
        i = int(row["id"].split("-")[1])
        assert row["label"] == bunch.target[i]
        expected = np.rint(bunch.images[i] * 255 / 16).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(row["image"]), expected)


def test_digits_images_are_8x8_grayscale(splits):
    rows = splits["all"].select(range(20))
    for img in rows["image"]:
        assert img.mode == "L" and img.size == (8, 8)
    pixels = np.stack([np.asarray(img) for img in rows["image"]])
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255


def test_digits_unknown_split():
    with pytest.raises(ValueError, match="split"):
        digits_dataset("validation")


# --------------------------------------------------------------------------------------------------------
# Reference-model registry
# --------------------------------------------------------------------------------------------------------


def test_registry_names_and_shapes():
    names = list_reference_models()
    assert names == list(REFERENCE_MODELS)
    assert {"isi-vit-d4", "isi-vit-d8", "isi-vit-d12", "isi-vit-d16"} <= set(names)
    assert set(DEFAULT_MODELS) <= set(names)
    family = [REFERENCE_MODELS[n] for n in DEFAULT_MODELS]
    assert [m.depth for m in family] == [4, 8, 12, 16]
    assert len({m.width for m in family}) == 1
    wide = [m for m in REFERENCE_MODELS.values() if m.width > family[0].width]
    assert wide, "expected a wider model"
    assert len({m.head_dim for m in REFERENCE_MODELS.values()}) == 1  # head dim constant across widths
    for m in REFERENCE_MODELS.values():
        assert m.width % m.heads == 0 and m.grid == (8, 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        family[0].depth = 3


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        reference_model_path("vit-base-patch16-224")
    for name in REFERENCE_MODELS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", list(REFERENCE_MODELS))
def test_reference_folder_loads_offline(name):
    from transformers import AutoImageProcessor, ViTForImageClassification

    spec = REFERENCE_MODELS[name]
    path = reference_model_path(name)
    assert path.is_dir() and path.parent == zoo.reference_models_root()
    for f in ("config.json", "model.safetensors", "preprocessor_config.json", "training_results.json"):
        assert (path / f).is_file(), f
    model = ViTForImageClassification.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (
        spec.depth,
        spec.width,
        spec.heads,
    )
    assert (cfg.image_size, cfg.patch_size, cfg.num_labels) == (16, 2, 10)
    assert model.dtype == torch.float32
    processor = AutoImageProcessor.from_pretrained(path)
    assert processor.size["height"] == processor.size["width"] == 16
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.5] * 3
    results = json.loads((path / "training_results.json").read_text())
    assert results["name"] == name
    assert results["test_accuracy"] >= 0.9
    assert results["test_size"] == 360
    assert results["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert spec.test_accuracy == results["test_accuracy"]


@pytest.mark.parametrize("name", list(REFERENCE_MODELS))
def test_recorded_accuracy_reproduces(name, splits):
    """An independent re-evaluation on the test split reproduces the recorded accuracy (fp16 weights)."""
    from transformers import AutoImageProcessor, ViTForImageClassification

    path = reference_model_path(name)
    model = ViTForImageClassification.from_pretrained(
        path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    test = splits["test"]
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 128):
            rows = test[start : start + 128]
            pixels = processor(images=rows["image"], return_tensors="pt")["pixel_values"]
            assert pixels.shape[1:] == (3, 16, 16)
            correct += int(
                (model(pixel_values=pixels).logits.argmax(-1) == torch.tensor(rows["label"])).sum()
            )
    recorded = json.loads((path / "training_results.json").read_text())["test_accuracy"]
    assert abs(correct / len(test) - recorded) < 1e-6


def test_load_reference_model_attentions(splits):
    name = DEFAULT_MODELS[0]
    spec = REFERENCE_MODELS[name]
    model, processor = load_reference_model(name)
    assert not model.training and model.dtype == torch.float32
    batch = processor(images=splits["test"][:3]["image"], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True, output_attentions=True)
    assert len(out.attentions) == spec.depth
    assert out.attentions[0].shape == (3, spec.heads, 65, 65)
    assert len(out.hidden_states) == spec.depth + 1
    assert out.hidden_states[-1].shape == (3, 65, spec.width)


def test_mixed_precision_agrees_with_float64_on_a_trained_model(splits):
    """The default mixed precision (float32 ISI Gram products and x ln x sweeps, float64 sums) against float64,
    every column, on a trained reference model and real digits: within 1e-5 absolute (measured: 2e-7), with
    the same ridge penalties chosen, and the families it does not touch bit-identical."""
    from hf_isi import AnalysisConfig, analyze
    from hf_isi.report import METRIC_COLUMNS

    data = splits["all"].select(range(300))
    tables = {p: analyze(DEFAULT_MODELS[0], list(data["image"]), list(data["label"]), ids=list(data["id"]),
                         config=AnalysisConfig(precision=p)).table for p in ("float64", "mixed")}
    untouched = ("centered_similarity", "probe", "nc", "pe_")
    for column in METRIC_COLUMNS:
        a, b = tables["float64"][column].to_numpy(float), tables["mixed"][column].to_numpy(float)
        if "penalty" in column or column.startswith(untouched):
            np.testing.assert_array_equal(a, b, err_msg=column)
        else:
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-5, err_msg=column)
    assert not np.allclose(tables["float64"]["isi"], tables["mixed"]["isi"], rtol=0, atol=1e-12)  # really mixed


# --------------------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------------------

TINY = ReferenceModel("tiny", depth=1, width=32, heads=2, description="test-only")


@pytest.fixture(scope="module")
def tiny_data(splits, train_script):
    fit, val = train_script.split_validation(splits["train"], 0.1, 0)
    return fit.select(range(64)), val.select(range(32))


def _tiny_args(train_script, **kw):
    base = {"max_steps": 20, "batch_size": 32, "learning_rate": 3e-3, "warmup_epochs": 1, "epochs": 1000}
    base["label_smoothing"] = 0.0
    base.update(kw)
    return train_script.TrainArguments(**base)


def test_shift_image(train_script):
    a = np.arange(1, 17, dtype=np.uint8).reshape(4, 4)
    s = train_script.shift_image(a, 1, -1)
    np.testing.assert_array_equal(s[1:, :3], a[:3, 1:])
    assert s[0].sum() == 0 and s[:, 3].sum() == 0
    np.testing.assert_array_equal(train_script.shift_image(a, 0, 0), a)


def test_split_validation_stratified_disjoint(train_script, splits):
    fit, val = train_script.split_validation(splits["train"], 0.1, 0)
    assert len(fit) + len(val) == len(splits["train"])
    assert set(fit["id"]).isdisjoint(val["id"])
    assert set(fit["id"]) | set(val["id"]) == set(splits["train"]["id"])
    assert set(val["id"]).isdisjoint(splits["test"]["id"])
    assert len(set(val["label"])) == 10


def test_training_loss_decreases(train_script, tiny_data):
    fit, val = tiny_data
    args = _tiny_args(train_script, max_steps=100, augment_shift=0, dropout=0.0)
    model, m = train_script.train_model(TINY, fit, val, args, log=None)
    assert m["steps"] == 100 and len(m["losses"]) == 100 and m["epochs_run"] == 50
    assert np.mean(m["losses"][-4:]) < np.mean(m["losses"][:4]) - 0.5, m["losses"]
    assert m["train_accuracy"] > 0.5
    assert 0.0 <= m["val_accuracy"] <= 1.0 and len(m["val_curve"]) == 50
    assert m["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert not model.training and model.dtype == torch.float32


def test_training_is_deterministic(train_script, tiny_data):
    """Same seed -> bit-identical weights (augmentation and dropout on); another seed -> other weights."""
    fit, val = tiny_data
    args = _tiny_args(train_script, augment_shift=1, dropout=0.1)
    model_a, m_a = train_script.train_model(TINY, fit, val, args, log=None)
    model_b, m_b = train_script.train_model(TINY, fit, val, args, log=None)
    assert m_a["losses"] == m_b["losses"]
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k

    model_c, m_c = train_script.train_model(
        TINY, fit, val, _tiny_args(train_script, augment_shift=1, dropout=0.1, seed=1), log=None
    )
    sc = model_c.state_dict()
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert m_c["losses"] != m_a["losses"]
    # The global torch state is restored afterwards.
    assert not torch.are_deterministic_algorithms_enabled()


def test_train_arguments_reject_unknown_model(train_script):
    with pytest.raises(ValueError, match="isi-vit-d4"):
        train_script.TrainArguments(models=["isi-vit-d5"])
    with pytest.raises(ValueError):
        train_script.TrainArguments(dtype="int8")


def test_cli_smoke_saves_loadable_folder(train_script, tmp_path):
    """End to end through HfArgumentParser: a 2-step run writes a folder that loads offline."""
    from transformers import AutoImageProcessor, ViTForImageClassification

    results = train_script.main(
        ["--output_dir", str(tmp_path), "--models", "isi-vit-d4", "--max_steps", "2", "--seed", "3"]
    )
    assert len(results) == 1
    folder = tmp_path / "isi-vit-d4"
    saved = json.loads((folder / "training_results.json").read_text())
    assert saved["steps"] == 2 and saved["seed"] == 3 and saved["saved_dtype"] == "float16"
    assert {"torch", "transformers", "datasets"} <= set(saved["versions"])
    assert saved["fit_size"] + saved["val_size"] == 1437 and saved["test_size"] == 360
    model = ViTForImageClassification.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32
    )
    assert model.config.num_hidden_layers == 4
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        names = list(f.keys())
        assert names and all(f.get_slice(k).get_dtype() == "F16" for k in names)
    AutoImageProcessor.from_pretrained(folder)
    assert (tmp_path / "README.md").is_file()
    assert not torch.are_deterministic_algorithms_enabled()
