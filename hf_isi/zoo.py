"""The built-in reference models and the data they were trained on.

No pretrained checkpoint can be downloaded on the project's machines, so hf_isi ships its own small ViTs,
trained by ``scripts/train_reference.py`` on scikit-learn's ``load_digits`` (1,797 labelled 8x8 grayscale
digits, 10 classes). They live inside the package (``hf_isi/reference_models/<name>/``) as ordinary
``save_pretrained`` folders (config.json, model.safetensors in float16, preprocessor_config.json,
training_results.json), so ``ViTForImageClassification.from_pretrained(reference_model_path(name))`` and
``AutoImageProcessor.from_pretrained(...)`` work offline.

Every model sees a digit upsampled to 16x16 RGB by its ``ViTImageProcessorPil`` and cut into 2x2 patches:
an 8x8 grid of 64 patch tokens (one per native digit pixel) plus [CLS].

    >>> from hf_isi.zoo import digits_dataset, load_reference_model
    >>> model, processor = load_reference_model("isi-vit-d8")
    >>> test = digits_dataset("test")
    >>> batch = processor(images=test[:4]["image"], return_tensors="pt")
    >>> out = model(**batch, output_hidden_states=True, output_attentions=True)
"""

from __future__ import annotations

import functools
import json
import pathlib
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = [
    "DEFAULT_MODELS",
    "DIGITS_CLASS_NAMES",
    "DIGITS_NUM_IMAGES",
    "REFERENCE_MODELS",
    "ReferenceModel",
    "digits_dataset",
    "digits_split_indices",
    "list_reference_models",
    "load_reference_model",
    "reference_model_path",
]

DIGITS_NUM_IMAGES = 1797
DIGITS_CLASS_NAMES = [str(i) for i in range(10)]
_SPLITS = ("all", "train", "test")
_TEST_SIZE = 0.2


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [1797, 8, 8] in 0..255, labels int64 [1797])``; read-only."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 -> 0..255 (16 -> 255 exactly), rounded to the nearest integer.
    images = np.rint(bunch.images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=16)
def _split_indices(seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _digits_arrays()
    train, test = train_test_split(
        np.arange(len(labels)), test_size=_TEST_SIZE, random_state=seed, stratify=labels
    )
    train, test = np.sort(train), np.sort(test)
    train.setflags(write=False)
    test.setflags(write=False)
    return train, test


def digits_split_indices(split: str = "all", seed: int = 0) -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` of a split (sorted ascending).

    ``"train"``/``"test"`` is a stratified 80/20 split (``train_test_split(..., stratify=labels,
    random_state=seed)``); ``"all"`` is every image.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLITS)}")
    if split == "all":
        return np.arange(DIGITS_NUM_IMAGES)
    train, test = _split_indices(int(seed))
    return (train if split == "train" else test).copy()


def digits_dataset(split: str = "all", seed: int = 0) -> datasets.Dataset:
    """scikit-learn's digits as a ``datasets.Dataset`` of PIL images.

    Columns: ``image`` (``datasets.Image()``: mode ``"L"``, 8x8, pixel values 0..16 scaled to 0..255),
    ``label`` (``ClassLabel`` with names ``"0"``..``"9"``) and ``id`` (``"digits-0042"``: the index in
    ``load_digits()``, stable across splits and seeds). Rows are in ascending ``load_digits`` order.

    Args:
        split: ``"all"`` (1,797 images), ``"train"`` (80 %) or ``"test"`` (20 %, stratified by label).
        seed: the ``random_state`` of the stratified split; the reference models use ``seed=0``.
    """
    import datasets
    from PIL import Image

    indices = digits_split_indices(split, seed)
    images, labels = _digits_arrays()
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=DIGITS_CLASS_NAMES),
            "id": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(images[i], mode="L") for i in indices],
            "label": [int(labels[i]) for i in indices],
            "id": [f"digits-{int(i):04d}" for i in indices],
        },
        features=features,
    )


# --------------------------------------------------------------------------------------------------------
# Reference models
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceModel:
    """One of the built-in reference ViTs.

    Attributes:
        name: registry name, also the folder name under ``hf_isi/reference_models/``.
        depth: number of transformer blocks.
        width: hidden size (the MLP is ``mlp_ratio * width`` wide).
        heads: attention heads (head dim = width // heads, 16 for every model).
        description: one line for cards and menus.
        image_size / patch_size: the processor's output size and the patch size (an 8x8 grid of tokens).
        mlp_ratio: MLP width over hidden width.
    """

    name: str
    depth: int
    width: int
    heads: int
    description: str
    image_size: int = 16
    patch_size: int = 2
    mlp_ratio: int = 4

    @property
    def training_results(self) -> dict | None:
        """The folder's ``training_results.json`` (written by ``scripts/train_reference.py``), or None."""
        path = reference_models_root() / self.name / "training_results.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def test_accuracy(self) -> float:
        """Top-1 on ``digits_dataset("test")`` after the float16 round-trip of the saved weights, as recorded
        by training; ``nan`` if the model is not trained."""
        results = self.training_results
        return float("nan") if results is None else float(results["test_accuracy"])

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def intermediate_size(self) -> int:
        return self.mlp_ratio * self.width

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return (side, side)


# Width 64 / 4 heads ("S-like") for the depth family, 128 / 8 heads ("B-like": twice the width, same head
# dim 16, like ViT-S 384/6 -> ViT-B 768/12) for the wide model. Accuracies are read from the trained
# folders' training_results.json.
REFERENCE_MODELS: dict[str, ReferenceModel] = {
    spec.name: spec
    for spec in (
        ReferenceModel(
            "isi-vit-d4",
            4,
            64,
            4,
            "ViT, 4 blocks, width 64, 4 heads, 2x2 patches on 16x16 digits",
        ),
        ReferenceModel(
            "isi-vit-d8",
            8,
            64,
            4,
            "ViT, 8 blocks, width 64, 4 heads, 2x2 patches on 16x16 digits",
        ),
        ReferenceModel(
            "isi-vit-d12",
            12,
            64,
            4,
            "ViT, 12 blocks, width 64, 4 heads, 2x2 patches on 16x16 digits",
        ),
        ReferenceModel(
            "isi-vit-d16",
            16,
            64,
            4,
            "ViT, 16 blocks, width 64, 4 heads, 2x2 patches on 16x16 digits",
        ),
        ReferenceModel(
            "isi-vit-wide-d8",
            8,
            128,
            8,
            "ViT, 8 blocks, width 128, 8 heads, 2x2 patches on 16x16 digits",
        ),
    )
}

#: The depth family (one width) analysed by the main job's default run.
DEFAULT_MODELS: tuple[str, ...] = ("isi-vit-d4", "isi-vit-d8", "isi-vit-d12", "isi-vit-d16")


def list_reference_models() -> list[str]:
    """Names of the built-in reference models (registry order: the depth family, then the wide model)."""
    return list(REFERENCE_MODELS)


def _check_name(name: str) -> ReferenceModel:
    try:
        return REFERENCE_MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown reference model {name!r}; valid names: {', '.join(REFERENCE_MODELS)}"
        ) from None


def reference_models_root() -> pathlib.Path:
    """The ``reference_models`` folder inside the installed package."""
    return pathlib.Path(str(files("hf_isi") / "reference_models"))


def reference_model_path(name: str) -> pathlib.Path:
    """The folder of a reference model inside the installed package (``from_pretrained`` accepts it).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    _check_name(name)
    return reference_models_root() / name


def trained_reference_path(name: str) -> pathlib.Path:
    """:func:`reference_model_path`, checked to hold trained weights.

    Raises:
        ValueError: for an unknown name; FileNotFoundError (one line, with the command that trains it) for a
        model that is not trained in this installation.
    """
    path = reference_model_path(name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"reference model {name!r} is not trained in this installation ({path} has no config.json); run "
            f"`python scripts/train_reference.py --models {name}`"
        )
    return path


def trained_reference_models() -> list[str]:
    """Names of the reference models whose weights are in the installed package (registry order)."""
    return [name for name in REFERENCE_MODELS if (reference_model_path(name) / "config.json").is_file()]


def load_reference_model(name: str, dtype=None, attn_implementation: str = "eager"):
    """``(ViTForImageClassification, ViTImageProcessorPil)`` for a reference model, offline, in eval mode.

    The weights are stored in float16 and loaded as float32 unless ``dtype`` says otherwise; attention is
    eager so that ``output_attentions=True`` returns the attention maps.
    """
    import torch
    from transformers import ViTForImageClassification, ViTImageProcessorPil

    path = trained_reference_path(name)
    model = ViTForImageClassification.from_pretrained(
        path, attn_implementation=attn_implementation, dtype=torch.float32 if dtype is None else dtype
    )
    model.eval()
    processor = ViTImageProcessorPil.from_pretrained(path)
    return model, processor
