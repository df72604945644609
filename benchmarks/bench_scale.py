"""How dedupe cost grows with the collection: 1k, 5k and 20k images.

Collections are built from all base photos with hard-set edits (three
independently seeded rounds) plus the transformed-set edits, taken photo by
photo so duplicate groups stay whole. Each size runs `matchkit dedupe` in its
own process, default settings and --hash-only.

    python benchmarks/bench_scale.py                 # 1000,5000,20000
    python benchmarks/bench_scale.py --sizes 1000,5000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import sets  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--photos", type=Path, default=C.DEFAULT_PHOTOS)
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    base = sets.photos(args.photos)
    folders = [sets.build(kind, base, C.WORK / f"{kind}-all-{len(base)}")
               for kind in ("hard", "hard-b", "hard-c", "transformed")]
    ordered = sets.by_photo_order(folders)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        if n > len(ordered):
            print(f"only {len(ordered)} images available; skipping {n}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            coll = Path(tmp) / "collection"
            coll.mkdir()
            for i, p in enumerate(ordered[:n]):
                os.symlink(p, coll / f"{i:05d}_{p.name}")
            for mode, extra in (("default", []), ("hash-only", ["--hash-only"])):
                out = Path(tmp) / f"{mode}.json"
                cmd = [sys.executable, "-m", "matchkit.cli", "dedupe", str(coll), "--json",
                       str(out), "-q", *extra]
                wall, rss, rc = C.run_measured(cmd)
                if rc:
                    raise SystemExit(f"failed: {cmd}")
                rows.append({"images": n, "mode": mode, "wall_s": wall,
                             "images_per_s": n / wall, "peak_rss_mib": rss})
                print(rows[-1], flush=True)
    for r in rows:
        first = next(x for x in rows if x["mode"] == r["mode"])
        r["time_per_image_vs_smallest"] = f"{(r['wall_s'] / r['images']) / (first['wall_s'] / first['images']):.2f}x"
    text = C.table(rows, ["images", "mode", "wall_s", "images_per_s", "peak_rss_mib",
                          "time_per_image_vs_smallest"])
    print(text)
    if not args.no_write:
        C.write_section("scaling: dedupe cost vs collection size", (
            f"Data: hard-set edits (3 seeded rounds) and transformed-set edits of the "
            f"{len(base)} photos in `{args.photos.name}`, first N images in photo order.\n"
            f"Command: `python benchmarks/bench_scale.py --sizes {args.sizes}`\n"
            "Each run is `matchkit dedupe` in its own process (time includes start-up and "
            "decoding). `time_per_image_vs_smallest` near 1.0 means linear growth.\n\n"
            f"{text}\n"))


if __name__ == "__main__":
    main()
