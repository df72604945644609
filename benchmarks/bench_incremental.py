"""Incremental matching: what a gallery run costs when little or nothing changed.

A collection of ~2,000 images (transformed-set edits of the first photos:
original, crop, flips, rotation, squashed; whole photo groups, as in ``bench_scale.py``) is deduplicated into a
gallery; then the same command runs again with no new file (no-op), then 1%
more images (the next photo groups) are added and it runs again. A run from
scratch on the grown collection (new gallery) is the reference: its clusters
must be identical to the incremental run's, and its wall time is the "full run".
Each run is `matchkit dedupe` in its own process (start-up included).

    python benchmarks/bench_incremental.py              # 2000 images, 1% added
    python benchmarks/bench_incremental.py --images 500 --no-write
    python benchmarks/scale_set.py --size 5000 --root benchmarks/_work/scale10k
    python benchmarks/bench_incremental.py --scale-root benchmarks/_work/scale10k --images 5000

With ``--scale-root`` the collection is the first slots of a ``scale_set.py``
collection instead (distinct synthetic pictures, every 20th an edited copy of
an earlier one, so the added 1% brings copies of pictures already in the
gallery): the larger sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import sets  # noqa: E402

#: The transformed set's edits need only Pillow (the hard set's need AugLy,
#: which is not a dependency).
KINDS = ("transformed",)
#: Runs of the no-op and the incremental add; the fastest is reported.
REPEAT = 3


def collection(photos: Path, n: int) -> list[Path]:
    """``n`` images in photo order, whole groups of edits (enough base photos built)."""
    per_photo = 6  # transformed-set images per photo
    base = sets.photos(photos, limit=math.ceil(n / per_photo) + 2)
    folders = [sets.build(kind, base, C.WORK / f"{kind}-all-{len(base)}") for kind in KINDS]
    ordered = sets.by_photo_order(folders)
    if len(ordered) < n:
        raise SystemExit(f"only {len(ordered)} images available")
    return ordered[:n]


def scale_collection(root: Path, n: int) -> list[Path]:
    """The first ``n`` slots of a ``scale_set.py`` collection (slot order)."""
    files = sorted((root.resolve() / "img").glob("d*/*.jpg"))[:n]
    if len(files) < n or files[-1].stem != f"{n - 1:07d}":
        raise SystemExit(f"{root} does not hold slots 0-{n - 1}: "
                         f"python benchmarks/scale_set.py --size {n} --root {root}")
    return files


def run(folder: Path, gallery: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "matchkit.cli", "dedupe", str(folder), "--gallery", str(gallery),
           "--json", str(out), "-q", *extra]
    before = os.getloadavg()[0]
    m = C.run_measured_cpu(cmd, env={**os.environ, "PYTHONPATH": str(C.ROOT)})
    m["load"] = f"{before:.1f}-{os.getloadavg()[0]:.1f}"
    if m["rc"]:
        raise SystemExit(f"failed ({m['rc']}): {' '.join(cmd)}")
    data = json.loads(out.read_text())
    return {**m, "stats": data["stats"], "clusters": data["clusters"]}


def outline(clusters: list[dict]) -> list:
    """Clusters, keepers and pair relations (no scores or evidence)."""
    return [(c["keep"], c["members"], [(p["a"], p["b"], p["relation"]) for p in c["pairs"]])
            for c in clusters]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--photos", type=Path, default=C.DEFAULT_PHOTOS)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--added", type=float, default=0.01, help="share of images added")
    ap.add_argument("--scale-root", type=Path, default=None,
                    help="use the first slots of this scale_set.py collection")
    ap.add_argument("--repeat", type=int, default=REPEAT,
                    help="runs of the no-op and of the add (the fastest is reported)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    images = (scale_collection(args.scale_root, args.images) if args.scale_root
              else collection(args.photos, args.images))
    n_new = max(1, round(args.images * args.added))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        coll = tmp / "collection"
        coll.mkdir()
        for i, p in enumerate(images[:-n_new]):
            os.symlink(p, coll / f"{i:05d}_{p.name}")
        g = tmp / "gallery"
        first = run(coll, g, tmp / "first.json")
        if first["stats"]["images"] != len(images) - n_new:
            raise SystemExit(f"the first run read {first['stats']['images']} images, "
                             f"not {len(images) - n_new}")
        # The short runs are repeated (best of REPEAT): on a shared machine a
        # few seconds' wall time is mostly other processes' load.
        noop = min((run(coll, g, tmp / "noop.json") for _ in range(args.repeat)),
                   key=lambda r: r["wall_s"])
        for i, p in enumerate(images[-n_new:], start=len(images) - n_new):
            os.symlink(p, coll / f"{i:05d}_{p.name}")
        tries = []
        for n in range(args.repeat):  # each on a copy of the gallery as the no-op left it
            shutil.copytree(g, tmp / f"gallery-{n}")
            tries.append(run(coll, tmp / f"gallery-{n}", tmp / "added.json"))
        added = min(tries, key=lambda r: r["wall_s"])
        full = run(coll, tmp / "fresh-gallery", tmp / "full.json")
        for name, r, ref, base in (("first run", first, None, None),
                                   ("no-op re-run", noop, first, first),
                                   (f"+{n_new} images ({args.added:.0%})", added, full, full),
                                   ("full run from scratch", full, None, None)):
            s = r["stats"]
            rows.append({"run": name, "images": s["images"], "wall_s": r["wall_s"],
                         "vs_reference": f"{r['wall_s'] / base['wall_s']:.1%}" if base else "",
                         "main_cpu_s": r["cpu_s"],
                         "same_clusters": (outline(r["clusters"]) == outline(ref["clusters"]))
                         if ref else "",
                         "same_evidence": (r["clusters"] == ref["clusters"]) if ref else "",
                         "images_searched": s.get("images_searched"),
                         "pairs_verified": s.get("pairs_verified"),
                         "pairs_reused": s.get("pairs_reused"),
                         "clusters": s["clusters"], "peak_rss_mib": r["peak_rss_mib"],
                         "load": r["load"]})
            print(rows[-1], flush=True)
    cols = ["run", "images", "wall_s", "vs_reference", "main_cpu_s",
            "same_clusters", "same_evidence",
            "images_searched", "pairs_verified", "pairs_reused", "clusters", "peak_rss_mib",
            "load"]
    text = C.table(rows, cols)
    print(text)
    if not args.no_write:
        if args.scale_root:
            name = f"incremental matching: no-op re-run and 1% added, scale set ({args.images})"
            data = (f"Data: the first {args.images} slots of the `scale_set.py` collection "
                    f"`{args.scale_root.name}` (distinct synthetic pictures, every 20th an "
                    "edited copy of an earlier one); the last "
                    f"{n_new} are added for the third run (they include copies of pictures "
                    "already in the gallery).\n"
                    f"Command: `python benchmarks/bench_incremental.py --scale-root "
                    f"{args.scale_root} --images {args.images} --added {args.added} "
                    f"--repeat {args.repeat}`\n")
        else:
            name = "incremental matching: no-op re-run and 1% added"
            data = (f"Data: transformed-set edits (original, 87.5% crop, h/v flip, 25-degree "
                    f"rotation, squashed to a square) of the first photos of "
                    f"`{args.photos.name}` in photo order ({args.images} images, whole photo "
                    f"groups); the last {n_new} are added for the third run.\n"
                    f"Command: `python benchmarks/bench_incremental.py --images {args.images} "
                    f"--added {args.added}`\n")
        C.write_section(name, (
            data +
            "Each run is `matchkit dedupe DIR --gallery G` in its own process (start-up, "
            "listing and reading the gallery included); the no-op and the add are the best "
            f"of {args.repeat} (the add each time on a copy of the gallery). `load`: the "
            "1-minute load average when the run started and ended (2 cores; other sessions' "
            "jobs share them). The no-op re-run is "
            "compared with the first run, the incremental add with a run from scratch on the same files "
            "(`vs_reference`: wall time as a share of the reference's; targets 3% and 5%; "
            "`main_cpu_s`: CPU seconds of the dedupe process itself, steadier than wall time "
            "on this shared machine, but without the extraction workers (forkserver children), "
            "so first and full runs cost more CPU than shown); "
            "`same_clusters`: the same clusters, keepers and pair relations; `same_evidence`: "
            "also every pair's scores and evidence (descriptor votes come from the approximate "
            "HNSW index, whose answers for an unchanged image move when other images are "
            "inserted: an incremental run keeps the stored answer, a fresh index gives its own; "
            "below 20,000 indexed descriptors searches are exact and the tests require both "
            "to be equal).\n\n"
            f"{text}\n"))


if __name__ == "__main__":
    main()
