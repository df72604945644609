"""Indexes over several shards searched as one: each shard's nearest
neighbours, merged per query (:class:`MergedIndex` for pHash and ORB codes,
:class:`MergedVectorIndex` for embeddings).

Separate from the sharded gallery (``store/shards.py``), which builds them: they
know nothing of galleries or manifests, only of parts that answer
``search``, so a part may also be an index in another process
(``distributed/ray_jobs.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


# -- reading: indexes merged per query --------------------------------------

class MergedIndex:
    """The k nearest codes over several shards' indexes: each shard's k
    nearest, merged by (distance, key). A part is a ``HammingIndex`` or
    anything with ``nbits``, ``ranks_ties_by_key``, ``__len__`` and
    ``search_async(codes, k, max_distance)`` returning a function that gives
    the result (an index in another process).

    ``search(..., max_distance=d)`` asks each part for its neighbours within
    ``d`` alone (``hamming.within``: exact after the merge), so a part in
    another process sends back only those."""

    def __init__(self, parts: Sequence):
        self.parts = list(parts)
        self.nbits = self.parts[0].nbits

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def ranks_ties_by_key(self) -> bool:
        """Whether equal distances come back in key order: always when parts
        are merged (by distance, then key), else as the one part does. Not
        from the total size: three shards of 10,000 codes each are searched
        exactly, though together they pass ``hamming.EXACT_SEARCH_BELOW``."""
        return len(self.parts) > 1 or self.parts[0].ranks_ties_by_key

    def search(self, codes: np.ndarray, k: int, max_distance: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        if len(self.parts) == 1:
            return _result(self.parts[0], codes, k, max_distance)()
        codes = _encoded_once(self.parts, codes)
        waiting = [_result(p, codes, k, max_distance) for p in self.parts]  # all started first
        found = [get() for get in waiting]
        keys = np.concatenate([f[0] for f in found], axis=1)
        dists = np.concatenate([f[1] for f in found], axis=1)
        order = np.lexsort((keys, dists), axis=1)[:, :k]
        return (np.take_along_axis(keys, order, axis=1),
                np.take_along_axis(dists, order, axis=1))


def _encoded_once(parts: Sequence, codes):
    """``codes`` as the IVF indexes among ``parts`` take them encoded
    (``IVFIndex.encode``) when every part is one of this process with the same
    encoding; else ``codes`` unchanged.

    Why: each part would otherwise choose the same words for every query
    again, and with 65,536 words that choice is a large part of a search
    (about 10 us a descriptor compiled, 50 in NumPy): a gallery of 3 shards
    chose every query's words 3 times."""
    from matchkit.index.ivf import EncodedQueries, IVFIndex

    if isinstance(codes, EncodedQueries) or not all(isinstance(p, IVFIndex) for p in parts):
        return codes
    if len({p.encoding for p in parts}) != 1:
        return codes
    return parts[0].encode(codes)


def _result(part, codes: np.ndarray, k: int, max_distance: int | None = None):
    cut = () if max_distance is None else (max_distance,)  # (unlimited: asked as ever)
    if hasattr(part, "search_async"):
        return part.search_async(codes, k, *cut)
    found = part.search(codes, k, *cut)
    return lambda: found


class MergedVectorIndex:
    """The k most similar vectors over several shards' vector indexes: each
    shard's best k (``allowed`` ids of other shards are ignored there), merged
    by score, then id."""

    def __init__(self, parts: Sequence):
        self.parts = list(parts)
        self.model, self.dim = self.parts[0].model, self.parts[0].dim

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def search(self, vectors, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        found = [p.search(vectors, k, allowed=allowed) for p in self.parts]
        ids = np.concatenate([np.asarray(f[0]).reshape(len(f[0]), -1) for f in found], axis=1)
        scores = np.concatenate([np.asarray(f[1]).reshape(len(f[1]), -1) for f in found], axis=1)
        order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores),
                           axis=1)[:, :int(k)]
        return (np.take_along_axis(ids, order, axis=1),
                np.take_along_axis(scores, order, axis=1).astype(np.float32))
