"""A dev set of different pictures that carry the same sticker.

Why: at 10,000-50,000 images every false link left in the scale sets is a
sticker (the copy suite's emoji) on copies of two *different* pictures
(RESULTS "precision: how common the descriptors under a false link's inliers
are"). They appear only once a sticker is common in a collection: a rule
against them cannot be chosen on the calib halves (a few dozen stickers)
nor checked without a 50,000-image run. This set makes stickers common in a
small collection: the first ``--size`` slots of a ``scale_set.py``
collection (distinct pictures, 5% planted copies) plus ``--stickers``
sticker copies of distinct pictures (the suite's ``sticker`` edit, so every
one is a true copy of its own picture). Any pair joining two different
pictures is a false link; the sticker copies are true pairs to keep.

Files: the scale set's ``ROOT/img`` as made by ``scale_set.py`` and
``ROOT/stickers/SSSSSSS.jpg`` (a sticker copy of slot SSSSSSS); ground truth
``ROOT/sticker-truth-N-M.json`` ({"groups": [[name, ...], ...]}, names
relative to ``ROOT``).

    python benchmarks/scale_set.py --size 4000
    python benchmarks/sticker_set.py --size 4000 --stickers 800
    python benchmarks/sticker_set.py --size 4000 --stickers 800 --evaluate
        # dedupe it (default settings; --burst-pictures N, --burst-weak-pictures N
        # to change the check):
        # pair precision and recall against the truth, and the false pairs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _common as C  # noqa: E402
import scale_set  # noqa: E402

STICKER_EDIT = "sticker"


def sticker_slots(size: int, stickers: int) -> list[int]:
    """The distinct pictures that get a sticker copy: every k-th distinct
    slot of the first ``size`` (spread over the whole collection)."""
    distinct = [i for i in range(size) if i % scale_set.BLOCK != scale_set.BLOCK - 1]
    step = max(1, len(distinct) // max(1, stickers))
    return distinct[::step][:stickers]


def make(seed: int, root: Path, index: int) -> Path:
    """Write the sticker copy of slot ``index`` (atomically), from its JPEG."""
    from PIL import Image

    from matchkit.match.edits import apply_edit, load_suite

    edit = next(e for e in load_suite(scale_set.SUITE).edits if e.name == STICKER_EDIT)
    src = root / "img" / scale_set.Slot(index).name
    out = root / "stickers" / f"{index:07d}.jpg"
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.load()
        edited, save = apply_edit(im, edit, f"sticker-{seed}-{index}")
    tmp = out.with_name(f".{out.name}.tmp")
    edited.convert("RGB").save(tmp, **{**save, "format": "JPEG"})
    os.replace(tmp, out)
    return out


def truth(seed: int, size: int, stickers: int) -> list[list[str]]:
    """Groups (names relative to ROOT): the scale set's planted groups and
    each sticker copy with its picture."""
    groups = {g[0]: ["img/" + n for n in g] for g in scale_set.truth(seed, size)}
    for i in sticker_slots(size, stickers):
        name = scale_set.Slot(i).name
        groups.setdefault(name, ["img/" + name]).append(f"stickers/{i:07d}.jpg")
    return [g for g in groups.values() if len(g) > 1]


def evaluate(root: Path, size: int, stickers: int, burst_pictures: int | None,
             weak_pictures: int | None = None) -> dict:
    """Dedupe the set (a temporary gallery) and score its pairs."""
    import tempfile
    import time

    from matchkit.config import Settings
    from matchkit.jobs.dedupe import dedupe

    truth = json.loads((root / f"sticker-truth-{size}-{stickers}.json").read_text())
    true_pairs = C.pairs_from_groups(truth["groups"])
    folders = [root / "img" / f"d{f:04d}" for f in range(-(-size // scale_set.PER_FOLDER))]
    settings = Settings()
    if burst_pictures is not None:
        settings = settings.with_(burst_pictures=burst_pictures)
    if weak_pictures is not None:
        settings = settings.with_(burst_weak_pictures=weak_pictures)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rep = dedupe([str(f) for f in folders] + [str(root / "stickers")],
                     gallery=Path(tmp) / "g", settings=settings)
    wall = time.perf_counter() - t0
    rel = {str(p): str(Path(p).resolve().relative_to(root)) for c in rep.clusters
           for p in c.members}
    found = C.pairs_from_groups([[rel[str(p)] for p in c.members] for c in rep.clusters])
    tp = len(found & true_pairs)
    false = sorted(tuple(sorted(p)) for p in found - true_pairs)
    return {"images": size + stickers, "wall_s": round(wall, 1),
            "burst_pictures": settings.burst_pictures,
            "burst_weak": f"{settings.burst_weak_pictures} / {settings.burst_weak_votes}",
            "precision": round(tp / len(found), 4) if found else 1.0,
            "recall": round(tp / len(true_pairs), 4), "pairs_found": len(found),
            "true_pairs": len(true_pairs), "false_pairs": len(false), "false": false}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, required=True, help="scale-set slots (made already)")
    ap.add_argument("--stickers", type=int, required=True, help="sticker copies to make")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--evaluate", action="store_true", help="dedupe the set and score it")
    ap.add_argument("--burst-pictures", type=int, default=None,
                    help="with --evaluate: Settings.burst_pictures (default: the default)")
    ap.add_argument("--burst-weak-pictures", type=int, default=None,
                    help="with --evaluate: Settings.burst_weak_pictures (0: off)")
    args = ap.parse_args()
    if args.size <= 0 or args.size % scale_set.BLOCK or args.stickers < 0:
        ap.error(f"--size must be a positive multiple of {scale_set.BLOCK}, --stickers >= 0")
    root = args.root or scale_set.default_root(args.seed)
    gone = scale_set.missing(root / "img", 0, args.size)
    if gone:
        ap.error(f"{len(gone)} slots of {root / 'img'} are missing: run scale_set.py first")
    for n, i in enumerate(sticker_slots(args.size, args.stickers), 1):
        if not (root / "stickers" / f"{i:07d}.jpg").exists():
            make(args.seed, root, i)
        if n % 200 == 0:
            print(f"  {n}/{args.stickers} sticker copies", flush=True)
    out = root / f"sticker-truth-{args.size}-{args.stickers}.json"
    out.write_text(json.dumps({"seed": args.seed, "size": args.size, "stickers": args.stickers,
                               "groups": truth(args.seed, args.size, args.stickers)}))
    print(f"{root}: {args.size} slots + {args.stickers} sticker copies; truth in {out.name}")
    if args.evaluate:
        r = evaluate(root, args.size, args.stickers, args.burst_pictures,
                     args.burst_weak_pictures)
        false = r.pop("false")
        print(C.table([r], list(r)))
        for a, b in false[:30]:
            print(f"  false pair: {a} {b}")


if __name__ == "__main__":
    main()
