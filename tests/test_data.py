"""Image sanitising, dataset specs and sharding."""

from __future__ import annotations


import numpy as np
import PIL.Image
import pytest

from hf_isi.data import (DatasetSpec, ImageBatches, UnreadableImageError, default_image_processor, load_image,
                         load_image_dataset, num_classes, shard_range, to_rgb)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1", "F"])
def test_every_mode_becomes_rgb(mode):
    rgb = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8))
    assert to_rgb(rgb.convert(mode)).mode == "RGB"


def test_transparency_is_composited_on_white():
    clear = PIL.Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)


def test_load_image_sources(tmp_path):
    img = PIL.Image.new("RGB", (4, 3), (10, 20, 30))
    img.save(tmp_path / "a.png")
    raw = (tmp_path / "a.png").read_bytes()
    for source in (img, str(tmp_path / "a.png"), raw, {"bytes": raw, "path": None},
                   {"bytes": None, "path": str(tmp_path / "a.png")}, np.asarray(img),
                   np.asarray(img)[..., 0], np.asarray(img) / 255.0):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (4, 3)


def test_unreadable_images_raise_a_named_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(UnreadableImageError, match="image 7 cannot be decoded"):
        load_image(str(tmp_path / "bad.jpg"), where="image 7")
    with pytest.raises(UnreadableImageError):
        load_image(b"\x89PNG\r\n\x1a\n truncated")


def test_huge_images_are_downscaled(monkeypatch):
    import hf_isi.data as data

    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 100 * 100)
    out = load_image(PIL.Image.new("RGB", (400, 200)))
    assert out.width * out.height <= 100 * 100 and abs(out.width - 2 * out.height) <= 1


def make_imagefolder(root, corrupt: bool):
    for label in ("cat", "dog"):
        (root / "train" / label).mkdir(parents=True)
        for i in range(5):
            PIL.Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(root / "train" / label / f"{i}.png")
    if corrupt:
        (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return root


def test_imagefolder_with_a_corrupt_file_skips_or_refuses(tmp_path):
    ds = load_image_dataset(DatasetSpec(dataset=str(make_imagefolder(tmp_path, corrupt=True)), split="validation"))
    assert len(ds) == 11 and num_classes(ds, "label") == 2
    processor = default_image_processor((8, 8))
    batches = list(ImageBatches(ds, processor, batch_size=4))
    assert sum(len(b.ids) for b in batches) == 10
    assert sum(len(b.skipped) for b in batches) == 1
    assert batches[0].pixel_values.shape == (4, 3, 8, 8)
    with pytest.raises(UnreadableImageError, match="drop --strict"):
        list(ImageBatches(ds, processor, batch_size=4, strict=True))


def test_parquet_and_builtin_digits(tmp_path):
    digits = load_image_dataset(DatasetSpec(max_samples=30))
    assert len(digits) == 30 and num_classes(digits, "label") == 10
    digits.to_parquet(str(tmp_path / "d.parquet"))
    again = load_image_dataset(DatasetSpec(dataset=str(tmp_path / "*.parquet")))
    assert len(again) == 30
    batch = next(iter(ImageBatches(again, default_image_processor((16, 16)), batch_size=8)))
    assert batch.labels.tolist() == digits["label"][:8]


def test_missing_dataset_and_column_messages(tmp_path):
    with pytest.raises(ValueError, match="cannot load dataset 'no/such-dataset'"):
        load_image_dataset(DatasetSpec(dataset="no/such-dataset"))
    with pytest.raises(ValueError, match="no image column 'img'"):
        load_image_dataset(DatasetSpec(image_column="img"))


@pytest.mark.parametrize("n,world", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shards_cover_every_example_once(n, world):
    seen = [i for r in range(world) for i in shard_range(n, r, world)]
    assert seen == list(range(n))
