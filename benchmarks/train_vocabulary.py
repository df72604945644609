"""Train the visual-word vocabulary of the IVF descriptor index (``matchkit/index/ivf.py``).

Reads the indexed ORB descriptors (the strongest ``index_features`` per
image) of galleries built from the *calib* halves only, trains a two-level
tree of binary centroids by k-majority (binary k-means: nearest centroid by
Hamming distance, centroid = bitwise majority), and picks the signature
bits: greedily, the bits that vary most inside words and correlate least
with those already picked. Deterministic for a given seed and input.

Example (the shipped vocabulary):
    matchkit index benchmarks/_work/hard-calib-353 --gallery /tmp/g-hard-calib --no-embed -q
    ... (same for recapture-calib-353 and transformed-calib-353)
    python benchmarks/train_vocabulary.py /tmp/g-hard-calib /tmp/g-recapture-calib \\
        /tmp/g-transformed-calib --top 64 --leaves 64 --sig-bits 64
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from matchkit.index.ivf import VOCAB_FILE, Vocabulary  # noqa: E402
from matchkit.util.arrays import cross_bit_distances  # noqa: E402


def gallery_descriptors(folder: Path, per_image: int) -> np.ndarray:
    """The strongest ``per_image`` descriptors of every image in a gallery, (n, 32) uint8."""
    db = sqlite3.connect(f"file:{folder / 'gallery.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT image_id, descriptors FROM local_features ORDER BY image_id")
        out = [np.frombuffer(d, np.uint8).reshape(-1, 32)[:per_image] for _, d in rows]
    finally:
        db.close()
    return np.concatenate(out) if out else np.zeros((0, 32), np.uint8)


def _hamming(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n, K) Hamming distances between codes (n, 32) and centroids (K, 32)."""
    xv, cv = x.view(np.uint64), c.view(np.uint64)
    out = np.empty((len(x), len(c)), np.int64)
    for s in range(0, len(x), 8192):
        out[s:s + 8192] = cross_bit_distances(xv[s:s + 8192], cv)
    return out


def kmajority(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """k binary centroids (k, 32) of codes ``x`` (n, 32)."""
    uniq = np.unique(x, axis=0)
    if len(uniq) <= k:  # too few distinct codes: each one is a centroid, the rest random
        extra = rng.integers(0, 256, (k - len(uniq), 32), dtype=np.uint8)
        return np.ascontiguousarray(np.concatenate([uniq, extra]))
    cent = np.ascontiguousarray(uniq[rng.choice(len(uniq), k, replace=False)])
    bits = np.unpackbits(x, axis=1).astype(np.int32)
    for _ in range(iters):
        d = _hamming(x, cent)
        assign = np.argmin(d, axis=1)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros((k, 256), np.int64)
        _add_rows(sums, assign, bits)
        new = np.packbits((2 * sums > counts[:, None]).astype(np.uint8), axis=1)
        empty = counts == 0
        if empty.any():  # re-seed from the codes farthest from their centroid
            far = np.argsort(-d[np.arange(len(x)), assign], kind="stable")[: int(empty.sum())]
            new[empty] = x[far]
        if np.array_equal(new, cent):
            break
        cent = np.ascontiguousarray(new)
    return cent


def _add_rows(sums: np.ndarray, assign: np.ndarray, bits: np.ndarray) -> None:
    """sums[c] = the sum of the rows of ``bits`` assigned to c."""
    order = np.argsort(assign, kind="stable")
    a = assign[order]
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    sums[a[starts]] = np.add.reduceat(bits[order], starts, axis=0)


def pick_signature_bits(x: np.ndarray, words: np.ndarray, n: int) -> np.ndarray:
    """``n`` bit positions: most variance within words, least correlation with
    the bits already picked (greedy)."""
    bits = np.unpackbits(x, axis=1).astype(np.float64)
    counts = np.bincount(words)
    means = np.zeros((len(counts), 256))
    _add_rows(means, words, bits)
    means /= np.maximum(counts, 1)[:, None]
    resid = bits - means[words]
    var = (resid ** 2).mean(0)
    std = np.sqrt(np.maximum(var, 1e-12))
    corr = (resid.T @ resid) / len(x) / np.outer(std, std)
    picked: list[int] = []
    worst = np.zeros(256)
    for _ in range(n):
        score = var * (1.0 - worst ** 2)
        score[picked] = -1
        j = int(np.argmax(score))
        picked.append(j)
        worst = np.maximum(worst, np.abs(corr[j]))
    return np.array(sorted(picked), np.int64)


def train(x: np.ndarray, top: int, leaves: int, sig_bits: int, iters: int, seed: int,
          sample: int) -> Vocabulary:
    rng = np.random.default_rng(seed)
    if len(x) > sample:
        x = x[np.sort(rng.choice(len(x), sample, replace=False))]
    x = np.ascontiguousarray(x)
    c1 = kmajority(x, top, iters, rng)
    a1 = np.argmin(_hamming(x, c1), axis=1)
    c2 = np.zeros((top, leaves, 32), np.uint8)
    for i in range(top):
        c2[i] = kmajority(np.ascontiguousarray(x[a1 == i]), leaves, iters, rng)
    vocab = Vocabulary(c1, c2, np.arange(sig_bits))
    words = vocab.assign(x, 1)[:, 0]
    return Vocabulary(c1, c2, pick_signature_bits(x, words, sig_bits))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("galleries", nargs="+", type=Path,
                    help="gallery folders built from calib halves only")
    ap.add_argument("--top", type=int, default=64, help="first-level centroids")
    ap.add_argument("--leaves", type=int, default=64, help="second-level centroids per node")
    ap.add_argument("--sig-bits", type=int, default=64, choices=[8, 16, 32, 64])
    ap.add_argument("--per-image", type=int, default=100, help="descriptors per image")
    ap.add_argument("--sample", type=int, default=400_000, help="most descriptors trained on")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=VOCAB_FILE)
    args = ap.parse_args()
    for g in args.galleries:
        if "eval" in g.name:
            ap.error(f"{g}: train on calib halves only")
    t = time.perf_counter()
    x = np.concatenate([gallery_descriptors(g, args.per_image) for g in args.galleries])
    vocab = train(x, args.top, args.leaves, args.sig_bits, args.iters, args.seed, args.sample)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    vocab.save(args.out)
    print(f"{len(x)} descriptors -> {vocab.words} words, {vocab.nbits} signature bits, "
          f"{args.out} ({args.out.stat().st_size} bytes, digest {vocab.digest}) "
          f"in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
