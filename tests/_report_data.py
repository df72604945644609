"""A small collection for report tests: exact, near and local-feature clusters,
a broken file, and a file whose name is markup (it must show as text)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from conftest import textured  # noqa: E402  (shared with test_local)

#: A file name that would run script if it ever reached the page as HTML.
XSS_NAME = '<img src=x onerror="window.__xss=1">.jpg'


def build_collection(folder: Path) -> Path:
    """Clusters: p1 (original, byte copy in sub/, markup-named copy, 50% crop),
    p2 (original, mirror image, half size); singletons; one broken file."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    p1 = textured(1)
    p1.save(folder / "p1.jpg", quality=92)
    (folder / "sub" / "p1_copy.jpg").write_bytes((folder / "p1.jpg").read_bytes())
    (folder / "sub" / XSS_NAME).write_bytes((folder / "p1.jpg").read_bytes())
    p1.crop((60, 40, 60 + 300, 40 + 230)).save(folder / "sub" / "p1_crop.jpg", quality=90)
    p2 = textured(2)
    p2.save(folder / "p2.jpg", quality=90)
    p2.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "p2_flip.jpg", quality=88)
    p2.resize((240, 180), Image.Resampling.LANCZOS).save(folder / "p2_half.jpg", quality=85)
    for i in range(3):
        textured(50 + i).save(folder / f"other{i}.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    return folder
