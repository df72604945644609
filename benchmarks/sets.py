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


def _rng(path: Path, salt: str = ""):
    import hashlib
    import random
    return random.Random(int(hashlib.sha256((salt + path.name).encode()).hexdigest()[:16], 16))


def hard_edits(path: Path, out: Path, salt: str = "") -> None:
    """DISC21-style edits with AugLy (seeded per photo, so the set is reproducible).

    crop to ~50% of the area, text overlay, emoji overlay, blur + JPEG q15,
    padding + grayscale, colour jitter + 10-degree rotation, overlay onto a
    screenshot template, downscale to 25%.
    """
    import pickle

    import augly.image as A
    import augly.utils as AU

    rng = _rng(path, salt)
    stem = path.stem
    if not salt:
        shutil.copyfile(path, out / f"{stem}__orig{path.suffix.lower()}")
    with Image.open(path) as im:
        im = im.convert("RGB")
    side = 0.5 ** 0.5
    x1, y1 = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
    _save(A.crop(im, x1=x1, y1=y1, x2=x1 + side, y2=y1 + side), out / f"{stem}__crop50{salt}.jpg")

    fonts = sorted(Path(AU.FONTS_DIR).glob("*.ttf"))
    colour = tuple(rng.randrange(256) for _ in range(3))
    size, x, y = rng.uniform(0.1, 0.2), rng.uniform(0, 0.4), rng.uniform(0.1, 0.7)
    for _ in range(10):  # a few bundled fonts fail to lay out with current Pillow
        font = fonts[rng.randrange(len(fonts))]
        with open(font.with_suffix(".pkl"), "rb") as f:
            n_chars = len(pickle.load(f))
        text = [rng.randrange(n_chars) for _ in range(rng.randint(6, 14))]
        try:
            edited = A.overlay_text(im, text=text, font_file=str(font), font_size=size,
                                    color=colour, x_pos=x, y_pos=y)
            break
        except RuntimeError:
            continue
    _save(edited, out / f"{stem}__text{salt}.jpg")

    emojis = sorted(Path(AU.EMOJI_DIR).rglob("*.png"))
    _save(A.overlay_emoji(im, emoji_path=str(emojis[rng.randrange(len(emojis))]),
                          emoji_size=rng.uniform(0.2, 0.35), x_pos=rng.uniform(0, 0.6),
                          y_pos=rng.uniform(0, 0.6)), out / f"{stem}__emoji{salt}.jpg")
    _save(A.encoding_quality(A.blur(im, radius=rng.uniform(1.5, 3.0)), quality=15),
          out / f"{stem}__blurq15{salt}.jpg")
    pad_colour = tuple(rng.randrange(256) for _ in range(3))
    _save(A.grayscale(A.pad(im, w_factor=rng.uniform(0.1, 0.3), h_factor=rng.uniform(0.1, 0.3),
                            color=pad_colour)), out / f"{stem}__padgray{salt}.jpg")
    jit = A.color_jitter(im, brightness_factor=rng.uniform(0.7, 1.3),
                         contrast_factor=rng.uniform(0.7, 1.3),
                         saturation_factor=rng.uniform(0.5, 1.5))
    _save(A.rotate(jit, degrees=rng.choice([-10, 10])), out / f"{stem}__jitrot10{salt}.jpg")
    template = Path(AU.SCREENSHOT_TEMPLATES_DIR) / rng.choice(["web.png", "mobile.png"])
    _save(A.overlay_onto_screenshot(im, template_filepath=str(template)),
          out / f"{stem}__screenshot{salt}.jpg")
    _save(A.scale(im, factor=0.25), out / f"{stem}__scale25{salt}.jpg")


#: Monitor setups shared by many photos in the recapture set: one bezel, camera pose,
#: background and light each, so different photos shot on one setup share an
#: identical frame (the negatives of the set).
RECAPTURE_SETUPS = 6


def recapture_setup(stem: str) -> int:
    """The shared monitor setup a photo (by its file stem, the set's group name)
    is shown on in the recapture set."""
    import hashlib

    return int(hashlib.sha256(stem.encode()).hexdigest()[:8], 16) % RECAPTURE_SETUPS


def hard_negatives(kind: str, folder: Path) -> set[frozenset]:
    """Pairs of files made from *different* photos that a set makes look alike on
    purpose (recapture: two photos shown on one monitor setup); empty for sets
    without such pairs."""
    if kind != "recapture":
        return set()
    by_setup: dict[int, list[str]] = {}
    for p in sorted(Path(folder).glob("*__monitor.jpg")):
        by_setup.setdefault(recapture_setup(group_of(p.name)), []).append(p.name)
    return {frozenset((a, b)) for names in by_setup.values()
            for i, a in enumerate(names) for b in names[i + 1:]}


def recapture_edits(path: Path, out: Path) -> None:
    """A photo re-photographed (``matchkit.match.edits`` op ``recapture``, seeded per photo):

    ``monitor``: on one of ``RECAPTURE_SETUPS`` shared monitor setups (the hard
    negatives: other photos on the same bezel); ``screen``: on a monitor at its own
    pose; ``print``: a print with a white border. All at 10-35 degrees off-axis,
    with a lighting gradient, blur, noise and a new background.
    """
    from matchkit.match.edits import Edit, apply_edit

    stem = path.stem
    shutil.copyfile(path, out / f"{stem}__orig{path.suffix.lower()}")
    setup = recapture_setup(stem)
    common = {"op": "recapture", "degrees": [10, 35], "blur": [0.6, 1.8], "noise": [3, 8]}
    edits = [Edit("monitor", ({**common, "kind": "monitor", "setup": setup},)),
             Edit("screen", ({**common, "kind": "monitor"},)),
             Edit("print", ({**common, "kind": "print"},))]
    with Image.open(path) as im:
        im.load()
        for e in edits:
            edited, save = apply_edit(im, e, path.name)
            edited.save(out / f"{stem}__{e.name}.jpg", **save)


BUILDERS = {"transformed": transformed_edits, "hard": hard_edits, "recapture": recapture_edits,
            # More edits per photo, for scaling runs (no second copy of the original).
            "hard-b": lambda p, out: hard_edits(p, out, salt="b"),
            "hard-c": lambda p, out: hard_edits(p, out, salt="c")}


def by_photo_order(folders: list[Path]) -> list[Path]:
    """Every image of the built sets in ``folders``, photo group by photo group
    (so taking the first N keeps duplicate groups whole)."""
    groups: dict[str, list[Path]] = {}
    for folder in folders:
        for p in sorted(Path(folder).iterdir()):
            if not p.name.startswith("."):
                groups.setdefault(group_of(p.name), []).append(p)
    return [p for group in sorted(groups) for p in groups[group]]


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
