"""Build the example images for ``matchkit dedupe examples/images``.

Usage::

    pip download --no-deps scikit-image -d /tmp/skimg
    unzip -o /tmp/skimg/scikit_image-*.whl 'skimage/data/*' -d /tmp/skimg
    python examples/make_examples.py /tmp/skimg/skimage/data

The five source photos ship with scikit-image and are public domain or CC0
(see ``examples/images/LICENSE.md``). For each photo this script writes a
JPEG "original" (longest side at most 480 px, quality 90) and a few edited
copies of it, so that the demo has exact duplicates, pixel-identical files in
another container, and near duplicates (resized, recompressed, flipped,
rotated, cropped) to find. It also writes one truncated JPEG, ``broken.jpg``,
which the demo reports as skipped.

Only Pillow is used. The output is deterministic: no metadata, timestamps or
randomness are written, so re-running on the same inputs with the same Pillow
build gives byte-identical files.
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent / "images"

#: Source file in skimage/data -> output stem.
SOURCES = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
}

LONGEST_SIDE = 480
ORIGINAL_QUALITY = 90
EDIT_QUALITY = 85      # flips, rotations, crops and downscales
LOW_QUALITY = 30       # the "recompressed" edit

#: Which edits each photo gets (not every photo needs every edit; this keeps
#: the bundle near 30 files and well under 1.5 MB).
EDITS = {
    "astronaut": ["half", "q30", "flip", "rot90", "crop80", "png"],
    "chelsea": ["half", "q30", "flip", "rot90", "crop80", "png", "copy"],
    "coffee": ["half", "q30", "flip", "rot90", "crop80"],
    "rocket": ["half", "q30", "flip", "crop80", "copy"],
    "hubble_deep_field": ["half", "q30", "rot90"],
}

#: The JPEG whose first bytes become broken.jpg, and how many bytes to keep.
BROKEN_FROM = "rocket"
BROKEN_BYTES = 300


def save_jpeg(img: Image.Image, path: Path, quality: int) -> None:
    # optimize=True only changes the Huffman tables (smaller, still deterministic).
    img.save(path, "JPEG", quality=quality, optimize=True)


def load_source(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def fit(img: Image.Image, side: int) -> Image.Image:
    """Scale so the longest side is at most ``side`` (never upscale)."""
    w, h = img.size
    scale = side / max(w, h)
    if scale >= 1:
        return img.copy()
    return img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)


def centre_crop(img: Image.Image, fraction: float) -> Image.Image:
    w, h = img.size
    cw, ch = round(w * fraction), round(h * fraction)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def make_photo(name: str, source: Path) -> list[Path]:
    written = []
    base = fit(load_source(source), LONGEST_SIDE)
    original = OUT / f"{name}.jpg"
    save_jpeg(base, original, ORIGINAL_QUALITY)
    written.append(original)

    for edit in EDITS[name]:
        if edit == "half":
            w, h = base.size
            out = OUT / f"{name}_half.jpg"
            save_jpeg(base.resize((w // 2, h // 2), Image.Resampling.LANCZOS), out, EDIT_QUALITY)
        elif edit == "q30":
            # Decode the written original and re-encode it: a real recompression.
            out = OUT / f"{name}_q30.jpg"
            with Image.open(original) as im:
                save_jpeg(im.convert("RGB"), out, LOW_QUALITY)
        elif edit == "flip":
            out = OUT / f"{name}_flip.jpg"
            save_jpeg(base.transpose(Image.Transpose.FLIP_LEFT_RIGHT), out, EDIT_QUALITY)
        elif edit == "rot90":
            out = OUT / f"{name}_rot90.jpg"
            save_jpeg(base.transpose(Image.Transpose.ROTATE_90), out, EDIT_QUALITY)
        elif edit == "crop80":
            out = OUT / f"{name}_crop80.jpg"
            save_jpeg(centre_crop(base, 0.8), out, EDIT_QUALITY)
        elif edit == "png":
            # Same decoded pixels as the JPEG original, in a lossless container.
            out = OUT / f"{name}_png.png"
            with Image.open(original) as im:
                im.convert("RGB").save(out, "PNG", optimize=True)
        elif edit == "copy":
            out = OUT / "copies" / f"{name}.jpg"
            out.parent.mkdir(exist_ok=True)
            shutil.copyfile(original, out)
        else:
            raise ValueError(f"unknown edit {edit!r}")
        written.append(out)
    return written


def check(written: list[Path]) -> None:
    """Sanity checks: PNGs are pixel-exact, copies are byte-exact."""
    for path in written:
        if path.suffix == ".png":
            jpg = OUT / (path.stem.removesuffix("_png") + ".jpg")
            with Image.open(path) as a, Image.open(jpg) as b:
                assert a.convert("RGB").tobytes() == b.convert("RGB").tobytes(), path
        elif path.parent.name == "copies":
            assert path.read_bytes() == (OUT / path.name).read_bytes(), path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[0])
        print(f"usage: python {argv[0]} SKIMAGE_DATA_DIR", file=sys.stderr)
        return 2
    data = Path(argv[1])
    missing = [f for f in SOURCES.values() if not (data / f).is_file()]
    if missing:
        print(f"missing in {data}: {', '.join(missing)}", file=sys.stderr)
        return 1

    OUT.mkdir(parents=True, exist_ok=True)
    written = []
    for name, filename in SOURCES.items():
        written += make_photo(name, data / filename)

    broken = OUT / "broken.jpg"
    broken.write_bytes((OUT / f"{BROKEN_FROM}.jpg").read_bytes()[:BROKEN_BYTES])
    written.append(broken)

    check(written)
    total = sum(p.stat().st_size for p in written)
    for p in written:
        print(f"{p.stat().st_size:>8}  {p.relative_to(OUT.parent)}")
    print(f"{len(written)} files, {total / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
