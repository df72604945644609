"""A gallery on disk: SQLite metadata plus USearch index files in one folder.

SQLite is the source of truth: every image's facts and hashes live in its
``images`` table and change only inside transactions, so a process killed at
any moment leaves the last committed state. The USearch index files are a
derived cache, written atomically (temp file, fsync, rename) and stamped with
the data generation they were built from; when the stamp does not match the
database (a kill between the two writes), the index is rebuilt from SQLite on
open. So the folder is always consistent, whatever moment a process died.

Adding a folder again only decodes files that are new or whose size or
modification time changed. Files that could not be read are remembered with
their reason, so a later run reports them again without decoding them again.

Embeddings (``Gallery.embed``) follow the same scheme, one model at a time:
the vectors live in SQLite's ``embeddings`` table (source of truth, about
4 x dim bytes per image and model), and each model has its own vector index
file, stamped with that model's generation and rebuilt from SQLite when
stale. A model's name and dimension are recorded in the ``meta`` table; an
image whose file changed, or that is removed, loses its vectors in the same
transaction, so ``embed`` is incremental and never serves a stale vector.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import Settings
from .features import ImageRecord, extract_many, full_pixel_digest
from .hashing import PHASH_BITS
from .index import HammingIndex
from ._fs import remove_stale_temps
from .fspath import from_db, to_db
from .io import ImageLoadError, load_image
from .local import LocalFeatures

if TYPE_CHECKING:  # pragma: no cover
    from .embed import Embedder
    from .vectors import VectorIndex

SCHEMA_VERSION = 1
DB_NAME = "gallery.sqlite"
PHASH_INDEX_NAME = "phash.usearch"
ORB_INDEX_NAME = "orb.usearch"
#: Descriptor keys in the ORB index are image_id * ORB_KEY_STRIDE + rank.
ORB_KEY_STRIDE = 1024
_BATCH = 256
#: Longest side images are decoded at for embedding (JPEGs in draft mode):
#: CLIP-style models look at ~224 pixels of the shorter side, so this keeps
#: even 4:1 panoramas above that while decoding camera photos several times faster.
EMBED_DECODE_SIDE = 1024
#: Prefix of a model's record in the ``meta`` table (value: JSON).
_MODEL_KEY = "model:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    pixel_sha256 TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT,
    phash BLOB NOT NULL,
    colour BLOB NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    labels TEXT NOT NULL DEFAULT '[]',
    added_at REAL NOT NULL,
    jpeg_quality INTEGER,
    blank INTEGER
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256);
CREATE TABLE IF NOT EXISTS local_features (
    image_id INTEGER PRIMARY KEY,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    xy BLOB NOT NULL,
    descriptors BLOB NOT NULL,
    thumb BLOB NOT NULL,
    thumb_width INTEGER NOT NULL,
    thumb_height INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    model TEXT NOT NULL,
    image_id INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model, image_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS embeddings_image ON embeddings(image_id);
"""


class GalleryError(Exception):
    """A gallery folder that cannot be opened or used as asked."""


@dataclass
class Skipped:
    """A file left out of a run, and why."""

    path: str
    reason: str


@dataclass
class StoredImage:
    """One image's row in the gallery."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    pixel_sha256: str | None
    width: int
    height: int
    format: str | None
    meta: dict = field(default_factory=dict)
    labels: list = field(default_factory=list)
    #: Estimated JPEG quality (quantisation tables) at extraction; None otherwise.
    jpeg_quality: int | None = None
    #: One flat colour after compositing transparency: matched only exactly.
    blank: bool = False

    @property
    def pixels(self) -> int:
        return self.width * self.height


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


@dataclass
class AddReport:
    """What ``Gallery.add`` did: ids of every readable file asked for, and the rest.

    ``changed`` lists the ids that were added or updated (decoded this run).
    """

    ids: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)


_COLUMNS = ("id, path, size, mtime_ns, sha256, pixel_sha256, width, height, format, meta, labels, "
            "jpeg_quality, blank")


def _row_to_image(row) -> StoredImage:
    return StoredImage(row[0], from_db(row[1]), *row[2:9], meta=json.loads(row[9]),
                       labels=json.loads(row[10]), jpeg_quality=row[11], blank=bool(row[12]))


#: Columns added after schema 1 was released, with their SQL types. Galleries
#: written before get them on open (``_migrate``).
_ADDED_COLUMNS = {"jpeg_quality": "INTEGER", "blank": "INTEGER"}


def _key(path: str | bytes | os.PathLike) -> str:
    """The absolute path an image is stored under (surrogate-escaped when its
    name is not UTF-8; ``fspath.to_db`` makes the SQLite value)."""
    return str(Path(os.fsdecode(path)).resolve())


def vector_file_name(model_name: str) -> str:
    """A safe, stable file name for a model's vector index.

    Readable part from the name (``clip-vit-b32``, or a checkpoint folder's
    last parts), plus a digest of the exact name so two names that clean up
    alike (``a/b`` and ``a-b``) never share a file.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")[-48:].strip("-") or "model"
    digest = hashlib.sha1(model_name.encode("utf-8")).hexdigest()[:10]
    return f"vectors-{slug}-{digest}.usearch"


class Gallery:
    """A persistent collection of images and their features.

    >>> with Gallery("my-gallery") as g:          # doctest: +SKIP
    ...     report = g.add(["photos/"])
    ...     g.save()
    """

    def __init__(self, path: str | os.PathLike, settings: Settings = Settings(),
                 *, create: bool = True):
        self.path = Path(path)
        self.settings = settings
        db = self.path / DB_NAME
        if not db.exists():
            if not create:
                raise GalleryError(f"no gallery at {self.path} (missing {DB_NAME})")
            if self.path.exists() and not self.path.is_dir():
                raise GalleryError(f"gallery path {self.path} is a file, not a folder")
            self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(db, isolation_level=None)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            version = self._meta("schema_version")
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"{db} is not a usable gallery database: {e}") from None
        if version is None:
            self._set_meta("schema_version", SCHEMA_VERSION)
            self._set_meta("generation", 0)
        elif int(version) > SCHEMA_VERSION:
            raise GalleryError(
                f"gallery {self.path} was written by a newer matchkit (schema {version})")
        try:
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"cannot update gallery {self.path}: {e}") from None
        remove_stale_temps(self.path)
        self._indexes: dict[str, HammingIndex] = {}
        self._vectors: dict[str, VectorIndex] = {}
        #: Index names to save: "phash", "orb", or _MODEL_KEY + model name.
        self._dirty: set[str] = set()

    def _migrate(self) -> None:
        """Add the columns of ``_ADDED_COLUMNS`` to a gallery written before them.

        Their values come from decoding the file (JPEG quantisation tables;
        transparency composited over grey, where older versions flattened it
        onto white), so the rows they are added to are marked for one more
        decode: their stored modification time is cleared, and the next
        ``add`` of those files treats them as changed. Runs in one
        transaction, checked again inside it, so two processes opening an
        old gallery at once migrate it once."""
        def missing() -> list[str]:
            have = {r[1] for r in self._db.execute("PRAGMA table_info(images)")}
            return [c for c in _ADDED_COLUMNS if c not in have]

        if not missing():
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for column in missing():
                self._db.execute(f"ALTER TABLE images ADD COLUMN {column} {_ADDED_COLUMNS[column]}")
            self._db.execute("UPDATE images SET mtime_ns = -1")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # -- lifecycle ---------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- meta table --------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))

    @property
    def generation(self) -> int:
        """Counts committed changes to images; index files are stamped with it."""
        return int(self._meta("generation") or 0)

    # -- reading -----------------------------------------------------------
    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def ids(self) -> list[int]:
        return [r[0] for r in self._db.execute("SELECT id FROM images ORDER BY id")]

    def get(self, image_id: int) -> StoredImage:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE id=?", (image_id,)).fetchone()
        if row is None:
            raise KeyError(image_id)
        return _row_to_image(row)

    def find(self, path: str | os.PathLike) -> StoredImage | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE path=?",
                               (to_db(_key(path)),)).fetchone()
        return _row_to_image(row) if row else None

    def images(self, ids: Iterable[int] | None = None) -> dict[int, StoredImage]:
        """Rows by id (all rows when ``ids`` is None)."""
        if ids is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM images")
            return {r[0]: _row_to_image(r) for r in rows}
        out = {}
        for chunk in _chunks(list(ids), 900):
            q = f"SELECT {_COLUMNS} FROM images WHERE id IN ({','.join('?' * len(chunk))})"
            out.update({r[0]: _row_to_image(r) for r in self._db.execute(q, chunk)})
        return out

    def _blobs(self, column: str, ids: Sequence[int]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for chunk in _chunks(list(ids), 900):
            q = f"SELECT id, {column} FROM images WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(self._db.execute(q, chunk).fetchall())
        return found

    def phash_variants(self, ids: Sequence[int]) -> np.ndarray:
        """The 8 dihedral pHashes of each id, shape (len(ids), 8, PHASH_BYTES) uint8."""
        found = self._blobs("phash", ids)
        out = np.zeros((len(ids), 8, PHASH_BITS // 8), np.uint8)
        for i, k in enumerate(ids):
            out[i] = np.frombuffer(found[k], np.uint8).reshape(8, -1)
        return out

    def colours(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Colour histograms by id."""
        return {k: np.frombuffer(v, "<u4") for k, v in self._blobs("colour", ids).items()}

    def failures(self) -> list[Skipped]:
        return [Skipped(from_db(p), r)
                for p, r in self._db.execute("SELECT path, reason FROM failures")]

    # -- index -------------------------------------------------------------
    @property
    def phash_index(self) -> HammingIndex:
        """pHash index (one code per image, key = image id)."""
        return self._index("phash")

    @property
    def orb_index(self) -> HammingIndex:
        """ORB descriptor index (the strongest ``index_features`` per image)."""
        return self._index("orb")

    def _index(self, name: str) -> HammingIndex:
        """An index loaded from disk, or rebuilt from SQLite if its file is stale."""
        if name not in self._indexes:
            self._indexes[name] = self._load_or_rebuild(name)
        return self._indexes[name]

    def _index_file(self, name: str) -> Path:
        return self.path / {"phash": PHASH_INDEX_NAME, "orb": ORB_INDEX_NAME}[name]

    def _load_or_rebuild(self, name: str) -> HammingIndex:
        file = self._index_file(name)
        stamp = self._meta(f"{name}_index_generation")
        # Local descriptors are many and only vote: a sparser, faster graph is
        # enough, searched shallowly (half the search cost of depth 32, the
        # same recall of copies on the calib halves of the benchmark sets).
        params = {} if name == "phash" else {"connectivity": 8, "expansion_add": 32,
                                             "expansion_search": 16}
        nbits = PHASH_BITS if name == "phash" else 256
        if file.exists() and stamp is not None and int(stamp) == self.generation:
            try:
                return HammingIndex.load(file, nbits, **params)
            except Exception:  # unreadable cache: fall through and rebuild
                pass
        idx = HammingIndex(nbits, **params)
        if name == "phash":
            rows = self._db.execute("SELECT id, phash FROM images")
            pairs = [(i, np.frombuffer(b, np.uint8)[: PHASH_BITS // 8]) for i, b in rows]
            if pairs:
                idx.add(np.array([k for k, _ in pairs]), np.stack([c for _, c in pairs]))
        else:
            rows = self._db.execute("SELECT image_id, descriptors FROM local_features")
            self._add_orb(idx, [(i, np.frombuffer(d, np.uint8).reshape(-1, 32)) for i, d in rows])
        self._dirty.add(name)
        return idx

    def _add_orb(self, idx: HammingIndex, items: list[tuple[int, np.ndarray]]) -> None:
        """Index the strongest descriptors of each (image_id, descriptors); the
        caller has removed any earlier ones for these ids."""
        tops = [(i, d[: self.settings.index_features]) for i, d in items]
        tops = [(i, d) for i, d in tops if len(d)]
        if tops:
            keys = np.concatenate([i * ORB_KEY_STRIDE + np.arange(len(d)) for i, d in tops])
            idx.add(keys, np.concatenate([d for _, d in tops]), replace=False)

    def _remove_orb(self, idx: HammingIndex, ids: Iterable[int]) -> None:
        idx.remove([i * ORB_KEY_STRIDE + j for i in ids for j in range(self.settings.index_features)])

    def save(self) -> None:
        """Persist the index files so the next open need not rebuild them.

        The database itself is always saved (every change is a committed
        transaction); this only writes the derived indexes, atomically, each
        stamped with the generation it reflects.
        """
        generation = self.generation
        for name in sorted(self._dirty):
            if name.startswith(_MODEL_KEY):
                self._save_vectors(name[len(_MODEL_KEY):])
                continue
            self._indexes[name].save(self._index_file(name))
            self._set_meta(f"{name}_index_generation", generation)
        self._dirty.clear()

    def local_features(self, image_id: int) -> tuple[LocalFeatures, np.ndarray] | None:
        """ORB features and grey thumbnail of one image (None if not extracted)."""
        row = self._db.execute(
            "SELECT width, height, xy, descriptors, thumb, thumb_width, thumb_height "
            "FROM local_features WHERE image_id=?", (image_id,)).fetchone()
        if row is None:
            return None
        w, h, xy, desc, thumb, tw, th = row
        return (LocalFeatures.from_bytes(xy, desc, w, h),
                np.frombuffer(thumb, np.uint8).reshape(th, tw))

    # -- writing -----------------------------------------------------------
    def _bump(self) -> None:
        self._set_meta("generation", self.generation + 1)

    def add(self, paths: Iterable[str | os.PathLike],
            progress: Callable[[int], None] | None = None) -> AddReport:
        """Add image files (already expanded from folders), skipping unchanged ones.

        ``progress(n)`` is called as files are processed. Returns the ids of
        all readable files in ``paths`` (new, updated or unchanged) and the
        skipped files with reasons.
        """
        report = AddReport()
        todo: list[str] = []
        seen: set[str] = set()
        for p in paths:
            key = _key(p)
            if key in seen:
                continue
            seen.add(key)
            try:
                st = os.stat(key)
            except OSError as e:
                report.skipped.append(Skipped(key, f"cannot read file: {e.strerror or e}"))
                continue
            row = self._db.execute(
                "SELECT id, size, mtime_ns FROM images WHERE path=?", (to_db(key),)).fetchone()
            if row and row[1] == st.st_size and row[2] == st.st_mtime_ns and (
                    not self.settings.local_features or self._db.execute(
                        "SELECT 1 FROM local_features WHERE image_id=?", (row[0],)).fetchone()):
                report.ids.append(row[0])
                report.unchanged += 1
                continue
            fail = self._db.execute(
                "SELECT size, mtime_ns, reason FROM failures WHERE path=?", (to_db(key),)).fetchone()
            if fail and fail[0] == st.st_size and fail[1] == st.st_mtime_ns:
                report.skipped.append(Skipped(key, fail[2]))
                continue
            todo.append(key)
        if progress and (report.unchanged or report.skipped):
            progress(report.unchanged + len(report.skipped))
        # New images get ids in path order, not in the order the caller listed
        # them: ids break ties and orient pairs (a < b), so the same files must
        # get the same ids however they were given (extract_many keeps order).
        todo.sort()

        batch: list[tuple[str, ImageRecord | ImageLoadError]] = []
        for item in extract_many(todo, self.settings, on_done=(lambda: progress(1)) if progress else None):
            batch.append(item)
            if len(batch) >= _BATCH:
                self._write_batch(batch, report)
                batch = []
        if batch:
            self._write_batch(batch, report)
        return report

    def _write_batch(self, batch, report: AddReport) -> None:
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
                        self._db.execute("DELETE FROM local_features WHERE image_id=?", (old[0],))
                        gone.append(old[0])
                    report.skipped.append(Skipped(path, rec.reason))
                    continue
                self._db.execute("DELETE FROM failures WHERE path=?", (stored,))
                values = (rec.size, rec.mtime_ns, rec.sha256, rec.width, rec.height,
                          rec.format, rec.phashes.tobytes(), rec.colour.astype("<u4").tobytes(),
                          rec.jpeg_quality, int(rec.blank))
                if old:
                    self._db.execute(
                        "UPDATE images SET size=?, mtime_ns=?, sha256=?, pixel_sha256=NULL, "
                        "width=?, height=?, format=?, phash=?, colour=?, jpeg_quality=?, blank=? "
                        "WHERE id=?", (*values, old[0]))
                    image_id = old[0]
                    replaced.append(image_id)
                    report.updated += 1
                else:
                    cur = self._db.execute(
                        "INSERT INTO images(path, size, mtime_ns, sha256, width, height, format, "
                        "phash, colour, jpeg_quality, blank, added_at) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", (stored, *values, now))
                    image_id = cur.lastrowid
                    report.added += 1
                report.ids.append(image_id)
                report.changed.append(image_id)
                new_keys.append(image_id)
                new_codes.append(rec.phashes[0])
                self._db.execute("DELETE FROM local_features WHERE image_id=?", (image_id,))
                if rec.local is not None:
                    xy, desc = rec.local.to_bytes()
                    self._db.execute(
                        "INSERT INTO local_features VALUES (?,?,?,?,?,?,?,?)",
                        (image_id, rec.local.width, rec.local.height, xy, desc,
                         rec.thumb.tobytes(), rec.thumb.shape[1], rec.thumb.shape[0]))
                    new_local.append((image_id, rec.local.desc))
            self._drop_vectors(stale)
            self._bump()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._forget_vectors(stale)
        index.remove(gone)
        if new_keys:
            index.add(np.array(new_keys), np.stack(new_codes))  # replaces updated images
        self._dirty.add("phash")
        if orb is not None:
            self._remove_orb(orb, gone + replaced)  # new ids have nothing to remove
            self._add_orb(orb, new_local)
            self._dirty.add("orb")

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
        stale = self._vector_ids_by_model(ids)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            removed = 0
            for chunk in _chunks(ids, 900):
                marks = ','.join('?' * len(chunk))
                removed += self._db.execute(f"DELETE FROM images WHERE id IN ({marks})",
                                            chunk).rowcount
                self._db.execute(f"DELETE FROM local_features WHERE image_id IN ({marks})", chunk)
            self._drop_vectors(stale)
            self._bump()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._forget_vectors(stale)
        self.phash_index.remove(ids)
        self._remove_orb(self.orb_index, ids)
        self._dirty.update({"phash", "orb"})
        return removed

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

    # -- labels ------------------------------------------------------------
    def labelled(self) -> dict[int, list]:
        """Labels of every image that has any, by id (one query, for labelers)."""
        rows = self._db.execute("SELECT id, labels FROM images WHERE labels != '[]' ORDER BY id")
        return {i: json.loads(v) for i, v in rows}

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

    def paths(self) -> dict[int, str]:
        """Every image's path by id."""
        return {i: from_db(p) for i, p in self._db.execute("SELECT id, path FROM images")}

    def ids_where(self, sql: str, params: Sequence = ()) -> np.ndarray:
        """Sorted ids of images matching a WHERE body over the ``images`` table.

        For :mod:`matchkit.filters`, which builds ``sql`` from constant
        fragments only; every user-supplied value must be in ``params``.
        """
        rows = self._db.execute(f"SELECT id FROM images WHERE {sql} ORDER BY id", list(params))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def last_id(self) -> int:
        """Largest image id in use (0 for an empty gallery); ids above it are
        free, e.g. as temporary keys for query images not in the gallery."""
        row = self._db.execute("SELECT MAX(id) FROM images").fetchone()
        return int(row[0] or 0)

    def pixel_digest(self, image_id: int) -> str | None:
        """Digest of the full-resolution pixels, computed on first use and cached."""
        rec = self.get(image_id)
        if rec.pixel_sha256:
            return rec.pixel_sha256
        try:
            digest = full_pixel_digest(rec.path, self.settings)
        except ImageLoadError:
            return None
        self._db.execute("UPDATE images SET pixel_sha256=? WHERE id=? AND sha256=?",
                         (digest, image_id, rec.sha256))
        return digest


    # -- embeddings --------------------------------------------------------
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
        from .vectors import VectorIndex

        name, dim = info["name"], int(info["dim"])
        file = self.path / info["file"]
        if file.exists() and info.get("index_generation") == info["generation"]:
            try:
                return VectorIndex.load(file, expect_model=name, expect_dim=dim, add_threads=1)
            except Exception:  # unreadable or foreign cache: rebuild from SQLite
                pass
        # Single-threaded adds: the same vectors give the same graph (neighbours).
        idx = VectorIndex(name, dim, add_threads=1)
        cur = self._db.execute(
            "SELECT e.image_id, e.vector FROM embeddings e JOIN images i ON i.id = e.image_id "
            "WHERE e.model=? ORDER BY e.image_id", (name,))
        while rows := cur.fetchmany(4096):
            vecs = np.frombuffer(b"".join(v for _, v in rows), "<f4").reshape(len(rows), dim)
            idx.add(np.array([i for i, _ in rows], dtype=np.int64), vecs)
        self._dirty.add(_MODEL_KEY + name)
        return idx

    def _save_vectors(self, name: str) -> None:
        info = self._model_info(name)
        if info is None or name not in self._vectors:
            return
        self._vectors[name].save(self.path / info["file"])
        info["index_generation"] = info["generation"]
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

    def _forget_vectors(self, stale: dict[str, list[int]]) -> None:
        """After the commit: the same vectors leave the in-memory indexes."""
        for model, ids in stale.items():
            self._vectors[model].remove(np.array(ids, dtype=np.int64))
            self._dirty.add(_MODEL_KEY + model)

    def embed(self, embedder: "Embedder", ids: Iterable[int] | None = None, *,
              progress: bool = False, workers: int | None = None) -> EmbedReport:
        """Compute ``embedder``'s vectors for images that lack them, then save.

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
        from concurrent.futures import ThreadPoolExecutor

        from .embed.base import embed_isolated

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
        chunks = list(_chunks(todo_rows, batch_size))
        with ThreadPoolExecutor(max_workers=workers or self.settings.n_workers()) as pool:
            pending = [pool.submit(self._load_for_embedding, r) for r in chunks[0]] if chunks else []
            for n, chunk in enumerate(chunks):
                loaded = [f.result() for f in pending]
                pending = ([pool.submit(self._load_for_embedding, r) for r in chunks[n + 1]]
                           if n + 1 < len(chunks) else [])
                good = [(rec.id, img) for rec, img in zip(chunk, loaded)
                        if not isinstance(img, Skipped)]
                report.skipped += [x for x in loaded if isinstance(x, Skipped)]
                if good:
                    vecs, failed = embed_isolated(embedder, [img for _, img in good])
                    report.skipped += [Skipped(rows[good[i][0]].path, why)
                                       for i, why in failed.items()]
                    good = [g for i, g in enumerate(good) if i not in failed]
                    vecs = np.delete(vecs, list(failed), axis=0)
                    if vecs.shape != (len(good), dim):
                        raise GalleryError(f"model {name!r} returned vectors of shape "
                                           f"{vecs.shape}, expected ({len(good)}, {dim})")
                    ok = np.isfinite(vecs).all(axis=1) & (np.linalg.norm(vecs, axis=1) > 0)
                    for (image_id, _), fine in zip(good, ok):
                        if not fine:
                            report.skipped.append(Skipped(
                                rows[image_id].path, f"model {name!r} returned an invalid vector"))
                    kept = [image_id for (image_id, _), fine in zip(good, ok) if fine]
                    self._store_vectors(index, info["name"], kept, vecs[ok])
                    report.embedded += len(kept)
                if bar:
                    bar.update(len(chunk))
        if bar:
            bar.close()
        self.save()
        return report

    def _load_for_embedding(self, rec: StoredImage):
        """The image to embed, or a Skipped saying why it cannot be used now."""
        try:
            st = os.stat(rec.path)
        except OSError as e:
            return Skipped(rec.path, f"cannot read file: {e.strerror or e}")
        if (st.st_size, st.st_mtime_ns) != (rec.size, rec.mtime_ns):
            return Skipped(rec.path, "file changed since it was added; add it again first")
        try:
            return load_image(rec.path, max_side=EMBED_DECODE_SIDE,
                              max_pixels=self.settings.max_pixels).image
        except ImageLoadError as e:
            return Skipped(rec.path, e.reason)

    def _store_vectors(self, index: "VectorIndex", name: str, ids: list[int],
                       vecs: np.ndarray) -> None:
        if not ids:
            return
        vecs = np.ascontiguousarray(vecs, dtype="<f4")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings(model, image_id, vector) VALUES (?,?,?)",
                [(name, image_id, vecs[row].tobytes()) for row, image_id in enumerate(ids)])
            info = self._model_info(name)
            info["generation"] += 1
            self._set_model_info(info)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        index.add(np.array(ids, dtype=np.int64), vecs)
        self._dirty.add(_MODEL_KEY + name)


def _progress_bar(total: int, enabled: bool):
    """A tqdm bar on stderr when asked for and stderr is a terminal, else None."""
    if not enabled or total == 0:
        return None
    import sys

    import tqdm
    if not sys.stderr.isatty():
        return None
    return tqdm.tqdm(total=total, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i: i + n]
