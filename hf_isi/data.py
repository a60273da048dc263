"""Images in, ``pixel_values`` out: dataset specs (built-in digits, Hub id, imagefolder, parquet), image
sanitising (any mode to RGB, unreadable files skipped and counted, or refused), and sharded batching."""

from __future__ import annotations

import errno
import glob
import io
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import PIL.Image
import torch

logger = logging.getLogger(__name__)

BUILTIN_DATASET = "digits"
#: images with more pixels than this are downscaled to it (keeping the aspect ratio) before preprocessing
MAX_IMAGE_PIXELS = 4096 * 4096
#: images with more pixels than this (134 MP, e.g. 11585 x 11585) are refused from their header, without being
#: decoded (a JPEG counts at the reduced scale it is decoded at). Decoding takes up to 4 bytes a pixel, so one
#: image never needs more than ~0.5 GB, and images are decoded one at a time.
MAX_DECODE_PIXELS = 128 * 1024 * 1024
#: a batch's decoded images are preprocessed as soon as they add up to this many pixels, so that a batch of
#: large images never holds more than about twice this (x 3 bytes) of decoded pixels (small images: one call)
MAX_PENDING_PIXELS = MAX_IMAGE_PIXELS


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


def open_image_file(path: str | os.PathLike, *, follow_symlinks: bool = True) -> BinaryIO:
    """A binary file object for ``path``, opened without blocking and refused (``OSError``) unless it is a regular
    file: a FIFO, a device or a socket would block or never end. ``follow_symlinks=False`` also refuses a
    symbolic link (used for uploads, which never are links)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_image(value: Any, where: str = "image") -> PIL.Image.Image:
    """Decode one image to RGB from a PIL image, a numpy array (``[H, W]``, ``[H, W, C]``, uint8 or float in
    [0, 1]), a file path, raw bytes, or a ``datasets`` ``{"bytes", "path"}`` dict. Raises
    :class:`UnreadableImageError` naming ``where``.

    Memory stays bounded whatever the file says: the size is read from the header first, and an image above
    :data:`MAX_DECODE_PIXELS` is refused without being decoded; one above :data:`MAX_IMAGE_PIXELS` is
    downscaled to it (keeping the aspect ratio), a JPEG while it is decoded (DCT scaling), others right after."""
    try:
        if isinstance(value, PIL.Image.Image):
            return _decode(value, where)
        if isinstance(value, np.ndarray):
            arr = value
            if arr.dtype != np.uint8:
                arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            return _decode(PIL.Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr), where)
        if isinstance(value, dict):
            data = value.get("bytes")
            if data is None:
                return load_image(value["path"], where)
            value = data
        if isinstance(value, (bytes, bytearray)):
            return _decode(PIL.Image.open(io.BytesIO(value)), where)
        if isinstance(value, (str, os.PathLike)):
            with open_image_file(value) as handle:
                return _decode(PIL.Image.open(handle), where)
        raise TypeError(f"unsupported image type {type(value).__name__}")
    except UnreadableImageError:
        raise
    except (OSError, ValueError, TypeError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, PIL.UnidentifiedImageError):
            reason = "not an image format that PIL can read"
        raise UnreadableImageError(f"{where} cannot be decoded ({reason})") from err


def _decode(image: PIL.Image.Image, where: str) -> PIL.Image.Image:
    """``image`` (opened lazily: only its header is read) decoded to RGB within the pixel limits."""
    pixels = image.width * image.height
    if pixels > MAX_IMAGE_PIXELS:
        scale = (MAX_IMAGE_PIXELS / pixels) ** 0.5
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image.draft("RGB", size)  # JPEG: decoded at 1/2, 1/4 or 1/8 scale; other formats: no effect
        if image.width * image.height > MAX_DECODE_PIXELS:
            raise UnreadableImageError(
                f"{where} is {image.width}x{image.height} pixels ({pixels / 1e6:.0f} MP): above the "
                f"{MAX_DECODE_PIXELS / 1e6:.0f} MP that hf_isi decodes (hf_isi.data.MAX_DECODE_PIXELS); downscale it")
        image.load()
        # reducing_gap: a fast integer box reduction first, then a bicubic resample of what is left
        image = image.resize(size, PIL.Image.Resampling.BICUBIC, reducing_gap=3.0)
    image.load()
    return to_rgb(image)


def default_image_processor(image_size: tuple[int, int]) -> Any:
    """A plain resize + rescale + normalise (mean = std = 0.5) processor for checkpoints saved without one."""
    from transformers import ViTImageProcessorPil

    logger.warning("no image processor saved with the model; using resize to %s and mean=std=0.5", image_size)
    return ViTImageProcessorPil(size={"height": image_size[0], "width": image_size[1]},
                                image_mean=[0.5] * 3, image_std=[0.5] * 3)


def preprocess(processor: Any, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
    """``pixel_values`` ``[B, 3, H, W]`` from RGB images, through the model's image processor."""
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


def preprocess_bounded(processor: Any, images: Iterable[PIL.Image.Image]) -> torch.Tensor | None:
    """:func:`preprocess` of ``images``, decoded lazily and preprocessed in chunks of about
    :data:`MAX_PENDING_PIXELS` decoded pixels, so a batch of large images never holds them all at once (the
    model's image processor treats every image alone: the values equal one call on the whole batch)."""
    chunks, pending, pixels = [], [], 0
    for image in images:
        pending.append(image)
        pixels += image.width * image.height
        if pixels >= MAX_PENDING_PIXELS:
            chunks.append(preprocess(processor, pending))
            pending, pixels = [], 0
    if pending:
        chunks.append(preprocess(processor, pending))
    return (chunks[0] if len(chunks) == 1 else torch.cat(chunks)) if chunks else None


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


def load_image_dataset(spec: DatasetSpec, *, strict: bool = False,
                       refused: list[RefusedFile] | None = None) -> Any:
    """A ``datasets.Dataset`` for ``spec`` with the image column left undecoded (decoding happens in
    :func:`load_image`, where unreadable files are caught). Raises ``ValueError`` with a one-line reason.

    A local image folder is listed by :func:`list_image_folder`: files it refuses (a name that is not UTF-8, a link
    out of the folder, not a regular file) are never opened; they are logged and appended to ``refused``, or, with
    ``strict``, raise :class:`UnreadableImageError` naming the first one."""
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
            ds = _load_image_folder(name, spec.split, strict, refused)
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


# -- image folders -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RefusedFile:
    """A file of an image folder that is never opened: ``path`` relative to the folder (bytes that are not UTF-8
    shown as ``\\xNN``), ``reason`` why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"'{self.path}' {self.reason}"


@dataclass
class ImageFolderListing:
    """What :func:`list_image_folder` found: ``splits`` maps each split to its files (absolute paths of images and
    ``metadata.*`` files); ``split_folders`` says whether the splits come from split subfolders (otherwise the
    only split, ``"train"`` as ``datasets`` names it, holds every image); ``unsplit`` counts the images outside
    every split subfolder."""

    root: Path
    splits: dict[str, list[str]]
    refused: list[RefusedFile]
    split_folders: bool
    unsplit: int = 0

    def num_images(self, split: str) -> int:
        return sum(1 for f in self.splits.get(split, []) if not _is_metadata(f))


def _image_extensions() -> frozenset[str]:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return frozenset(ImageFolder.EXTENSIONS)


def _is_metadata(path: str) -> bool:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return os.path.basename(path) in ImageFolder.METADATA_FILENAMES


def _split_of_folder(folder: str) -> str | None:
    """The split a top-level folder name stands for, by ``datasets``' own keywords (``val``, ``valid`` and
    ``dev`` are ``validation``...): the name is a keyword, or a keyword joined to other words by ``-._ 0-9``
    (``val2017``, ``my-test``)."""
    from datasets.data_files import SPLIT_KEYWORDS

    words = set(re.split(r"[-._ 0-9]+", folder.lower()))
    for split, keywords in SPLIT_KEYWORDS.items():
        if words & set(keywords):
            return str(split)
    return None


def list_image_folder(root: str | os.PathLike) -> ImageFolderListing:
    """List an image folder without opening any file in it, and without following any link out of it.

    Refused (never opened, never listed for ``datasets``): a file whose path is not valid UTF-8, a link that
    resolves outside ``root``, anything that is not a regular file (FIFO, device, socket); links to folders are
    not followed. Splits: top-level folders named after a split (``train/``, ``validation/``, ``val2017/``,
    ``test/``...) are the splits; a folder without any is one split, ``"train"`` (``datasets``' own inference
    would also read split names into file names, and silently drop every file of a name such as
    ``sample_valid_3.png`` from the other split)."""
    base = Path(os.path.realpath(root))
    extensions = _image_extensions()
    refused: list[RefusedFile] = []
    files: list[tuple[str, str]] = []  # (path relative to root, absolute path)
    for folder, dirs, names in os.walk(base, followlinks=False):
        dirs.sort()
        linked_dirs = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        for entry in sorted(names) + linked_dirs:
            path = os.path.join(folder, entry)
            relative = os.path.relpath(path, base)
            shown = os.fsencode(relative).decode("utf-8", "backslashreplace")
            target = os.path.realpath(path) if os.path.islink(path) else path
            inside = os.path.commonpath([base, target]) == str(base)
            wanted = os.path.splitext(entry)[1].lower() in extensions or _is_metadata(entry)
            if not (wanted or (entry in linked_dirs and not inside)):
                continue  # other files, and links to folders inside it, are ignored (as datasets ignores them)
            if shown != relative:
                refused.append(RefusedFile(shown, "has a name that is not valid UTF-8; rename it"))
            elif not inside:
                refused.append(RefusedFile(shown, "is a link to outside the dataset folder"))
            elif not os.path.isfile(target) or not stat.S_ISREG(os.stat(target).st_mode):
                refused.append(RefusedFile(shown, "is not a regular file"))
            else:
                files.append((relative, path))
    by_split: dict[str, list[str]] = {}
    split_of = {relative: _split_of_folder(Path(relative).parts[0]) if len(Path(relative).parts) > 1 else None
                for relative, _ in files}
    split_folders = any(split_of.values())
    unsplit = 0
    for relative, path in files:
        split = split_of[relative] if split_folders else "train"
        if split is None:
            unsplit += not _is_metadata(path)
            continue
        by_split.setdefault(split, []).append(path)
    return ImageFolderListing(base, by_split, sorted(refused, key=lambda r: r.path), split_folders, unsplit)


def _load_image_folder(name: str, split: str, strict: bool, refused: list[RefusedFile] | None) -> Any:
    import datasets

    listing = list_image_folder(name)
    if listing.refused:
        if strict:
            raise UnreadableImageError(f"{listing.refused[0]}; fix or remove it, or drop --strict to skip it")
        shown = "; ".join(str(r) for r in listing.refused[:5]) + ("; ..." if len(listing.refused) > 5 else "")
        logger.warning("skipping %d file(s) of '%s' that are never opened: %s", len(listing.refused), name, shown)
        if refused is not None:
            refused.extend(listing.refused)
    if not any(listing.num_images(s) for s in listing.splits):
        raise ValueError(f"the folder '{name}' holds no image files")
    if not listing.split_folders:
        logger.info("'%s' has no split subfolders (train/, validation/, test/...): its %d images are loaded as one "
                    "split", name, listing.num_images("train"))
        return datasets.load_dataset("imagefolder", data_files=listing.splits, split="train")
    if listing.unsplit:
        logger.warning("'%s': %d image(s) outside the split subfolders (%s) belong to no split and are not used",
                       name, listing.unsplit, ", ".join(f"{s}/" for s in listing.splits))
    splits = {s: files for s, files in listing.splits.items() if listing.num_images(s)}
    return _pick_split(datasets.load_dataset("imagefolder", data_files=splits), split, name)


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


def describe_image(value: Any, ident: str) -> str:
    """How messages name an image: its file when the dataset records one (an image folder), else its id."""
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, (str, os.PathLike)) else None
    return f"image '{os.fsencode(path).decode('utf-8', 'backslashreplace')}'" if path else f"image {ident}"


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
        labels, ids, skipped = [], [], []

        def readable() -> Iterator[PIL.Image.Image]:
            for j, index in enumerate(chunk):
                ident = str(rows[self.id_column][j]) if self.id_column else str(index)
                value = rows[self.image_column][j]
                try:
                    image = load_image(value, where=describe_image(value, ident))
                except UnreadableImageError as err:
                    if self.strict:
                        raise UnreadableImageError(f"{err}; fix or remove it, or drop --strict to skip it") from err
                    logger.warning("skipping %s", err)
                    skipped.append(ident)
                    continue
                ids.append(ident)
                if self.label_column:
                    labels.append(int(rows[self.label_column][j]))
                yield image

        pixels = preprocess_bounded(self.processor, readable())
        return Batch(pixels, torch.tensor(labels, dtype=torch.int64) if self.label_column else None, ids, skipped)

    def __iter__(self) -> Iterator[Batch]:
        chunks = [self.indices[i : i + self.batch_size] for i in range(0, len(self.indices), self.batch_size)]
        if self.num_workers <= 0:
            yield from (self._collate(c) for c in chunks)
            return
        loader = torch.utils.data.DataLoader(chunks, batch_size=None, num_workers=self.num_workers,
                                             collate_fn=self._collate)
        yield from loader
