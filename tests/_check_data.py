"""A reference gallery and incoming images for gallery-check tests.

Gallery: six unrelated photos (``gal/p1.jpg`` ... ``p6.jpg``). Incoming
(``incoming/``): edited copies of p3 (a crop, a mirror image, an overlaid
caption and logo), a byte copy of p2, an unrelated photo and a broken file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image, ImageDraw

from conftest import make_photo
from matchkit import Gallery

#: Incoming file -> the gallery file it copies (None: no copy of anything).
EXPECTED = {"crop.jpg": "p3.jpg", "flip.jpg": "p3.jpg", "overlay.jpg": "p3.jpg",
            "same.jpg": "p2.jpg", "unrelated.jpg": None}
BROKEN = "broken.jpg"


def _overlaid(img: Image.Image) -> Image.Image:
    """A caption bar and a logo block drawn over the picture (a repost with a watermark)."""
    out = img.copy()
    d = ImageDraw.Draw(out)
    w, h = out.size
    d.rectangle((0, h - 60, w, h), fill=(255, 255, 255))
    d.text((12, h - 45), "REPOSTED  @somebody  2026", fill=(0, 0, 0))
    d.ellipse((w - 90, 10, w - 20, 80), fill=(230, 30, 30))
    return out


def build_check_case(root: Path) -> tuple[Path, Path]:
    """(gallery folder, incoming folder) under ``root``."""
    gal = root / "gal"
    gal.mkdir(parents=True)
    for seed in range(1, 7):
        make_photo(seed, (480, 360)).save(gal / f"p{seed}.jpg", quality=92)
    with Gallery(root / "g") as g:
        g.add(sorted(gal.iterdir()))
        g.save()
    inc = root / "incoming"
    inc.mkdir()
    src = make_photo(3, (480, 360))
    src.crop((60, 40, 420, 320)).save(inc / "crop.jpg", quality=85)
    src.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(inc / "flip.jpg", quality=85)
    _overlaid(src).save(inc / "overlay.jpg", quality=85)
    shutil.copy(gal / "p2.jpg", inc / "same.jpg")
    make_photo(99, (480, 360)).save(inc / "unrelated.jpg", quality=90)
    (inc / BROKEN).write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    return root / "g", inc
