"""Regenerate the example images shipped with the Space (``spaces_app/examples/``).

Every source is bundled with a PyPI package, so this runs offline:

* digits from scikit-learn's ``load_digits`` (8x8, 0..16), scaled to 0..255 and upsampled 8x (nearest) to 64x64
  grayscale PNGs, so that they are visible in the example gallery; the reference models resize them back to
  16x16, exactly what they were trained on;
* photos from ``skimage.data`` (bundled with scikit-image): RGB photos as small JPEGs, ``camera`` as a
  grayscale PNG and ``logo`` as an RGBA PNG (so the examples also exercise the mode conversions).

Run: ``python spaces_app/make_examples.py`` (a few hundred KB at most in total).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
#: (file name, sklearn digits index): one image of each of a few classes
DIGITS = (("digit_0.png", 0), ("digit_3.png", 3), ("digit_7.png", 7), ("digit_9.png", 9))
#: (file name, skimage.data function, longer side in pixels)
PHOTOS = (
    ("astronaut.jpg", "astronaut", 256),
    ("coffee.jpg", "coffee", 256),
    ("cat.jpg", "chelsea", 256),
    ("camera_grayscale.png", "camera", 192),
    ("logo_rgba.png", "logo", 192),
)


def _shrink(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def main() -> list[Path]:
    import skimage.data
    from sklearn.datasets import load_digits

    EXAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    digits = load_digits()
    for name, index in DIGITS:
        pixels = np.rint(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((64, 64), Image.Resampling.NEAREST)
        path = EXAMPLES_DIR / name
        image.save(path, optimize=True)
        written.append(path)
    for name, source, side in PHOTOS:
        image = _shrink(Image.fromarray(getattr(skimage.data, source)()), side)
        path = EXAMPLES_DIR / name
        if name.endswith(".jpg"):
            image.convert("RGB").save(path, quality=85, optimize=True)
        else:
            image.save(path, optimize=True)
        written.append(path)
    return written


if __name__ == "__main__":
    paths = main()
    total = sum(p.stat().st_size for p in paths)
    for p in paths:
        print(f"{p.name:24s} {p.stat().st_size / 1024:6.1f} KB  {Image.open(p).mode} {Image.open(p).size}")
    print(f"total {total / 1024:.1f} KB")
