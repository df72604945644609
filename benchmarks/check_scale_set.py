"""Are the synthetic scale pictures distinct, and not trivially so?

Two checks of ``scale_set.py`` collections (run once per generator change):

1. ``matchkit dedupe`` on K distinct pictures (copies left out): every pair
   it reports is a false match (ideally none).
2. pHash distances between distinct pictures against those between the
   real photos of ``imagenet-sample``: if synthetic pictures were much farther
   apart than real ones, the hash stage would have an easier job at scale than
   on a real library.

    nice -n 5 python benchmarks/check_scale_set.py --distinct 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as C  # noqa: E402
import scale_set  # noqa: E402
import sets  # noqa: E402
from matchkit.config import Settings  # noqa: E402
from matchkit.signals.hashing import dihedral_phashes  # noqa: E402


def distinct_slots(k: int) -> list[int]:
    return [i for i in range(k * scale_set.BLOCK // (scale_set.BLOCK - 1) + scale_set.BLOCK)
            if i % scale_set.BLOCK != scale_set.BLOCK - 1][:k]


def phash_distances(files: list[Path]) -> dict:
    """Percentiles of pairwise plain and dihedral (min over 8) pHash distances."""
    variants = []
    for f in files:
        with Image.open(f) as im:
            variants.append(np.unpackbits(dihedral_phashes(im.convert("RGB")), axis=1))
    v = np.stack(variants).astype(np.float32) * 2 - 1          # (n, 8, 256) of +-1
    n, bits = len(files), v.shape[2]
    plain = (bits - v[:, 0] @ v[:, 0].T) / 2                   # (n, n)
    dihedral = ((bits - (v.reshape(n * 8, bits) @ v[:, 0].T).reshape(n, 8, n)) / 2).min(axis=1)
    iu = np.triu_indices(n, 1)
    out = {}
    for name, d in (("plain", plain[iu]), ("dihedral", np.minimum(dihedral, dihedral.T)[iu])):
        for q in (0, 0.1, 1, 50):
            out[f"{name}_p{q:g}"] = float(np.percentile(d, q))
    out["pairs_within_threshold"] = int((np.minimum(dihedral, dihedral.T)[iu]
                                         <= Settings().phash_max_distance).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--distinct", type=int, default=2000, help="pictures for the dedupe check")
    ap.add_argument("--hash-sample", type=int, default=706, help="pictures per side for pHash")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--photos", type=Path, default=C.DEFAULT_PHOTOS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    root = args.root or scale_set.default_root(args.seed)
    slots = distinct_slots(max(args.distinct, args.hash_sample))
    files = [root / "img" / scale_set.Slot(i).name for i in slots]
    if not all(f.exists() for f in files):
        raise SystemExit(f"make the collection first: python benchmarks/scale_set.py "
                         f"--size {(slots[-1] // scale_set.BLOCK + 1) * scale_set.BLOCK}")
    with tempfile.TemporaryDirectory() as tmp:
        coll = Path(tmp) / "distinct"
        coll.mkdir()
        for f in files[: args.distinct]:
            os.symlink(f, coll / f.name)
        out = Path(tmp) / "out.json"
        u = C.run_usage([sys.executable, "-m", "matchkit.cli", "dedupe", str(coll), "--json",
                         str(out), "-q"])
        if u["rc"] not in (0, 1):
            raise SystemExit("dedupe failed")
        clusters = C.clusters_from_json(out)
    false_pairs = len(C.pairs_from_groups(clusters))
    print(f"dedupe on {args.distinct} distinct pictures: {false_pairs} pairs "
          f"({len(clusters)} clusters), {u['wall_s']:.0f} s", flush=True)
    rows = [{"pictures": f"synthetic ({args.hash_sample})",
             **phash_distances(files[: args.hash_sample])},
            {"pictures": f"{args.photos.name} ({args.hash_sample})",
             **phash_distances(sets.photos(args.photos)[: args.hash_sample])}]
    cols = ["pictures", *[k for k in rows[0] if k != "pictures"]]
    text = C.table(rows, cols)
    print(text)
    if not args.no_write:
        C.write_section("scale set check: distinct synthetic pictures", (
            f"Command: `nice -n 5 python benchmarks/check_scale_set.py --distinct {args.distinct}`"
            f" (seed {args.seed}).\n\n"
            f"- `matchkit dedupe` (default settings) on {args.distinct} distinct synthetic "
            f"pictures, no copies: **{false_pairs} pairs** reported ({len(clusters)} clusters); "
            "every one would be a false match.\n"
            "- Pairwise pHash distances (bits of 256; dihedral = min over the 8 flips/rotations, "
            "what `--threshold` compares) between distinct synthetic pictures and between the "
            "real photos; percentiles p0 (closest pair), p0.1, p1, p50:\n\n"
            f"{text}\n"))


if __name__ == "__main__":
    main()
