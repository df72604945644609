"""Builders for the benchmark sets, made from a folder of base photos.

Every output file is named ``<photo stem>__<edit>.<ext>``; all files sharing a
stem are one ground-truth group. Photos are split into two disjoint halves by
their sorted position: ``calib`` (even) for choosing settings and ``eval``
(odd) for reporting, so no reported figure comes from the data it was tuned on.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

EXTS = {".jpg", ".jpeg", ".png", ".webp"}


def photos(src: Path, split: str = "all", limit: int | None = None) -> list[Path]:
    files = sorted(p for p in Path(src).iterdir() if p.suffix.lower() in EXTS)
    if split == "calib":
        files = files[0::2]
    elif split == "eval":
        files = files[1::2]
    elif split != "all":
        raise ValueError(f"unknown split {split!r}")
    return files[:limit] if limit else files


def group_of(name: str) -> str:
    return Path(name).name.split("__", 1)[0]


def _save(img: Image.Image, path: Path) -> None:
    img.convert("RGB").save(path, quality=90)


def transformed_edits(path: Path, out: Path) -> None:
    """The imagededup "transformed" protocol for one photo."""
    stem = path.stem
    shutil.copyfile(path, out / f"{stem}__orig{path.suffix.lower()}")
    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    cw, ch = round(w * 0.875), round(h * 0.875)
    left, top = (w - cw) // 2, (h - ch) // 2
    _save(im.crop((left, top, left + cw, top + ch)), out / f"{stem}__crop875.jpg")
    _save(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), out / f"{stem}__hflip.jpg")
    _save(im.transpose(Image.Transpose.FLIP_TOP_BOTTOM), out / f"{stem}__vflip.jpg")
    _save(im.rotate(25, expand=True), out / f"{stem}__rot25.jpg")
    side = min(w, h)
    _save(im.resize((side, side), Image.Resampling.LANCZOS), out / f"{stem}__square.jpg")


BUILDERS = {"transformed": transformed_edits}


def build(kind: str, base: list[Path], out: Path, workers: int = 2) -> Path:
    """Build set ``kind`` from ``base`` photos into ``out`` (reused if complete)."""
    out = Path(out)
    stamp = out / ".complete"
    want = "\n".join(sorted(p.name for p in base))
    if stamp.exists() and stamp.read_text() == want:
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    fn = BUILDERS[kind]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: fn(p, out), base))
    stamp.write_text(want)
    return out
