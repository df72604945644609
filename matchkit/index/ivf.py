"""A compact inverted-file index over binary visual words (bag of words with
Hamming embedding), the default descriptor index of the votes (else HNSW).

Each indexed 256-bit descriptor is assigned to one visual word of a fixed
vocabulary (a two-level tree of binary centroids trained by
``benchmarks/train_vocabulary.py``, shipped as package data) and stored in
that word's posting list as (key, signature), the signature being a fixed
selection of the descriptor's bits. A query descriptor is assigned to its
``probes`` nearest words and compared with their postings by the Hamming
distance of the signatures, scaled to 256 bits (a signature of 64 bits
counts each differing bit as 4) so thresholds on descriptor distance keep
their meaning approximately.

Unlike an HNSW graph, the result is exact for its own score: the k postings
with the smallest (distance, key) among the probed words. That score depends
only on the query and the entry, so the result does not depend on the order
codes were added in, and the top k over the union of several indexes equals
the merge of each index's top k (``merged.MergedIndex``).

Memory is the postings only: per descriptor its key (4 bytes while keys fit
in 32 bits) and signature (8 bytes with 64 bits, 32 with the whole
descriptor): 1.2 or 3.6 KB per image of 100 descriptors; saved files are the
same arrays and can be memory-mapped.

Search cost grows with the postings per word, so linearly with the gallery
for a given vocabulary (HNSW's about logarithmically). The vocabulary is in
``vocabulary.py``, the file format in ``ivf_file.py``, the compiled loops
in ``compiled.py``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from matchkit.index import compiled
from matchkit.util.arrays import bit_sums, unique
from matchkit.util.fs import atomic_write, file_stamp
from matchkit.index.hamming import within
from matchkit.index.postings import merge_postings
from matchkit.index.ivf_file import _MAGIC, _pack, _unpack  # noqa: F401  (re-exported)
from matchkit.index.vocabulary import (  # noqa: F401  (re-exported)
    FILING, VOCAB_FILE, Vocabulary, _load_vocabulary, _smallest, default_vocabulary,
    named_vocabulary)

#: Keys must be below this (``IVFIndex._gathered`` packs row, distance and key in one int64).
MAX_KEY = 1 << 46
#: Query descriptors searched at once (bounds the temporary candidate
#: arrays; larger chunks give each probed word more queries per comparison call).
_CHUNK = 4096
#: Queries gathered at once by ``IVFIndex._gathered`` (its packing needs under 256).
_GATHER_CHUNK = 256
#: Comparisons per probed word from which the NumPy search goes word by word.
BY_WORD_FROM = 800


@dataclass(frozen=True, eq=False)
class EncodedQueries:
    """Query descriptors as an :class:`IVFIndex` compares them: each one's
    probed words and signature, all its search reads of it. Why: a query sent
    to a shard on another machine (``actors.RemoteIndex``) is 12 bytes this
    way with 64-bit signatures and 2 probes, against 32 for the descriptor."""

    #: (n, probes) words, nearest first (uint16 while the vocabulary allows).
    words: np.ndarray
    #: ``Vocabulary.signatures`` of the descriptors.
    sigs: np.ndarray
    #: ``IVFIndex.encoding`` of the index that made them: only an index with
    #: the same one may search them.
    encoding: tuple

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, rows: slice) -> "EncodedQueries":
        """Some of the queries, encoded as they were (``candidates.search_in_chunks``)."""
        return EncodedQueries(self.words[rows], self.sigs[rows], self.encoding)

    @property
    def nbytes(self) -> int:
        return self.words.nbytes + self.sigs.nbytes




class IVFIndex:
    """Inverted file of 256-bit codes keyed by integers, searched like
    ``hamming.HammingIndex`` (same ``search`` result shapes and padding)."""

    nbits = 256
    #: Equal distances come back smaller key first (``hamming.HammingIndex``'s
    #: exact searches do the same).
    ranks_ties_by_key = True

    def __init__(self, vocabulary: Vocabulary | None = None, *, probes: int = 1,
                 nodes: int = 2):
        self.vocab = vocabulary if vocabulary is not None else default_vocabulary()
        if not 1 <= probes <= self.vocab.leaves.shape[1]:
            raise ValueError("probes must be at least 1 and at most the leaves of a node")
        if not 1 <= nodes <= self.vocab.leaves.shape[0]:
            raise ValueError("nodes must be at least 1 and at most the first-level nodes")
        #: Words each query descriptor is compared in (entries are in one).
        self.probes = probes
        #: First-level nodes whose leaves those words are chosen from.
        self.nodes = nodes
        self._scale = 256 // self.vocab.nbits
        words = self.vocab.words
        #: Postings sorted by (word, key): word w holds rows offsets[w]:offsets[w+1].
        self._offsets = np.zeros(words + 1, np.int64)
        self._keys = np.zeros(0, np.int64)
        self._sigs = np.zeros((0,) if self.vocab.sig_words == 1
                              else (0, self.vocab.sig_words), np.uint64)
        #: Added since the last merge: (words, keys, sigs) batches.
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._lock = threading.RLock()

    # -- contents -----------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._keys) + sum(len(p[1]) for p in self._pending)

    def __contains__(self, key: int) -> bool:
        with self._lock:
            self._merge()
            return bool(np.isin(int(key), self._keys))

    def keys(self) -> np.ndarray:
        """Every key in the index (int64, sorted by word then key)."""
        return np.asarray(self.postings()[0], np.int64).copy()

    def postings(self) -> tuple[np.ndarray, np.ndarray]:
        """Every entry's key and signature, sorted by word then key: the
        index's own arrays (no copy; read them, never write them)."""
        with self._lock:
            self._merge()
            return self._keys, self._sigs

    def nbytes(self) -> int:
        """Bytes of the postings (as saved: keys narrowed to 32 bits when they fit)."""
        with self._lock:
            self._merge()
            kb = 4 if len(self._keys) == 0 or int(self._keys.max()) < 2**32 else 8
            sb = 4 if self.vocab.nbits <= 32 else 8 * self.vocab.sig_words
            return len(self._keys) * (kb + sb) + self._offsets.nbytes

    def add(self, keys: np.ndarray, codes: np.ndarray, *, replace: bool = True) -> None:
        """Add codes, shape (n, 32) uint8, under ``keys`` (0 <= key < 2**46);
        existing keys are replaced unless the caller promises they are new."""
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(keys) == 0:
            return
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(len(keys), -1)
        if codes.shape[1] != 32:
            raise ValueError("codes must be 256 bits (32 bytes) each")
        if keys.min() < 0 or keys.max() >= MAX_KEY:
            raise ValueError(f"keys must be in [0, {MAX_KEY})")
        if len(unique(keys)) != len(keys):
            raise ValueError("duplicate keys in one add")
        words = self.vocab.assign(codes, 1)[:, 0]
        sigs = self.vocab.signatures(codes)
        with self._lock:
            if replace:
                self._drop(keys)
            self._pending.append((words, keys, sigs))

    def remove(self, keys) -> None:
        keys = np.asarray(list(keys) if not isinstance(keys, np.ndarray) else keys,
                          np.int64).reshape(-1)
        if len(keys):
            with self._lock:
                self._drop(keys)

    def _drop(self, keys: np.ndarray) -> None:
        self._merge()
        gone = np.isin(self._keys, keys)
        if gone.any():
            words = self._words()[~gone]
            self._set(words, self._keys[~gone], self._sigs[~gone])

    def _words(self) -> np.ndarray:
        return np.repeat(np.arange(len(self._offsets) - 1), np.diff(self._offsets))

    def _set(self, words: np.ndarray, keys: np.ndarray, sigs: np.ndarray) -> None:
        """Install postings already sorted by (word, key)."""
        self._offsets = np.zeros(self.vocab.words + 1, np.int64)
        np.cumsum(np.bincount(words, minlength=self.vocab.words), out=self._offsets[1:])
        self._keys = np.ascontiguousarray(keys, np.int64)
        self._sigs = np.ascontiguousarray(sigs, np.uint64)

    def _merge(self) -> None:
        """Fold the pending additions into the sorted postings (``merge_postings``)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._offsets, self._keys, self._sigs = merge_postings(
            self._offsets, self._keys, self._sigs, *(np.concatenate([p[i] for p in pending])
                                                     for i in range(3)))

    # -- search -------------------------------------------------------------
    @property
    def encoding(self) -> tuple:
        """What :meth:`encode` depends on: the vocabulary, probes, nodes and filing."""
        return (self.vocab.digest, self.vocab.nbits, self.probes, self.nodes, FILING)

    @property
    def encoded_bytes(self) -> int:
        """Bytes of one query as :meth:`encode` gives it (words, signature),
        counted: a Ray driver asks it without ever choosing a word."""
        return (self.probes * (2 if self.vocab.words <= 1 << 16 else 8)
                + 8 * self.vocab.sig_words)

    def encode(self, codes: np.ndarray) -> EncodedQueries:
        """Query codes (n, 32) as this index compares them (:class:`EncodedQueries`):
        ``search`` of the result equals ``search`` of the codes, on this index
        or any other with the same ``encoding``."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, 32)
        words = self.vocab.assign(codes, self.probes, self.nodes)
        if self.vocab.words <= 1 << 16:
            words = words.astype(np.uint16)
        return EncodedQueries(words, self.vocab.signatures(codes), self.encoding)

    def search(self, codes: np.ndarray | EncodedQueries, k: int, max_distance: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest codes for each query by (distance, key): (keys, distances),
        each (n, k). Distances are signature Hamming distances scaled to 256
        bits; only entries in the query's ``probes`` nearest words are found.
        Missing neighbours have key -1 and distance 257; with
        ``max_distance``, so are those farther than it (``hamming.within``).
        The queries may come encoded (:meth:`encode`, by an index of the same
        ``encoding``: else ValueError)."""
        if isinstance(codes, EncodedQueries) and codes.encoding != self.encoding:
            raise ValueError("queries encoded for another vocabulary or probes")
        keys, dists = self._search(codes, k)
        return (keys, dists) if max_distance is None else within(keys, dists, max_distance,
                                                                 self.nbits)

    def _search(self, queries: np.ndarray | EncodedQueries, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
        encoded = queries if isinstance(queries, EncodedQueries) else None
        if encoded is None:
            queries = np.ascontiguousarray(queries, dtype=np.uint8).reshape(-1, 32)
        n = len(queries)
        k = max(1, int(k))
        keys, dists = self._no_neighbours(n, k)
        with self._lock:
            self._merge()
            offsets, pkeys, psigs = self._offsets, self._keys, self._sigs
        if n == 0 or len(pkeys) == 0:
            return keys, dists
        for s in range(0, n, _CHUNK):
            if encoded is None:  # (a chunk at a time: bounded memory)
                part = self.encode(queries[s:s + _CHUNK])
                words, sigs = part.words, part.sigs
            else:
                words, sigs = encoded.words[s:s + _CHUNK], encoded.sigs[s:s + _CHUNK]
            words = words.astype(np.int64)  # (n, probes)
            kk, dd = self._search_chunk(words, sigs, k, offsets, pkeys, psigs)
            keys[s:s + len(words)] = kk
            dists[s:s + len(words)] = dd
        return keys, dists

    def _no_neighbours(self, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Result arrays of ``search`` for n queries with nothing found yet:
        key -1, distance ``nbits + 1``."""
        return (np.full((n, k), -1, dtype=np.int64),
                np.full((n, k), self.nbits + 1, dtype=np.int64))

    def _search_chunk(self, words, sigs, k, offsets, pkeys, psigs):
        """The k nearest postings of each query by (distance, key): compiled
        (``compiled.search_postings``), else in one of two NumPy ways with the
        same result: word by word (``_by_word``) where each probed word gives
        its comparison call enough work, else every candidate gathered at once
        (``_gathered``). 20,000 queries of the hard calib gallery, CPU s,
        gathered / by word: 64-bit signatures, 2 probes 0.34 / 0.76; 256
        bits, 16 probes 3.39 / 2.01."""
        keys, dists = self._no_neighbours(len(words), k)
        if compiled.search_postings(np.asarray(sigs).reshape(len(words), -1), words, offsets,
                                    pkeys, psigs.reshape(len(psigs), -1), k, self._scale,
                                    keys, dists):
            return keys, dists
        w = words.reshape(-1)
        comparisons = int((offsets[w + 1] - offsets[w]).sum())
        if comparisons >= BY_WORD_FROM * len(unique(w)):
            return self._by_word(sigs, words, k, offsets, pkeys, psigs)
        for s in range(0, len(words), _GATHER_CHUNK):
            e = s + _GATHER_CHUNK
            keys[s:e], dists[s:e] = self._gathered(sigs[s:e], words[s:e], k, offsets,
                                                   pkeys, psigs)
        return keys, dists

    def _by_word(self, sigs, words, k, offsets, pkeys, psigs):
        """Each probed word's queries compared with its postings at once by
        OpenCV's Hamming ``batchDistance``, which keeps each query's k
        nearest and, among equal distances, the earlier posting (postings are
        sorted by key within a word): the union of those per-word lists holds
        every query's k nearest overall."""
        n = len(words)
        keys, dists = self._no_neighbours(n, k)
        words = words.reshape(-1)  # (n * probes)
        rows = np.repeat(np.arange(n), self.probes)
        order = np.argsort(words, kind="stable")
        words, rows = words[order], rows[order]
        # Signatures as bytes, queries in the postings' width (narrowed on load).
        width = psigs.dtype.itemsize * (psigs.shape[1] if psigs.ndim == 2 else 1)
        qsig = np.ascontiguousarray(sigs.astype(psigs.dtype, copy=False)).view(np.uint8)
        qsig = qsig.reshape(n, width)
        pbytes = np.ascontiguousarray(psigs).view(np.uint8).reshape(-1, width)
        cuts = np.flatnonzero(np.diff(words)) + 1
        found_rows, found_d, found_keys = [], [], []
        for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(words)]])):
            w = int(words[lo])
            start, end = int(offsets[w]), int(offsets[w + 1])
            if start == end:
                continue
            r = rows[lo:hi]
            d, j = cv2.batchDistance(qsig[r], pbytes[start:end], cv2.CV_32S,
                                     normType=cv2.NORM_HAMMING, K=min(k, end - start))
            found_rows.append(np.repeat(r, d.shape[1]))
            found_d.append(d.reshape(-1))
            found_keys.append(pkeys[start + j.reshape(-1)])
        if not found_rows:
            return keys, dists
        row = np.concatenate(found_rows)
        d = np.concatenate(found_d).astype(np.int64)
        key = np.concatenate(found_keys).astype(np.int64)
        o = np.lexsort((key, d, row))
        row, d, key = row[o], d[o], key[o]
        rank = np.arange(len(row)) - np.searchsorted(row, row)
        keep = rank < k
        keys[row[keep], rank[keep]] = key[keep]
        dists[row[keep], rank[keep]] = d[keep] * self._scale
        return keys, dists

    def _gathered(self, qsig, words, k, offsets, pkeys, psigs):
        """Every candidate posting of up to ``_GATHER_CHUNK`` queries
        compared and sorted at once in numpy."""
        n = len(words)
        keys, dists = self._no_neighbours(n, k)
        rows = np.repeat(np.arange(n), self.probes)
        w = words.reshape(-1)
        start, length = offsets[w], offsets[w + 1] - offsets[w]
        total = int(length.sum())
        if total == 0:
            return keys, dists
        row = np.repeat(rows, length)
        # Position of every candidate posting: its list's start + its rank in the list.
        first = np.cumsum(length) - length
        post = np.arange(total) - np.repeat(first - start, length)
        x = qsig[row] ^ psigs[post]
        d = bit_sums(x) if x.ndim == 2 else np.bitwise_count(x).astype(np.int64)
        # One int64 per candidate orders by (row, distance, key): bits 55-62
        # the row (< _GATHER_CHUNK = 256), 46-54 the distance (<= 256), 0-45 the key.
        packed = (row << 55) | (d << 46) | pkeys[post].astype(np.int64)
        packed.sort()
        row = packed >> 55
        head = np.searchsorted(row, np.arange(n))
        rank = np.arange(total) - head[row]
        keep = rank < k
        r, c, sc = row[keep], rank[keep], packed[keep]
        keys[r, c] = sc & (MAX_KEY - 1)
        dists[r, c] = ((sc >> 46) & 511) * self._scale
        return keys, dists

    # -- files --------------------------------------------------------------
    def _arrays(self) -> tuple[dict, list[np.ndarray]]:
        self._merge()
        kdt = "<u4" if len(self._keys) == 0 or int(self._keys.max()) < 2**32 else "<i8"
        sdt = "<u4" if self.vocab.nbits <= 32 else "<u8"
        arrays = [self._offsets.astype("<i8"), self._keys.astype(kdt),
                  self._sigs.astype(sdt).reshape(-1)]
        header = {"vocab": self.vocab.digest, "words": self.vocab.words, "filing": FILING,
                  "count": int(len(self._keys)),
                  "arrays": [[a.dtype.str, len(a)] for a in arrays]}
        return header, arrays

    def to_bytes(self) -> bytes:
        with self._lock:
            header, arrays = self._arrays()
        return _pack(header, arrays)

    def save(self, path: str | os.PathLike) -> dict:
        """Write the index atomically; returns the stamp (size, SHA-256) of the
        bytes written."""
        data = self.to_bytes()
        stamp: dict = {}

        def write(tmp: Path) -> None:
            Path(tmp).write_bytes(data)
            stamp.update(file_stamp(tmp))

        atomic_write(path, write)
        return stamp

    @classmethod
    def load(cls, source: str | os.PathLike | bytes | memoryview, *,
             vocabulary: Vocabulary | None = None, probes: int = 1, nodes: int = 2,
             mmap: bool = False) -> "IVFIndex":
        """Open a saved index from a file (``mmap``: its postings stay on disk,
        mapped read-only, until the index changes) or from its bytes (copied).
        Raises ValueError for anything but an index over the same vocabulary."""
        idx = cls(vocabulary, probes=probes, nodes=nodes)
        if isinstance(source, (bytes, bytearray, memoryview)):
            buf = memoryview(source)
            header, arrays = _unpack(buf)
            arrays = [a.copy() for a in arrays]
        elif mmap:
            buf = np.memmap(Path(source), dtype=np.uint8, mode="r")
            header, arrays = _unpack(memoryview(buf))
        else:
            header, arrays = _unpack(memoryview(Path(source).read_bytes()))
        if header.get("vocab") != idx.vocab.digest or header.get("words") != idx.vocab.words:
            raise ValueError("index was built over another vocabulary")
        if header.get("filing", 1) != FILING:
            raise ValueError("index was filed by another build (word ties broken otherwise)")
        offsets, keys, sigs = arrays
        w = idx.vocab.sig_words
        if (len(offsets) != idx.vocab.words + 1 or offsets[0] != 0 or offsets[-1] != len(keys)
                or len(sigs) != len(keys) * w or np.any(np.diff(offsets) < 0)):
            raise ValueError("inconsistent index file")
        # Kept as stored (narrow, and mapped with ``mmap``); a change widens them.
        idx._offsets, idx._keys = offsets, keys
        idx._sigs = sigs if w == 1 else sigs.reshape(-1, w)
        return idx


def _index_arguments(settings) -> dict:
    """The ``IVFIndex`` arguments ``settings`` (a ``config.Settings``) name:
    ``ivf_vocabulary``, ``ivf_probes`` and ``ivf_nodes``."""
    return {"vocabulary": named_vocabulary(settings.ivf_vocabulary),
            "probes": settings.ivf_probes, "nodes": settings.ivf_nodes}


def ivf_index(settings, warm: bool = True) -> IVFIndex:
    """An empty IVF index as ``settings`` ask for (compiled code loaded: ``warm``)."""
    if warm:
        compiled.warm()
    return IVFIndex(**_index_arguments(settings))


def load_ivf_index(data, settings) -> IVFIndex:
    """A saved IVF index (``IVFIndex.load``) searched as ``settings`` ask for;
    ValueError if it was built over another vocabulary."""
    compiled.warm()
    return IVFIndex.load(data, **_index_arguments(settings))
