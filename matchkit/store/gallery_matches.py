"""Incremental matching state in a gallery (see :mod:`matchkit.match.incremental`).

Per image, what its candidate search found (``match_records``); per pair,
its evidence before and after local verification (``match_pairs``); both
under the key of the settings they were made with, deflated by
:mod:`matchkit.store.stored_text`. The tables (``_MATCH_SCHEMA`` in
:mod:`.schema`) are made by the first ``save_match_state``, so read-only
galleries open as before. An image that changes or leaves loses its rows in
the same transaction (``_drop_matches``, called by the gallery's writes).

:class:`_MatchStateMixin` is part of :class:`~matchkit.store.gallery.Gallery`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np

from matchkit.store.records import _chunks
from matchkit.store.schema import _MATCH_SCHEMA
from matchkit.store.stored_text import pack_beside, pack_many, unpack, unpack_beside

#: Settings keys whose matching state is kept (most recently used first).
_MATCH_KEYS = "match_keys"
#: How many settings keys keep their matching state: switching ``--level``
#: back and forth reuses both, and an old key's rows do not pile up.
MAX_MATCH_KEYS = 4
#: Records ``save_match_state`` deflates and writes at once.
SAVE_PART = 2048
#: Meta entry (the settings key appended): a digest of the image ids whose
#: records were stored under the key, written with them; a reader that finds
#: the same ids knows no record was dropped since (``record_ids_digest``).
_MATCH_IDS = "match_ids:"


def record_ids_digest(ids: Iterable[int]) -> str:
    """A digest of a set of image ids (``_MATCH_IDS``)."""
    ids = np.asarray(sorted(ids), "<i8")
    return hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest()


class _MatchStateMixin:
    """The incremental matching state of a :class:`~matchkit.store.gallery.Gallery`."""

    def _has_match_tables(self, table: str = "match_pairs") -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                "name=?", (table,)).fetchone() is not None

    def _drop_matches(self, ids: Sequence[int]) -> None:
        """Inside a transaction: images that changed or left lose their stored
        candidate searches and pair decisions, under every key."""
        if not ids or not self._has_match_tables():
            return
        records = self._has_match_tables("match_records")
        for chunk in _chunks(list(ids), 900):
            marks = ','.join('?' * len(chunk))
            if records:
                self._db.execute(f"DELETE FROM match_records WHERE image_id IN ({marks})", chunk)
            self._db.execute(f"DELETE FROM match_pairs WHERE a IN ({marks})", chunk)
            self._db.execute(f"DELETE FROM match_pairs WHERE b IN ({marks})", chunk)

    def match_records(self, key: str) -> dict[int, tuple[str, str, bytes | None]]:
        """Stored candidate-search records under ``key``: id -> (sha256, JSON,
        the bytes stored beside it or None; ``stored_text.pack_beside``)."""
        return {i: (d, text, beside) for i, d, text, beside in self.iter_match_records(key)}

    def iter_match_records(self, key: str) -> Iterator[tuple[int, str, str, bytes | None]]:
        """``match_records`` one (id, sha256, JSON, bytes beside) at a time,
        each inflated as it is read. Why: a caller that parses each record
        as it comes never holds all the texts at once (at 100,000 images
        they were 606 MB, most of it the lists' bytes)."""
        if not self._has_match_tables("match_records"):
            return
        rows = self._db.execute(
            "SELECT image_id, sha256, record FROM match_records WHERE key=?", (key,))
        for i, d, r in rows:
            yield (i, d, *unpack_beside(r))

    def match_record_digests(self, key: str) -> dict[int, str]:
        """id -> sha256 of the image as its record under ``key`` was made
        (without reading the records themselves)."""
        if not self._has_match_tables("match_records"):
            return {}
        return dict(self._db.execute(
            "SELECT image_id, sha256 FROM match_records WHERE key=?", (key,)))

    def match_pairs(self, key: str) -> dict[tuple[int, int, int], tuple]:
        """Stored pair evidence under ``key``: (a, b, kind) -> (before, after,
        same_pixels, live, relation); see ``incremental_state.PairRow``."""
        return dict(self.iter_match_pairs(key))

    def iter_match_pairs(self, key: str) -> Iterator[tuple[tuple[int, int, int], tuple]]:
        """``match_pairs`` one ((a, b, kind), row) at a time (a caller that
        makes its own object of each row holds no dict of tuples beside it)."""
        if not self._has_match_tables():
            return
        rows = self._db.execute("SELECT a, b, kind, before, after, same_pixels, live, relation "
                                "FROM match_pairs WHERE key=?", (key,))
        # Verifications repeat ("no match, 4 ORB matches": 1,650 distinct among
        # 52,769 on 5,000 images): each distinct one is inflated once and its
        # text shared.
        seen: dict = {}

        def after_text(blob):
            text = seen.get(blob)
            if text is None and blob is not None:
                text = seen[blob] = unpack(blob)
            return text

        for a, b, k, before, after, *rest in rows:
            yield (a, b, k), (unpack(before), after_text(after), *rest)

    def forget_matches(self, ids: Sequence[int]) -> None:
        """Drop the stored candidate searches and pair decisions naming any of
        ``ids``, under every key (what a change of those images does here; a
        sharded gallery asks every shard, as a pair may name an image of
        another shard)."""
        ids = [int(i) for i in ids]
        if not ids or not self._has_match_tables():
            return
        self._lock_for_writing()
        with self._transaction():
            self._drop_matches(ids)

    def match_keys(self) -> list[str]:
        """The settings keys whose matching state is kept, last used first."""
        return list(json.loads(self._meta(_MATCH_KEYS) or "[]"))

    def save_match_state(self, key: str, records: Mapping[int, tuple[str, str, bytes | None]],
                         pairs: dict[tuple[int, int, int], tuple],
                         *, replace: bool = False, elsewhere: Collection[int] = ()) -> None:
        """Write records and pair rows under ``key`` in one transaction (the
        writer lock held): a killed run leaves the state of the run before.
        ``records``: id -> (sha256, JSON, bytes to store beside it or None),
        read a part at a time (``SAVE_PART``; a mapping that makes each value
        when asked never holds them all). ``replace`` first drops everything
        stored under ``key``. Only the ``MAX_MATCH_KEYS`` keys used last keep
        their rows. Rows of images no longer in the gallery (removed
        meanwhile) are not written; a pair's second image may also be one of
        ``elsewhere`` (the ids of the other shards of a sharded gallery)."""
        threads = min(2, self.settings.n_workers())
        self._lock_for_writing()
        with self._transaction():
            for statement in _MATCH_SCHEMA.split(";"):  # (executescript would commit)
                if statement.strip():
                    self._db.execute(statement)
            keys = [k for k in self.match_keys() if k != key]
            keys = [key] + keys
            for old in keys[MAX_MATCH_KEYS:]:
                self._db.execute("DELETE FROM match_records WHERE key=?", (old,))
                self._db.execute("DELETE FROM match_pairs WHERE key=?", (old,))
                self._db.execute("DELETE FROM meta WHERE key=?", (_MATCH_IDS + old,))
            self._set_meta(_MATCH_KEYS, json.dumps(keys[:MAX_MATCH_KEYS]))
            if replace:
                self._db.execute("DELETE FROM match_records WHERE key=?", (key,))
                self._db.execute("DELETE FROM match_pairs WHERE key=?", (key,))
            present = {i: d for i, d in self._db.execute("SELECT id, sha256 FROM images")}
            # Deflated (on both cores: ``stored_text.pack_many``) and written
            # a part at a time: all at once, a first run's save was its peak
            # (three copies of every record's lists: the record's, the split
            # one and the stored one).
            for part in _chunks(list(records), SAVE_PART):
                rows = [(i, *records[i]) for i in part]
                blobs = [pack_beside(p, x) for p, (*_, x) in
                         zip(pack_many([r for _, _, r, _ in rows], threads), rows)]
                self._db.executemany(
                    "INSERT OR REPLACE INTO match_records(key, image_id, sha256, record) "
                    "VALUES (?,?,?,?)",
                    [(key, i, d, blob) for (i, d, *_), blob in zip(rows, blobs)
                     if present.get(i) == d])
                del rows, blobs
            for part in _chunks(list(pairs.items()), 8 * SAVE_PART):
                texts = iter(pack_many([t for _, (before, after, *_) in part
                                        for t in (before, after) if t is not None], threads))
                packed = [((a, b, k), (next(texts), None if after is None else next(texts), *rest))
                          for (a, b, k), (_, after, *rest) in part]
                self._db.executemany(
                    "INSERT OR REPLACE INTO match_pairs(key, a, b, kind, before, after, "
                    "same_pixels, live, relation) VALUES (?,?,?,?,?,?,?,?,?)",
                    [(key, a, b, k, *row) for (a, b, k), row in packed
                     if a in present and (b in present or b in elsewhere)])
            self._set_meta(_MATCH_IDS + key, record_ids_digest(
                i for (i,) in self._db.execute(
                    "SELECT image_id FROM match_records WHERE key=?", (key,))))

    def match_record_ids(self, key: str) -> str | None:
        """The digest of the image ids whose records the last
        ``save_match_state`` left under ``key`` (None: not known). An image
        that changes or leaves loses its record (``_drop_matches``) without
        changing this, so stored records whose ids give the same digest are
        all there are."""
        return self._meta(_MATCH_IDS + key)
