"""Cosine nearest-neighbour search over learned embeddings (one model per index).

A :class:`VectorIndex` holds the vectors of one embedding model in a USearch
HNSW graph (cosine metric, half-precision storage) and remembers which model
made them, so a gallery indexed with one model is never searched with
another's vectors: their spaces are unrelated even when the sizes agree.

Searching, exact when a filter is selective, is :mod:`.vectors_search`
(a mixin of :class:`VectorIndex`); the names it defines are importable from
here too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from usearch.index import Index

from matchkit.util.arrays import unique
from matchkit.util.fs import atomic_write, atomic_write_bytes, file_stamp
from matchkit.index.vectors_search import (  # noqa: F401  (re-exported)
    DIRECT_GET_MAX, EXACT_ALLOWED_FRACTION, EXACT_ALLOWED_MAX, EXACT_SEARCH_BELOW,
    GRAPH_COST_PER_CANDIDATE, _Rows, _SearchMixin)

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


class VectorIndex(_SearchMixin):
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
