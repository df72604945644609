"""Shared fixtures: tests make their own small images, no external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw


def make_photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like image: smooth colour field plus a few shapes; seeds differ a lot."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.zeros((h, w, 3))
    for _ in range(6):
        cx, cy, s = rng.random(3) * [1, 1, 0.3] + [0, 0, 0.05]
        colour = rng.random(3)
        img += colour * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))[..., None]
    img += rng.random(3) * xx[..., None] + rng.random(3) * yy[..., None]
    img = (img / img.max() * 255).clip(0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for _ in range(8):
        x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
        x1, y1 = x0 + rng.integers(10, w // 2), y0 + rng.integers(10, h // 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return pil


@pytest.fixture
def photo():
    return make_photo


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A folder with 4 unrelated photos and edited copies of two of them.

    Groups: a (a.jpg, a_copy.jpg bytes-identical, a.png same pixels, a_flip.jpg,
    a_small.jpg), b (b.jpg, b_rot90.jpg), and singletons c.jpg, d.jpg.
    """
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    a = make_photo(1)
    a.save(d / "a.jpg", quality=92)
    (d / "sub" / "a_copy.jpg").write_bytes((d / "a.jpg").read_bytes())
    with Image.open(d / "a.jpg") as im:
        im.convert("RGB").save(d / "a.png")
    a.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(d / "a_flip.jpg", quality=85)
    a.resize((160, 120), Image.Resampling.LANCZOS).save(d / "a_small.jpg", quality=80)
    b = make_photo(2)
    b.save(d / "b.jpg", quality=90)
    b.transpose(Image.Transpose.ROTATE_90).save(d / "b_rot90.jpg", quality=90)
    make_photo(3).save(d / "c.jpg", quality=90)
    make_photo(4).save(d / "d.jpg", quality=90)
    return d


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP checkpoint saved like a real one (see tests/tiny_clip.py)."""
    from tiny_clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
