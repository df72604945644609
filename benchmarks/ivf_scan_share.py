"""Share of an IVF index's postings that one query descriptor scans.

Why: an IVF search compares each query descriptor with the postings of its
probed words, so its cost at N images is about this share of N x 100
postings (``index_features`` per image) plus the fixed cost of choosing the
words. Measured on a small gallery, the share says what a vocabulary and
probe count would cost at a million images, where timing a small gallery
cannot (there the word choice dominates).

For each gallery: every image's strongest ``index_features`` descriptors
are filed under their word (one probe, as ``IVFIndex.add`` does); every
image's strongest ``query_features`` descriptors are assigned their
``PROBES`` words among the leaves of the ``NODES`` nearest first-level
nodes (``Vocabulary.assign``); the share is the mean over queries of the
postings in those words, over all postings. ``occupancy`` is the fullest
word's postings over the mean (an uneven vocabulary scans more than its
word count suggests).

    python benchmarks/ivf_scan_share.py matchkit/data/orb_vocab.npz /tmp/g-hard-calib \
        --probes 16:8 --probes 64:8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train_vocabulary import gallery_descriptors  # noqa: E402

from matchkit.config import Settings  # noqa: E402
from matchkit.index.ivf import Vocabulary  # noqa: E402


def scan_share(vocab: Vocabulary, entries: np.ndarray, queries: np.ndarray, probes: int,
               nodes: int) -> tuple[float, float]:
    """(mean share of the postings a query scans, fullest word over the mean word)."""
    counts = np.bincount(vocab.assign(entries, 1)[:, 0], minlength=vocab.words)
    words = vocab.assign(queries, probes, nodes)
    return float(counts[words].sum(1).mean() / max(len(entries), 1)), \
        float(counts.max() / max(counts.mean(), 1e-9))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vocabulary", type=Path)
    ap.add_argument("gallery", type=Path, nargs="+", help="gallery folders (matchkit index)")
    ap.add_argument("--probes", action="append", required=True, metavar="PROBES:NODES")
    args = ap.parse_args()
    try:
        specs = [tuple(int(x) for x in s.split(":")) for s in args.probes]
    except ValueError:
        ap.error("--probes: PROBES:NODES, two integers")
    if any(len(s) != 2 or min(s) < 1 for s in specs):
        ap.error("--probes: PROBES:NODES, two positive integers")
    vocab, s = Vocabulary.load(args.vocabulary), Settings()
    print("| gallery | words | probes | nodes | scan_share | postings_per_query | occupancy |")
    print("|---|---|---|---|---|---|---|")
    for g in args.gallery:
        entries = gallery_descriptors(g, s.index_features)
        queries = gallery_descriptors(g, s.query_features)
        for probes, nodes in specs:
            share, occ = scan_share(vocab, entries, queries, probes, nodes)
            print(f"| {g.name} | {vocab.words} | {probes} | {nodes} | {share:.5f} | "
                  f"{share * len(entries):.0f} of {len(entries)} | {occ:.1f} |", flush=True)


if __name__ == "__main__":
    main()
