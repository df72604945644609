"""How a :class:`~matchkit.index.vectors.VectorIndex` searches: its
``search`` method and the strategies behind it (:class:`_SearchMixin`, part
of ``VectorIndex``), with the constants that choose between them. Separate
from ``index/vectors.py``, which holds the vectors, their updates and their file.

Filtered search ("only images tagged X") has to stay exact when the filter
is selective. HNSW graphs cannot be told to skip nodes from Python, and
asking for k results then dropping the disallowed ones returns too few (or
none) when the filter keeps 0.1% of the index. So a small allowed set is
searched exhaustively (its vectors are fetched and compared directly, which
is cheaper than walking the graph at that size), and a large one through the
graph with an oversampled k that grows until every query has k allowed
neighbours, falling back to the exhaustive scan when it would not.

USearch hands stored vectors back one key at a time (microseconds each), so
scanning tens of thousands of allowed ids through it would cost more than the
scan itself. The first scan of a large allowed set therefore builds a row
copy of the vectors (``n x dim`` half floats, e.g. 1 GB for 1M 512-d), kept
up to date by ``add``/``remove`` and rebuilt lazily after ``load``.
"""

from __future__ import annotations

import math

import numpy as np

from matchkit.util.arrays import unique

#: Below this many vectors the whole index is scanned (exact and as fast as HNSW).
EXACT_SEARCH_BELOW = 20_000
#: A filter keeping at most this many vectors is searched exhaustively ...
EXACT_ALLOWED_MAX = 20_000
#: ... and so is one keeping at most this fraction of the index.
EXACT_ALLOWED_FRACTION = 0.02
#: Allowed sets up to this size are fetched from USearch key by key (no row copy needed).
DIRECT_GET_MAX = 2_000
#: Distances computed per candidate a graph walk gathers (about 2 x connectivity).
GRAPH_COST_PER_CANDIDATE = 16


class _Rows:
    """Row copy of the stored vectors for exhaustive scans of allowed subsets.

    Rows are appended; removed keys become tombstones (key -1) until more
    than half the rows are dead, then the copy is compacted. A sorted view of
    the keys (rebuilt lazily after changes) maps ids to rows.
    """

    def __init__(self, dim: int, dtype):
        self.dim, self.dtype = dim, dtype
        self.keys = np.empty(0, np.int64)
        self.mat = np.empty((0, dim), dtype)
        self.n = 0
        self.dead = 0
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None

    def put(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        """Append rows for keys that have no live row."""
        need = self.n + len(keys)
        if need > len(self.keys):
            cap = max(need, 2 * len(self.keys), 1024)
            grown_k = np.full(cap, -1, np.int64)
            grown_k[: self.n] = self.keys[: self.n]
            grown_m = np.empty((cap, self.dim), self.dtype)
            grown_m[: self.n] = self.mat[: self.n]
            self.keys, self.mat = grown_k, grown_m
        self.keys[self.n:need] = keys
        self.mat[self.n:need] = vecs
        self.n = need
        self._lookup = None

    def drop(self, keys: np.ndarray) -> None:
        rows = self.rows(keys)
        if len(rows):
            self.keys[rows] = -1
            self.dead += len(rows)
            self._lookup = None
        if self.dead > max(1024, self.n // 2):
            live = np.flatnonzero(self.keys[: self.n] >= 0)
            self.keys, self.mat = self.keys[live].copy(), self.mat[live].copy()
            self.n, self.dead = len(live), 0

    def has(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which ``keys`` have a live row."""
        return self._find(keys)[1]

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """Rows holding ``keys`` (keys without a live row are skipped)."""
        rows, hit = self._find(keys)
        return rows[hit]

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._lookup is None:
            live = np.flatnonzero(self.keys[: self.n] >= 0)
            order = np.argsort(self.keys[live], kind="stable")
            self._lookup = (self.keys[live][order], live[order])
        sorted_keys, sorted_rows = self._lookup
        keys = np.asarray(keys, np.int64)
        pos = np.searchsorted(sorted_keys, keys)
        pos_c = np.minimum(pos, max(len(sorted_keys) - 1, 0))
        if not len(sorted_keys):
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        hit = (pos < len(sorted_keys)) & (sorted_keys[pos_c] == keys)
        return sorted_rows[pos_c], hit


class _SearchMixin:
    """``VectorIndex.search`` and the strategies behind it (see module docstring).

    Uses the index's ``_index`` (the USearch graph), ``_rows`` (the row copy,
    or None), ``dim``, ``dtype``, ``threads``, ``_ids`` and ``_vectors``."""

    # -- search -------------------------------------------------------------------------------
    def search(self, vectors, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar stored vectors for each query.

        Returns ``(ids, scores)``, each (n_queries, k): ids as int64 and
        cosine similarities as float32, best first. Missing neighbours (fewer
        than k candidates) have id -1 and score -inf. ``allowed`` restricts
        results to those ids (an array of ids; ids not in the index are
        ignored); the result is then the best k among them, exactly when the
        filter is selective.
        """
        q = self._vectors(vectors)
        n, k = len(q), int(k)
        if k <= 0:
            raise ValueError("k must be positive")
        out_ids = np.full((n, k), -1, dtype=np.int64)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        if n == 0 or len(self) == 0:
            return out_ids, out_scores
        if allowed is None:
            self._graph_search(q, k, out_ids, out_scores, exact=len(self) < EXACT_SEARCH_BELOW)
            return out_ids, out_scores
        allowed = self._present(allowed)
        m = len(allowed)
        if m == 0:
            return out_ids, out_scores
        if m == len(self):
            self._graph_search(q, k, out_ids, out_scores, exact=len(self) < EXACT_SEARCH_BELOW)
            return out_ids, out_scores
        if m <= max(EXACT_ALLOWED_MAX, EXACT_ALLOWED_FRACTION * len(self)) or \
                len(self) < EXACT_SEARCH_BELOW:
            self._subset_search(q, k, allowed, out_ids, out_scores)
        else:
            self._filtered_graph_search(q, k, allowed, out_ids, out_scores)
        return out_ids, out_scores

    def _present(self, allowed) -> np.ndarray:
        """Sorted unique ids of ``allowed`` that are in the index (uint64)."""
        allowed = self._ids(allowed)
        if len(allowed) > 1 and not (allowed[1:] > allowed[:-1]).all():
            allowed = unique(allowed)
        if len(allowed) == 0:
            return allowed
        if self._rows is not None:
            # The row copy answers membership with one vectorised binary search.
            return allowed[self._rows.has(allowed.astype(np.int64))]
        return allowed[np.asarray(self._index.contains(allowed), dtype=bool).reshape(-1)]

    def _raw_search(self, q: np.ndarray, count: int, exact: bool):
        res = self._index.search(q, count, exact=exact, threads=self.threads)
        keys = np.asarray(res.keys).reshape(len(q), -1).astype(np.int64)
        dist = np.asarray(res.distances, dtype=np.float32).reshape(len(q), -1)
        counts = np.asarray(getattr(res, "counts", [keys.shape[1]] * len(q))).reshape(len(q))
        valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
        # (Past a row's count USearch leaves its distances unset, NaN or inf
        # at times: they are not subtracted, which warned "invalid value".)
        return keys, 1.0 - np.where(valid, dist, np.float32(1.0)), valid

    def _graph_search(self, q, k, out_ids, out_scores, *, exact: bool) -> None:
        keys, scores, valid = self._raw_search(q, k, exact)
        w = keys.shape[1]
        out_ids[:, :w] = np.where(valid, keys, -1)
        out_scores[:, :w] = np.where(valid, scores, -np.inf)

    def _subset_search(self, q, k, allowed, out_ids, out_scores, rows=None) -> None:
        """Exhaustive search over the allowed ids only (their stored vectors)."""
        rows = np.arange(len(q)) if rows is None else rows
        vecs = self._fetch(allowed)
        norms = np.linalg.norm(vecs, axis=1)
        vecs /= np.where(norms > 0, norms, 1.0)[:, None]
        qn = q[rows] / np.maximum(np.linalg.norm(q[rows], axis=1, keepdims=True), 1e-30)
        kk = min(k, len(allowed))
        for start in range(0, len(rows), 256):
            sims = qn[start:start + 256] @ vecs.T
            top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < len(allowed) \
                else np.broadcast_to(np.arange(len(allowed)), (len(sims), len(allowed)))
            top_s = np.take_along_axis(sims, top, axis=1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            top, top_s = np.take_along_axis(top, order, 1), np.take_along_axis(top_s, order, 1)
            r = rows[start:start + 256]
            out_ids[r, :kk] = allowed[top].astype(np.int64)
            out_scores[r, :kk] = top_s

    def _fetch(self, allowed: np.ndarray) -> np.ndarray:
        """float32 vectors of ``allowed`` (all present), in that order."""
        if self._rows is None and len(allowed) <= DIRECT_GET_MAX:
            got = self._index.get(allowed, dtype=np.float32)
            return np.asarray(got, dtype=np.float32).reshape(len(allowed), self.dim)
        if self._rows is None:
            self._rows = self._copy_rows()
        rows = self._rows.rows(allowed.astype(np.int64))
        if len(rows) != len(allowed):  # cannot happen unless the copy fell out of step
            self._rows = self._copy_rows()
            rows = self._rows.rows(allowed.astype(np.int64))
        return self._rows.mat[rows].astype(np.float32)

    def _copy_rows(self) -> _Rows:
        store = np.float32 if self.dtype in ("f32", "f64") else np.float16
        copy = _Rows(self.dim, store)
        keys = np.asarray(self._index.keys, dtype=np.uint64)
        for start in range(0, len(keys), 20_000):
            part = keys[start:start + 20_000]
            vecs = np.asarray(self._index.get(part, dtype=np.float32), dtype=np.float32)
            copy.put(part.astype(np.int64), vecs.reshape(len(part), self.dim))
        return copy

    def _filtered_graph_search(self, q, k, allowed, out_ids, out_scores) -> None:
        """HNSW search for k / selectivity * margin candidates, keep the allowed ones,
        and widen the search for queries that still have fewer than k."""
        n_total = len(self)
        selectivity = len(allowed) / n_total
        want = min(len(allowed), k)
        count = int(min(n_total, max(2 * k, math.ceil(k / selectivity * 2))))
        pending = np.arange(len(q))
        allowed_i = allowed.astype(np.int64)  # sorted, unique
        # A graph walk gathering c candidates computes about GRAPH_COST_PER_CANDIDATE * c
        # distances; past len(allowed) / that, scanning the allowed vectors is cheaper.
        ceiling = max(count, len(allowed) // GRAPH_COST_PER_CANDIDATE)
        while len(pending):
            keys, scores, valid = self._raw_search(q[pending], count, exact=False)
            pos = np.minimum(np.searchsorted(allowed_i, keys), len(allowed_i) - 1)
            ok = valid & (allowed_i[pos] == keys)
            done = ok.sum(axis=1) >= want
            for j in np.flatnonzero(done):
                sel = np.flatnonzero(ok[j])[:k]
                r = pending[j]
                out_ids[r, :len(sel)] = keys[j, sel]
                out_scores[r, :len(sel)] = scores[j, sel]
            pending = pending[~done]
            if not len(pending):
                return
            if count >= n_total or count * 4 > ceiling:
                self._subset_search(q, k, allowed, out_ids, out_scores, rows=pending)
                return
            count = min(n_total, count * 4)
