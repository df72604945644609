"""Contact sheets: PNG grids of thumbnails with their file names, for checking
a ground truth by eye (a person, or a file viewer that shows PNGs).

    python benchmarks/realdev_sheets.py OUT.png FILE...           # one sheet
    python benchmarks/realdev_sheets.py --groups                    # one sheet per dev-set group

Transparent images are drawn over a checkerboard, so a picture that lives
only in the alpha channel shows up (over white it would look blank).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL = 200
LABEL = 30


def _checker(size: tuple[int, int], step: int = 10) -> Image.Image:
    bg = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(bg)
    for y in range(0, size[1], step):
        for x in range((y // step % 2) * step, size[0], 2 * step):
            d.rectangle((x, y, x + step - 1, y + step - 1), fill=(200, 200, 200))
    return bg


def thumb(path: Path, cell: int = CELL) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGBA")
    except Exception as e:  # noqa: BLE001 - a sheet shows what it cannot read
        out = Image.new("RGB", (cell, cell), (255, 220, 220))
        ImageDraw.Draw(out).text((4, 4), f"unreadable\n{type(e).__name__}", fill=(0, 0, 0))
        return out
    im.thumbnail((cell, cell))
    bg = _checker(im.size)
    bg.paste(im, (0, 0), im)
    return bg


def sheet(files: list[Path], out: Path, labels: list[str] | None = None, cols: int = 6,
          cell: int = CELL) -> Path:
    """Write one grid of ``files`` (thumbnail + label + pixel size) to ``out``."""
    labels = labels or [p.name for p in files]
    rows = max(1, -(-len(files) // cols))
    W, H = cols * (cell + 8), rows * (cell + LABEL + 8)
    canvas = Image.new("RGB", (W, H), (90, 90, 90))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for i, (p, lab) in enumerate(zip(files, labels)):
        x, y = (i % cols) * (cell + 8) + 4, (i // cols) * (cell + LABEL + 8) + 4
        t = thumb(p, cell)
        canvas.paste(t, (x + (cell - t.width) // 2, y + (cell - t.height) // 2))
        try:
            with Image.open(p) as im:
                size = f"{im.width}x{im.height} {im.mode}"
        except Exception:  # noqa: BLE001
            size = "?"
        draw.text((x, y + cell + 2), lab[-34:], fill=(255, 255, 255), font=font)
        draw.text((x, y + cell + 15), size, fill=(255, 255, 160), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--groups", action="store_true",
                    help="sheets of the built dev set's groups into benchmarks/_work/realdev/sheets")
    ap.add_argument("--cols", type=int, default=6)
    ap.add_argument("--cell", type=int, default=CELL, help="thumbnail size in pixels")
    args = ap.parse_args()
    if args.groups:
        root = Path(__file__).resolve().parent / "_work" / "realdev"
        truth = json.loads((root / "truth.json").read_text())
        grouped = {m for g in truth["groups"] for m in g["members"]}
        entries = [(f"{g['id']}: {Path(m).name}", m) for g in truth["groups"] for m in g["members"]]
        entries += [(f"single: {Path(m).name}", m) for m in truth["images"] if m not in grouped]
        per = args.cols * args.cols * 2 // 3
        for n in range(0, len(entries), per):
            part = entries[n:n + per]
            sheet([root / "images" / m for _, m in part],
                  root / "sheets" / f"groups-{n // per:03d}.png", [lab for lab, _ in part],
                  args.cols, args.cell)
        print(f"{-(-len(entries) // per)} sheets in {root / 'sheets'}")
        return
    if not args.out or not args.files:
        ap.error("give OUT.png and files, or --groups")
    sheet(args.files, args.out, cols=args.cols, cell=args.cell)


if __name__ == "__main__":
    sys.exit(main())
