"""Camera-size JPEGs and their re-saves at another quality (a photo library's
most common copies), for timing the same-pixels check.

Each of the first N photos of ``imagenet-sample`` is enlarged to 3000x2000
(bicubic), saved at JPEG quality 95 as ``pNN.jpg`` (about a camera file's
size), and that file is saved again at quality 85 as ``pNN-q85.jpg``: same
size, near-equal hashes, other pixels. Before bad08d7 every such pair was
decoded twice at full size to rule out identical pixels.

    python benchmarks/resaved_set.py /tmp/resaved --n 40
    python benchmarks/ab_speed.py NEW OLD --sets '' --folder /tmp/resaved --rounds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Example: python benchmarks/resaved_set.py /tmp/resaved --n 40")
    ap.add_argument("out", type=Path, help="folder to write (made if missing)")
    ap.add_argument("--n", type=int, default=40, help="photos (default 40)")
    ap.add_argument("--photos", type=Path, default=Path(C.DEFAULT_PHOTOS))
    args = ap.parse_args()
    if args.n < 1:
        ap.error("--n must be at least 1")
    files = sorted(p for p in args.photos.iterdir() if p.is_file())[:args.n]
    if not files:
        ap.error(f"no photos in {args.photos}")
    args.out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            big = im.convert("RGB").resize((3000, 2000), Image.Resampling.BICUBIC)
        first = args.out / f"p{i:02d}.jpg"
        big.save(first, quality=95)
        with Image.open(first) as im:
            im.save(args.out / f"p{i:02d}-q85.jpg", quality=85)
    print(f"{2 * len(files)} files in {args.out}")


if __name__ == "__main__":
    main()
