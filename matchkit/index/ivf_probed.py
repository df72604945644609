"""Which stored query descriptors new IVF entries come near, from the words
each stored query probed when it was searched.

Why: in an IVF index "near" is not symmetric (a query is compared in its
``probes`` words, an entry sits in one), so an incremental add cannot ask
from the new side, as it does of an HNSW index, which stored queries a new
descriptor reaches. Assigning every stored query to its words again did it
right but cost most of an add: 1M query descriptors (10,000 images) to 16
of 65,536 words take about 50 s. The words a query probed do not change
while the vocabulary and the descriptor stay, so its first search keeps
them (a record's "pw", 2 bytes a word) and an add only looks them up
(:func:`reached`). The stored queries' signatures come from the index
itself: a query descriptor is also an entry, under the key its image and
row give (``query_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matchkit.index import compiled
from matchkit.util.arrays import bit_sums
from matchkit.index.ivf import IVFIndex

#: (query, entry) comparisons made at once by :func:`reached`. Each costs
#: about 100 bytes in its temporaries with whole descriptors as signatures:
#: at 4M a 1% add to 10,000 images with 16,384 words peaked at 1,094 MiB.
PAIRS_AT_ONCE = 1 << 20


def query_rows(index: IVFIndex, images: np.ndarray, sizes: np.ndarray,
               stride: int) -> np.ndarray | None:
    """Where in ``index.postings()`` the first ``sizes[j]`` entries of each
    ``images[j]`` are (keys ``image * stride + r``, ``r < sizes[j]``), image
    by image and row by row; None when one of them is not in ``index``.

    Each entry's place is computed from its key (its image looked up in
    ``images``, which must be ascending; no sort of the postings and no
    ``np.isin``): at 10,000 images the sorted way took 0.8 s of an add. The
    postings are read ``POSTINGS_AT_ONCE`` at a time: at 100,000 images
    (10M postings) the temporaries of all at once were five arrays of 80 MB."""
    images = np.asarray(images, np.int64)
    sizes = np.asarray(sizes, np.int64)
    keys, _ = index.postings()
    total = int(sizes.sum())
    if not total:
        return np.zeros(0, np.int64)
    if not len(keys):
        return None
    starts = np.cumsum(sizes) - sizes
    where = np.full(total, -1, np.int64)
    for at in range(0, len(keys), POSTINGS_AT_ONCE):
        k = np.asarray(keys[at:at + POSTINGS_AT_ONCE], np.int64)
        image = k // stride
        r = k - image * stride
        # (sorted ``images`` searched, not a table by image id: ids can be large)
        slot = np.minimum(np.searchsorted(images, image), len(images) - 1)
        mine = np.flatnonzero(images[slot] == image)
        mine = mine[r[mine] < sizes[slot[mine]]]
        where[starts[slot[mine]] + r[mine]] = mine + at
    if (where < 0).any():
        return None
    return where


#: Postings ``query_rows`` reads at once (each costs about 40 bytes in its
#: temporaries).
POSTINGS_AT_ONCE = 1 << 21


@dataclass(frozen=True)
class FiledEntries:
    """New entries as an IVF index files them: sorted by (word, key), with
    their signatures and where each word's entries start (``first[w]``)."""

    keys: np.ndarray
    sigs: np.ndarray
    first: np.ndarray

    @classmethod
    def of(cls, index: IVFIndex, keys: np.ndarray, codes: np.ndarray) -> "FiledEntries":
        vocab = index.vocab
        words = vocab.assign(codes, 1)[:, 0]           # (as ``IVFIndex.add`` files them)
        order = np.lexsort((keys, words))
        return cls(np.asarray(keys, np.int64)[order], vocab.signatures(codes)[order],
                   np.searchsorted(words[order], np.arange(vocab.words + 1)))


def reached(index: IVFIndex, probed: dict[int, np.ndarray], new: FiledEntries, limit: int,
            stride: int, cutoffs: dict[int, np.ndarray] | None = None) -> np.ndarray | None:
    """(stored image, its query row, distance, new key) rows, int64 (n x 4):
    every new entry (``new``) within ``limit`` of a stored query descriptor
    that probed the word the entry is filed under, which is what searching
    those queries in an index of the new entries alone finds (all neighbours
    within the limit). ``probed``: image -> (rows, probes) words its query
    descriptors probed, nearest first, row r being the image's entry
    ``image * stride + r``. None when a query's entry is not in ``index``
    (its signature is not known here). ``cutoffs``: image -> a distance per
    query row beyond which its entries are not wanted (as far as its
    neighbour list's last: nearer ones alone can enter it, ``_merge_all``).
    Why: at 10,000 images, 96% of the rows found lay beyond; at 100,000,
    they were tens of millions of rows, the add's peak memory.

    The queries are compared ``QUERIES_AT_ONCE`` at a time (their signatures,
    probed words, owners and limits gathered for those alone): gathered for
    all 10M queries of 100,000 images they took 880 MB, an add's peak."""
    out = np.zeros((0, 4), np.int64)
    images = np.array(sorted(probed), np.int64)
    if not len(images) or not len(new.keys):
        return out
    sizes = np.array([len(probed[i]) for i in images.tolist()], np.int64)
    where = query_rows(index, images, sizes, stride)
    if where is None:
        return None
    sigs = index.postings()[1]
    scale = 256 // index.vocab.nbits
    ends = np.cumsum(sizes)
    found = [out]
    first = 0
    while first < len(images):
        start = int(ends[first] - sizes[first])
        last = max(first + 1, int(np.searchsorted(ends, start + QUERIES_AT_ONCE, "right")))
        part, psizes = images[first:last], sizes[first:last]
        stop = int(ends[last - 1])
        qsigs = sigs[where[start:stop]].astype(np.uint64, copy=False)
        owner = np.repeat(part, psizes)
        row = np.arange(len(owner), dtype=np.int64) - np.repeat(np.cumsum(psizes) - psizes,
                                                                psizes)
        pw = np.concatenate([probed[i] for i in part.tolist()])
        limits = np.full(len(qsigs), limit, np.int64)
        if cutoffs is not None:
            np.minimum(limits, np.concatenate([cutoffs[i] for i in part.tolist()]), out=limits)
        got = compiled.near_pairs(qsigs.reshape(len(qsigs), -1), pw, new.first,
                                  new.sigs.reshape(len(new.sigs), -1), limits, scale)
        if got is not None:
            q, e, d = got
            found.append(np.stack([owner[q], row[q], d, new.keys[e]], 1))
        else:
            found.append(_near_numpy(qsigs, pw, new, limits, scale, owner, row))
        del qsigs, owner, row, pw, limits
        first = last
    return np.concatenate(found)


#: Stored queries ``reached`` compares at once (about 100 bytes each while
#: gathered, with whole descriptors as signatures).
QUERIES_AT_ONCE = 1 << 20


def _near_numpy(qsigs, pw, new: FiledEntries, limits: np.ndarray, scale: int, owner,
                row) -> np.ndarray:
    """``reached``'s rows found with NumPy, in parts (``compiled.near_pairs``
    gives the same rows in the same order without the temporaries)."""
    count = np.diff(new.first)
    pw = pw.astype(np.int64)
    # Every (query, probed word holding new entries); then its entries, in parts.
    q, p = np.nonzero(count[pw] > 0)
    w = pw[q, p]
    n = count[w]
    found = [np.zeros((0, 4), np.int64)]
    ends = np.cumsum(n)
    start = 0
    while start < len(q):
        stop = int(np.searchsorted(ends, (ends[start - 1] if start else 0) + PAIRS_AT_ONCE,
                                   "right"))
        stop = max(stop, start + 1)
        qq, ww, nn = q[start:stop], w[start:stop], n[start:stop]
        pair_q = np.repeat(qq, nn)
        offset = np.arange(int(nn.sum())) - np.repeat(np.cumsum(nn) - nn, nn)
        pair_e = np.repeat(new.first[ww], nn) + offset
        x = qsigs[pair_q] ^ new.sigs[pair_e]
        d = (bit_sums(x) if x.ndim == 2 else np.bitwise_count(x).astype(np.int64)) * scale
        near = d <= limits[pair_q]
        found.append(np.stack([owner[pair_q[near]], row[pair_q[near]], d[near],
                               new.keys[pair_e[near]]], 1))
        start = stop
    return np.concatenate(found)
