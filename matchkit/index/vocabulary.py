"""The visual words of the IVF index (``index/ivf.py``): a :class:`Vocabulary`
(a two-level tree of binary centroids, and the descriptor bits kept as
signature), how descriptors are assigned to its words, and the vocabulary
shipped with matchkit (``VOCAB_FILE``, trained by
``benchmarks/train_vocabulary.py``).

Separate from the index because it is its own thing: trained once, saved,
loaded and digested on its own, and read by the index only through
``assign`` and ``signatures``.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from matchkit.index import compiled
from matchkit.util.arrays import cross_bit_distances
from matchkit.util.fs import atomic_write

VOCAB_FILE = Path(__file__).resolve().parent.parent / "data" / "orb_vocab.npz"
#: How ``Vocabulary.assign`` breaks ties, saved with every IVF index: an index
#: filed another way is rebuilt (1: first-level nodes tied at the cut were
#: taken as ``np.argpartition`` left them, which filed 1.1% of real ORB
#: descriptors under another word than taking them by number; 2: by number).
FILING = 2
#: Leaf distances ``Vocabulary.assign`` holds at once (queries x nodes x
#: leaves per node): 2M int64 is 16 MB per temporary. Chunks of 4,096 queries
#: against 8 x 256 leaves held about 290 MB more at peak.
ASSIGN_CELLS = 1 << 21


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Two-level tree of binary centroids, and the descriptor bits kept as signature."""

    #: (K1, 32) uint8: first-level centroids.
    top: np.ndarray
    #: (K1, K2, 32) uint8: second-level centroids; word = i1 * K2 + i2.
    leaves: np.ndarray
    #: Bit positions (0..255, in ``np.unpackbits`` order) of the signature.
    sig_bits: np.ndarray

    @property
    def words(self) -> int:
        return self.leaves.shape[0] * self.leaves.shape[1]

    @property
    def nbits(self) -> int:
        return len(self.sig_bits)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.top, self.leaves, self.sig_bits.astype(np.int16)):
            h.update(np.ascontiguousarray(a).tobytes())
            h.update(str(a.shape).encode())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, top=self.top, leaves=self.leaves,
                            sig_bits=self.sig_bits.astype(np.int16))
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        with np.load(path) as z:
            top = np.ascontiguousarray(z["top"], np.uint8)
            leaves = np.ascontiguousarray(z["leaves"], np.uint8)
            sig_bits = np.asarray(z["sig_bits"], np.int64)
        if (top.ndim != 2 or top.shape[1] != 32 or leaves.ndim != 3
                or leaves.shape[:1] != top.shape[:1] or leaves.shape[2] != 32
                or not len(sig_bits) or 256 % len(sig_bits)
                or sig_bits.min() < 0 or sig_bits.max() > 255):
            raise ValueError(f"{path}: not a descriptor vocabulary")
        return cls(top, leaves, sig_bits)

    # -- assignment ---------------------------------------------------------
    def assign(self, codes: np.ndarray, probes: int = 1, nodes: int = 2) -> np.ndarray:
        """The ``probes`` nearest words of each code (n, 32) uint8: (n, probes)
        int64, nearest first, ties by word number (and nodes tied at the
        cut by node number). With one probe this is a
        plain descent of the tree (the best first-level node, then its best
        leaf: the word an entry is filed under); with more, that word comes
        first and the other leaves of the ``nodes`` best first-level nodes
        compete for the rest (a true neighbour filed under another node is
        found only if its node is among them).

        Compiled (``compiled.assign_words``, about 5x faster) when Numba
        loads; the NumPy form below is the reference it is tested against."""
        codes = np.ascontiguousarray(codes, np.uint8).reshape(-1, 32)
        out = np.empty((len(codes), probes), np.int64)
        top = self.top.view(np.uint64)                 # (K1, 4)
        leaves = self.leaves.view(np.uint64)           # (K1, K2, 4)
        k1, k2 = self.leaves.shape[:2]
        nodes = 1 if probes == 1 else max(1, min(int(nodes), k1))
        if compiled.assign_words(codes.view(np.uint64), top, leaves, probes, nodes, out):
            return out
        step = max(1, min(4096, ASSIGN_CELLS // (nodes * k2)))
        for s in range(0, len(codes), step):
            q = codes[s:s + step].view(np.uint64)      # (n, 4)
            n = len(q)
            # Nodes tied at the cut are taken by number (as words are), not as
            # argpartition happens to leave them.
            d1 = cross_bit_distances(q, top) * k1 + np.arange(k1)
            best = _smallest(d1, nodes)                            # (n, nodes)
            # distance * words + word: distinct, so equal distances go by word.
            score = _leaf_distances(q, best, leaves)               # (n, nodes, K2)
            score *= k1 * k2
            score += best[:, :, None] * k2
            score += np.arange(k2)
            # The descent's leaf (best leaf of the best node) first, always:
            # what an entry is filed under is what a query looks at first.
            first = np.argmin(score[:, 0], 1)
            out[s:s + n, 0] = best[:, 0] * k2 + first
            if probes > 1:
                score = score.reshape(n, -1)
                score[np.arange(n), first] = np.iinfo(np.int64).max
                pick = _smallest(score, probes - 1)                # columns: slot * K2 + leaf
                out[s:s + n, 1:] = np.take_along_axis(best, pick // k2, 1) * k2 + pick % k2
        return out

    def with_signature_bits(self, bits: int) -> "Vocabulary":
        """The same words with a signature of ``bits`` (64, 128 or 256): this
        vocabulary's bits first, then evenly spaced others; 256 keeps the whole
        descriptor, so distances within the probed words are exact.

        Why: a 64-bit signature ranks a word's postings by a noisy estimate
        of the descriptor distance (benchmarks/RESULTS.md, "candidates: IVF
        signature bits and probes")."""
        if bits not in (64, 128, 256) or bits < self.nbits:
            raise ValueError("signature bits must be 64, 128 or 256, at least the vocabulary's")
        rest = np.setdiff1d(np.arange(256), self.sig_bits)
        extra = rest[np.linspace(0, len(rest) - 1, bits - self.nbits).astype(np.int64)] \
            if bits > self.nbits else rest[:0]
        sig = np.sort(np.concatenate([self.sig_bits, extra])).astype(np.int64)
        return Vocabulary(self.top, self.leaves, sig)

    @property
    def sig_words(self) -> int:
        """uint64 words per signature."""
        return -(-self.nbits // 64)

    def signatures(self, codes: np.ndarray) -> np.ndarray:
        """The signature bits of each code, packed into uint64: (n,) for
        signatures of up to 64 bits, else (n, ``sig_words``)."""
        codes = np.ascontiguousarray(codes, np.uint8).reshape(-1, 32)
        bits = np.unpackbits(codes, axis=1)[:, self.sig_bits]
        packed = np.packbits(bits, axis=1, bitorder="little")
        pad = np.zeros((len(codes), 8 * self.sig_words), np.uint8)
        pad[:, : packed.shape[1]] = packed
        out = pad.view("<u8")
        return out.reshape(-1) if self.sig_words == 1 else out


def _leaf_distances(q: np.ndarray, best: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """Hamming distances (n, nodes, K2) of each query (n, 4) uint64 to the
    leaves of its chosen first-level nodes ``best`` (n, nodes).

    Why grouped by node: each node's leaves are compared with the queries
    that chose it, one ``cross_bit_distances`` call per node, instead of
    gathering every query's leaves first (``leaves[best]``: 268 MB for 4,096
    queries, 8 nodes of 256 leaves). For 20,000 random queries against 256 x
    256 words, 16 probes in 8 nodes: 4.3-5.0 s gathered, 1.1-1.5 s grouped
    (benchmarks/RESULTS.md, "candidates: words chosen node by node, and a
    65,536-word vocabulary")."""
    n, nodes = best.shape
    out = np.empty((n * nodes, leaves.shape[1]), np.int64)
    flat = best.reshape(-1)
    order = np.argsort(flat, kind="stable")
    sorted_nodes = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_nodes[1:] != sorted_nodes[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for a, b in zip(starts.tolist(), ends.tolist()):
        rows = order[a:b]
        out[rows] = cross_bit_distances(q[rows // nodes], leaves[sorted_nodes[a]])
    return out.reshape(n, nodes, -1)


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Column indexes of the ``k`` smallest values per row, smallest first
    (values must be distinct within a row for a deterministic order)."""
    if k >= values.shape[1]:
        return np.argsort(values, axis=1, kind="stable")[:, :k]
    part = np.argpartition(values, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(values, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


@lru_cache(maxsize=4)
def _load_vocabulary(path: str) -> Vocabulary:
    return Vocabulary.load(path)


def default_vocabulary() -> Vocabulary:
    """The vocabulary shipped with matchkit (``matchkit/data/orb_vocab.npz``)."""
    return _load_vocabulary(str(VOCAB_FILE))


#: The vocabularies shipped with matchkit, by the name ``Settings.ivf_vocabulary``
#: gives: file in ``matchkit/data`` and the signature bits kept (None: the
#: file's own). Both trained on the calib halves by
#: ``benchmarks/train_vocabulary.py``. The larger ones scan a quarter and a
#: sixteenth of the postings per probe, for large galleries, but their votes
#: find fewer candidate pairs on the held-out photo halves
#: (benchmarks/RESULTS.md, "candidates: words chosen node by node, and a
#: 65,536-word vocabulary").
VOCABULARIES: dict[str, tuple[str, int | None]] = {
    "orb-4k": (VOCAB_FILE.name, None),        # 64 x 64 words, 64-bit signatures
    "orb-16k": ("orb_vocab_16k.npz", 256),    # 128 x 128 words, whole descriptors
    "orb-64k": ("orb_vocab_64k.npz", 256),    # 256 x 256 words, whole descriptors
}


@lru_cache(maxsize=8)
def named_vocabulary(name: str) -> Vocabulary:
    """A shipped vocabulary by name (``VOCABULARIES``); KeyError for others."""
    file, bits = VOCABULARIES[name]
    vocab = _load_vocabulary(str(VOCAB_FILE.parent / file))
    return vocab if bits is None else vocab.with_signature_bits(bits)
