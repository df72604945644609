"""How common the descriptors are that a pair's inliers rest on.

Why: at 10,000-50,000 images, every false link left in the scale sets is a
sticker (the copy edit's emoji) on copies of two different pictures; the
pixel and geometry tests cannot tell it from a copy whose picture survives
in one place (RESULTS "relations: the inliers' spread ..."). Instance
retrieval meets the same thing as burstiness: structures shared by many
images (logos, watermarks, text strokes) match everywhere, so their matches
are weak evidence (Jegou, Douze, Schmid, CVPR 2009). A descriptor's
*document frequency* here is how many other images of the gallery hold a
descriptor within the vote distance of it (among its ``K`` nearest in the
gallery's ORB index). An inlier is *distinctive* when that count is at most
a cap; this script measures, before any rule reads it, how many distinctive
inliers false links and planted copies have.

For each pair: ``local.verify`` on the stored features (the full fit, as
verification's second look), the inliers' descriptors in the first image
searched in the gallery's ORB index, their document frequency (the pair's
own two images not counted). Pairs: the ``--false`` pairs named, and a
sample of the planted copy pairs of a ``scale_set.py`` collection.

    python benchmarks/inlier_df.py benchmarks/_work/scale-distinct-s1/gallery-50000 \
        --seed 1 --size 50000 --false 0010559.jpg,0049179.jpg --sample 300
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _common as C  # noqa: E402
import scale_set  # noqa: E402

from matchkit.signals import local  # noqa: E402
from matchkit.config import Settings  # noqa: E402
from matchkit.store.gallery import ORB_KEY_STRIDE, Gallery  # noqa: E402

#: Neighbours asked of the index per inlier descriptor (the count saturates here).
K = 200
#: Document-frequency caps reported (an inlier is distinctive at or under one).
CAPS = (3, 10, 20)
#: Fewest inliers of a pair that the local rule can accept (``Settings.min_inliers``).
MIN_INLIERS = Settings().min_inliers


def inlier_document_frequency(gallery: Gallery, a: int, b: int, k: int = K,
                              distance: int | None = None) -> tuple[int, np.ndarray | None]:
    """(inliers of images ``a`` and ``b``, document frequency of each inlier's
    descriptor in ``a``); None for the second when the fit has no transform."""
    distance = Settings().vote_max_distance if distance is None else distance
    la, lb = gallery.local_features(a)[0], gallery.local_features(b)[0]
    v = local.verify(la, lb)
    if not v.transform:
        return v.inliers, None
    pts = np.asarray(v.points, np.float32).reshape(-1, 4)
    rows = ((la.xy[None, :, :] - pts[:, None, :2]) ** 2).sum(-1).argmin(1)
    keys, dists = gallery.orb_index.search(la.desc[rows], k)
    near = (keys >= 0) & (dists <= distance)
    return v.inliers, np.array([len({int(x) for x in row[ok] // ORB_KEY_STRIDE} - {a, b})
                                for row, ok in zip(keys, near)], np.int64)


def summary(name: str, inliers: int, df: np.ndarray | None) -> dict:
    row = {"pair": name, "inliers": inliers}
    if df is not None and len(df):
        row["median_df"] = int(np.median(df))
        row.update({f"df<={c}": int((df <= c).sum()) for c in CAPS})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gallery", type=Path, help="gallery folder (matchkit index)")
    ap.add_argument("--seed", type=int, required=True, help="the scale_set.py seed")
    ap.add_argument("--size", type=int, required=True, help="images of the collection indexed")
    ap.add_argument("--false", action="append", default=[], metavar="A,B",
                    help="a false link, by file names (repeatable)")
    ap.add_argument("--sample", type=int, default=300, help="planted pairs to sample")
    args = ap.parse_args()
    pairs = [tuple(p.split(",")) for p in args.false]
    if any(len(p) != 2 for p in pairs):
        ap.error("--false: A,B (two file names)")
    g = Gallery(args.gallery)
    ids = {os.path.basename(p): i for i, p in g.paths().items()}
    missing = [x for p in pairs for x in p if x not in ids]
    if missing:
        ap.error(f"--false: not in the gallery: {', '.join(missing)}")
    cols = ["pair", "inliers", "median_df", *(f"df<={c}" for c in CAPS)]
    print("False links:\n")
    print(C.table([summary(f"{a} {b}", *inlier_document_frequency(g, ids[a], ids[b]))
                   for a, b in pairs], cols), flush=True)
    groups = [grp for grp in scale_set.truth(args.seed, args.size) if len(grp) == 2]
    random.seed(0)
    rows = []
    for grp in random.sample(groups, min(args.sample, len(groups))):
        a, b = (os.path.basename(x) for x in grp)
        if a in ids and b in ids:
            inliers, df = inlier_document_frequency(g, ids[a], ids[b])
            if df is not None and inliers >= MIN_INLIERS:
                rows.append(summary(f"{a} {b}", inliers, df))
    print(f"\nPlanted pairs sampled: {min(args.sample, len(groups))}; with {MIN_INLIERS}+ "
          f"inliers: {len(rows)}\n")
    caps = []
    for c in CAPS:
        counts = sorted(r[f"df<={c}"] for r in rows)
        caps.append({"cap": f"df<={c}", "pairs with under 12 distinctive inliers":
                     sum(x < 12 for x in counts), "under 5": sum(x < 5 for x in counts),
                     "fewest distinctive": ", ".join(map(str, counts[:8]))})
    print(C.table(caps, list(caps[0])))
    print("\nPlanted pairs with the fewest distinctive inliers (df<=10):\n")
    print(C.table(sorted(rows, key=lambda r: r["df<=10"])[:6], cols))


if __name__ == "__main__":
    main()
