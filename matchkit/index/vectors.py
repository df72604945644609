"""Cosine nearest-neighbour search over learned embeddings (one model per index).

A :class:`VectorIndex` holds the vectors of one embedding model in a USearch
HNSW graph (cosine metric, half-precision storage) and remembers which model
made them, so a gallery indexed with one model is never searched with
another's vectors: their spaces are unrelated even when the sizes agree.

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

import json
import math
import os
from pathlib import Path

import numpy as np
from usearch.index import Index

from matchkit.util.arrays import unique
from matchkit.util.fs import atomic_write, atomic_write_bytes, file_stamp

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
#: HNSW parameters, chosen by benchmarks/bench_vectors.py (see RESULTS.md).
CONNECTIVITY = 32
EXPANSION_ADD = 128
EXPANSION_SEARCH = 256

_FORMAT = "matchkit-vectors/1"


class VectorIndexError(Exception):
    """The index file is missing, unreadable or inconsistent."""


class ModelMismatch(VectorIndexError):
    """The index was built from a different embedding model than the one asked for."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the model record of the index at ``path`` lives (``PATH.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


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


class VectorIndex:
    """Unit vectors of one embedding model, keyed by integer ids (image ids).

    Parameters
    ----------
    model, dim:
        The embedding model's name (as the embedder reports it) and vector size.
    dtype:
        Storage precision: "f16" (default; half the memory of f32 and no
        measurable recall loss on cosine search), "f32", or "i8".
    connectivity, expansion_add, expansion_search:
        HNSW graph degree and beam widths while building and searching.
    threads:
        Threads for batch add/search (0 = all cores).
    add_threads:
        Threads for batch add if not ``threads``. 1 makes the HNSW graph (so
        the neighbours a large index finds) depend only on the vectors and
        their order: concurrent inserts link nodes in scheduling order.
    """

    def __init__(self, model: str, dim: int, *, dtype: str = "f16",
                 connectivity: int = CONNECTIVITY, expansion_add: int = EXPANSION_ADD,
                 expansion_search: int = EXPANSION_SEARCH, threads: int = 0,
                 add_threads: int | None = None):
        if not model:
            raise ValueError("a VectorIndex needs the model name")
        if int(dim) <= 0:
            raise ValueError("dim must be positive")
        self.model = str(model)
        self.dim = int(dim)
        self.dtype = dtype
        self.threads = int(threads)
        self.add_threads = self.threads if add_threads is None else int(add_threads)
        self._index = Index(ndim=self.dim, metric="cos", dtype=dtype,
                            connectivity=connectivity, expansion_add=expansion_add,
                            expansion_search=expansion_search)
        self._rows: _Rows | None = None

    # -- bookkeeping -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key) -> bool:
        return bool(self._index.contains(int(key)))

    def __repr__(self) -> str:
        return f"VectorIndex(model={self.model!r}, dim={self.dim}, size={len(self)})"

    @property
    def expansion_search(self) -> int:
        return int(self._index.expansion_search)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        self._index.expansion_search = int(value)

    @property
    def memory_usage(self) -> int:
        """Bytes used by vectors and graph."""
        return int(self._index.memory_usage)

    def keys(self) -> np.ndarray:
        return np.asarray(self._index.keys, dtype=np.int64)

    def _vectors(self, vectors, n: int | None = None) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v[None, :]
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"expected vectors of {self.dim} dimensions ({self.model}), "
                             f"got shape {np.shape(vectors)}")
        if n is not None and len(v) != n:
            raise ValueError(f"{n} ids but {len(v)} vectors")
        if not np.isfinite(v).all():
            raise ValueError("vectors contain NaN or infinity")
        return np.ascontiguousarray(v)

    @staticmethod
    def _ids(ids) -> np.ndarray:
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0):
            raise ValueError("ids must be non-negative integers")
        return ids.astype(np.uint64)

    # -- updates ------------------------------------------------------------------------------
    def add(self, ids, vectors) -> None:
        """Store ``vectors`` (n, dim) under ``ids``; an id already present is replaced."""
        ids = self._ids(ids)
        vectors = self._vectors(vectors, len(ids))
        if len(ids) == 0:
            return
        if len(unique(ids)) != len(ids):
            # Keep the last vector given for a repeated id, as repeated dict updates would.
            _, last = np.unique(ids[::-1], return_index=True)
            keep = np.sort(len(ids) - 1 - last)
            ids, vectors = ids[keep], vectors[keep]
        present = np.asarray(self._index.contains(ids), dtype=bool).reshape(-1)
        if present.any():
            self._index.remove(ids[present])
            if self._rows is not None:
                self._rows.drop(ids[present].astype(np.int64))
        self._index.add(ids, vectors, threads=self.add_threads)
        if self._rows is not None:
            self._rows.put(ids.astype(np.int64), vectors)

    def remove(self, ids) -> int:
        """Drop ``ids`` (absent ones are ignored); returns how many were removed."""
        ids = self._ids(ids)
        if len(ids) == 0 or len(self) == 0:
            return 0
        ids = unique(ids)
        present = ids[np.asarray(self._index.contains(ids), dtype=bool).reshape(-1)]
        if len(present):
            self._index.remove(present)
            if self._rows is not None:
                self._rows.drop(present.astype(np.int64))
        return int(len(present))

    def get(self, ids) -> np.ndarray:
        """Stored vectors (float32, (n, dim)) for ``ids``; KeyError if one is absent."""
        ids = self._ids(ids)
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        present = np.asarray(self._index.contains(ids), dtype=bool).reshape(-1)
        if not present.all():
            raise KeyError(f"id {int(ids[~present][0])} is not in the index")
        out = np.asarray(self._index.get(ids, dtype=np.float32), dtype=np.float32)
        return out.reshape(len(ids), self.dim)

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
        return keys, (1.0 - dist), valid

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

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> dict:
        """Write the index and its model record atomically.

        The graph goes to ``path`` and the record (model, dim, storage) to
        ``path.json``, each replaced in one rename: a killed process leaves
        the old files. The record is written second and is cross-checked
        against the index file's own header on load. Returns the stamp (size,
        SHA-256) of the index bytes written, and the record, for a caller
        that verifies the file before loading it (:meth:`from_bytes`).
        """
        path = Path(path)
        stamp: dict = {}

        def write(tmp: Path) -> None:
            self._index.save(str(tmp))
            stamp.update(file_stamp(tmp))

        atomic_write(path, write)
        record = {"format": _FORMAT, "model": self.model, "dim": self.dim, "dtype": self.dtype,
                  "metric": "cos", "count": len(self),
                  "connectivity": int(self._index.connectivity),
                  "expansion_add": int(self._index.expansion_add),
                  "expansion_search": int(self._index.expansion_search)}
        text = (json.dumps(record, indent=1) + "\n").encode()
        atomic_write_bytes(sidecar_path(path), text)
        return {**stamp, "record": record}

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, record: dict, *,
                   threads: int = 0, add_threads: int | None = None) -> "VectorIndex":
        """An index from the bytes of a saved file and the record :meth:`save`
        returned (both already verified by the caller, e.g. a gallery that
        recorded the file's checksum)."""
        idx = cls(str(record["model"]), int(record["dim"]), dtype=str(record.get("dtype", "f16")),
                  connectivity=int(record.get("connectivity", CONNECTIVITY)),
                  expansion_add=int(record.get("expansion_add", EXPANSION_ADD)),
                  expansion_search=int(record.get("expansion_search", EXPANSION_SEARCH)),
                  threads=threads, add_threads=add_threads)
        idx._index.load(data)
        if int(idx._index.ndim) != idx.dim:
            raise VectorIndexError(f"index bytes hold {idx._index.ndim}-d vectors, "
                                   f"record says {idx.dim}-d")
        idx._index.expansion_search = int(record.get("expansion_search", EXPANSION_SEARCH))
        return idx

    @staticmethod
    def read_record(path: str | os.PathLike) -> dict:
        """The model record of a saved index (model, dim, dtype, count)."""
        side = sidecar_path(path)
        try:
            record = json.loads(side.read_text())
        except FileNotFoundError as exc:
            raise VectorIndexError(f"{side} is missing: cannot tell which model built "
                                   f"{Path(path).name}; rebuild the vector index") from exc
        except (OSError, ValueError) as exc:
            raise VectorIndexError(f"{side} is unreadable ({exc}); rebuild the vector index") from exc
        if record.get("format") != _FORMAT or not record.get("model") or not record.get("dim"):
            raise VectorIndexError(f"{side} is not a matchkit vector index record")
        return record

    @classmethod
    def load(cls, path: str | os.PathLike, expect_model: str | None = None, *,
             expect_dim: int | None = None, view: bool = False,
             threads: int = 0, add_threads: int | None = None) -> "VectorIndex":
        """Open a saved index, refusing one built by another model.

        ``view=True`` memory-maps the file instead of reading it (fast to
        open, read-only).
        """
        path = Path(path)
        if not path.is_file():
            raise VectorIndexError(f"vector index {path} does not exist")
        record = cls.read_record(path)
        model, dim = str(record["model"]), int(record["dim"])
        if (expect_model is not None and expect_model != model) or \
                (expect_dim is not None and int(expect_dim) != dim):
            asked = expect_model if expect_model is not None else model
            asked_dim = f" (dim {expect_dim})" if expect_dim is not None else ""
            raise ModelMismatch(f"gallery was indexed with {model} (dim {dim}); you asked for "
                                f"{asked}{asked_dim}. Search with {model}, or re-embed the "
                                f"gallery with {asked}")
        try:
            header = Index.metadata(str(path))
        except Exception as exc:
            raise VectorIndexError(f"{path} is not a USearch index: {exc}") from exc
        if not header or int(header.get("dimensions", -1)) != dim:
            raise VectorIndexError(f"{path} holds {header.get('dimensions') if header else '?'}-d "
                                   f"vectors but its record says {dim}-d ({model}); the two files "
                                   "are out of step (interrupted save?): rebuild the vector index")
        idx = cls(model, dim, dtype=str(record.get("dtype", "f16")),
                  connectivity=int(record.get("connectivity", CONNECTIVITY)),
                  expansion_add=int(record.get("expansion_add", EXPANSION_ADD)),
                  expansion_search=int(record.get("expansion_search", EXPANSION_SEARCH)),
                  threads=threads, add_threads=add_threads)
        try:
            if view:
                idx._index.view(str(path))
            else:
                idx._index.load(str(path))
        except Exception as exc:
            raise VectorIndexError(f"cannot read vector index {path}: {exc}") from exc
        return idx
