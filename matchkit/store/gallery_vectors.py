"""Embeddings in a gallery (``Gallery.embed``), one model at a time.

The vectors live in SQLite's ``embeddings`` table (source of truth, about
4 x dim bytes per image and model); a model's name, dimension and generation
are recorded in the ``meta`` table, and each model has its own vector index
file, stamped with that model's generation and loaded or rebuilt like the
other index files (:mod:`.gallery_indexes`, under the name
``_MODEL_KEY + model``). An image whose file changed, or that is removed,
loses its vectors in the same transaction (the gallery's writes call
``_vector_ids_by_model``, ``_drop_vectors`` and ``_forget_vectors``), so
``embed`` is incremental and never serves a stale vector.

:class:`_VectorsMixin` is part of :class:`~matchkit.store.gallery.Gallery`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from matchkit.features.embedding import (  # noqa: F401  (EMBED_DECODE_SIDE re-exported)
    EMBED_DECODE_SIDE, VectorShapeError, embed_images)
from matchkit.store.adding import Skipped
from matchkit.store.gallery_indexes import _MODEL_KEY, _StaleIndexFile
from matchkit.store.records import _chunks
from matchkit.store.schema import GalleryError
from matchkit.util.fspath import from_db, to_db

if TYPE_CHECKING:  # pragma: no cover
    from matchkit.embed import Embedder
    from matchkit.index.vectors import VectorIndex


@dataclass
class EmbedReport:
    """What ``Gallery.embed`` did for one model."""

    model: str
    dim: int
    embedded: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"model": self.model, "dim": self.dim, "embedded": self.embedded,
                "unchanged": self.unchanged, "skipped": [vars(s) for s in self.skipped]}


def vector_file_name(model_name: str) -> str:
    """A safe, stable file name for a model's vector index.

    Readable part from the name (``clip-vit-b32``, or a checkpoint folder's
    last parts), plus a digest of the exact name so two names that clean up
    alike (``a/b`` and ``a-b``) never share a file.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")[-48:].strip("-") or "model"
    digest = hashlib.sha1(model_name.encode("utf-8")).hexdigest()[:10]
    return f"vectors-{slug}-{digest}.usearch"


class _VectorsMixin:
    """The embeddings of a :class:`~matchkit.store.gallery.Gallery`: models,
    stored vectors, each model's vector index, and ``embed``."""

    def models(self) -> dict[str, int]:
        """Models this gallery holds embeddings for: name -> vector dimension."""
        rows = self._db.execute("SELECT value FROM meta WHERE substr(key, 1, ?) = ?",
                                (len(_MODEL_KEY), _MODEL_KEY))
        infos = [json.loads(v) for (v,) in rows]
        return {i["name"]: int(i["dim"]) for i in sorted(infos, key=lambda i: i["name"])}

    def _model_info(self, name: str) -> dict | None:
        value = self._meta(_MODEL_KEY + name)
        return json.loads(value) if value else None

    def _set_model_info(self, info: dict) -> None:
        self._set_meta(_MODEL_KEY + info["name"], json.dumps(info, sort_keys=True))

    def _require_model(self, name: str) -> dict:
        info = self._model_info(name)
        if info is not None:
            return info
        known = list(self.models())
        if known:
            raise GalleryError(
                f"gallery {self.path} has no embeddings for model {name!r}; it was indexed "
                f"with {', '.join(repr(k) for k in known)} and queries must use the same model")
        raise GalleryError(f"gallery {self.path} has no embeddings yet; run `matchkit index "
                           f"DIR --gallery {self.path} --model NAME` first")

    def embedded_ids(self, model_name: str) -> np.ndarray:
        """Sorted ids of the images that have a vector for ``model_name``."""
        rows = self._db.execute("SELECT image_id FROM embeddings WHERE model=? ORDER BY image_id",
                                (model_name,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def vectors(self, model_name: str, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of ``ids`` (float32, one row each; KeyError if one is missing)."""
        info = self._require_model(model_name)
        found: dict[int, bytes] = {}
        for chunk in _chunks([int(i) for i in ids], 900):
            q = (f"SELECT image_id, vector FROM embeddings WHERE model=? AND image_id IN "
                 f"({','.join('?' * len(chunk))})")
            found.update(self._db.execute(q, [model_name, *chunk]).fetchall())
        out = np.zeros((len(ids), info["dim"]), np.float32)
        for row, image_id in enumerate(ids):
            out[row] = np.frombuffer(found[int(image_id)], "<f4")
        return out

    def vector_index(self, model_name: str) -> "VectorIndex":
        """The vector index of one model: loaded from its file, or rebuilt from
        SQLite when the file is missing, unreadable or stale.

        Raises :class:`GalleryError` if the gallery has no embeddings for
        ``model_name`` (a query must use the model the gallery was indexed with).
        """
        info = self._require_model(model_name)
        if model_name not in self._vectors:
            self._vectors[model_name] = self._load_or_rebuild_vectors(info)
        return self._vectors[model_name]

    def _load_or_rebuild_vectors(self, info: dict) -> "VectorIndex":
        from matchkit.index.vectors import VectorIndex

        name, dim = info["name"], int(info["dim"])
        key = _MODEL_KEY + name
        with self._snapshot():
            info = self._model_info(name) or info
            generation = info["generation"]
        idx, _ = self._load_file(key, self.path / info["file"], generation,
                                 lambda data: self._vectors_from_bytes(data, key, name, dim))
        if idx is not None:  # (_load_file noted the generation it reflects)
            return idx
        if self._load_only:
            raise _StaleIndexFile(name)
        # Single-threaded adds: the same vectors give the same graph (neighbours).
        idx = VectorIndex(name, dim, add_threads=1)
        with self._snapshot():  # the vectors and the generation they make, together
            generation = (self._model_info(name) or info)["generation"]
            cur = self._db.execute(
                "SELECT e.image_id, e.vector FROM embeddings e JOIN images i ON i.id = e.image_id "
                "WHERE e.model=? ORDER BY e.image_id", (name,))
            while rows := cur.fetchmany(4096):
                vecs = np.frombuffer(b"".join(v for _, v in rows), "<f4").reshape(len(rows), dim)
                idx.add(np.array([i for i, _ in rows], dtype=np.int64), vecs)
        self._have[key] = generation
        self._dirty.add(key)
        return idx

    def _vectors_from_bytes(self, data, key: str, name: str, dim: int) -> "VectorIndex":
        from matchkit.index.vectors import VectorIndex, VectorIndexError

        record = (self._file_record(key) or {}).get("record") or {}
        if record.get("model") != name or int(record.get("dim", -1)) != dim:
            raise VectorIndexError(f"record names {record.get('model')!r}, not {name!r}")
        return VectorIndex.from_bytes(data, record, add_threads=1)  # deterministic graph

    def _save_vectors(self, name: str) -> None:
        key = _MODEL_KEY + name
        info = self._model_info(name)
        if info is None or name not in self._vectors or key not in self._have:
            return
        idx = self._vectors[name]
        stamp = idx.save(self.path / info["file"])
        with self._transaction():  # the stamp and the checksum change together
            info = self._model_info(name)
            info["index_generation"] = self._have[key]
            info["index_file"] = {**stamp, "keys": len(idx)}
            self._set_model_info(info)

    def _ids_and_digests(self, paths: Sequence[str]) -> dict[str, tuple[int, str]]:
        """path -> (id, sha256) for the paths already in the gallery."""
        out: dict[str, tuple[int, str]] = {}
        for chunk in _chunks(list(paths), 900):
            q = f"SELECT path, id, sha256 FROM images WHERE path IN ({','.join('?' * len(chunk))})"
            out.update((from_db(p), (i, d))
                       for p, i, d in self._db.execute(q, [to_db(p) for p in chunk]))
        return out

    def _vector_ids_by_model(self, ids: Sequence[int]) -> dict[str, list[int]]:
        """Which of ``ids`` have vectors, per model. Loads those models'
        indexes now, while their files still match their stamps."""
        out: dict[str, list[int]] = {}
        for chunk in _chunks(list(ids), 900):
            q = (f"SELECT model, image_id FROM embeddings WHERE image_id IN "
                 f"({','.join('?' * len(chunk))})")
            for model, image_id in self._db.execute(q, chunk):
                out.setdefault(model, []).append(image_id)
        for model in out:
            self.vector_index(model)
        return out

    def _drop_vectors(self, stale: dict[str, list[int]]) -> None:
        """Inside a transaction: delete the vectors, move the models' stamps on."""
        for model, ids in stale.items():
            for chunk in _chunks(ids, 900):
                self._db.execute(f"DELETE FROM embeddings WHERE model=? AND image_id IN "
                                 f"({','.join('?' * len(chunk))})", [model, *chunk])
            info = self._model_info(model)
            info["generation"] += 1
            self._set_model_info(info)
            self._model_bumps[model] = (info["generation"] - 1, info["generation"])

    def _forget_vectors(self, stale: dict[str, list[int]]) -> None:
        """After the commit: the same vectors leave the in-memory indexes."""
        for model, ids in stale.items():
            if model in self._vectors:
                self._vectors[model].remove(np.array(ids, dtype=np.int64))
            self._changed(_MODEL_KEY + model, self._model_bumps.pop(model, None) or (-1, -1))

    def embed(self, embedder: "Embedder", ids: Iterable[int] | None = None, *,
              progress: bool = False, workers: int | None = None,
              save: bool = True) -> EmbedReport:
        """Compute ``embedder``'s vectors for images that lack them, then save
        (``save=False``: leave saving the index files to the caller, e.g. a
        server that saves once for many small writes).

        Only images without a vector for this model are decoded (``ids``
        limits the run to some images), so running it again after adding a
        folder embeds just the new and changed files. Files that cannot be
        read now, or changed on disk since they were added, are reported in
        ``skipped`` and the rest completes. Each batch is committed on its
        own; the model's index file is written atomically at the end.
        Decoding runs on ``workers`` threads (default: one per core) while the
        model embeds the previous batch.

        Raises :class:`GalleryError` if the gallery already holds vectors of
        another dimension under this model name.
        """
        self._lock_for_writing()
        name, dim = str(embedder.name), int(embedder.dim)
        info = self._model_info(name)
        if info is None:
            info = {"name": name, "dim": dim, "file": vector_file_name(name),
                    "generation": 0, "index_generation": None}
            self._set_model_info(info)
        elif int(info["dim"]) != dim:
            raise GalleryError(
                f"model {name!r} gives {dim}-d vectors but gallery {self.path} holds "
                f"{info['dim']}-d vectors from a model of that name; use a new gallery")
        index = self.vector_index(name)
        report = EmbedReport(name, dim)
        have = set(self.embedded_ids(name).tolist())
        if ids is None:
            wanted = self.ids()
        else:
            wanted = list(dict.fromkeys(int(i) for i in ids))
            present = set(self._blobs("id", wanted))
            missing = [i for i in wanted if i not in present]
            if missing:
                raise KeyError(f"not in the gallery: {missing[:5]}")
        todo = [i for i in wanted if i not in have]
        report.unchanged = len(wanted) - len(todo)
        rows = self.images(todo)
        todo_rows = [rows[i] for i in todo]
        batch_size = max(1, int(getattr(embedder, "batch_size", 32) or 32))
        bar = _progress_bar(len(todo_rows), progress)
        batches = embed_images(embedder, todo_rows, batch_size=batch_size,
                               workers=workers or self.settings.n_workers(),
                               max_pixels=self.settings.max_pixels)
        try:
            for batch in batches:
                report.skipped += [Skipped(path, why) for path, why in batch.skipped]
                self._store_vectors(index, info["name"], batch.ids, batch.vectors)
                report.embedded += len(batch.ids)
                if bar:
                    bar.update(batch.done)
        except VectorShapeError as e:
            raise GalleryError(str(e)) from None
        if bar:
            bar.close()
        if save:
            self.save()
        return report

    def _store_vectors(self, index: "VectorIndex", name: str, ids: list[int],
                       vecs: np.ndarray) -> None:
        if not ids:
            return
        vecs = np.ascontiguousarray(vecs, dtype="<f4")
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings(model, image_id, vector) VALUES (?,?,?)",
                [(name, image_id, vecs[row].tobytes()) for row, image_id in enumerate(ids)])
            info = self._model_info(name)
            info["generation"] += 1
            self._set_model_info(info)
        if self._vectors.get(name) is index:  # (else dropped: rebuilt from SQLite on use)
            index.add(np.array(ids, dtype=np.int64), vecs)
            self._changed(_MODEL_KEY + name, (info["generation"] - 1, info["generation"]))


def _progress_bar(total: int, enabled: bool):
    from matchkit.util.progress import progress_bar

    return progress_bar(total, enabled)
