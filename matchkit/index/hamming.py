"""Nearest-neighbour indexes over USearch.

Hashes are stored as packed bits under the Hamming metric, so looking up an
image's near duplicates is a k-nearest-neighbour query, never a scan of all
pairs. Small indexes are searched exactly (brute force, by OpenCV's Hamming
distances, is both faster and exact there); large ones use USearch's HNSW graph.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from usearch.index import Index

from matchkit.util.fs import atomic_write, file_stamp

#: Below this many entries, searches are exhaustive.
EXACT_SEARCH_BELOW = 20_000
#: Rows of an exhaustive search asked of OpenCV at once (two parts at a time).
EXHAUSTIVE_PART_ROWS = 4096
#: Ties an exact search was once sure to rank by key (it asked USearch for
#: this many more neighbours than wanted and sorted them by (distance, key)).
#: Exhaustive searches now rank every tie by key (``_search_exhaustive``);
#: kept for callers and tests that still name it.
TIE_MARGIN = 16


class HammingIndex:
    """Packed binary codes keyed by integer ids (image ids)."""

    def __init__(self, nbits: int, *, threads: int = 0, connectivity: int = 16,
                 expansion_add: int = 128, expansion_search: int = 64):
        if nbits % 8:
            raise ValueError("nbits must be a multiple of 8")
        self.nbits = nbits
        #: Threads for searches (0 = all cores); adds always use one (see ``add``).
        self.threads = threads
        self._index = Index(ndim=nbits, metric="hamming", dtype="b1",
                            connectivity=connectivity, expansion_add=expansion_add,
                            expansion_search=expansion_search)
        #: (keys ascending, their codes) for exhaustive searches; None: not
        #: read yet, or the index changed since (``_search_exhaustive``).
        self._exact_rows: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: int) -> bool:
        return bool(self._index.contains(int(key)))

    @property
    def ranks_ties_by_key(self) -> bool:
        """Whether ``search`` orders equal distances by key (exact searches,
        below ``EXACT_SEARCH_BELOW`` codes; a graph search's order among them
        is its own). Incremental matching merges new neighbours into stored
        lists by the same rule, so that they equal a search from scratch."""
        return len(self._index) < EXACT_SEARCH_BELOW

    def keys(self) -> np.ndarray:
        """Every key in the index (int64, unordered)."""
        return np.asarray(self._index.keys, dtype=np.int64)

    def add(self, keys: np.ndarray, codes: np.ndarray, *, replace: bool = True) -> None:
        """Add codes, shape (n, nbits/8) uint8, under ``keys``; existing keys are
        replaced unless the caller promises they are new (``replace=False``)."""
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys) == 0:
            return
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(len(keys), -1)
        if replace:
            present = [k for k in keys.tolist() if self._index.contains(k)]
            if present:
                self._index.remove(present)
        # One thread: HNSW insertion is sequential by nature; concurrent inserts
        # link each node to whatever other threads have inserted so far, so the
        # graph (hence the neighbours found, the candidates, the clusters) would
        # depend on thread scheduling. Measured on 264,600 ORB-sized codes: the
        # same graph every time, and no slower on this 2-core machine.
        self._index.add(keys, codes, threads=1)
        self._exact_rows = None

    def remove(self, keys) -> None:
        keys = [int(k) for k in keys if self._index.contains(int(k))]
        if keys:
            self._index.remove(keys)
            self._exact_rows = None

    def search(self, codes: np.ndarray, k: int, max_distance: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest codes for each query: (keys, distances), each (n, k).

        Missing neighbours (index smaller than k) have key -1 and distance
        ``nbits + 1``; with ``max_distance``, so are those farther than it
        (:func:`within`).
        """
        keys, dists = self._search(codes, k)
        return (keys, dists) if max_distance is None else within(keys, dists, max_distance,
                                                                 self.nbits)

    def _search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, self.nbits // 8)
        n = len(codes)
        keys = np.full((n, k), -1, dtype=np.int64)
        dists = np.full((n, k), self.nbits + 1, dtype=np.int64)
        if n == 0 or len(self._index) == 0:
            return keys, dists
        if len(self._index) < EXACT_SEARCH_BELOW:
            self._search_exhaustive(codes, keys, dists)
            return keys, dists
        res = self._index.search(codes, k, threads=self.threads)
        rk = np.asarray(res.keys).reshape(n, -1)
        rd = np.asarray(res.distances).reshape(n, -1)
        # A single query comes back as Matches (no .counts): all rows valid.
        counts = np.asarray(getattr(res, "counts", [rk.shape[1]])).reshape(n)
        valid = np.arange(rk.shape[1])[None, :] < counts[:, None]
        rk = np.where(valid, rk.astype(np.int64), -1)
        # (Slots past a row's count hold no distance, NaN with a large k: not cast.)
        rd = np.where(valid, np.rint(np.where(valid, rd, 0.0)).astype(np.int64), self.nbits + 1)
        keys[:, : rk.shape[1]] = rk
        dists[:, : rd.shape[1]] = rd
        return keys, dists

    def _search_exhaustive(self, codes: np.ndarray, keys: np.ndarray, dists: np.ndarray) -> None:
        """Fill ``keys``/``dists`` (n x k, missing neighbours already set)
        with each code's nearest by (distance, key): OpenCV's Hamming
        distances over every entry, whose nearest keep the lower row at equal
        distance (rows in key order).
        Why not USearch's exhaustive search: it broke ties its own way (the
        k + ``TIE_MARGIN`` it gave were sorted again) and cost 1.4x the CPU
        (13,000 codes: 8.1 against 5.8 ns per distance); below
        ``EXACT_SEARCH_BELOW`` codes every pHash and frame-picture search of
        a 10,000-image run is exhaustive (a quarter of its matching thread).
        Rows go in parts of ``EXHAUSTIVE_PART_ROWS`` (bounded transient
        memory), split over two threads (OpenCV lets go of the GIL; matchkit
        keeps OpenCV's own pool at one thread while it runs, ``util.cvthreads``)."""
        import cv2

        if self._exact_rows is None:
            stored = np.sort(self.keys())
            got = np.asarray(self._index.get(stored.astype(np.uint64)), np.uint8)
            self._exact_rows = stored, np.ascontiguousarray(got.reshape(len(stored), -1))
        stored, rows = self._exact_rows
        k = min(keys.shape[1], len(stored))
        if k == 0:  # (K = 0 would ask OpenCV for every distance)
            return

        def part(start: int) -> None:
            q = codes[start:start + EXHAUSTIVE_PART_ROWS]
            d, at = cv2.batchDistance(q, rows, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=k,
                                      update=0, crosscheck=False)
            keys[start:start + len(q), :k] = stored[at.reshape(len(q), k)]
            dists[start:start + len(q), :k] = d.reshape(len(q), k)

        starts = range(0, len(codes), EXHAUSTIVE_PART_ROWS)
        threads = min(2, self.threads or os.cpu_count() or 1, len(starts))
        if threads < 2:
            for start in starts:
                part(start)
            return
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(part, starts))

    def save(self, path: str | os.PathLike) -> dict:
        """Write the index atomically (a killed process leaves the old file).

        Returns the stamp (size, SHA-256) of the bytes written, for the
        caller to record so the file can be verified before it is loaded.
        """
        stamp: dict = {}

        def write(tmp: Path) -> None:
            self._index.save(str(tmp))
            stamp.update(file_stamp(tmp))

        atomic_write(path, write)
        return stamp

    def to_bytes(self) -> bytes:
        """The index as ``save`` would write it (``load`` reads it back)."""
        return bytes(self._index.save())

    @classmethod
    def load(cls, source: str | os.PathLike | bytes | memoryview, nbits: int,
             **kw) -> "HammingIndex":
        """Open a saved index from a file, or from its bytes (already verified)."""
        idx = cls(nbits, **kw)
        idx._index.load(source if isinstance(source, (bytes, bytearray, memoryview))
                        else str(Path(source)))
        if "expansion_search" in kw:  # a search setting, not part of the stored graph
            idx._index.expansion_search = kw["expansion_search"]
        return idx


def within(keys: np.ndarray, dists: np.ndarray, max_distance: int,
           nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """A search's (keys, distances) with only the neighbours within
    ``max_distance``: each row's in their order, first, then key -1 and
    distance ``nbits + 1`` (as for missing neighbours).

    Why: the callers that count only near neighbours (descriptor votes, the
    burstiness check's holders) can ask a shard for these alone, so the far
    ones never cross the network (``actors.ShardServer.search``). It
    is exact for a merged index too: a neighbour within the limit among the
    k nearest of all shards is among the k nearest of its own shard, so the
    shards' near ones merged and cut to k are the near ones of the merged
    top k (``merged.MergedIndex``). A search's rows are nearest first, so
    the near ones already come first; they are moved to the front anyway,
    so that any order gives the same rows whether cut here or on a shard."""
    keys, dists = np.asarray(keys, np.int64), np.asarray(dists, np.int64)
    near = (keys >= 0) & (dists <= max_distance)
    if near.all():
        return keys, dists
    if (near[:, 1:] & ~near[:, :-1]).any():  # (not nearest first: reordered)
        order = np.argsort(~near, axis=1, kind="stable")
        near = np.take_along_axis(near, order, 1)
        keys, dists = np.take_along_axis(keys, order, 1), np.take_along_axis(dists, order, 1)
    return np.where(near, keys, -1), np.where(near, dists, nbits + 1)


def transient_index(keys: np.ndarray, codes: np.ndarray, nbits: int) -> HammingIndex:
    """An index of distinct ``keys`` built to be searched now and dropped.

    Below ``EXACT_SEARCH_BELOW`` codes its searches are exhaustive, so the
    HNSW graph USearch builds on every add is never walked: a sparse one is
    built instead (connectivity 2), with the same answers. Measured on 6,500
    picture hashes: 0.67 s to build with the default graph, 0.011 s sparse;
    incremental runs build such indexes on every add (``framed_pairs``).
    """
    sparse = dict(connectivity=2, expansion_add=2) if len(keys) < EXACT_SEARCH_BELOW else {}
    index = HammingIndex(nbits, **sparse)
    index.add(keys, codes, replace=False)
    return index
