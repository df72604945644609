"""Writing a gallery's image rows: the store side of adding files
(``plan_add`` says what the gallery holds of each file, ``write_records``
stores extracted records in one transaction), removing images, and user
metadata and labels.

The add pipeline that calls ``plan_add`` and ``write_records`` is
:mod:`.adding` (``Gallery.add``). Each commit that adds, changes or removes
images bumps the gallery's generation (``_bump``) and, in the same
transaction, drops what depended on those images: their signal payloads,
vectors and matching state; after the commit, the in-memory indexes get the
same changes (``_changed`` in :mod:`.gallery_indexes`).

:class:`_WritingMixin` is part of :class:`~matchkit.store.gallery.Gallery`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence

import numpy as np

from matchkit.features import ImageRecord
from matchkit.io.load import ImageLoadError
from matchkit.store.adding import AddReport, Skipped
from matchkit.store.records import StoredImage, _chunks
from matchkit import signals as _signals
from matchkit.util.fspath import to_db


def _own_tables() -> list[str]:
    """The built-in signals' own tables (one row per image, keyed by ``image_id``)."""
    return [t for sig in _signals.builtin() for t in sig.tables]


class _WritingMixin:
    """The writes of a :class:`~matchkit.store.gallery.Gallery`'s image rows."""

    def _bump(self) -> None:
        old = self.generation
        self._set_meta("generation", old + 1)
        self._last_bump = (old, old + 1)

    def plan_add(self, files: Sequence[tuple[str, int, int]]) -> list[tuple[str, object]]:
        """What this gallery holds of each file ``(key, size, mtime_ns)`` about to
        be added: ``("unchanged", id)``, ``("failed", reason)`` (failed before with
        the same size and time), ``("changed", id)`` or ``("new", None)``.
        Takes the writer lock first: adding follows."""
        self._lock_for_writing()
        out: list[tuple[str, object]] = []
        for key, size, mtime in files:
            row = self._db.execute(
                "SELECT id, size, mtime_ns FROM images WHERE path=?", (to_db(key),)).fetchone()
            if row and row[1] == size and row[2] == mtime and (
                    not self.settings.local_features or self._db.execute(
                        "SELECT 1 FROM local_features WHERE image_id=?", (row[0],)).fetchone()
            ) and self._has_signals(row[0]):
                out.append(("unchanged", row[0]))
                continue
            fail = self._db.execute(
                "SELECT size, mtime_ns, reason FROM failures WHERE path=?", (to_db(key),)).fetchone()
            if fail and fail[0] == size and fail[1] == mtime:
                out.append(("failed", fail[2]))
            else:
                out.append(("changed", row[0]) if row else ("new", None))
        return out

    def write_records(self, batch: list[tuple[str, "ImageRecord | ImageLoadError"]],
                      ids: dict[str, int]) -> AddReport:
        """Store extracted records (and failures) in one transaction; a new
        image gets the id ``ids`` names for its path (ids are chosen by the
        caller so that they stay unique and in path order across shards)."""
        self._lock_for_writing()
        report = AddReport()
        self._write_batch(batch, report, ids)
        return report

    def _write_batch(self, batch, report: AddReport, ids: dict[str, int]) -> None:
        index = self.phash_index
        orb = self.orb_index if self.settings.local_features else None
        now = time.time()
        new_keys, new_codes, gone, new_local, replaced = [], [], [], [], []
        # Vectors of images whose bytes changed (or that became unreadable) are
        # stale and go in the same transaction. A file decoded again only for
        # features it lacked (same bytes) keeps its vectors.
        known = self._ids_and_digests([p for p, _ in batch])
        stale = self._vector_ids_by_model([
            known[p][0] for p, rec in batch if p in known and (
                isinstance(rec, ImageLoadError) or rec.sha256 != known[p][1])])
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for path, rec in batch:
                stored = to_db(path)
                old = self._db.execute("SELECT id FROM images WHERE path=?", (stored,)).fetchone()
                if isinstance(rec, ImageLoadError):
                    # Stamped with the file's state when it was read (not now):
                    # a file caught mid-copy has grown since, so it is read again.
                    size = -1 if rec.size is None else rec.size
                    mtime = -1 if rec.mtime_ns is None else rec.mtime_ns
                    self._db.execute(
                        "INSERT OR REPLACE INTO failures(path, size, mtime_ns, reason) VALUES (?,?,?,?)",
                        (stored, size, mtime, rec.reason))
                    if old:  # a file that changed into something unreadable
                        self._db.execute("DELETE FROM images WHERE id=?", (old[0],))
                        for table in _own_tables():
                            self._db.execute(f"DELETE FROM {table} WHERE image_id=?", (old[0],))
                        self._drop_signals([old[0]])
                        gone.append(old[0])
                    report.skipped.append(Skipped(path, rec.reason))
                    continue
                self._db.execute("DELETE FROM failures WHERE path=?", (stored,))
                columns = {"size": rec.size, "mtime_ns": rec.mtime_ns}
                for sig in _signals.builtin():  # each signal encodes its own columns
                    columns.update(sig.to_columns(rec))
                names, values = ", ".join(columns), tuple(columns.values())
                if old:
                    self._db.execute(
                        f"UPDATE images SET ({names}) = ({', '.join('?' * len(columns))}) "
                        "WHERE id=?", (*values, old[0]))
                    image_id = old[0]
                    replaced.append(image_id)
                    report.updated += 1
                else:
                    image_id = ids[path]
                    self._db.execute(
                        f"INSERT INTO images(id, path, {names}, added_at) "
                        f"VALUES ({', '.join('?' * (len(columns) + 3))})",
                        (image_id, stored, *values, now))
                    report.added += 1
                report.ids.append(image_id)
                report.changed.append(image_id)
                new_keys.append(image_id)
                new_codes.append(rec.phashes[0])
                for sig in _signals.builtin():  # each signal's own tables: its row, or none
                    rows = sig.to_rows(rec)
                    for table in sig.tables:
                        self._db.execute(f"DELETE FROM {table} WHERE image_id=?", (image_id,))
                        if table in rows:
                            row = rows[table]
                            self._db.execute(
                                f"INSERT INTO {table}(image_id, {', '.join(row)}) "
                                f"VALUES ({', '.join('?' * (len(row) + 1))})",
                                (image_id, *row.values()))
                if rec.local is not None:
                    new_local.append((image_id, rec.local.desc))
                self._drop_signals([image_id])
                self._store_signals(image_id, rec.signals)
            self._drop_vectors(stale)
            self._drop_matches(gone + replaced)
            self._bump()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._forget_vectors(stale)
        index.remove(gone)
        if new_keys:
            index.add(np.array(new_keys), np.stack(new_codes))  # replaces updated images
        self._changed("phash")
        if orb is not None:
            self._remove_orb(orb, gone + replaced)  # new ids have nothing to remove
            self._add_orb(orb, new_local)
            self._changed("orb")

    def remove(self, paths_or_ids: Iterable[str | int | os.PathLike]) -> int:
        """Forget images (by id or path); the files themselves are not touched."""
        ids = []
        for item in paths_or_ids:
            if isinstance(item, (int, np.integer)):
                ids.append(int(item))
            else:
                rec = self.find(item)
                if rec:
                    ids.append(rec.id)
        if not ids:
            return 0
        self._lock_for_writing()
        stale = self._vector_ids_by_model(ids)
        # The indexes are loaded before the commit moves the generation on:
        # loaded after it, their files would be stale and each index rebuilt
        # from every row (90 s of removing 1,000 images from 101,000).
        phash, orb = self.phash_index, self.orb_index
        self._db.execute("BEGIN IMMEDIATE")
        try:
            removed = 0
            for chunk in _chunks(ids, 900):
                marks = ','.join('?' * len(chunk))
                removed += self._db.execute(f"DELETE FROM images WHERE id IN ({marks})",
                                            chunk).rowcount
                for table in _own_tables():
                    self._db.execute(f"DELETE FROM {table} WHERE image_id IN ({marks})", chunk)
                self._drop_signals(chunk)
            self._drop_vectors(stale)
            self._drop_matches(ids)
            self._bump()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        bump = self._last_bump
        self._forget_vectors(stale)
        phash.remove(ids)
        self._remove_orb(orb, ids)
        self._changed("phash", bump)
        self._changed("orb", bump)
        return removed

    # -- user metadata and labels ------------------------------------------
    def update(self, path_or_id: str | int | os.PathLike, *, meta: dict | None = None,
               labels: list | None = None, replace: bool = False) -> StoredImage:
        """Set user metadata (merged unless ``replace``) and/or labels of one image."""
        rec = self.get(int(path_or_id)) if isinstance(path_or_id, (int, np.integer)) \
            else self.find(path_or_id)
        if rec is None:
            raise KeyError(f"not in the gallery: {path_or_id}")
        new_meta = dict(meta or {}) if replace else {**rec.meta, **(meta or {})}
        new_labels = rec.labels if labels is None else list(labels)
        self._db.execute("UPDATE images SET meta=?, labels=? WHERE id=?",
                         (json.dumps(new_meta), json.dumps(new_labels), rec.id))
        return self.get(rec.id)

    def update_meta(self, updates: dict[int, dict], *, replace: bool = False) -> int:
        """Merge (or with ``replace``, set) the ``meta`` of many images in one
        transaction; returns how many images changed. Unknown ids are ignored."""
        changed = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for image_id, meta in updates.items():
                row = self._db.execute("SELECT meta FROM images WHERE id=?",
                                       (int(image_id),)).fetchone()
                if row is None:
                    continue
                new_meta = dict(meta) if replace else {**json.loads(row[0]), **meta}
                self._db.execute("UPDATE images SET meta=? WHERE id=?",
                                 (json.dumps(new_meta), int(image_id)))
                changed += 1
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return changed

    def set_labels(self, labels: dict[int, list]) -> int:
        """Replace the labels of many images in one transaction; returns how
        many rows changed (one commit, not one fsync per image)."""
        changed = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for image_id, values in labels.items():
                text = json.dumps(list(values))
                changed += self._db.execute(
                    "UPDATE images SET labels=? WHERE id=? AND labels != ?",
                    (text, int(image_id), text)).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return changed
