"""hf_isi Space: explore how information moves through the layers of a vision transformer, on your own image.

Tabs:

* **Single image**: upload an image (or pick an example), choose a built-in reference model or type a Hub id;
  see the per-layer curves with their Cliff/Plateau/Climb bands (centred similarity, attention ISI, attention
  entropy, CCC, ACI), attention maps over the image per layer and head (the [CLS] row and the mean patch row),
  and the model's prediction. One image supports ``AnalysisConfig(metrics=["similarity", "attention"])`` only:
  the reconstruction ISI and the probes need a labelled image set (``scripts/probe.py``).
* **Dataset results**: load a results folder or Hub dataset written by ``scripts/probe.py`` and compare models.
* **About**: what ISI and the phases mean.

Named endpoints (``gradio_client``): ``/analyze``, ``/attention_maps``, ``/load_results``.

Run locally, offline, on the built-in models: ``python spaces_app/app.py``. Extra local models can be listed
with ``HF_ISI_SPACE_MODELS="name=/path/to/checkpoint;other=/path"``. ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import math
import os
import re
import sys
import textwrap
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent
try:  # installed (pip install -e .), or copied next to app.py by the publish script (app.py's folder is on sys.path)
    import hf_isi
except ImportError:  # run from a clone without installing: the repository root is the parent folder
    for _candidate in (APP_DIR, APP_DIR.parent):
        if (_candidate / "hf_isi" / "__init__.py").is_file():
            sys.path.insert(0, str(_candidate))
            break
    import hf_isi  # noqa: F401

import gradio as gr
import gradio.utils
import numpy as np
import pandas as pd
import PIL.Image
import PIL.ImageOps
import torch

# Resolved once at start-up: transformers resolves these names lazily, and the first resolutions racing in
# concurrent requests failed with "cannot import name 'AutoConfig' from 'transformers'" (a cold Space).
from transformers import (  # noqa: F401
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    ViTImageProcessorPil,
)

from hf_isi import (
    AnalysisConfig,
    Analyzer,
    ModelAdapter,
    ModelError,
    Report,
    zoo,
)
from hf_isi import data as isi_data
from hf_isi.plotting import PHASE_COLORS, layer_label, shade_phases
from hf_isi.report import METRIC_COLUMNS

logger = logging.getLogger("hf_isi.space")

# -- limits and settings (documented in README.md) ---------------------------------------------------------
#: uploads larger than this are refused by the server before they reach the app
MAX_UPLOAD_SIZE = "20mb"
#: images with more pixels than this are refused (read from the header, before decoding)
MAX_INPUT_PIXELS = 40_000_000
#: images with more pixels than this (but at most MAX_INPUT_PIXELS) are downscaled before analysis
DOWNSCALE_ABOVE_PIXELS = isi_data.MAX_IMAGE_PIXELS
#: Hub models with more parameters than this are refused (ViT-L/16 has 304M)
MAX_MODEL_PARAMETERS = 400_000_000
#: analysed images kept (LRU), keyed by (model, sha256 of the RGB pixels); models kept loaded (LRU)
RESULT_CACHE_SIZE = 64
MODEL_CACHE_SIZE = 6
#: requests of the analysis events processed at the same time (each model's forward pass is serialised)
CONCURRENCY = int(os.environ.get("HF_ISI_SPACE_CONCURRENCY", "4"))
#: seconds a request may take before its answer is an error (the slot is freed; see run_bounded)
REQUEST_TIMEOUT_S = float(os.environ.get("HF_ISI_SPACE_REQUEST_TIMEOUT", "120"))
#: on a Space (SPACE_ID is set) typed local paths (models, results) are refused; locally they are allowed.
#: Images are only ever read from Gradio's upload folder and the bundled examples, in either mode.
ALLOW_LOCAL_PATHS = os.environ.get("HF_ISI_SPACE_ALLOW_LOCAL_PATHS", "0" if os.environ.get("SPACE_ID") else "1") == "1"
#: where the definitions of every metric are written down
DEFINITIONS_URL = os.environ.get("HF_ISI_DEFINITIONS_URL", "https://arxiv.org/abs/2511.21635")
PAPER_URL = "https://arxiv.org/abs/2511.21635"

SINGLE_IMAGE_METRICS = ["similarity", "attention"]
#: (column, panel title) of the single-image curves
CURVES: tuple[tuple[str, str], ...] = (
    ("centered_similarity", "Centred token similarity"),
    ("isi_attention", "Attention ISI"),
    ("attn_entropy", "Attention entropy (normalised)"),
    ("ccc", "CLS centrality (CCC)"),
    ("aci", "Attention consensus (ACI)"),
)
TABLE_COLUMNS = ["layer", *(c for c, _ in CURVES), "attn_distance", "phase"]
MEAN_OVER_HEADS = "mean over heads"
EXAMPLES_DIR = APP_DIR / "examples"
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.\-]{0,95}/)?[A-Za-z0-9][\w.\-]{0,95}$")
SINGLE_IMAGE_NOTE = (
    "One image: only the centred similarity and the attention metrics are computed "
    "(`AnalysisConfig(metrics=[\"similarity\", \"attention\"])`). The reconstruction ISI and the linear probes "
    "need a labelled image set: run `scripts/probe.py` and open its results in the *Dataset results* tab."
)


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/])(?:~|/)(?:[^\s'\"`()\[\]{},;:]*/)+([^\s'\"`()\[\]{},;:]*)")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute (or ``~``) path cut to its last part: messages to clients never show where
    anything lives on the server."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "<folder>", text)


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = scrub_paths(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def friendly_errors(fn: Callable) -> Callable:
    """Every user-facing error is a ``gr.Error``: unexpected exceptions are logged here and answered with a
    one-line message without server paths, so no traceback or path ever reaches the page or an API client."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error as err:
            err.message = scrub_paths(str(err.message))
            raise
        except Exception as err:
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(err).__name__}: {_first_line(err)}). "
                           "Please try another image or model.") from None

    return wrapper


_WORKERS = threading.BoundedSemaphore(CONCURRENCY + 2)  # analysis slots + results slots


def run_bounded(fn: Callable, *args: Any, timeout: float | None = None) -> Any:
    """``fn(*args)`` in a daemon thread; after ``timeout`` seconds (default :data:`REQUEST_TIMEOUT_S`) the
    request is answered with an error and its Gradio slot freed, so that one slow or stuck request cannot hold
    the app. The work itself cannot be interrupted: it finishes (or not) in the background, and at most
    ``CONCURRENCY + 2`` such threads run at once."""
    timeout = REQUEST_TIMEOUT_S if timeout is None else timeout
    started = time.monotonic()
    if not _WORKERS.acquire(timeout=timeout):
        raise gr.Error("The app is busy with earlier requests that are taking too long; please try again later.")
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the waiting request
            outcome["error"] = err
        finally:
            _WORKERS.release()

    context = contextvars.copy_context()  # Gradio's request context, as the handler would have seen it
    worker = threading.Thread(target=context.run, args=(target,), daemon=True,
                              name=f"hf_isi-{getattr(fn, '__name__', 'request')}")
    worker.start()
    worker.join(max(0.0, timeout - (time.monotonic() - started)))
    if worker.is_alive():
        logger.warning("%s took longer than %.0f s; answered with an error", getattr(fn, "__name__", fn), timeout)
        raise gr.Error(f"This request took longer than {timeout:.0f} s and was given up. Please try a smaller "
                       "image or another model.")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def bounded(fn: Callable) -> Callable:
    """An event handler run through :func:`run_bounded`."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return run_bounded(fn, *args)

    return wrapper


# -- models ------------------------------------------------------------------------------------------------
def builtin_models() -> dict[str, str]:
    """Display name -> source of the built-in reference models that are present in the installed package."""
    return {name: name for name in zoo.trained_reference_models()}


def env_models() -> dict[str, str]:
    """Extra local models from ``HF_ISI_SPACE_MODELS="name=/path;other=/path"``."""
    out = {}
    for item in os.environ.get("HF_ISI_SPACE_MODELS", "").split(";"):
        if "=" in item:
            name, path = item.split("=", 1)
            if name.strip() and path.strip():
                out[name.strip()] = path.strip()
    return out


@dataclass
class LoadedModel:
    name: str
    adapter: ModelAdapter
    processor: Any
    has_head: bool
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class _LRU:
    """A small thread-safe LRU cache."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


class ModelRegistry:
    """The models the app offers (display name -> source) and the loaded ones, each loaded once (LRU)."""

    def __init__(self, models: dict[str, str], cache_size: int = MODEL_CACHE_SIZE) -> None:
        self.models = dict(models)
        self._cache = _LRU(cache_size)
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def resolve(self, choice: Any) -> tuple[str, str]:
        """``(display name, source)`` of a dropdown value or typed id; ``gr.Error`` for anything else."""
        if not isinstance(choice, str) or not choice.strip():
            raise gr.Error("Please choose a model.")
        name = choice.strip()
        if name in self.models:
            return name, self.models[name]
        known = ", ".join(self.names) or "none installed"
        local = name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()
        if local:
            if not ALLOW_LOCAL_PATHS:
                raise gr.Error(f"Unknown model '{name}': local paths are not accepted here. Choose a built-in "
                               f"model ({known}) or type a Hub model id such as google/vit-base-patch16-224.")
            return name, str(Path(name).expanduser())
        if not HUB_ID.match(name) or ".." in name or "--" in name:
            raise gr.Error(f"Unknown model id '{name}'. Choose a built-in model ({known}) or type a Hub model id "
                           "such as google/vit-base-patch16-224.")
        return name, name

    def get(self, choice: Any) -> LoadedModel:
        name, source = self.resolve(choice)
        entry = self._cache.get(source)
        if entry is not None:
            return entry
        with self._lock:
            load_lock = self._loading.setdefault(source, threading.Lock())
        with load_lock:  # one load per model, however many requests ask for it at once
            entry = self._cache.get(source)
            if entry is None:
                try:
                    entry = self._load(name, source)
                finally:
                    with self._lock:
                        self._loading.pop(source, None)
                self._cache.put(source, entry)
        return entry

    def _load(self, name: str, source: str) -> LoadedModel:
        builtin = source in self.models.values()
        if not builtin:
            _check_hub_size(name, source)
        try:
            adapter = ModelAdapter.from_pretrained(source, attentions=True, name=name)
        except ModelError as err:
            reason = re.sub(r"^cannot load (model )?'[^']*'( as a vision transformer)?:\s*", "", _first_line(err))
            hint = "" if Path(source).exists() else " Check the id; Hub models need internet access, which this " \
                "app may not have."
            raise gr.Error(f"Could not load model '{name}': {reason.rstrip('.')}.{hint}") from None
        except Exception as err:
            logger.warning("loading %s failed", source, exc_info=True)
            raise gr.Error(f"Could not load model '{name}' ({type(err).__name__}: {_first_line(err)}).") from None
        num_parameters = sum(p.numel() for p in adapter.model.parameters())
        if not builtin and num_parameters > MAX_MODEL_PARAMETERS:
            raise gr.Error(f"Model '{name}' has {num_parameters / 1e6:.0f}M parameters; this app accepts at most "
                           f"{MAX_MODEL_PARAMETERS / 1e6:.0f}M.")
        processor = adapter.image_processor or isi_data.default_image_processor(adapter.image_size)
        has_head = adapter.model is not adapter.tower and callable(getattr(adapter.model, "forward", None)) \
            and type(adapter.model).__name__.endswith("ForImageClassification")
        return LoadedModel(name, adapter, processor, has_head)

    def clear(self) -> None:
        self._cache.clear()


def _check_hub_size(name: str, source: str) -> None:
    """Refuse a Hub model that is too large before downloading it (best effort: skipped when offline)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or Path(source).exists():
        return
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(source, expand=["safetensors"], timeout=10)
        total = getattr(getattr(info, "safetensors", None), "total", None)
    except Exception:  # noqa: BLE001 - offline, gated, no metadata: the load itself will tell
        return
    if total and total > MAX_MODEL_PARAMETERS:
        raise gr.Error(f"Model '{name}' has {total / 1e6:.0f}M parameters; this app accepts at most "
                       f"{MAX_MODEL_PARAMETERS / 1e6:.0f}M.")


# -- images ------------------------------------------------------------------------------------------------
@dataclass
class UploadedImage:
    image: PIL.Image.Image  # RGB
    name: str
    original_mode: str
    original_size: tuple[int, int]
    downscaled: bool
    sha256: str


NOT_UPLOADED = "Please upload the image (or pick one of the examples): this app only reads files uploaded to it."


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def upload_roots() -> list[str]:
    """The folders images may be read from: Gradio's upload folder (uploads and cached examples) and the
    bundled examples."""
    return [os.path.realpath(gradio.utils.get_upload_folder()), os.path.realpath(EXAMPLES_DIR)]


def check_upload(value: Any) -> Any:
    """``value`` (an image input as an event receives it, unprocessed) if it names a file Gradio uploaded or a
    bundled example; a ``gr.Error`` otherwise. The events take ``preprocess=False`` (so that huge images are
    refused from their header, never decoded by Gradio), so this is the check Gradio's preprocessing would make:
    a client may send any ``{"path": ...}`` without uploading anything."""
    path = value.get("path") if isinstance(value, dict) else value
    if path is None or path == "" or isinstance(value, PIL.Image.Image):
        return value  # nothing to read: read_image answers "please upload"
    if not isinstance(path, (str, os.PathLike)):
        raise gr.Error(NOT_UPLOADED)
    path = os.fspath(path)
    normal, real = os.path.abspath(path), os.path.realpath(path)
    for root in upload_roots():
        if _inside(real, root) and (_inside(normal, root) or _inside(normal, os.path.abspath(root))):
            return value
    logger.warning("refused an image outside the upload folder")
    raise gr.Error(NOT_UPLOADED)


def read_image(value: Any) -> UploadedImage:
    """Decode an upload (a gradio file payload, a path, or a PIL image) to RGB, with friendly errors.

    Refuses non-images and images above :data:`MAX_INPUT_PIXELS`; downscales above
    :data:`DOWNSCALE_ABOVE_PIXELS`; converts grayscale, palette, RGBA (on white), CMYK and 16-bit to RGB.
    """
    if value is None or value == "" or (isinstance(value, dict) and not (value.get("path") or value.get("url"))):
        raise gr.Error("Please upload an image (or pick one of the examples) first.")
    if isinstance(value, dict):
        path = value.get("path")
        name = value.get("orig_name") or (Path(path).name if path else "the upload")
        if not path:
            raise gr.Error("The image must be uploaded as a file.")
    elif isinstance(value, (str, os.PathLike)):
        path, name = str(value), Path(value).name
    elif isinstance(value, PIL.Image.Image):
        path, name = None, "the image"
    else:
        raise gr.Error(f"Unsupported input of type {type(value).__name__}: please upload an image file.")
    with contextlib.ExitStack() as files:
        return _decode_upload(value, path, name, files)


def _decode_upload(value: Any, path: str | None, name: str, files: contextlib.ExitStack) -> UploadedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            # a regular file only, never a link, FIFO or device (opening a FIFO would block the request)
            image = PIL.Image.open(files.enter_context(isi_data.open_image_file(path, follow_symlinks=False))) \
                if path is not None else value
    except PIL.Image.DecompressionBombError:
        raise gr.Error(f"'{name}' is too large: the limit is {MAX_INPUT_PIXELS / 1e6:.0f} megapixels. "
                       "Please upload a smaller image.") from None
    except (OSError, ValueError, SyntaxError) as err:  # PIL.UnidentifiedImageError is an OSError
        suffix = Path(name).suffix.lower()
        hint = " SVG is not supported." if suffix == ".svg" else ""
        logger.info("refused %s: %s", name, err)
        raise gr.Error(f"'{name}' is not an image that can be read. Please upload a PNG, JPEG, WebP, GIF, BMP or "
                       f"TIFF file.{hint}") from None
    width, height = image.size
    if width * height > MAX_INPUT_PIXELS:
        raise gr.Error(f"'{name}' is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels): the limit is "
                       f"{MAX_INPUT_PIXELS / 1e6:.0f} megapixels. Please upload a smaller image.")
    if width * height == 0:
        raise gr.Error(f"'{name}' is empty (0 pixels).")
    original_mode = image.mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated GIF / multi-page TIFF: the first frame
            if width * height <= DOWNSCALE_ABOVE_PIXELS:
                image = PIL.ImageOps.exif_transpose(image)  # phone photos: the way they are meant to be seen
            rgb = isi_data.load_image(image, where=f"'{name}'")  # downscales above MAX_IMAGE_PIXELS, any mode -> RGB
    except (isi_data.UnreadableImageError, OSError, ValueError, SyntaxError) as err:
        logger.info("refused %s: %s", name, err)
        raise gr.Error(f"'{name}' cannot be decoded as an image (the file may be truncated or corrupt). "
                       "Please upload another image.") from None
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
    return UploadedImage(rgb, name, original_mode, (width, height), rgb.size != (width, height), digest)


# -- one image through one model ---------------------------------------------------------------------------
@dataclass
class ImageAnalysis:
    """Everything shown for one (model, image): cached, and re-rendered for any layer/head cheaply."""

    model: str
    report: Report
    display: np.ndarray  # the model's input image, uint8 [h, w, 3], upscaled for display
    cls_rows: np.ndarray | None  # [L, H, N]: attention of the [CLS] query on the patch keys
    patch_rows: np.ndarray | None  # [L, H, N]: mean over patch queries of their attention on the patch keys
    grid: tuple[int, int]
    num_layers: int
    num_heads: int
    num_prefix_tokens: int
    has_cls: bool
    map_note: str | None
    prediction: dict[str, float] | None
    info: dict[str, Any]


def _display_image(pixel_values: torch.Tensor, processor: Any) -> np.ndarray:
    """The image as the model sees it (resized, cropped), un-normalised, upscaled to >= 320 px (nearest)."""
    x = pixel_values[0].detach().double().cpu().numpy().transpose(1, 2, 0)
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if getattr(processor, "do_normalize", False) and mean is not None and std is not None:
        x = x * np.asarray(std, dtype=np.float64) + np.asarray(mean, dtype=np.float64)
        factor = getattr(processor, "rescale_factor", 1 / 255) if getattr(processor, "do_rescale", True) else 1 / 255
        x = x / factor
    else:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(x)
    img = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    scale = max(1, math.ceil(320 / max(img.shape[:2])))
    if scale > 1:
        img = np.asarray(PIL.Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale),
                                                        PIL.Image.Resampling.NEAREST))
    return img


def _attention_rows(states: Any) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    layout = states.layout
    prefix, n = layout.num_prefix_tokens, layout.num_patches
    attentions = states.attentions or ()
    if not attentions:
        return None, None, "This model returned no attention maps."
    for a in attentions:
        if a.shape[0] != 1 or a.shape[-1] != prefix + n or a.shape[-2] != prefix + n:
            return None, None, ("This model uses windowed attention (e.g. Swin): each token only attends within "
                                "its local window, so there is no image-wide attention map to draw. The curves "
                                "above are computed per window.")
    stacked = torch.stack([a[0].double() for a in attentions])  # [L, H, T, T]
    patch_rows = stacked[:, :, prefix:, prefix:].mean(dim=2).float().numpy()
    cls_rows = None
    if layout.cls_index is not None:
        cls_rows = stacked[:, :, layout.cls_index, prefix:].float().numpy()
    return cls_rows, patch_rows, None


class ImageAnalyzer:
    """Analyses one image with one model (single forward pass), with an LRU cache keyed by
    ``(model source, sha256 of the RGB pixels)``; thread-safe."""

    def __init__(self, registry: ModelRegistry, cache_size: int = RESULT_CACHE_SIZE) -> None:
        self.registry = registry
        self.cache = _LRU(cache_size)

    def __call__(self, image_value: Any, model_choice: Any) -> tuple[ImageAnalysis, UploadedImage, bool]:
        upload = read_image(image_value)
        _, source = self.registry.resolve(model_choice)
        key = (source, upload.sha256)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, upload, True
        entry = self.registry.get(model_choice)
        analysis = self._analyze(entry, upload)
        self.cache.put(key, analysis)
        return analysis, upload, False

    @staticmethod
    def _analyze(entry: LoadedModel, upload: UploadedImage) -> ImageAnalysis:
        adapter = entry.adapter
        try:
            pixel_values = isi_data.preprocess(entry.processor, [upload.image])
        except Exception as err:  # noqa: BLE001
            raise gr.Error(f"Model '{entry.name}' could not preprocess this image ({_first_line(err)}).") from None
        analyzer = Analyzer(adapter, AnalysisConfig(metrics=list(SINGLE_IMAGE_METRICS)))
        logits = None
        with entry.lock, torch.inference_mode():  # forward hooks live on the shared model: one pass at a time
            try:
                states = analyzer.capture(pixel_values)
            except (ModelError, ValueError) as err:
                raise gr.Error(f"Model '{entry.name}' cannot be analysed: {_first_line(err)}") from None
            if entry.has_head:
                out = adapter.model(pixel_values=pixel_values.to(adapter.device, adapter.dtype))
                logits = getattr(out, "logits", None)
        analyzer.setup_states(states)  # single image: the batch is its own calibration
        analyzer.update_states(states)
        report = analyzer.report(image_sha256=upload.sha256)
        cls_rows, patch_rows, note = _attention_rows(states)
        layout = states.layout
        heads = int(states.attentions[0].shape[1]) if states.attentions else 0
        prediction = None
        if logits is not None:
            probs = torch.softmax(logits[0].double(), dim=-1)
            top = torch.topk(probs, k=min(5, probs.numel()))
            id2label = getattr(adapter.model.config, "id2label", None) or {}
            prediction = {}
            for p, i in zip(top.values.tolist(), top.indices.tolist()):
                label = str(id2label.get(i, id2label.get(str(i), f"class {i}")))
                prediction[label if label not in prediction else f"{label} ({i})"] = float(p)
        info = {
            "model": entry.name,
            "model_class": type(adapter.model).__name__,
            "num_layers": report.num_layers,
            "num_heads": heads,
            "patch_grid": list(layout.patch_grid),
            "num_prefix_tokens": layout.num_prefix_tokens,
            "has_cls_token": layout.cls_index is not None,
            "model_input_size": list(pixel_values.shape[-2:]),
        }
        if layout.cls_index is None and note is None:
            note = "This model has no [CLS] token: only the mean patch attention is shown."
        return ImageAnalysis(entry.name, report, _display_image(pixel_values, entry.processor), cls_rows,
                             patch_rows, tuple(layout.patch_grid), report.num_layers, heads,
                             layout.num_prefix_tokens, layout.cls_index is not None, note, prediction, info)

    def clear(self) -> None:
        self.cache.clear()


# -- rendering ---------------------------------------------------------------------------------------------
def parse_layer(layer: Any, num_layers: int) -> int:
    try:
        value = round(float(layer))
    except (TypeError, ValueError):
        raise gr.Error(f"The layer must be a number between 1 and {num_layers}, not {layer!r}.") from None
    return min(max(value, 1), max(num_layers, 1))


def parse_head(head: Any, num_heads: int) -> int | None:
    """``None`` for the mean over heads, else the 0-based head index."""
    if head is None or head == "" or (isinstance(head, str) and head.strip().lower() in (MEAN_OVER_HEADS, "mean")):
        return None
    text = str(head).strip().lower().removeprefix("head").strip()
    try:
        index = int(text)
    except ValueError:
        raise gr.Error(f"Unknown head {head!r}: choose '{MEAN_OVER_HEADS}' or 'head 0'..'head {num_heads - 1}'.") \
            from None
    if not 0 <= index < num_heads:
        raise gr.Error(f"Head {index} does not exist: this model has {num_heads} heads (head 0..{num_heads - 1}).")
    return index


def head_choices(num_heads: int) -> list[str]:
    return [MEAN_OVER_HEADS, *(f"head {h}" for h in range(num_heads))]


def overlay(display: np.ndarray, values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``values`` (one per patch, row-major over ``grid``) as a heat map over ``display``: each map is scaled
    to its own maximum, drawn with one colour per patch (nearest upsampling) and blended with the image."""
    import matplotlib

    heat = np.asarray(values, dtype=np.float64).reshape(grid)
    top = float(heat.max())
    heat = heat / top if top > 0 else np.zeros_like(heat)
    rgb = (matplotlib.colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)
    h, w = display.shape[:2]
    rgb = np.asarray(PIL.Image.fromarray(rgb).resize((w, h), PIL.Image.Resampling.NEAREST), dtype=np.float64)
    return np.clip(0.4 * display.astype(np.float64) + 0.6 * rgb, 0, 255).astype(np.uint8)


def render_maps(analysis: ImageAnalysis, layer: Any, head: Any) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(CLS map, mean-patch map, caption) for one layer and head (or the mean over heads)."""
    layer_index = parse_layer(layer, analysis.num_layers)
    if analysis.patch_rows is None:
        return None, None, f"**No attention map.** {analysis.map_note}"
    head_index = parse_head(head, analysis.num_heads)

    def pick(rows: np.ndarray) -> np.ndarray:
        r = rows[layer_index - 1]
        return r.mean(axis=0) if head_index is None else r[head_index]

    which = MEAN_OVER_HEADS if head_index is None else f"head {head_index}"
    patch_map = overlay(analysis.display, pick(analysis.patch_rows), analysis.grid)
    parts = [f"**Layer {layer_index} of {analysis.num_layers}, {which}.**"]
    cls_map = None
    if analysis.cls_rows is not None:
        row = pick(analysis.cls_rows)
        cls_map = overlay(analysis.display, row, analysis.grid)
        parts.append(f"Left: where the [CLS] token looks ({100 * float(row.sum()):.0f}% of its attention on patches, "
                     "the rest on prefix tokens).")
    else:
        parts.append("Left: no [CLS] token in this model.")
    parts.append("Right: the mean attention of all patch queries. Each map is scaled to its own maximum "
                 "(bright = more attention), one colour per patch.")
    if analysis.map_note and analysis.cls_rows is None:
        parts.append(analysis.map_note)
    return cls_map, patch_map, " ".join(parts)


def _short_verdict(fit: Any) -> str:
    if fit is None:
        return "no phase fit"
    if fit.pattern:
        return f"Cliff-Plateau-Climb (plateau from {fit.boundaries[0]}, climb from {fit.boundaries[1]})"
    reason = fit.reason or "no Cliff-Plateau-Climb pattern"
    return textwrap.shorten(reason, width=100, placeholder="...") if len(reason) > 100 else reason


def curves_figure(report: Report, title: str) -> Any:
    """The single-image curves, one panel each, with each curve's own phase bands (no pyplot: thread-safe)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(13, 7))
    axes = fig.subplots(2, 3)
    layers = report.table["layer"].to_numpy()
    for ax, (column, name) in zip(axes.flat, CURVES):
        values = report.table[column].to_numpy(dtype=float)
        fit = report.phases.get(column)
        shade_phases(ax, fit)
        if np.isfinite(values).any():
            ax.plot(layers, values, marker="o", ms=3.5, color="#1f77b4")
            if fit is not None and fit.pattern:
                fitted = np.array([np.nan if v is None else v for v in fit.fitted], dtype=float)
                ax.plot(fit.layers, fitted, ls="--", lw=1, color="0.35")
        else:
            why = "no [CLS] token" if column == "ccc" else "not available"
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.5")
        verdict = "\n".join(textwrap.wrap(_short_verdict(fit), width=52)[:2])
        ax.set_title(f"{name}\n{verdict}", fontsize=8.5)
        ax.ticklabel_format(axis="y", useOffset=False)
        step = max(1, len(layers) // 10)
        ax.set_xticks(layers[::step], [layer_label(int(t)) for t in layers[::step]])
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
    legend_ax = axes.flat[-1]
    legend_ax.axis("off")
    legend_ax.legend(handles=[Patch(color=c, alpha=0.25, label=p) for p, c in PHASE_COLORS.items()],
                     title="phase bands", loc="center", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _nan_to_none(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype(object)
    return frame.where(pd.notna(frame), None)


def summary_json(analysis: ImageAnalysis, upload: UploadedImage, cached: bool) -> dict[str, Any]:
    phases = {}
    for column, _ in CURVES:
        fit = analysis.report.phases.get(column)
        if fit is not None:
            phases[column] = {"pattern": bool(fit.pattern), "plateau_start": fit.plateau_start,
                              "climb_start": fit.climb_start, "reason": fit.reason}
    top = max(analysis.prediction.items(), key=lambda kv: kv[1]) if analysis.prediction else None
    return {
        **analysis.info,
        "metrics": list(SINGLE_IMAGE_METRICS),
        "image": {"name": upload.name, "original_size": list(upload.original_size),
                  "original_mode": upload.original_mode, "downscaled": upload.downscaled, "sha256": upload.sha256},
        "prediction": None if top is None else {"label": top[0], "probability": round(top[1], 6)},
        "phases": phases,
        "attention_maps": analysis.map_note or "available",
        "cached": cached,
    }


def status_markdown(analysis: ImageAnalysis, upload: UploadedImage) -> str:
    info = analysis.info
    prefix = info["num_prefix_tokens"]
    tokens = f"{info['patch_grid'][0]}x{info['patch_grid'][1]} patches" + (f" + {prefix} prefix token(s)" if prefix
                                                                           else "")
    lines = []
    if analysis.prediction:
        label, p = max(analysis.prediction.items(), key=lambda kv: kv[1])
        lines.append(f"**{analysis.model}** predicts **{label}** ({100 * p:.0f}%).")
    else:
        lines.append(f"**{analysis.model}** has no classification head: no prediction.")
    lines.append(f"{analysis.num_layers} layers, {analysis.num_heads} heads per layer, {tokens}; "
                 f"input {info['model_input_size'][1]}x{info['model_input_size'][0]} px.")
    image = f"Image '{upload.name}': {upload.original_size[0]}x{upload.original_size[1]} {upload.original_mode}"
    if upload.original_mode != "RGB":
        image += ", converted to RGB"
    if upload.downscaled:
        image += f", downscaled to {upload.image.width}x{upload.image.height}"
    lines.append(image + ".")
    lines.append(SINGLE_IMAGE_NOTE)
    return "\n\n".join(lines)


# -- dataset results ---------------------------------------------------------------------------------------
COMPARE_METRICS = [c for c in METRIC_COLUMNS if "penalty" not in c]


def _load_reports(source: str, revision: str | None) -> dict[str, Report]:
    from hf_isi.results import load_results  # the results layout of scripts/probe.py, local or on the Hub

    return load_results(source, revision=revision)


class ResultsLoader:
    """Loads results datasets (local folder or Hub dataset id), cached per (source, revision)."""

    def __init__(self, cache_size: int = 8) -> None:
        self.cache = _LRU(cache_size)

    def __call__(self, source: Any, revision: Any = None) -> dict[str, Report]:
        if not isinstance(source, str) or not source.strip():
            raise gr.Error("Enter a results folder (written by scripts/probe.py) or a Hub dataset id.")
        source = source.strip()
        revision = revision.strip() if isinstance(revision, str) and revision.strip() else None
        # Every refusal and failure gets this same message, so that no answer tells whether a path exists.
        refused = gr.Error(f"Could not load results from '{source}': it is not a folder of results, or a Hub dataset "
                           "of them, written by scripts/probe.py (results/data.parquet + summary.json) that this app "
                           "can read.")
        hub_id = bool(HUB_ID.match(source)) and "/" in source and ".." not in source
        path_like = source.startswith(("/", "./", "../", "~", ".")) or not hub_id
        path = Path(source).expanduser()
        if not ALLOW_LOCAL_PATHS:
            if path_like:  # decided from the text alone: nothing on the server is looked at
                raise gr.Error(f"'{source}' is not a Hub dataset id like user/isi-results (local paths are not "
                               "accepted here).")
            if path.exists():  # a local folder of that name: never read it, answer as a missing Hub dataset
                raise refused
            is_local = False
        else:
            is_local = path_like or path.exists()
        if is_local:
            if not path.is_dir():
                raise refused
            stamp = tuple(p.stat().st_mtime_ns for p in (path / "summary.json", path / "results" / "data.parquet")
                          if p.exists())
            key = (str(path.resolve()), revision, stamp)
        else:
            key = (source, revision, None)
        reports = self.cache.get(key)
        if reports is not None:
            return reports
        try:
            reports = _load_reports(str(path) if is_local else source, revision)
        except Exception:
            logger.info("loading results %s failed", source, exc_info=True)
            raise refused from None
        if not reports:
            raise refused
        self.cache.put(key, reports)
        return reports


_PYPLOT_LOCK = threading.Lock()  # hf_isi.plotting uses pyplot, whose figure registry is global


def results_outputs(reports: dict[str, Report], metric: Any) -> tuple[Any, Any, pd.DataFrame, dict[str, Any]]:
    from hf_isi.plotting import plot_comparison, plot_report

    metric = metric if isinstance(metric, str) and metric else "centered_similarity"
    if metric not in COMPARE_METRICS:
        raise gr.Error(f"Unknown metric '{metric}'; choose one of {', '.join(COMPARE_METRICS)}.")
    computed = [m for m in COMPARE_METRICS if any(np.isfinite(r.table[m].to_numpy(dtype=float)).any()
                                                   for r in reports.values())]
    if metric not in computed:
        raise gr.Error(f"'{metric}' was not computed in these results; computed: {', '.join(computed)}.")
    ordered = sorted(reports.values(), key=lambda r: (r.num_layers, r.model))
    import matplotlib.pyplot as plt

    with _PYPLOT_LOCK:
        comparison = plot_comparison(ordered, metric)
        deepest = ordered[-1]
        panels = plot_report(deepest, title=f"{deepest.model}: every curve (phase bands of its phase curve)")
        plt.close(comparison)  # out of pyplot's registry now; gradio still renders the Figure objects
        plt.close(panels)
    rows = []
    for r in ordered:
        fit = r.phases.get(metric)
        rows.append({"model": r.model, "layers": r.num_layers, "images": int(r.table["num_images"].iloc[0]),
                     "pattern": None if fit is None else bool(fit.pattern),
                     "plateau_start": None if fit is None else fit.plateau_start,
                     "climb_start": None if fit is None else fit.climb_start,
                     "relative_plateau_start": None if fit is None or fit.plateau_start is None
                     else round(fit.plateau_start / max(r.num_layers, 1), 3),
                     "relative_climb_start": None if fit is None or fit.climb_start is None
                     else round(fit.climb_start / max(r.num_layers, 1), 3),
                     "verdict": "no phase fit" if fit is None else fit.reason})
    summary = {"metric": metric, "models": [r.model for r in ordered], "computed_metrics": computed,
               "num_layers": {r.model: r.num_layers for r in ordered}}
    return comparison, panels, _nan_to_none(pd.DataFrame(rows)), summary


# -- the app -----------------------------------------------------------------------------------------------
ABOUT = f"""
### What ISI and the phases mean

A vision transformer starts from patch embeddings that each describe one small patch of the image, and every
layer mixes them through attention. The **Information Scrambling Index (ISI)** measures how far that mixing
has gone: at each layer, how much better the original patch embeddings can be recovered from *all* tokens
together than from each token alone. That reconstruction needs many images, so on a single image this app
shows its cheap relative, the **attention ISI** (how much the attention branch changes the residual stream,
times how spread out the attention is), together with the **centred token similarity** (how alike the patch
tokens are once their common mean is removed), the **attention entropy**, the **CLS centrality** (CCC: how much
the patches attend to the [CLS] token) and the **attention consensus** (ACI: how alike the patches' attention
rows are).

Across depth these curves often go through three **phases**: a **Cliff** (a fast early change), a **Plateau**
(little change) and a **Climb** (a late rise). hf_isi fits the best continuous two-knot piecewise-linear curve
to each metric and shades the bands (red: cliff, grey: plateau, green: climb) when the pattern holds; otherwise
it says which condition fails. Where the phases start, in absolute and in relative depth, is what the
*Dataset results* tab compares across models of different depth, following "Mechanisms of Non-Monotonic
Scaling in Vision Transformers" ([arXiv 2511.21635]({PAPER_URL})).

**Definitions** of every metric and of the phase fit, including each choice hf_isi made where the paper is
silent: [the hf_isi definitions]({DEFINITIONS_URL}); those of the curves shown here are below.
"""

DEFINITIONS = """
| | definition |
|---|---|
| layers | `-1`: the patch embeddings before position embeddings; `0`: after them (with the prefix tokens); `l`: the output of block `l` |
| centred similarity | per image, the mean pairwise cosine over `i != j` of the patch tokens centred on their mean |
| attention ISI | `(1 - c) * H`: `c` = mean cosine between the residual stream entering the attention branch and right after it, `H` = mean normalised attention entropy |
| attention entropy | mean over heads and queries of the attention row's entropy divided by `log T` |
| CCC | mean attention mass the patch queries put on the [CLS] key (missing without [CLS] or with windowed attention) |
| ACI | `1 -` mean Jensen-Shannon divergence (base 2) between each patch query's attention row and the mean patch row, per head |
| phases | the best continuous two-knot piecewise-linear least-squares fit over layers; Cliff-Plateau-Climb when the first segment falls, the last rises, the middle is flat (`|slope2| <= 0.5 min(|slope1|, |slope3|)`) and `R^2 >= 0.5`; at least 5 finite points |
| attention maps | [CLS] map: the [CLS] query's attention row over the patch keys; mean patch map: the patch queries' rows over the patch keys, averaged; per head or averaged over heads |
"""

LIMITS = (f"Limits: uploads up to {MAX_UPLOAD_SIZE.upper()}; images above {MAX_INPUT_PIXELS / 1e6:.0f} megapixels "
          f"are refused, above {DOWNSCALE_ABOVE_PIXELS / 1e6:.1f} megapixels downscaled. Grayscale, palette, RGBA "
          "(composited on white), CMYK and 16-bit images are converted to RGB.")


def example_files() -> list[str]:
    if not EXAMPLES_DIR.is_dir():
        return []
    order = {".png": 0, ".jpg": 1}
    files = [p for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")]
    return [str(p) for p in sorted(files, key=lambda p: (not p.name.startswith("digit"), order.get(p.suffix, 2),
                                                           p.name))]


class SpaceBlocks(gr.Blocks):
    """The app's ``gr.Blocks``: every launch caps uploads at :data:`MAX_UPLOAD_SIZE` (unless the caller sets a
    cap) and serves the bundled examples, however it is launched (``python app.py``, or ``demo`` imported and
    launched, as Spaces and tests do)."""

    def launch(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("max_file_size") is None:
            kwargs["max_file_size"] = MAX_UPLOAD_SIZE
        kwargs["allowed_paths"] = [*(kwargs.get("allowed_paths") or []), str(EXAMPLES_DIR)]
        return super().launch(*args, **kwargs)


def build_demo(models: dict[str, str] | None = None) -> gr.Blocks:
    """The Blocks app. ``models``: display name -> checkpoint (default: the installed reference models plus
    ``HF_ISI_SPACE_MODELS``)."""
    registry = ModelRegistry(models if models is not None else {**builtin_models(), **env_models()})
    analyzer = ImageAnalyzer(registry)
    results_loader = ResultsLoader()

    @friendly_errors
    @bounded
    def analyze(image: Any, model: Any, layer: Any = 1, head: Any = MEAN_OVER_HEADS) -> tuple:
        """Analyse one image with one model: curves, attention maps, prediction, summary, per-layer table."""
        analysis, upload, cached = analyzer(check_upload(image), model)
        layer_value = parse_layer(layer if layer is not None else 1, analysis.num_layers)
        choices = head_choices(analysis.num_heads)
        head_value = head if head in choices else MEAN_OVER_HEADS
        cls_map, patch_map, caption = render_maps(analysis, layer_value, head_value)
        figure = curves_figure(analysis.report, f"{analysis.model} on '{upload.name}' (one image)")
        table = analysis.report.table[TABLE_COLUMNS].copy()
        table[[c for c in TABLE_COLUMNS if c not in ("layer", "phase")]] = table[
            [c for c in TABLE_COLUMNS if c not in ("layer", "phase")]].round(6)
        return (
            figure, cls_map, patch_map, caption, analysis.prediction,
            summary_json(analysis, upload, cached), _nan_to_none(table),
            gr.Slider(minimum=1, maximum=max(analysis.num_layers, 1), value=layer_value, step=1),
            gr.Dropdown(choices=choices, value=head_value),
            status_markdown(analysis, upload),
        )

    @friendly_errors
    @bounded
    def attention_maps(image: Any, model: Any, layer: Any = 1, head: Any = MEAN_OVER_HEADS) -> tuple:
        """The attention maps of one layer and head (from the cache after Analyze)."""
        if image is None or (isinstance(image, dict) and not image.get("path")):
            return None, None, "Upload an image and click **Analyze** first."
        analysis, _, _ = analyzer(check_upload(image), model)
        return render_maps(analysis, layer, head)

    @friendly_errors
    @bounded
    def load_results(source: Any, metric: Any = "centered_similarity", revision: Any = "") -> tuple:
        """Load a results dataset of scripts/probe.py and compare its models on one metric."""
        reports = results_loader(source, revision)
        return results_outputs(reports, metric)

    choices = registry.names
    with SpaceBlocks(title="hf_isi: information flow in vision transformers") as demo:
        gr.Markdown("# How information moves through a vision transformer\nUpload an image, pick a model, and see "
                    "layer by layer how the tokens mix: curves with their Cliff / Plateau / Climb phases, "
                    "attention maps, and the model's prediction. Built with hf_isi; see the *About* tab.")
        with gr.Tab("Single image"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"],
                                     elem_id="input-image", height=300)
                    model = gr.Dropdown(choices=choices, value=choices[0] if choices else None, label="Model",
                                        allow_custom_value=True, elem_id="model-choice",
                                        info="A built-in reference model, or type a Hub id "
                                             "(e.g. google/vit-base-patch16-224; needs internet).")
                    analyze_btn = gr.Button("Analyze", variant="primary", elem_id="analyze-btn")
                    examples = example_files()
                    if examples:
                        gr.Examples(examples=[[p] for p in examples], inputs=[image], label="Examples",
                                    examples_per_page=12, api_visibility="private")
                    gr.Markdown(LIMITS)
                with gr.Column(scale=2):
                    status = gr.Markdown(SINGLE_IMAGE_NOTE, elem_id="status")
                    prediction = gr.Label(label="Prediction (top 5)", num_top_classes=5, elem_id="prediction")
            curves = gr.Plot(label="Per-layer curves with phase bands", elem_id="curves-plot", format="png")
            with gr.Row():
                layer = gr.Slider(minimum=1, maximum=12, value=1, step=1, label="Layer", elem_id="layer-slider")
                head = gr.Dropdown(choices=[MEAN_OVER_HEADS], value=MEAN_OVER_HEADS, label="Head",
                                   elem_id="head-choice")
            with gr.Row():
                cls_map = gr.Image(label="[CLS] attention over the patches", type="numpy", format="png",
                                   interactive=False, elem_id="cls-map", height=340)
                patch_map = gr.Image(label="Mean patch attention", type="numpy", format="png",
                                     interactive=False, elem_id="patch-map", height=340)
            caption = gr.Markdown(elem_id="map-caption")
            with gr.Accordion("Summary and per-layer values", open=False):
                summary = gr.JSON(label="Summary", elem_id="summary")
                table = gr.Dataframe(label="Per-layer values (layer -1 = before position embeddings)",
                                     elem_id="layer-table", interactive=False)
            outputs = [curves, cls_map, patch_map, caption, prediction, summary, table, layer, head, status]
            analyze_btn.click(analyze, [image, model, layer, head], outputs, api_name="analyze", preprocess=False,
                              concurrency_limit=CONCURRENCY, concurrency_id="analysis")
            map_inputs, map_outputs = [image, model, layer, head], [cls_map, patch_map, caption]
            layer.release(attention_maps, map_inputs, map_outputs, api_name="attention_maps", preprocess=False,
                          concurrency_limit=CONCURRENCY, concurrency_id="analysis", show_progress="minimal")
            head.input(attention_maps, map_inputs, map_outputs, api_visibility="private", preprocess=False,
                       concurrency_limit=CONCURRENCY, concurrency_id="analysis", show_progress="minimal")

        with gr.Tab("Dataset results"):
            gr.Markdown("Load the results of `scripts/probe.py` (a local results folder or a Hub dataset id) and "
                        "compare the models: a metric over absolute and relative depth with each model's phase "
                        "boundaries (dashed: plateau start, dotted: climb start), and every curve of the deepest "
                        "model.")
            with gr.Row():
                source = gr.Textbox(label="Results folder or Hub dataset id", elem_id="results-source",
                                    placeholder="results  or  user/isi-results", scale=3)
                revision = gr.Textbox(label="Revision (optional)", scale=1, elem_id="results-revision")
                metric = gr.Dropdown(choices=COMPARE_METRICS, value="centered_similarity", label="Metric",
                                     elem_id="results-metric", scale=2)
            load_btn = gr.Button("Load results", variant="primary", elem_id="load-results-btn")
            comparison = gr.Plot(label="Comparison", elem_id="comparison-plot", format="png")
            phases_table = gr.Dataframe(label="Phases of the metric per model", interactive=False,
                                        elem_id="phases-table")
            panels = gr.Plot(label="Every curve of the deepest model", elem_id="panels-plot", format="png")
            results_summary = gr.JSON(label="Summary", elem_id="results-summary")
            results_outputs_list = [comparison, panels, phases_table, results_summary]
            load_btn.click(load_results, [source, metric, revision], results_outputs_list, api_name="load_results",
                           preprocess=False, concurrency_limit=2, concurrency_id="results")
            metric.input(load_results, [source, metric, revision], results_outputs_list, api_visibility="private",
                         preprocess=False, concurrency_limit=2, concurrency_id="results")

        with gr.Tab("About"):
            gr.Markdown(ABOUT, elem_id="about")
            with gr.Accordion("Definitions of the curves in this app", open=True):
                gr.Markdown(DEFINITIONS, elem_id="definitions")

    demo.queue(max_size=64)
    demo.registry, demo.analyzer, demo.results_loader = registry, analyzer, results_loader  # for tests
    return demo


def clear_caches(app: gr.Blocks | None = None) -> None:
    """Forget analysed images, loaded models and loaded results (tests use it to compare fresh runs)."""
    app = app or demo
    app.analyzer.clear()
    app.registry.clear()
    app.results_loader.cache.clear()


demo = build_demo()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    demo.launch(theme=gr.themes.Soft(), server_name=os.environ.get("GRADIO_SERVER_NAME"), ssr_mode=False)
