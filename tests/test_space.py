"""The Gradio Space (spaces_app/app.py): plain functions, then the launched app driven with gradio_client
(every named endpoint's values and plot payloads, friendly errors as AppError), a bounded load test, and
``python spaces_app/app.py`` as a process.

Models are tiny random checkpoints saved here (a ViT with a classification head, a DeiT base model with two
prefix tokens, a Swin with windowed attention), so nothing depends on the trained reference models.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from _modules import load_module
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
APP_PATH = REPO / "spaces_app" / "app.py"
EXAMPLES = REPO / "spaces_app" / "examples"
SINGLE_IMAGE_METRICS = ["similarity", "attention"]
NAMED_ENDPOINTS = {"/analyze", "/attention_maps", "/load_results"}


# -- helpers shared with test_space_browser.py -----------------------------------------------------------
def make_tiny_models(root: Path) -> dict[str, str]:
    """Save tiny random checkpoints (with image processors) and return display name -> path."""
    import transformers as tf

    root = Path(root)
    processor = tf.ViTImageProcessorPil(size={"height": 32, "width": 32})
    torch.manual_seed(0)
    # a larger init than the default makes the attention peaked, so the maps differ between layers and heads
    vit = tf.ViTForImageClassification(tf.ViTConfig(
        hidden_size=32, num_hidden_layers=5, num_attention_heads=4, intermediate_size=64, image_size=32,
        patch_size=8, initializer_range=0.3, num_labels=3, id2label={0: "cat", 1: "dog", 2: "bird"},
        label2id={"cat": 0, "dog": 1, "bird": 2}, architectures=["ViTForImageClassification"]))
    deit = tf.AutoModel.from_config(tf.DeiTConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, initializer_range=0.3))
    swin = tf.AutoModel.from_config(tf.SwinConfig(
        embed_dim=16, depths=[2, 2], num_heads=[2, 4], image_size=32, patch_size=4, window_size=4))
    out = {}
    for name, model in (("tiny-vit", vit), ("tiny-deit", deit), ("tiny-swin", swin)):
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def load_app():
    """Import spaces_app/app.py as a module (without launching it)."""
    name = "hf_isi_space_app"
    if name in sys.modules:
        return sys.modules[name]
    return load_module(name, APP_PATH)


def launch(demo):
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, ssr_mode=False,
                            max_file_size="20mb")
    return url


def decode_plot(payload: dict) -> Image.Image:
    assert payload["type"] == "matplotlib"
    head, data = payload["plot"].split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("space_models"))


@pytest.fixture(scope="module")
def demo(app, tiny_models):
    return app.build_demo(tiny_models)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Uploads in every mode the app must accept, plus files it must refuse."""
    root = tmp_path_factory.mktemp("space_images")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    paths = {}
    rgb.save(paths.setdefault("rgb", root / "rgb.png"))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8)))
    rgba.save(paths.setdefault("rgba", root / "rgba.png"))
    rgb.convert("L").save(paths.setdefault("gray", root / "gray.png"))
    rgb.convert("CMYK").save(paths.setdefault("cmyk", root / "cmyk.jpg"))
    rgb.convert("P").save(paths.setdefault("palette", root / "palette.gif"))
    Image.fromarray((rng.random((40, 56)) * 65535).astype(np.uint16)).save(paths.setdefault("16bit", root / "16.png"))
    (root / "notes.txt").write_text("not an image\n")
    paths["text"] = root / "notes.txt"
    (root / "fake.png").write_bytes(b"\x00\x01 definitely not a PNG" * 10)
    paths["fake"] = root / "fake.png"
    whole = (root / "rgb.png").read_bytes()
    (root / "truncated.png").write_bytes(whole[: len(whole) // 2])
    paths["truncated"] = root / "truncated.png"
    # 18.4 MP: above the downscale threshold (16.8 MP), below the refusal limit (40 MP)
    Image.new("L", (4600, 4000), 128).save(paths.setdefault("large", root / "large.jpg"), quality=50)
    # 42 MP: refused from the header, before decoding
    Image.new("L", (7000, 6000), 0).save(paths.setdefault("huge", root / "huge.png"))
    return paths


@pytest.fixture(scope="module")
def results_folder(tmp_path_factory, tiny_models):
    """A results folder in the layout of scripts/probe.py: results/data.parquet + summary.json."""
    import datasets

    import hf_isi

    root = tmp_path_factory.mktemp("space_results")
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(12, 3, 32, 32, generator=g) * 2 - 1
    config = hf_isi.AnalysisConfig(metrics=SINGLE_IMAGE_METRICS)
    reports = {name: hf_isi.analyze(tiny_models[name], pixels, config=config) for name in ("tiny-vit", "tiny-deit")}
    for name, report in reports.items():
        report.model = name
        report.table["model"] = name
    (root / "results").mkdir()
    datasets.concatenate_datasets([r.to_dataset() for r in reports.values()]).to_parquet(
        str(root / "results" / "data.parquet"))
    summary = {"models": {name: r.summary() for name, r in reports.items()}, "alignment": {}, "run": {}}
    (root / "summary.json").write_text(json.dumps(summary))
    return root, reports


# -- plain functions (no server) -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, mode", [("rgb", "RGB"), ("rgba", "RGBA"), ("gray", "L"), ("cmyk", "CMYK"),
                                        ("palette", "P"), ("16bit", "I;16")])
def test_read_image_converts_every_mode_to_rgb(app, images, kind, mode):
    upload = app.read_image(str(images[kind]))
    assert upload.image.mode == "RGB" and upload.image.size == (56, 40)
    assert upload.original_mode == mode and not upload.downscaled
    assert len(upload.sha256) == 64


def test_read_image_hash_is_of_the_pixels(app, images, tmp_path):
    a = app.read_image(str(images["rgb"]))
    Image.open(images["rgb"]).save(tmp_path / "same.bmp")  # other bytes on disk, same pixels
    assert app.read_image(str(tmp_path / "same.bmp")).sha256 == a.sha256
    assert app.read_image({"path": str(images["rgb"]), "orig_name": "x.png"}).sha256 == a.sha256
    assert app.read_image(str(images["gray"])).sha256 != a.sha256


@pytest.mark.parametrize("kind, message", [
    ("text", "is not an image"), ("fake", "is not an image"), ("truncated", "cannot be decoded"),
    ("huge", "megapixels"),
])
def test_read_image_refuses_with_a_friendly_error(app, images, kind, message):
    import gradio as gr

    with pytest.raises(gr.Error, match=message):
        app.read_image(str(images[kind]))


def test_read_image_downscales_large_images(app, images):
    upload = app.read_image(str(images["large"]))
    assert upload.downscaled and upload.original_size == (4600, 4000)
    assert upload.image.width * upload.image.height <= app.DOWNSCALE_ABOVE_PIXELS


def test_read_image_needs_an_image(app):
    import gradio as gr

    for empty in (None, "", {"path": None}):
        with pytest.raises(gr.Error, match="Please upload an image"):
            app.read_image(empty)


def test_model_names_are_validated(app, tiny_models, monkeypatch):
    import gradio as gr

    registry = app.ModelRegistry(tiny_models)
    assert registry.resolve("tiny-vit") == ("tiny-vit", tiny_models["tiny-vit"])
    assert registry.resolve("google/vit-base-patch16-224") == ("google/vit-base-patch16-224",) * 2
    for bad in ("not a model!", "a/b/c", "org/../x", "", None):
        with pytest.raises(gr.Error):
            registry.resolve(bad)
    monkeypatch.setattr(app, "ALLOW_LOCAL_PATHS", False)
    with pytest.raises(gr.Error, match="local paths are not accepted"):
        registry.resolve(tiny_models["tiny-deit"])


def test_models_above_the_size_limit_are_refused(app, tiny_models, monkeypatch):
    import gradio as gr
    import huggingface_hub

    class Info:
        class safetensors:  # mimics ModelInfo.safetensors
            total = 2_000_000_000

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo_id, **kw: Info())
    with pytest.raises(gr.Error, match="has 2000M parameters"):  # refused before any download
        app.ModelRegistry({}).get("big-org/huge-vit")
    # after loading too (a typed local path is not a built-in model), when the Hub has no metadata
    monkeypatch.setattr(app, "MAX_MODEL_PARAMETERS", 1000)
    with pytest.raises(gr.Error, match="parameters; this app accepts at most"):
        app.ModelRegistry({}).get(tiny_models["tiny-deit"])
    assert app.ModelRegistry(tiny_models).get("tiny-deit").name == "tiny-deit"  # built-in: no limit


def test_heads_and_layers_are_parsed(app):
    import gradio as gr

    assert app.parse_head("mean over heads", 4) is None and app.parse_head(None, 4) is None
    assert app.parse_head("head 3", 4) == 3 and app.parse_head(2, 4) == 2
    with pytest.raises(gr.Error, match="does not exist"):
        app.parse_head("head 4", 4)
    with pytest.raises(gr.Error, match="Unknown head"):
        app.parse_head("tail 1", 4)
    assert [app.parse_layer(v, 5) for v in (0, 1, 3.0, "4", 9)] == [1, 1, 3, 4, 5]
    with pytest.raises(gr.Error):
        app.parse_layer("top", 5)


def test_overlay_draws_one_colour_per_patch(app):
    import matplotlib

    values = np.array([0.0, 0.5, 1.0, 2.0, 0.0, 0.0])  # a 2x3 grid
    out = app.overlay(np.zeros((20, 30, 3), dtype=np.uint8), values, (2, 3))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    cmap = matplotlib.colormaps["inferno"]
    for index, v in enumerate(values):
        r, c = divmod(index, 3)
        block = out[r * 10:(r + 1) * 10, c * 10:(c + 1) * 10].reshape(-1, 3)
        expected = 0.6 * (np.asarray(cmap(v / 2.0)[:3]) * 255).astype(np.uint8)
        assert (block == block[0]).all()
        np.testing.assert_allclose(block[0], expected, atol=1)


def test_attention_rows_match_the_model(app, tiny_models):
    """The maps come from the model's own attention probabilities: [CLS] row and mean patch row."""
    import transformers as tf

    analyzer = app.ImageAnalyzer(app.ModelRegistry(tiny_models))
    path = str(EXAMPLES / "astronaut.jpg")
    analysis, upload, cached = analyzer(path, "tiny-vit")
    assert not cached and analyzer(path, "tiny-vit")[2]  # second call: from the cache
    model = tf.ViTForImageClassification.from_pretrained(tiny_models["tiny-vit"], attn_implementation="eager")
    processor = tf.ViTImageProcessorPil.from_pretrained(tiny_models["tiny-vit"])
    pixels = processor(images=[upload.image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels, output_attentions=True)
    attn = torch.stack(out.attentions)[:, 0].double()  # [L, H, 17, 17]
    np.testing.assert_allclose(analysis.cls_rows, attn[:, :, 0, 1:].numpy(), atol=1e-5)
    np.testing.assert_allclose(analysis.patch_rows, attn[:, :, 1:, 1:].mean(2).numpy(), atol=1e-5)
    probs = torch.softmax(out.logits[0], -1)
    top = model.config.id2label[int(probs.argmax())]
    assert max(analysis.prediction, key=analysis.prediction.get) == top
    np.testing.assert_allclose(sum(analysis.prediction.values()), 1.0, atol=1e-6)  # 3 classes: all of them


def test_models_without_cls_or_with_windows_say_so(app, tiny_models):
    analyzer = app.ImageAnalyzer(app.ModelRegistry(tiny_models))
    swin, _, _ = analyzer(str(EXAMPLES / "cat.jpg"), "tiny-swin")
    assert swin.cls_rows is None and swin.patch_rows is None and "windowed attention" in swin.map_note
    cls_map, patch_map, caption = app.render_maps(swin, 1, "mean over heads")
    assert cls_map is None and patch_map is None and "windowed attention" in caption
    assert swin.prediction is None and not swin.has_cls
    deit, _, _ = analyzer(str(EXAMPLES / "cat.jpg"), "tiny-deit")  # CLS + distillation token
    assert deit.num_prefix_tokens == 2 and deit.cls_rows.shape == (3, 2, 16)
    assert (deit.patch_rows.sum(-1) <= 1 + 1e-6).all()


# -- the launched app, through gradio_client ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(demo):
    url = launch(demo)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[1], verbose=False)


def _analyze(client, path, model="tiny-vit", layer=1, head="mean over heads"):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), model, layer, head, api_name="/analyze")


@pytest.mark.slow
def test_named_endpoints(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == NAMED_ENDPOINTS
    params = [p["parameter_name"] for p in api["named_endpoints"]["/analyze"]["parameters"]]
    assert params == ["image", "model", "layer", "head"]


@pytest.mark.slow
def test_analyze_endpoint_values_and_plots(app, client, server, tiny_models):
    import hf_isi

    example = EXAMPLES / "astronaut.jpg"
    plot, cls_map, patch_map, caption, label, summary, table, layer, head, status = _analyze(
        client, example, layer=3, head="head 2")
    # the curves: a PNG of the 2x3 panel figure
    png = decode_plot(plot)
    assert png.format == "PNG" and png.size == (1300, 700)
    # attention maps: PNG files of the model input (32 px) upscaled to 320 px; exactly what the app renders
    analysis, _, _ = server[0].analyzer(str(example), "tiny-vit")
    expected_cls, expected_patch, expected_caption = app.render_maps(analysis, 3, "head 2")
    for path, expected in ((cls_map, expected_cls), (patch_map, expected_patch)):
        img = Image.open(path)
        assert img.format == "PNG" and img.size == (320, 320)
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), expected)
    assert caption == expected_caption and caption.startswith("**Layer 3 of 5, head 2.**")
    # prediction: gr.Label payload, ordered, the model's top class first
    assert label["label"] == max(analysis.prediction, key=analysis.prediction.get)
    assert [c["label"] for c in label["confidences"]] == sorted(analysis.prediction, key=analysis.prediction.get,
                                                                  reverse=True)
    assert sum(c["confidence"] for c in label["confidences"]) == pytest.approx(1.0, abs=1e-6)
    # summary
    assert summary["model"] == "tiny-vit" and summary["model_class"] == "ViTForImageClassification"
    assert (summary["num_layers"], summary["num_heads"], summary["patch_grid"]) == (5, 4, [4, 4])
    assert summary["num_prefix_tokens"] == 1 and summary["has_cls_token"] and summary["model_input_size"] == [32, 32]
    assert summary["metrics"] == SINGLE_IMAGE_METRICS
    assert summary["image"] == {"name": "astronaut.jpg", "original_size": [256, 256], "original_mode": "RGB",
                                "downscaled": False, "sha256": analysis.report.provenance["image_sha256"]}
    assert summary["prediction"]["label"] == label["label"]
    assert set(summary["phases"]) == {"centered_similarity", "isi_attention", "attn_entropy", "ccc", "aci"}
    # per-layer values equal an independent hf_isi.analyze of the same RGB image
    reference = hf_isi.analyze(tiny_models["tiny-vit"], [Image.open(example).convert("RGB")],
                               config=hf_isi.AnalysisConfig(metrics=SINGLE_IMAGE_METRICS))
    assert table["headers"] == app.TABLE_COLUMNS
    rows = {r[0]: dict(zip(table["headers"], r)) for r in table["data"]}
    assert sorted(rows) == list(range(-1, 6))
    for _, ref in reference.table.iterrows():
        row = rows[int(ref["layer"])]
        for column in app.TABLE_COLUMNS[1:-1]:
            if np.isfinite(ref[column]):
                assert row[column] == pytest.approx(ref[column], abs=2e-6), (column, ref["layer"])
            else:
                assert row[column] is None, (column, ref["layer"])
        assert row["phase"] == ref["phase"]
    assert rows[-1]["isi_attention"] is None and rows[1]["ccc"] is not None
    # slider and head dropdown follow the model
    assert layer["maximum"] == 5 and layer["value"] == 3
    assert [c[0] for c in head["choices"]] == ["mean over heads", "head 0", "head 1", "head 2", "head 3"]
    assert head["value"] == "head 2"
    assert "tiny-vit** predicts" in status and "One image" in status


@pytest.mark.slow
def test_attention_maps_endpoint(app, client, server):
    from gradio_client import handle_file

    example = EXAMPLES / "digit_3.png"
    _analyze(client, example)
    analysis, _, _ = server[0].analyzer(str(example), "tiny-vit")
    seen = set()
    for layer, head in ((1, "mean over heads"), (4, "head 0"), (5, "head 3")):
        cls_map, patch_map, caption = client.predict(handle_file(str(example)), "tiny-vit", layer, head,
                                                     api_name="/attention_maps")
        expected = app.render_maps(analysis, layer, head)
        np.testing.assert_array_equal(np.asarray(Image.open(cls_map).convert("RGB")), expected[0])
        np.testing.assert_array_equal(np.asarray(Image.open(patch_map).convert("RGB")), expected[1])
        assert caption == expected[2] and f"Layer {layer} of 5" in caption
        seen.add(Image.open(cls_map).tobytes())
    assert len(seen) == 3  # different layers/heads, different maps
    # before any image: a hint, not an error
    assert client.predict(None, "tiny-vit", 1, "mean over heads", api_name="/attention_maps")[2].startswith(
        "Upload an image")
    # windowed attention: a note instead of maps
    cls_map, patch_map, caption = client.predict(handle_file(str(example)), "tiny-swin", 1, "mean over heads",
                                                 api_name="/attention_maps")
    assert cls_map is None and patch_map is None and "windowed attention" in caption


@pytest.mark.slow
@pytest.mark.parametrize("kind, mode", [("rgba", "RGBA"), ("gray", "L"), ("cmyk", "CMYK"), ("palette", "P"),
                                        ("16bit", "I;16")])
def test_analyze_accepts_every_image_mode(client, images, kind, mode):
    out = _analyze(client, images[kind], model="tiny-deit")
    summary = out[5]
    assert summary["image"]["original_mode"] == mode and summary["image"]["original_size"] == [56, 40]
    assert summary["prediction"] is None and summary["num_prefix_tokens"] == 2
    assert out[4] is None or not out[4].get("confidences")  # no classification head: no prediction
    assert "no classification head" in out[9]
    assert decode_plot(out[0]).size == (1300, 700)


@pytest.mark.slow
def test_analyze_downscales_large_images(client, images):
    summary = _analyze(client, images["large"], model="tiny-deit")[5]
    assert summary["image"]["downscaled"] and summary["image"]["original_size"] == [4600, 4000]


@pytest.mark.slow
def test_analyze_swin_explains_missing_maps(client):
    out = _analyze(client, EXAMPLES / "coffee.jpg", model="tiny-swin")
    assert out[1] is None and out[2] is None and "windowed attention" in out[3]
    assert out[5]["has_cls_token"] is False and out[5]["num_prefix_tokens"] == 0


@pytest.mark.slow
def test_results_are_cached_per_model_and_image(client, images):
    first = _analyze(client, images["rgb"], model="tiny-deit", layer=2)[5]
    again = _analyze(client, images["rgb"], model="tiny-deit", layer=3)[5]
    other_model = _analyze(client, images["rgb"], model="tiny-vit")[5]
    assert again["cached"] and not other_model["cached"]
    assert {k: v for k, v in first.items() if k != "cached"} == {k: v for k, v in again.items() if k != "cached"}


@pytest.mark.slow
@pytest.mark.parametrize("kind, model, message", [
    ("text", "tiny-vit", "'notes.txt' is not an image"),
    ("fake", "tiny-vit", "'fake.png' is not an image"),
    ("truncated", "tiny-vit", "cannot be decoded"),
    ("huge", "tiny-vit", "the limit is 40 megapixels"),
    ("rgb", "not a model!", "Unknown model id 'not a model!'"),
    ("rgb", "no-such-org/no-such-model", "Could not load model 'no-such-org/no-such-model'"),
    ("rgb", "", "Please choose a model"),
])
def test_analyze_errors_are_friendly(client, images, kind, model, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        _analyze(client, images[kind], model=model)
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)


@pytest.mark.slow
def test_missing_image_and_bad_head_are_friendly(client, images):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Please upload an image"):
        client.predict(None, "tiny-vit", 1, "mean over heads", api_name="/analyze")
    with pytest.raises(AppError, match="Head 7 does not exist"):
        client.predict(handle_file(str(images["rgb"])), "tiny-vit", 1, "head 7", api_name="/attention_maps")


@pytest.mark.slow
def test_local_paths_refused_on_a_space(app, client, images, tiny_models, monkeypatch):
    from gradio_client.exceptions import AppError

    monkeypatch.setattr(app, "ALLOW_LOCAL_PATHS", False)
    with pytest.raises(AppError, match="local paths are not accepted"):
        _analyze(client, images["rgb"], model=tiny_models["tiny-vit"])


@pytest.mark.slow
def test_load_results_endpoint(client, results_folder):
    root, reports = results_folder
    comparison, panels, phases, summary = client.predict(str(root), "centered_similarity", "",
                                                         api_name="/load_results")
    assert decode_plot(comparison).size == (1100, 380)
    assert decode_plot(panels).size[0] > 1000
    assert summary["metric"] == "centered_similarity"
    assert summary["models"] == ["tiny-deit", "tiny-vit"]  # by depth
    assert summary["num_layers"] == {"tiny-deit": 3, "tiny-vit": 5}
    assert {"centered_similarity", "aci", "attn_entropy"} <= set(summary["computed_metrics"])
    assert "probe_cls_acc" not in summary["computed_metrics"]
    rows = {r[0]: dict(zip(phases["headers"], r)) for r in phases["data"]}
    for name, report in reports.items():
        fit = report.phases["centered_similarity"]
        assert rows[name]["layers"] == report.num_layers and rows[name]["images"] == 12
        assert rows[name]["pattern"] == fit.pattern and rows[name]["verdict"] == fit.reason
        assert rows[name]["plateau_start"] == fit.plateau_start
    summary = client.predict(str(root), "aci", "", api_name="/load_results")[3]
    assert summary["metric"] == "aci"


@pytest.mark.slow
@pytest.mark.parametrize("source, metric, message", [
    ("", "centered_similarity", "Enter a results folder"),
    ("/definitely/not/here", "centered_similarity", "is not a folder of results"),
    ("not a dataset id!", "centered_similarity", "Could not load results from"),  # one message (issue 13)
    ("no-such-user/no-such-results", "centered_similarity", "Could not load results from"),
    (None, "probe_cls_acc", "was not computed in these results"),
    (None, "no_such_metric", "Unknown metric"),
])
def test_load_results_errors_are_friendly(client, results_folder, tmp_path, source, metric, message):
    from gradio_client.exceptions import AppError

    source = str(results_folder[0]) if source is None else source
    with pytest.raises(AppError, match=message):
        client.predict(source, metric, "", api_name="/load_results")


@pytest.mark.slow
def test_load_results_refuses_an_empty_folder(client, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Could not load results from"):
        client.predict(str(tmp_path), "centered_similarity", "", api_name="/load_results")


@pytest.mark.slow
def test_page_config_lists_the_tabs_and_components(server):
    import httpx

    config = httpx.get(server[1] + "config", timeout=30).json()
    labels = {(c["type"], c["props"].get("label")) for c in config["components"]}
    for expected in (("tabitem", "Single image"), ("tabitem", "Dataset results"), ("tabitem", "About"),
                     ("image", "Image"), ("dropdown", "Model"), ("slider", "Layer"), ("dropdown", "Head"),
                     ("plot", "Per-layer curves with phase bands"), ("label", "Prediction (top 5)")):
        assert expected in labels, expected
    about = next(c for c in config["components"] if c["props"].get("elem_id") == "about")["props"]["value"]
    assert "Information Scrambling Index" in about and "Cliff" in about and "](http" in about


# -- bounded load test -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_eight_concurrent_clients_get_correct_answers(app, server):
    """8 clients, each with its own connection, analyse 8 different images at once (two models); every answer
    equals the one the same request gets alone, on a cold cache."""
    from gradio_client import Client, handle_file

    demo, url = server
    files = sorted(EXAMPLES.iterdir())[:8]
    jobs = [(f, "tiny-vit" if i % 2 == 0 else "tiny-deit") for i, f in enumerate(files)]

    def run(job):
        path, model = job
        out = Client(url, verbose=False).predict(handle_file(str(path)), model, 2, "mean over heads",
                                                 api_name="/analyze")
        maps = [None if p is None else np.asarray(Image.open(p).convert("RGB")) for p in out[1:3]]
        return {k: v for k, v in out[5].items() if k != "cached"}, out[6], maps, out[4]

    app.clear_caches(demo)
    results: list = [None] * len(jobs)
    errors: list = []

    def worker(i):
        try:
            results[i] = run(jobs[i])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append((jobs[i], err))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    concurrent_seconds = time.perf_counter() - start
    assert not errors, errors
    assert all(r is not None for r in results)

    app.clear_caches(demo)
    for job, got in zip(jobs, results):
        want = run(job)
        assert got[0] == want[0], job  # summary: model, layout, image hash, phases, prediction
        assert got[1]["headers"] == want[1]["headers"]
        np.testing.assert_allclose(np.array(got[1]["data"])[:, 1:-1].astype(float),
                                   np.array(want[1]["data"])[:, 1:-1].astype(float), atol=1e-6)
        for a, b in zip(got[2], want[2]):
            np.testing.assert_array_equal(a, b)
        assert got[3] == want[3]
    # the images really were different ones
    assert len({r[0]["image"]["sha256"] for r in results}) == len(jobs)
    print(f"8 concurrent analyses in {concurrent_seconds:.1f}s")


# -- the script itself ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_python_spaces_app_app_py_runs(tiny_models, tmp_path):
    """``python spaces_app/app.py`` starts the app offline and serves an analysis."""
    from gradio_client import Client, handle_file

    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1",
               HF_ISI_SPACE_MODELS=f"tiny-vit={tiny_models['tiny-vit']}")
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(APP_PATH)], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        import httpx

        while True:
            try:
                if httpx.get(url + "gradio_api/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        client = Client(url, verbose=False)
        models = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/analyze"][
            "parameters"][1]["type"]["enum"]
        assert "tiny-vit" in models  # and the reference models, when they are installed
        out = client.predict(handle_file(str(EXAMPLES / "digit_7.png")), "tiny-vit", 1, "mean over heads",
                             api_name="/analyze")
        assert out[5]["model"] == "tiny-vit" and out[5]["num_layers"] == 5
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- the Space's files ---------------------------------------------------------------------------------------------
def test_space_readme_header_and_requirements():
    import configparser

    import gradio
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(REPO / "spaces_app" / "README.md")
    data = card.data.to_dict()
    assert data["sdk"] == "gradio" and data["sdk_version"] == gradio.__version__  # pinned to the tested version
    assert data["app_file"] == "app.py" and (REPO / "spaces_app" / data["app_file"]).is_file()
    assert data["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert data["license"] == "apache-2.0" and len(data["short_description"]) <= 60
    lines = (REPO / "spaces_app" / "requirements.txt").read_text().splitlines()
    listed = {line.split("==")[0].strip().lower() for line in lines if line.strip() and line[0] not in "#-"}
    assert "gradio" not in listed  # the Space installs the sdk_version
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    required = {line.split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for line in setup["options"]["install_requires"].splitlines() if line.strip()}
    assert required <= listed, required - listed  # everything hf_isi needs (hf_isi itself is copied)
    examples = list(EXAMPLES.iterdir())
    assert len(examples) >= 8 and sum(p.stat().st_size for p in examples) < 400_000
