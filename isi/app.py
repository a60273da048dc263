"""The ``isi`` metric Space: compute the Information Scrambling Index with the evaluate module, and read its card.

* **Compute**: pick a built-in reference ViT (trained on scikit-learn's digits, shipped inside hf_isi, so it
  works offline), a config (``reconstruction``, ``attention`` or ``full``) and either some digits or your own
  images; the module is loaded with ``evaluate.load`` from this folder's ``isi.py`` and fed batch by batch
  (``add_batch(model=..., pixel_values=...)``). It shows the per-layer curves with their Cliff/Plateau/Climb
  bands, the summary and the per-layer values.
* **Metric card**: the module's README.

Runs from the Space (``hf_isi/`` copied next to this file by ``scripts/publish.py``), from a clone
(``python isi/app.py``) or with hf_isi installed. ``demo.launch()`` runs only under ``__main__``, so importing
this file builds the UI without serving it. Extra local models: ``HF_ISI_METRIC_MODELS="name=/path;other=/path"``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent
try:  # installed, or copied next to app.py by scripts/publish.py (the Space's folder is on sys.path)
    import hf_isi
except ImportError:  # a clone without installing: the repository root is the parent folder
    for _candidate in (APP_DIR, APP_DIR.parent):
        if (_candidate / "hf_isi" / "__init__.py").is_file():
            sys.path.insert(0, str(_candidate))
            break
    import hf_isi

import gradio as gr
import numpy as np
import pandas as pd

from hf_isi import ModelAdapter, ModelError, zoo
from hf_isi import data as isi_data
from hf_isi.phases import PhaseFit
from hf_isi.plotting import layer_label, shade_phases

logger = logging.getLogger("hf_isi.metric_space")

CONFIGS = ("reconstruction", "attention", "full")
#: per config: the curves drawn (the first is the one whose phases are shaded) and the summary scalar
CURVES: dict[str, tuple[str, ...]] = {
    "reconstruction": ("isi", "isi_r2_all", "isi_r2_self"),
    "attention": ("isi_attention", "attn_residual_cosine", "attn_entropy"),
    "full": ("isi", "isi_attention", "centered_similarity", "probe_cls_acc", "probe_mean_acc"),
}
SCALARS = {"reconstruction": ("isi_mean",), "attention": ("isi_attention_mean",),
           "full": ("isi_mean", "isi_attention_mean", "pe_dominance", "tradeoff_layer")}
ISI_DIMS = (2, 4, 8, 16)
MAX_DIGITS = zoo.DIGITS_NUM_IMAGES
MAX_IMAGES = 512  # uploaded images per computation
BATCH_SIZE = 128
DIGITS, UPLOAD = "scikit-learn digits", "my images"
_LOCK = threading.Lock()  # one computation at a time: the model and pyplot are shared


def module_path() -> str:
    """The evaluate module: this folder's ``isi.py`` (the Space and ``isi/`` in a clone), else the packaged one.

    The file path, not the folder: ``evaluate.load(<folder>)`` loads ``<folder>/<folder name>.py``, and on a
    Space the folder is not called ``isi``.
    """
    local = APP_DIR / "isi.py"
    return str(local) if local.is_file() else str(Path(hf_isi.ISI_METRIC_PATH) / "isi.py")


def available_models() -> dict[str, str]:
    """Display name -> checkpoint folder: the trained reference models, plus ``HF_ISI_METRIC_MODELS``."""
    out = {}
    for name in zoo.trained_reference_models():
        out[name] = str(zoo.reference_model_path(name))
    for item in os.environ.get("HF_ISI_METRIC_MODELS", "").split(";"):
        if "=" in item:
            name, path = (part.strip() for part in item.split("=", 1))
            if name and path:
                out[name] = path
    return out


MODELS = available_models()


@functools.lru_cache(maxsize=4)
def _adapter(source: str, name: str) -> ModelAdapter:
    return ModelAdapter.from_pretrained(source, attentions=True, name=name)


def _images(source: str, num_digits: Any, files: Any) -> tuple[list[Any], list[int] | None, list[str], str]:
    """``(RGB images, labels or None, ids, description)`` of the chosen image set."""
    if source == UPLOAD:
        paths = [f if isinstance(f, str) else getattr(f, "name", None) or (f.get("path") if isinstance(f, dict)
                                                                         else None) for f in (files or [])]
        paths = [p for p in paths if p]
        if not paths:
            raise gr.Error("Upload some images first (or choose the digits).")
        if len(paths) > MAX_IMAGES:
            raise gr.Error(f"{len(paths)} images: at most {MAX_IMAGES} per computation.")
        images = []
        for path in paths:
            try:
                images.append(isi_data.load_image(path, where=f"'{Path(path).name}'"))
            except isi_data.UnreadableImageError as err:
                raise gr.Error(f"{err}. Upload PNG, JPEG, WebP, GIF, BMP or TIFF images.") from None
        return images, None, [f"{i}:{Path(p).name}" for i, p in enumerate(paths)], f"{len(images)} uploaded images"
    try:
        count = int(num_digits)
    except (TypeError, ValueError):
        raise gr.Error("The number of digits must be a whole number.") from None
    if not 10 <= count <= MAX_DIGITS:
        raise gr.Error(f"Choose between 10 and {MAX_DIGITS} digits.")
    digits = zoo.digits_dataset()[:count]
    images = [isi_data.to_rgb(image) for image in digits["image"]]
    return images, [int(v) for v in digits["label"]], list(digits["id"]), f"the first {count} of scikit-learn's digits"


def compute(model: Any, config: Any, source: Any = DIGITS, num_digits: Any = 1000, files: Any = None,
            isi_dim: Any = 4) -> tuple[Any, dict[str, Any], pd.DataFrame]:
    """Run the ISI module on the chosen model and images: ``(figure, summary, per-layer table)``."""
    import evaluate
    import matplotlib.pyplot as plt

    if model not in MODELS:
        known = ", ".join(MODELS) or "none is installed"
        raise gr.Error(f"Unknown model {model!r}; choose one of: {known}.")
    if config not in CONFIGS:
        raise gr.Error(f"Unknown config {config!r}; choose one of: {', '.join(CONFIGS)}.")
    try:
        k = int(isi_dim)
    except (TypeError, ValueError):
        raise gr.Error("isi_dim must be a whole number.") from None
    if k not in ISI_DIMS:
        raise gr.Error(f"isi_dim must be one of {', '.join(map(str, ISI_DIMS))}.")
    images, labels, ids, described = _images(source, num_digits, files)
    with _LOCK:
        try:
            adapter = _adapter(MODELS[model], model)
        except ModelError as err:
            raise gr.Error(f"Could not load {model}: {err}") from None
        processor = adapter.image_processor or isi_data.default_image_processor(adapter.image_size)
        metric = evaluate.load(module_path(), config, isi_dim=k, calibration_images=min(64, len(images)),
                               num_classes=len(zoo.DIGITS_CLASS_NAMES) if labels is not None else None)
        try:
            for start in range(0, len(images), BATCH_SIZE):
                stop = start + BATCH_SIZE
                pixels = isi_data.preprocess(processor, images[start:stop])
                metric.add_batch(model=adapter, pixel_values=pixels, ids=ids[start:stop],
                                 labels=None if labels is None else np.asarray(labels[start:stop]))
            results = metric.compute()
        except ValueError as err:
            raise gr.Error(f"The ISI cannot be computed here: {err}") from None
        fig = _figure(results, config, f"{model} on {described}")
        plt.close(fig)
    table = pd.DataFrame({"layer": results["layers"],
                          **{c: results[c] for c in CURVES[config] if c in results}})
    summary = {"model": model, "config": config, "images": results["num_images"], "isi_dim": k,
               **{s: results.get(s) for s in SCALARS[config]},
               "phases": {c: f["reason"] for c, f in results.get("phases", {}).items() if c in CURVES[config]}}
    if labels is None and config == "full":
        summary["note"] = "uploaded images have no labels: the probes and neural collapse are left out"
    return fig, summary, table


def _figure(results: dict[str, Any], config: str, title: str) -> Any:
    import matplotlib.pyplot as plt

    layers = results["layers"]
    fig, ax = plt.subplots(figsize=(8, 4))
    main = CURVES[config][0]
    phases = results.get("phases", {}).get(main)
    if phases:
        shade_phases(ax, PhaseFit.from_dict(phases))
    for column in CURVES[config]:
        values = np.array([np.nan if v is None else v for v in results.get(column) or []], dtype=float)
        if values.size and np.isfinite(values).any():
            ax.plot(layers, values, marker="o", ms=3, label=column, lw=2.2 if column == main else 1.2)
    ax.set_xticks(layers, [layer_label(v) for v in layers])
    ax.set_xlabel("layer")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    verdict = PhaseFit.from_dict(phases).reason if phases else ""
    ax.set_title(f"{title}\n{main}: {verdict}", fontsize=9)
    fig.tight_layout()
    return fig


def card_markdown() -> str:
    """The metric card (README.md) without its YAML header."""
    for path in (APP_DIR / "README.md", Path(hf_isi.ISI_METRIC_PATH) / "README.md"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if text.startswith("---"):
                parts = text.split("\n---", 1)
                text = parts[1].lstrip("-\n") if len(parts) == 2 else text
            return text
    return "The metric card is not available here."


def build_demo() -> gr.Blocks:
    choices = list(MODELS)
    with gr.Blocks(title="ISI: the Information Scrambling Index (evaluate metric)") as demo:
        gr.Markdown("# ISI: the Information Scrambling Index\nHow much recovering the patch embeddings from a "
                    "layer gains from looking at *all* tokens rather than each token alone, layer by layer. "
                    "Computed with the evaluate module in this Space: `evaluate.load(\"<this space>\")`.")
        with gr.Tab("Compute"):
            with gr.Row():
                with gr.Column():
                    model = gr.Dropdown(choices=choices, value=choices[0] if choices else None,
                                        label="Reference model", info="ViTs trained on scikit-learn's digits")
                    config = gr.Radio(list(CONFIGS), value="reconstruction", label="Config")
                    isi_dim = gr.Dropdown(list(ISI_DIMS), value=4, label="isi_dim (k, projection size per token)")
                    source = gr.Radio([DIGITS, UPLOAD], value=DIGITS, label="Images")
                    num_digits = gr.Slider(10, MAX_DIGITS, value=1000, step=1, label="Digits")
                    files = gr.File(file_count="multiple", file_types=["image"], label="Your images (no labels)")
                    run = gr.Button("Compute", variant="primary")
                    gr.Markdown(f"The all-to-all ridge map needs many more fit images (60 %) than `N k` (64 patches x "
                                f"k): with few images it overfits and the ISI goes negative. At most {MAX_IMAGES} "
                                "uploaded images.")
                with gr.Column(scale=2):
                    plot = gr.Plot(label="Per-layer curves (shaded: Cliff / Plateau / Climb)", format="png")
                    summary = gr.JSON(label="Summary")
            table = gr.Dataframe(label="Per-layer values (layer -1 = before position embeddings)",
                                 interactive=False)
            run.click(compute, [model, config, source, num_digits, files, isi_dim], [plot, summary, table],
                      api_name="compute", concurrency_limit=1)
        with gr.Tab("Metric card"):
            gr.Markdown(card_markdown())
    demo.queue(max_size=16)
    return demo


demo = build_demo()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    demo.launch(ssr_mode=False)
