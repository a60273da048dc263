"""Images in, ``pixel_values`` out: dataset specs (built-in digits, Hub id, imagefolder, parquet), image
sanitising (any mode to RGB, unreadable files skipped and counted, or refused), and sharded batching."""

from __future__ import annotations

import glob
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import PIL.Image
import torch

logger = logging.getLogger(__name__)

BUILTIN_DATASET = "digits"
#: images with more pixels than this are downscaled (keeping the aspect ratio) before preprocessing
MAX_IMAGE_PIXELS = 4096 * 4096


class UnreadableImageError(ValueError):
    """An image that cannot be decoded."""


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL mode as RGB: transparency composited on white; grayscale, palette, CMYK, 16-bit converted."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        return PIL.Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(value: Any, where: str = "image") -> PIL.Image.Image:
    """Decode one image to RGB from a PIL image, a numpy array (``[H, W]``, ``[H, W, C]``, uint8 or float in
    [0, 1]), a file path, raw bytes, or a ``datasets`` ``{"bytes", "path"}`` dict. Oversized images are
    downscaled to at most :data:`MAX_IMAGE_PIXELS`. Raises :class:`UnreadableImageError` naming ``where``."""
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        elif isinstance(value, np.ndarray):
            arr = value
            if arr.dtype != np.uint8:
                arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            image = PIL.Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
        elif isinstance(value, dict):
            data = value.get("bytes")
            image = PIL.Image.open(io.BytesIO(data) if data is not None else value["path"])
        elif isinstance(value, (bytes, bytearray)):
            image = PIL.Image.open(io.BytesIO(value))
        elif isinstance(value, (str, os.PathLike)):
            image = PIL.Image.open(value)
        else:
            raise TypeError(f"unsupported image type {type(value).__name__}")
        if image.width * image.height > MAX_IMAGE_PIXELS:
            scale = (MAX_IMAGE_PIXELS / (image.width * image.height)) ** 0.5
            image.draft("RGB", (int(image.width * scale), int(image.height * scale)))
            image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
        image.load()
        return to_rgb(image)
    except (OSError, ValueError, TypeError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UnreadableImageError(f"{where} cannot be decoded ({reason})") from err


def default_image_processor(image_size: tuple[int, int]) -> Any:
    """A plain resize + rescale + normalise (mean = std = 0.5) processor for checkpoints saved without one."""
    from transformers import ViTImageProcessorPil

    logger.warning("no image processor saved with the model; using resize to %s and mean=std=0.5", image_size)
    return ViTImageProcessorPil(size={"height": image_size[0], "width": image_size[1]},
                                image_mean=[0.5] * 3, image_std=[0.5] * 3)


def preprocess(processor: Any, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
    """``pixel_values`` ``[B, 3, H, W]`` from RGB images, through the model's image processor."""
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


# -- datasets ------------------------------------------------------------------------------------------------
@dataclass
class DatasetSpec:
    """Where the images come from.

    ``dataset`` is ``"digits"`` (built in: scikit-learn's 1,797 digits, offline), a local ``imagefolder``
    directory, parquet file(s) (a path or glob ending in ``.parquet``), or a Hub dataset id.
    """

    dataset: str = BUILTIN_DATASET
    split: str = "validation"
    image_column: str = "image"
    label_column: str = "label"
    id_column: str | None = None
    max_samples: int | None = None


def load_image_dataset(spec: DatasetSpec) -> Any:
    """A ``datasets.Dataset`` for ``spec`` with the image column left undecoded (decoding happens in
    :func:`load_image`, where unreadable files are caught). Raises ``ValueError`` with a one-line reason."""
    import datasets

    name = spec.dataset
    try:
        if name == BUILTIN_DATASET:
            from . import zoo

            split = spec.split if spec.split in ("train", "test") else "all"
            ds = zoo.digits_dataset(split)
        elif name.endswith(".parquet") or glob.has_magic(name):
            files = sorted(glob.glob(name))
            if not files:
                raise ValueError(f"no parquet files match '{name}'")
            ds = datasets.load_dataset("parquet", data_files=files, split="train")
        elif Path(name).is_dir():
            ds = _pick_split(datasets.load_dataset("imagefolder", data_dir=name), spec.split, name)
        else:
            ds = datasets.load_dataset(name, split=spec.split)
    except (FileNotFoundError, ConnectionError, OSError) as err:
        raise ValueError(
            f"cannot load dataset '{name}': not the built-in '{BUILTIN_DATASET}', a local folder or parquet file, "
            f"and not reachable on the Hub ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from err
    if spec.image_column not in ds.column_names:
        raise ValueError(
            f"dataset '{name}' has no image column '{spec.image_column}' (columns: {', '.join(ds.column_names)}); "
            "pass --image_column"
        )
    if isinstance(ds.features[spec.image_column], datasets.Image):
        ds = ds.cast_column(spec.image_column, datasets.Image(decode=False))
    if spec.max_samples is not None:
        ds = ds.select(range(min(spec.max_samples, len(ds))))
    return ds


def _pick_split(dsd: Any, split: str, name: str) -> Any:
    if split in dsd:
        return dsd[split]
    if len(dsd) == 1:
        only = next(iter(dsd))
        logger.info("dataset '%s' has no split '%s'; using its only split '%s'", name, split, only)
        return dsd[only]
    raise ValueError(f"dataset '{name}' has no split '{split}' (splits: {', '.join(dsd)})")


def has_labels(ds: Any, label_column: str) -> bool:
    return label_column in ds.column_names


def num_classes(ds: Any, label_column: str) -> int | None:
    """Number of classes: from a ``ClassLabel`` feature, else ``max(label) + 1``; ``None`` without labels."""
    import datasets

    if label_column not in ds.column_names:
        return None
    feature = ds.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    labels = np.asarray(ds[label_column][:])
    if labels.size == 0:
        return None
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label column '{label_column}' must hold integer class ids, got {labels.dtype}")
    return int(labels.max()) + 1


def shard_range(num_examples: int, rank: int, world_size: int) -> range:
    """The contiguous block of example indices of one process: no example is duplicated or dropped."""
    per, extra = divmod(num_examples, world_size)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (1 if rank < extra else 0))


@dataclass
class Batch:
    pixel_values: torch.Tensor | None
    labels: torch.Tensor | None
    ids: list[str]
    skipped: list[str]


class ImageBatches:
    """Decoded, preprocessed batches of a dataset (or a shard of it): ``Batch`` objects with the ids of the
    images used and of those skipped as unreadable (``strict=True`` raises instead)."""

    def __init__(self, ds: Any, processor: Any, *, indices: Sequence[int] | None = None, batch_size: int = 32,
                 image_column: str = "image", label_column: str | None = "label", id_column: str | None = None,
                 strict: bool = False, num_workers: int = 0) -> None:
        self.ds, self.processor = ds, processor
        self.indices = list(range(len(ds))) if indices is None else list(indices)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.image_column, self.id_column, self.strict = image_column, id_column, strict
        self.label_column = label_column if label_column and label_column in ds.column_names else None

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def _collate(self, chunk: list[int]) -> Batch:
        rows = self.ds[chunk]  # one Arrow read per batch
        images, labels, ids, skipped = [], [], [], []
        for j, index in enumerate(chunk):
            ident = str(rows[self.id_column][j]) if self.id_column else str(index)
            try:
                images.append(load_image(rows[self.image_column][j], where=f"image {ident}"))
            except UnreadableImageError as err:
                if self.strict:
                    raise UnreadableImageError(f"{err}; fix or remove it, or drop --strict to skip it") from err
                logger.warning("skipping %s", err)
                skipped.append(ident)
                continue
            ids.append(ident)
            if self.label_column:
                labels.append(int(rows[self.label_column][j]))
        pixels = preprocess(self.processor, images) if images else None
        return Batch(pixels, torch.tensor(labels, dtype=torch.int64) if self.label_column else None, ids, skipped)

    def __iter__(self) -> Iterator[Batch]:
        chunks = [self.indices[i : i + self.batch_size] for i in range(0, len(self.indices), self.batch_size)]
        if self.num_workers <= 0:
            yield from (self._collate(c) for c in chunks)
            return
        loader = torch.utils.data.DataLoader(chunks, batch_size=None, num_workers=self.num_workers,
                                             collate_fn=self._collate)
        yield from loader
