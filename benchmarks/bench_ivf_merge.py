"""Folding new entries into a large IVF index: merged in place against sorted again.

Why: an incremental add puts every new image's descriptors into the
gallery's IVF index, whose postings are kept sorted by (word, key). Sorting
all of them again (the former ``IVFIndex._merge``) costs what the index
holds, not what was added; ``index.postings.merge_postings`` sorts the new
entries alone and puts each in its place. This loads a gallery's saved index,
adds NEW random descriptors under new keys, times the merge, then times
sorting every entry again and checks both give the same arrays.

    python benchmarks/bench_ivf_merge.py G/orb.ivf --new 300000

Prints a table; RESULTS.md sections are written by hand from it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from matchkit.config import Settings  # noqa: E402
from matchkit.index.ivf import load_ivf_index  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index", help="a gallery's orb.ivf")
    ap.add_argument("--new", type=int, default=300_000, help="entries added (default 300,000)")
    args = ap.parse_args(argv)
    idx = load_ivf_index(args.index, Settings())
    keys, _ = idx.postings()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.new, 32), dtype=np.uint8)
    new_keys = int(keys.max()) + 1 + np.arange(args.new, dtype=np.int64)
    old = idx._words(), idx._keys.copy(), idx._sigs.copy()
    idx.add(new_keys, codes, replace=False)
    t = time.perf_counter()
    idx._merge()
    merged = time.perf_counter() - t
    words, sigs = idx.vocab.assign(codes, 1)[:, 0], idx.vocab.signatures(codes)
    t = time.perf_counter()
    all_keys = np.concatenate([old[1], new_keys])
    order = np.lexsort((all_keys, np.concatenate([old[0], words])))
    all_keys, all_sigs = all_keys[order], np.concatenate([old[2], sigs])[order]
    resorted = time.perf_counter() - t
    same = np.array_equal(all_keys, idx._keys) and np.array_equal(all_sigs, idx._sigs)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load {os.getloadavg()[0]:.2f}")
    print("| postings | added | merged in place s | sorted again s | same arrays |")
    print("|---|---|---|---|---|")
    print(f"| {len(old[1]):,} | {args.new:,} | {merged:.2f} | {resorted:.2f} | {same} |")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
