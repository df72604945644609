"""A gallery on disk: SQLite metadata plus USearch index files in one folder.

SQLite is the source of truth: every image's facts and hashes live in its
``images`` table and change only inside transactions, so a process killed at
any moment leaves the last committed state. The USearch index files are a
derived cache, written atomically (temp file, fsync, rename) and stamped with
the data generation they really contain, plus their size, SHA-256 and key
count. A file is loaded only if its stamp names the database's generation and
its bytes hash to the recorded digest (the very bytes hashed are handed to
USearch, so a damaged file never reaches its loader); anything else (a kill
between the two writes, a flipped bit, an older or swapped file) is rebuilt
from SQLite. So the folder is always consistent, whatever moment a process died.

One writer at a time, any number of readers: a process that changes the
gallery (``add``, ``remove``, ``embed``, ``save``) first takes an OS lock on
``gallery.lock`` and holds it until ``close`` (see ``_lock.py``); another
writer waits, saying so on stderr. Each in-memory index remembers the
generation it reflects, and after each commit it moves on only if it was
current before it, so a stamp can never claim changes an index lacks. The
database runs in WAL mode, so readers see one committed state while a
writer commits.

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

import concurrent.futures
import hashlib
import json
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matchkit.config import Settings
from matchkit.features import ImageRecord, extract_many
from matchkit.signals.hashing import PHASH_BITS
from matchkit.index.hamming import HammingIndex
from matchkit.index.ivf import IVFIndex
from matchkit.util.fs import fsync_dir, remove_stale_temps, verified_bytes
from matchkit.util.lock import LockTimeout, WriterLock, default_timeout
from matchkit.util.fspath import from_db, to_db
from matchkit.io.load import ImageLoadError, load_image
from matchkit.signals.local import LocalFeatures
from matchkit.store.adding import AddReport, Skipped, _key, add_files  # noqa: F401  (re-exported)
from matchkit.store.stored import decode_colour, decode_thumb, encode_colour, encode_local, stored_features
from matchkit.store.stored_text import pack_many, unpack

if TYPE_CHECKING:  # pragma: no cover
    from matchkit.embed import Embedder
    from matchkit.index.vectors import VectorIndex

#: 2: compact stored features (``stored.py``: encoding column of
#: ``local_features``, icon views, pixel digests made at extraction).
SCHEMA_VERSION = 2
DB_NAME = "gallery.sqlite"
PHASH_INDEX_NAME = "phash.usearch"
ORB_INDEX_NAME = "orb.usearch"
#: The ORB index file with ``Settings.vote_index = "ivf"`` (its own stamp, too).
ORB_IVF_INDEX_NAME = "orb.ivf"
#: Descriptor keys in the ORB index are image_id * ORB_KEY_STRIDE + rank.
ORB_KEY_STRIDE = 1024
#: Longest side images are decoded at for embedding (JPEGs in draft mode):
#: CLIP-style models look at ~224 pixels of the shorter side, so this keeps
#: even 4:1 panoramas above that while decoding camera photos several times faster.
EMBED_DECODE_SIDE = 1024
#: Prefix of a model's record in the ``meta`` table (value: JSON).
_MODEL_KEY = "model:"
#: Prefix of an index file's record in the ``meta`` table (value: JSON with
#: generation, size, sha256 and keys of the file last saved).
_FILE_KEY = "index:"
#: Tables of incremental matching (``incremental.py``): per image, what its
#: candidate search found; per pair, its evidence before and after local
#: verification; both under the key of the settings they were made with, as
#: ``stored_text`` deflates them. Created on first use by a writer, so
#: read-only galleries open as before. The records (2 KB deflated) are in a
#: rowid table: a WITHOUT ROWID row over 1,002 bytes spills onto an overflow
#: page of its own, so the records' earlier table (``match_images``, dropped
#: here) took 4.7 KB per image for 3.9 KB of text.
_MATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS match_records (
    key TEXT NOT NULL,
    image_id INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (key, image_id)
);
CREATE INDEX IF NOT EXISTS match_records_image ON match_records(image_id);
DROP TABLE IF EXISTS match_images;
CREATE TABLE IF NOT EXISTS match_pairs (
    key TEXT NOT NULL,
    a INTEGER NOT NULL,
    b INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    before TEXT NOT NULL,
    after TEXT,
    same_pixels INTEGER,
    live INTEGER NOT NULL,
    relation TEXT,
    PRIMARY KEY (key, a, b, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS match_pairs_a ON match_pairs(a);
CREATE INDEX IF NOT EXISTS match_pairs_b ON match_pairs(b);
"""
#: Payloads of the extra signals (``matchkit.signals``): one row per image and
#: configured signal, written with the image's record (payload NULL: the
#: signal had nothing to say). Created by the first writer that has signals
#: configured, so galleries without them, and read-only ones, open as before.
_SIGNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS signal_data (
    image_id INTEGER NOT NULL,
    signal TEXT NOT NULL,
    payload BLOB,
    PRIMARY KEY (image_id, signal)
) WITHOUT ROWID
"""
#: Settings keys whose matching state is kept (most recently used first).
_MATCH_KEYS = "match_keys"
#: How many settings keys keep their matching state: switching ``--level``
#: back and forth reuses both, and an old key's rows do not pile up.
MAX_MATCH_KEYS = 4
#: Seconds a statement waits for another connection's write transaction.
_BUSY_TIMEOUT = 60.0
#: The gallery opened last in this process, for the CLI's damaged-database hint.
last_opened: Path | None = None

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
    blank INTEGER,
    icon BLOB
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
    thumb_height INTEGER NOT NULL,
    encoding INTEGER NOT NULL DEFAULT 1
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


class _StaleIndexFile(Exception):
    """An index file that would have to be rebuilt (``load_indexes(only_current=True)``)."""


class GalleryError(Exception):
    """A gallery folder that cannot be opened or used as asked."""


def damaged_database_message(error: sqlite3.DatabaseError, gallery: Path | None = None) -> str:
    """One line for an SQLite error met while using a gallery, with a way out."""
    gallery = gallery or last_opened
    db = (gallery / DB_NAME) if gallery else Path("GALLERY") / DB_NAME
    detail = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, sqlite3.OperationalError) and "locked" in detail:
        return (f"gallery database {db} stayed locked by another process ({detail}); "
                "try again when it has finished")
    if isinstance(error, sqlite3.OperationalError) and "readonly" in detail:
        return f"gallery database {db} cannot be written ({detail})"
    return (f"{db} is not a usable gallery database, it is damaged ({detail}); recover "
            f"what it holds with "
            f"`sqlite3 {db} .recover | sqlite3 recovered.sqlite` and put that in its place, "
            "or index the images again into a new gallery")


@dataclass
class VerifyReport:
    """What :meth:`Gallery.verify` found.

    ``differences`` are real inconsistencies: a cache file whose stamp and
    checksum say it is current but whose keys differ from the database rows
    (never expected; each one is a bug). ``stale`` lists cache files that do
    not match the database and would be rebuilt from it on next use (missing,
    older, damaged or foreign files): harmless, but slower until repaired.
    """

    keys: dict[str, int] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict:
        return {"ok": self.ok, "keys": self.keys, "differences": self.differences,
                "stale": self.stale, "repaired": self.repaired}


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


_COLUMNS = ("id, path, size, mtime_ns, sha256, pixel_sha256, width, height, format, meta, labels, "
            "jpeg_quality, blank")


def _row_to_image(row) -> StoredImage:
    return StoredImage(row[0], from_db(row[1]), *row[2:9], meta=json.loads(row[9]),
                       labels=json.loads(row[10]), jpeg_quality=row[11], blank=bool(row[12]))


#: Columns added after schema 1 was released, with their SQL types. Galleries
#: written before get them on open (``_migrate``).
_ADDED_COLUMNS = {"jpeg_quality": "INTEGER", "blank": "INTEGER", "icon": "BLOB"}


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

    def __init__(self, path: str | os.PathLike, settings: Settings | None = None,
                 *, create: bool = True, lock_timeout: float | None = None):
        """Open (or with ``create``, make) the gallery in folder ``path``.

        ``settings``: default ``Settings()``, with the descriptor index kind
        the gallery was last written with (``saved_vote_index``), so a reader
        that is not told searches what the writer built.

        ``lock_timeout``: seconds a write waits for another process writing
        to this gallery before raising :class:`GalleryError` (default:
        ``$MATCHKIT_LOCK_TIMEOUT``, else wait as long as it takes).
        """
        global last_opened
        self.path = Path(path)
        self.settings = settings or Settings()
        db = self.path / DB_NAME
        if not db.exists():
            if not create:
                raise GalleryError(f"no gallery at {self.path} (missing {DB_NAME})")
            if self.path.exists() and not self.path.is_dir():
                raise GalleryError(f"gallery path {self.path} is a file, not a folder")
            self.path.mkdir(parents=True, exist_ok=True)
            _create_database(db)
        elif db.is_file() and db.stat().st_size == 0 and not _has_wal(db):
            # sqlite3 would take it for a new database; a gallery is never 0 bytes
            # (it is created complete, then renamed into place): this one lost its data.
            raise GalleryError(
                f"{db} is empty (0 bytes): its contents were lost (truncated or copied "
                f"while being written). Restore it from a backup, or delete {db} and index "
                "the images again")
        try:
            self._db = sqlite3.connect(db, isolation_level=None, timeout=_BUSY_TIMEOUT)
            try:  # (new galleries are made in WAL mode; this converts older ones)
                self._db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:  # read-only folder, or a writer busy: keep as is
                pass
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            version = self._meta("schema_version")
        except sqlite3.DatabaseError as e:
            raise GalleryError(damaged_database_message(e, self.path)) from None
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
        last_opened = self.path
        if settings is None and (kind := self.saved_vote_index()) is not None:
            self.settings = self.settings.with_(vote_index=kind)
        self._writer = WriterLock(self.path, default_timeout() if lock_timeout is None
                                  else lock_timeout)
        self._indexes: dict[str, HammingIndex] = {}
        self._vectors: dict[str, VectorIndex] = {}
        #: Index names to save: "phash", "orb", or _MODEL_KEY + model name.
        self._dirty: set[str] = set()
        #: The generation each loaded index reflects, by the same names (for a
        #: model, that model's generation). Saves stamp files with it.
        self._have: dict[str, int] = {}
        #: (old, new) generation of the last commit that bumped it.
        self._last_bump: tuple[int, int] = (-1, -1)
        #: The same for models whose vectors a commit in progress drops.
        self._model_bumps: dict[str, tuple[int, int]] = {}
        #: Set by ``load_indexes(only_current=True)``: a stale file raises
        #: _StaleIndexFile instead of being rebuilt.
        self._load_only = False
        #: Set by ``load_indexes(as_saved=True)``: take each index file at the
        #: generation it was saved with, even if the database moved on since.
        self._as_saved = False
        #: Index objects shared with other open galleries of this process
        #: (``index_cache.SharedIndexes``, for read-only use), or None.
        self.shared_indexes = None
        #: When set, ``add`` puts new descriptors into the ORB index on a
        #: worker thread and returns without waiting (``dedupe`` sets it: its
        #: matcher reads the stored state meanwhile); every use of the index
        #: (``orb_index``, ``orb_index_ready``, ``save``, ``close``) waits for
        #: it. Why: the graph insert is sequential (``HammingIndex.add``), so
        #: it held one core while the other idled: 1.2 s of a 1% add to
        #: 10,000 images.
        self.index_in_background = False
        #: The ORB index add running on ``_index_worker``, or None.
        self._indexing: concurrent.futures.Future | None = None
        self._index_worker: concurrent.futures.ThreadPoolExecutor | None = None

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

        def old_local() -> bool:
            return "encoding" not in {r[1] for r in self._db.execute(
                "PRAGMA table_info(local_features)")}

        if not missing() and not old_local():
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for column in missing():
                self._db.execute(f"ALTER TABLE images ADD COLUMN {column} {_ADDED_COLUMNS[column]}")
            if old_local():  # encoding-1 rows stay readable until re-extracted
                self._db.execute("ALTER TABLE local_features ADD COLUMN encoding "
                                 "INTEGER NOT NULL DEFAULT 1")
            self._set_meta("schema_version", SCHEMA_VERSION)
            self._db.execute("UPDATE images SET mtime_ns = -1")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # -- lifecycle ---------------------------------------------------------
    def close(self, save: bool = True) -> None:
        """Close the database and give up the writer lock.

        With ``save``, a writer first saves the indexes it changed since its
        last ``save`` (``with Gallery(p) as g: g.add(files)`` leaves usable
        index files): rebuilding them costs more than writing them (about
        100 s of graph building for 10,000 images), and a reader that finds
        no current file rebuilds on every open. Leaving a ``with`` block by
        an exception does not save (the run stopped part way). The database
        is committed already; if the index files cannot be written, a
        warning says so and the next open rebuilds them.
        """
        try:
            try:
                self._settle()
            except Exception as e:  # (the index was dropped: its file keeps the last state)
                warnings.warn(f"gallery {self.path}: descriptor index not updated ({e}); "
                              "the next open rebuilds it", RuntimeWarning, stacklevel=2)
            if self._index_worker is not None:
                self._index_worker.shutdown()
                self._index_worker = None
            if save and self._dirty and self._writer.held:
                try:
                    self.save()
                except (OSError, sqlite3.Error, GalleryError) as e:
                    warnings.warn(f"gallery {self.path}: index files not saved ({e}); "
                                  "the next open rebuilds them", RuntimeWarning, stacklevel=2)
            self._db.close()
        finally:
            self._writer.release()

    def _lock_for_writing(self) -> None:
        """Become this gallery's only writer (wait for another, or GalleryError).

        A gallery that used shared index objects drops them first (it would
        change them under the galleries it shares them with) and loads its own."""
        if self.shared_indexes is not None:
            self.shared_indexes = None
            for name in ("phash", "orb", *(_MODEL_KEY + m for m in list(self._vectors))):
                self._drop_cached(name)
        try:
            self._writer.acquire()
        except LockTimeout as e:
            raise GalleryError(str(e)) from None
        except OSError as e:  # e.g. a read-only folder
            raise GalleryError(f"cannot write to gallery {self.path}: "
                               f"{e.strerror or e}") from None

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Reads inside see one committed state, even while another process
        commits (a WAL read transaction); inside a transaction already, a no-op."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(save=exc_type is None)

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

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection
        commits, so a long-lived reader knows when its loaded indexes are stale."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def index_files_current(self) -> bool:
        """Whether every index file's stamp names the database's current state,
        so opening the gallery now loads them instead of rebuilding (a long-lived
        reader can keep its older snapshot until a writer has saved)."""
        with self._snapshot():
            generation = self.generation
            if any((self._file_record(n) or {}).get("generation") != generation
                   for n in ("phash", "orb")):
                return False
            for name in self.models():
                info = self._model_info(name) or {}
                if info.get("index_generation") != info.get("generation"):
                    return False
        return True

    def load_indexes(self, *, only_current: bool = False, as_saved: bool = False) -> bool:
        """Load every index (pHash, ORB, each model's vectors) in one read
        snapshot, so all reflect the same committed state. With
        ``only_current``, rebuild nothing: if any file is not the current
        one (stale stamp, or replaced by a writer meanwhile), drop what was
        loaded and return False (a reader that would rather wait than rebuild).
        With ``as_saved`` (and ``only_current``), take each file as its writer
        last saved it, even when the database has moved on since: a reader
        then answers from the indexes of a committed state a little older
        than the rows (new images are found once the writer saves again;
        removed ones are dropped by the row lookup) instead of rebuilding."""
        self._load_only = only_current
        self._as_saved = as_saved
        try:
            with self._snapshot():
                if only_current and not as_saved and not self.index_files_current():
                    return False
                self.phash_index, self.orb_index
                for model in self.models():
                    self.vector_index(model)
        except _StaleIndexFile:
            for name in ("phash", "orb", *(_MODEL_KEY + m for m in self.models())):
                self._drop_cached(name)
            return False
        finally:
            self._load_only = self._as_saved = False
        return True

    def saved_index_stamps(self) -> tuple:
        """The checksums and generations the index files were last saved with:
        changes when a writer saves new files (a reader's cue to reload)."""
        with self._snapshot():
            stamps = [(n, (self._file_record(n) or {}).get("sha256"),
                       (self._file_record(n) or {}).get("generation"))
                      for n in ("phash", "orb", *(_MODEL_KEY + m for m in self.models()))]
        return tuple(stamps)

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

    def image_digests(self) -> dict[int, tuple[str, bool]]:
        """Every image's (sha256, blank) by id, in one query."""
        return {i: (d, bool(b)) for i, d, b in
                self._db.execute("SELECT id, sha256, blank FROM images")}

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
        return {k: decode_colour(v) for k, v in self._blobs("colour", ids).items()}

    def failures(self) -> list[Skipped]:
        return [Skipped(from_db(p), r)
                for p, r in self._db.execute("SELECT path, reason FROM failures")]

    # -- index -------------------------------------------------------------
    @property
    def phash_index(self) -> HammingIndex:
        """pHash index (one code per image, key = image id)."""
        return self._index("phash")

    @property
    def orb_index(self) -> HammingIndex | IVFIndex:
        """ORB descriptor index (the strongest ``index_features`` per image)."""
        return self._index("orb")

    def orb_index_ready(self) -> Callable[[], HammingIndex | IVFIndex]:
        """The ORB index as a function that another thread may call: it waits
        for an add still being indexed in the background
        (``index_in_background``) and gives the index; this thread does not
        wait. (An index not loaded yet is loaded here: only this thread
        reads the database.)"""
        pending, idx = self._indexing, self._indexes.get("orb")
        if pending is None or idx is None:
            idx = self.orb_index
            return lambda: idx

        def ready() -> HammingIndex | IVFIndex:
            pending.result()  # (an error is raised here, and again by ``_settle``)
            return idx
        return ready

    def _settle(self) -> None:
        """Wait for the ORB index add running in the background, if any. If
        it failed, the index is dropped (it is rebuilt from the database when
        next used; its file keeps the last saved state) and the error raised."""
        pending, self._indexing = self._indexing, None
        if pending is None:
            return
        try:
            pending.result()
        except BaseException:
            self._drop_cached("orb")
            raise

    def _index(self, name: str) -> HammingIndex:
        """An index loaded from disk, or rebuilt from SQLite if its file is stale."""
        if name == "orb":
            self._settle()
        if name not in self._indexes:
            self._indexes[name] = self._load_or_rebuild(name)
        return self._indexes[name]

    def _index_file(self, name: str) -> Path:
        if name == "orb" and self._ivf():
            return self.path / ORB_IVF_INDEX_NAME
        return self.path / {"phash": PHASH_INDEX_NAME, "orb": ORB_INDEX_NAME}[name]

    def saved_vote_index(self) -> str | None:
        """The descriptor index kind ("hnsw" or "ivf") whose file was saved
        last, i.e. what the gallery was last written with (None: no file).

        Why: the kind is a setting of each run, and a reader that is not told
        should search what the writer built; otherwise ``check`` on a gallery
        made with ``--vote-index ivf`` rebuilt an HNSW graph from SQLite on
        every run (minutes for 10,000 images) and searched another index."""
        best = None
        for kind, name in (("hnsw", "orb"), ("ivf", "orb-ivf")):
            record = self._saved_stamp(name)
            if record is not None and isinstance(record.get("generation"), int):
                when = (record["generation"], record.get("saved_at", 0))
                if best is None or when > best[0]:
                    best = (when, kind)
        return None if best is None else best[1]

    def _ivf(self) -> bool:
        return self.settings.vote_index == "ivf"

    def _record_name(self, name: str) -> str:
        """The meta key suffix of an index file's stamp: the IVF file has its
        own, so galleries opened with either kind never trust the other's."""
        return "orb-ivf" if name == "orb" and self._ivf() else name

    def _new_index(self, name: str):
        """An empty index of the kind the settings ask for."""
        if name == "orb" and self._ivf():
            return IVFIndex(probes=self.settings.ivf_probes)
        nbits, params = self._index_params(name)
        return HammingIndex(nbits, **params)

    def _index_loader(self, name: str):
        """A function from a saved file's bytes to its index (raises if foreign)."""
        if name == "orb" and self._ivf():
            return lambda data, p=self.settings.ivf_probes: IVFIndex.load(data, probes=p)
        nbits, params = self._index_params(name)
        return lambda data: HammingIndex.load(data, nbits, **params)

    @staticmethod
    def _index_params(name: str) -> tuple[int, dict]:
        # Local descriptors are many and only vote: a sparser, faster graph is
        # enough, searched shallowly (half the search cost of depth 32, the
        # same recall of copies on the calib halves of the benchmark sets).
        params = {} if name == "phash" else {"connectivity": 8, "expansion_add": 32,
                                             "expansion_search": 16}
        return (PHASH_BITS if name == "phash" else 256), params

    def _file_record(self, key: str) -> dict | None:
        """The stamp recorded when an index file was last saved (None: none usable)."""
        if key.startswith(_MODEL_KEY):
            info = self._model_info(key[len(_MODEL_KEY):]) or {}
            record = info.get("index_file")
            if isinstance(record, dict) and info.get("index_generation") is not None:
                return {**record, "generation": info["index_generation"]}
            return None
        return self._saved_stamp(self._record_name(key))

    def _saved_stamp(self, name: str) -> dict | None:
        """The stamp stored under meta key ``_FILE_KEY + name`` (None: none, or unreadable)."""
        try:
            record = json.loads(self._meta(_FILE_KEY + name) or "null")
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def _load_file(self, key: str, file: Path, generation: int, loader):
        """The cache file's index if its stamp names ``generation`` and its bytes
        match the recorded size, digest and key count; else (None, why)."""
        record = self._file_record(key)
        if record is None:
            return None, "no checksum recorded"
        if record.get("generation") != generation and not self._as_saved:
            return None, f"holds generation {record.get('generation')}, database is at {generation}"
        why = [""]

        def load():
            with verified_bytes(file, record) as data:
                if data is None:
                    why[0] = ("missing" if not file.exists()
                              else "size or checksum differs from the record")
                    return None
                try:
                    idx = loader(data)
                except Exception as e:  # verified bytes: only a foreign record gets here
                    why[0] = f"unreadable ({e})"
                    return None
            if len(idx) != record.get("keys"):
                why[0] = f"holds {len(idx)} keys, the record says {record.get('keys')}"
                return None
            return idx

        shared = self.shared_indexes
        # (an IVF index's probes are a search setting held by the object: part of the key)
        probes = self.settings.ivf_probes if key == "orb" and self._ivf() else None
        idx = (load() if shared is None else shared.get_or_load(
            (str(file), key, record.get("sha256"), record.get("generation"), probes), load))
        if idx is None:
            return None, why[0]
        self._have[key] = record.get("generation")
        return idx, ""

    def _load_or_rebuild(self, name: str) -> HammingIndex | IVFIndex:
        with self._snapshot():
            generation = self.generation
        idx, _ = self._load_file(name, self._index_file(name), generation,
                                 self._index_loader(name))
        if idx is not None:  # (_load_file noted the generation it reflects)
            return idx
        if self._load_only:
            raise _StaleIndexFile(name)
        idx = self._new_index(name)
        with self._snapshot():  # the rows and the generation they make, together
            generation = self.generation
            if name == "phash":
                rows = self._db.execute("SELECT id, phash FROM images").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT image_id, descriptors FROM local_features").fetchall()
        if name == "phash":
            pairs = [(i, np.frombuffer(b, np.uint8)[: PHASH_BITS // 8]) for i, b in rows]
            if pairs:
                idx.add(np.array([k for k, _ in pairs]), np.stack([c for _, c in pairs]))
        else:
            self._add_orb(idx, [(i, np.frombuffer(d, np.uint8).reshape(-1, 32)) for i, d in rows])
        self._have[name] = generation
        self._dirty.add(name)
        return idx

    def _changed(self, name: str, bump: tuple[int, int] | None = None) -> None:
        """After a commit moved ``name``'s generation from old to new and its
        in-memory index got the same changes: it now reflects new, if it
        reflected old before. Otherwise (another writer committed in between,
        which the lock prevents) it is dropped and rebuilt on next use, so a
        stamp never claims changes an index lacks."""
        old, new = bump or self._last_bump
        have = self._have.get(name)
        if have == old:
            self._have[name] = new
            self._dirty.add(name)
        elif have != new:  # (== new: loaded after the commit, already current)
            self._drop_cached(name)

    def _drop_cached(self, name: str) -> None:
        if name == "orb" and self._indexing is not None:  # (not dropped while in use)
            pending, self._indexing = self._indexing, None
            concurrent.futures.wait([pending])
        if name.startswith(_MODEL_KEY):
            self._vectors.pop(name[len(_MODEL_KEY):], None)
        else:
            self._indexes.pop(name, None)
        self._have.pop(name, None)
        self._dirty.discard(name)

    def _add_orb(self, idx: HammingIndex, items: list[tuple[int, np.ndarray]]) -> None:
        """Index the strongest descriptors of each (image_id, descriptors); the
        caller has removed any earlier ones for these ids."""
        tops = [(i, d[: self.settings.index_features]) for i, d in items]
        tops = [(i, d) for i, d in tops if len(d)]
        if not tops:
            return
        keys = np.concatenate([i * ORB_KEY_STRIDE + np.arange(len(d)) for i, d in tops])
        codes = np.concatenate([d for _, d in tops])
        if not self.index_in_background:
            idx.add(keys, codes, replace=False)
            return
        self._settle()  # (one at a time: ``_write_batch`` has waited for it already)
        if self._index_worker is None:
            self._index_worker = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="matchkit-index")
        self._indexing = self._index_worker.submit(idx.add, keys, codes, replace=False)

    def _remove_orb(self, idx: HammingIndex, ids: Iterable[int]) -> None:
        idx.remove([i * ORB_KEY_STRIDE + j for i in ids for j in range(self.settings.index_features)])

    def save(self) -> None:
        """Persist the index files so the next open need not rebuild them.

        The database itself is always saved (every change is a committed
        transaction); this only writes the derived indexes, atomically, each
        stamped with the generation it really reflects, its size, checksum
        and key count (so it is verified before the next load).
        """
        self._settle()
        if not self._dirty:
            return
        self._lock_for_writing()
        for name in sorted(self._dirty):
            if name.startswith(_MODEL_KEY):
                self._save_vectors(name[len(_MODEL_KEY):])
                continue
            if name not in self._indexes or name not in self._have:
                continue
            idx = self._indexes[name]
            stamp = idx.save(self._index_file(name))
            record = {**stamp, "keys": len(idx), "generation": self._have[name],
                      "saved_at": round(time.time(), 3)}
            # One statement: the generation stamp and the checksum change together.
            self._set_meta(_FILE_KEY + self._record_name(name),
                           json.dumps(record, sort_keys=True))
        self._dirty.clear()

    # -- consistency -------------------------------------------------------
    def verify(self, *, repair: bool = False) -> VerifyReport:
        """Compare every index and vector file with the database.

        Each cache file is judged as the next open would judge it: a file
        whose stamp names the current generation and whose bytes match the
        recorded checksum is loaded, and its keys must equal the database's
        rows (pHash: image ids; ORB: the strongest ``index_features``
        descriptors of each image; vectors: embedded ids). Any difference is
        reported in ``differences``. Files that would be rebuilt are listed in
        ``stale``; with ``repair`` they are rebuilt from SQLite and saved
        (taking the writer lock).
        """
        report = VerifyReport()
        with self._snapshot():
            generation = self.generation
            expected = {"phash": set(self.ids())}
            n = self.settings.index_features
            expected["orb"] = {
                i * ORB_KEY_STRIDE + r
                for i, size in self._db.execute(
                    "SELECT image_id, length(descriptors) FROM local_features")
                for r in range(min(size // 32, n))}
            infos = {name: self._model_info(name) for name in self.models()}
            for name in infos:
                expected[_MODEL_KEY + name] = set(self._db.execute(
                    "SELECT e.image_id FROM embeddings e JOIN images i ON i.id = e.image_id "
                    "WHERE e.model=?", (name,)).fetchall())
                expected[_MODEL_KEY + name] = {i for (i,) in expected[_MODEL_KEY + name]}
        checks = []
        for name in ("phash", "orb"):
            checks.append((name, self._index_file(name), generation, self._index_loader(name)))
        for name, info in infos.items():
            key = _MODEL_KEY + name
            checks.append((key, self.path / info["file"], info["generation"],
                           lambda data, k=key, m=name, d=int(info["dim"]):
                           self._vectors_from_bytes(data, k, m, d)))
        for key, file, gen, loader in checks:
            want = expected[key]
            idx, why = self._load_file(key, file, gen, loader)
            if idx is None:
                if want or file.exists():
                    report.stale.append(f"{file.name}: {why}; rebuilt from the database on use")
                    if repair:
                        self._drop_cached(key)
                        if key.startswith(_MODEL_KEY):
                            self.vector_index(key[len(_MODEL_KEY):])
                        else:
                            self._index(key)
                        report.repaired.append(file.name)
                continue
            got = set(idx.keys().tolist())
            report.keys[file.name] = len(got)
            if got != want:
                missing, extra = sorted(want - got), sorted(got - want)
                report.differences.append(
                    f"{file.name}: stamped current, but {len(missing)} database rows are "
                    f"missing from it (e.g. {missing[:3]}) and {len(extra)} keys are not in the "
                    f"database (e.g. {extra[:3]})")
        if report.repaired:
            self.save()
        return report

    def local_features(self, image_id: int) -> tuple[LocalFeatures, np.ndarray] | None:
        """ORB features and grey thumbnail of one image (None if not extracted)."""
        return read_local_features(self._db, image_id)

    def thumbnail(self, image_id: int) -> np.ndarray | None:
        """One image's stored grey thumbnail alone (None if not extracted):
        a template check reads those of 16 look-alikes per image, at 56 us
        each against 131 us for all the image's local features."""
        row = self._db.execute("SELECT thumb, thumb_width, thumb_height, encoding "
                               "FROM local_features WHERE image_id=?", (image_id,)).fetchone()
        return None if row is None else decode_thumb(*row)

    def thumb_shapes(self, ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """(height, width) of the stored thumbnails of those of ``ids`` that have
        one, without decoding any: a template check needs look-alikes of its
        image's shape only, and most look-alikes of a photo have another."""
        found: dict[int, tuple[int, int]] = {}
        for chunk in _chunks([int(i) for i in ids], 900):
            q = ("SELECT image_id, thumb_height, thumb_width FROM local_features "
                 f"WHERE image_id IN ({','.join('?' * len(chunk))})")
            found.update((i, (h, w)) for i, h, w in self._db.execute(q, chunk))
        return found

    def icons(self, ids: Sequence[int]) -> dict[int, bytes]:
        """Stored icon views (``thumbmatch.icon_blob``) of those of ``ids`` that have one."""
        return {k: v for k, v in self._blobs("icon", ids).items() if v is not None}

    # -- writing -----------------------------------------------------------
    def _bump(self) -> None:
        old = self.generation
        self._set_meta("generation", old + 1)
        self._last_bump = (old, old + 1)

    def add(self, paths: Iterable[str | os.PathLike],
            progress: Callable[[int], None] | None = None) -> AddReport:
        """Add image files (already expanded from folders), skipping unchanged ones.

        ``progress(n)`` is called as files are processed. Returns the ids of
        all readable files in ``paths`` (new, updated or unchanged) and the
        skipped files with reasons. A gallery is the one-shard case of a
        sharded one: the same code (``shards.add_files``) does the work.
        """
        return add_files([self], paths, self.settings, progress, extract=extract_many)

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
                        self._db.execute("DELETE FROM local_features WHERE image_id=?", (old[0],))
                        self._drop_signals([old[0]])
                        gone.append(old[0])
                    report.skipped.append(Skipped(path, rec.reason))
                    continue
                self._db.execute("DELETE FROM failures WHERE path=?", (stored,))
                values = (rec.size, rec.mtime_ns, rec.sha256, rec.width, rec.height,
                          rec.format, rec.phashes.tobytes(), encode_colour(rec.colour),
                          rec.jpeg_quality, int(rec.blank), rec.pixel_sha256, rec.icon)
                if old:
                    self._db.execute(
                        "UPDATE images SET size=?, mtime_ns=?, sha256=?, "
                        "width=?, height=?, format=?, phash=?, colour=?, jpeg_quality=?, blank=?, "
                        "pixel_sha256=?, icon=? WHERE id=?", (*values, old[0]))
                    image_id = old[0]
                    replaced.append(image_id)
                    report.updated += 1
                else:
                    image_id = ids[path]
                    self._db.execute(
                        "INSERT INTO images(id, path, size, mtime_ns, sha256, width, height, "
                        "format, phash, colour, jpeg_quality, blank, pixel_sha256, icon, added_at) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (image_id, stored, *values, now))
                    report.added += 1
                report.ids.append(image_id)
                report.changed.append(image_id)
                new_keys.append(image_id)
                new_codes.append(rec.phashes[0])
                self._db.execute("DELETE FROM local_features WHERE image_id=?", (image_id,))
                if rec.local is not None:
                    self._db.execute(
                        "INSERT INTO local_features(image_id, width, height, xy, descriptors, "
                        "thumb, thumb_width, thumb_height, encoding) VALUES (?,?,?,?,?,?,?,?,?)",
                        (image_id, *encode_local(rec.local, rec.thumb)))
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
        self._db.execute("BEGIN IMMEDIATE")
        try:
            removed = 0
            for chunk in _chunks(ids, 900):
                marks = ','.join('?' * len(chunk))
                removed += self._db.execute(f"DELETE FROM images WHERE id IN ({marks})",
                                            chunk).rowcount
                self._db.execute(f"DELETE FROM local_features WHERE image_id IN ({marks})", chunk)
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
        self.phash_index.remove(ids)
        self._remove_orb(self.orb_index, ids)
        self._changed("phash", bump)
        self._changed("orb", bump)
        return removed

    # -- extra signals (matchkit.signals) -----------------------------------
    def _has_signal_table(self) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                "name='signal_data'").fetchone() is not None

    def _has_signals(self, image_id: int) -> bool:
        """Whether the image has a row for every configured signal."""
        names = self.settings.signals
        if not names:
            return True
        if not self._has_signal_table():
            return False
        got = self._db.execute(
            f"SELECT COUNT(*) FROM signal_data WHERE image_id=? AND signal IN "
            f"({','.join('?' * len(names))})", (image_id, *names)).fetchone()[0]
        return got == len(names)

    def _drop_signals(self, ids: Sequence[int]) -> None:
        """Inside a transaction: forget the images' signal payloads."""
        if ids and self._has_signal_table():
            marks = ','.join('?' * len(ids))
            self._db.execute(f"DELETE FROM signal_data WHERE image_id IN ({marks})", list(ids))

    def _store_signals(self, image_id: int, payloads: dict | None) -> None:
        """Inside a transaction: one row per signal payload of an image."""
        if not payloads:
            return
        self._db.execute(_SIGNAL_SCHEMA)
        self._db.executemany(
            "INSERT OR REPLACE INTO signal_data(image_id, signal, payload) VALUES (?,?,?)",
            [(image_id, name, payload) for name, payload in payloads.items()])

    def signal_payloads(self, signal: str, ids: Sequence[int] | None = None
                        ) -> dict[int, bytes | None]:
        """Stored payloads of ``signal``: image id -> bytes (None: nothing to
        say); images never read with the signal are absent."""
        if not self._has_signal_table():
            return {}
        if ids is None:
            rows = self._db.execute(
                "SELECT image_id, payload FROM signal_data WHERE signal=?", (signal,)).fetchall()
        else:
            rows = []
            for chunk in _chunks(list(ids), 900):
                rows += self._db.execute(
                    f"SELECT image_id, payload FROM signal_data WHERE signal=? AND image_id IN "
                    f"({','.join('?' * len(chunk))})", (signal, *chunk)).fetchall()
        return {int(i): (None if p is None else bytes(p)) for i, p in rows}

    # -- incremental matching state (see incremental.py) -------------------
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

    def match_records(self, key: str) -> dict[int, tuple[str, str]]:
        """Stored candidate-search records under ``key``: id -> (sha256, JSON)."""
        if not self._has_match_tables("match_records"):
            return {}
        rows = self._db.execute(
            "SELECT image_id, sha256, record FROM match_records WHERE key=?", (key,))
        return {i: (d, unpack(r)) for i, d, r in rows}

    def match_pairs(self, key: str) -> dict[tuple[int, int, int], tuple]:
        """Stored pair evidence under ``key``: (a, b, kind) -> (before, after,
        same_pixels, live, relation); see ``incremental.PairRow``."""
        if not self._has_match_tables():
            return {}
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

        return {(a, b, k): (unpack(before), after_text(after), *rest)
                for a, b, k, before, after, *rest in rows}

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

    def save_match_state(self, key: str, records: dict[int, tuple[str, str]],
                         pairs: dict[tuple[int, int, int], tuple],
                         *, replace: bool = False, elsewhere: Collection[int] = ()) -> None:
        """Write records and pair rows under ``key`` in one transaction (the
        writer lock held): a killed run leaves the state of the run before.
        ``replace`` first drops everything stored under ``key``. Only the
        ``MAX_MATCH_KEYS`` keys used last keep their rows. Rows of images no
        longer in the gallery (removed meanwhile) are not written; a pair's
        second image may also be one of ``elsewhere`` (the ids of the other
        shards of a sharded gallery)."""
        # (deflated before the transaction, on both cores: ``stored_text.pack_many``)
        threads = min(2, self.settings.n_workers())
        rows = [(i, d, r) for i, (d, r) in records.items()]
        record_blobs = pack_many([r for _, _, r in rows], threads)
        pair_rows = list(pairs.items())
        texts = pack_many([t for _, (before, after, *_) in pair_rows
                           for t in (before, after) if t is not None], threads)
        at = iter(texts)
        packed_pairs = [((a, b, k), (next(at), None if after is None else next(at), *rest))
                        for (a, b, k), (before, after, *rest) in pair_rows]
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
            self._set_meta(_MATCH_KEYS, json.dumps(keys[:MAX_MATCH_KEYS]))
            if replace:
                self._db.execute("DELETE FROM match_records WHERE key=?", (key,))
                self._db.execute("DELETE FROM match_pairs WHERE key=?", (key,))
            present = {i: d for i, d in self._db.execute("SELECT id, sha256 FROM images")}
            self._db.executemany(
                "INSERT OR REPLACE INTO match_records(key, image_id, sha256, record) "
                "VALUES (?,?,?,?)",
                [(key, i, d, blob) for (i, d, _), blob in zip(rows, record_blobs)
                 if present.get(i) == d])
            self._db.executemany(
                "INSERT OR REPLACE INTO match_pairs(key, a, b, kind, before, after, same_pixels, "
                "live, relation) VALUES (?,?,?,?,?,?,?,?,?)",
                [(key, a, b, k, *row) for (a, b, k), row in packed_pairs
                 if a in present and (b in present or b in elsewhere)])

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

        For :mod:`matchkit.jobs.filters`, which builds ``sql`` from constant
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
        """Digest of the pixels as extraction made it (``features.PixelDigest``;
        None: not known, e.g. a row written before digests were stored). The
        file is not read: matching needs nothing but stored records."""
        return self.get(image_id).pixel_sha256


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
        from concurrent.futures import ThreadPoolExecutor

        self._lock_for_writing()
        from matchkit.embed.base import embed_isolated

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
        if save:
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


def read_local_features(db: sqlite3.Connection, image_id: int
                        ) -> tuple[LocalFeatures, np.ndarray] | None:
    """One image's stored ORB features and grey thumbnail from a gallery
    database (also opened read-only by verification tasks on other machines)."""
    row = db.execute(
        "SELECT width, height, xy, descriptors, thumb, thumb_width, thumb_height, encoding "
        "FROM local_features WHERE image_id=?", (image_id,)).fetchone()
    return None if row is None else stored_features(row)


def _create_database(db: Path) -> None:
    """Make a new, complete gallery database at ``db`` (unless one appeared meanwhile).

    It is built under a temporary name and linked into place, so ``db`` is
    never seen empty or half-made: a 0-byte database is then always damage.
    """
    tmp = db.with_name(f".{db.name}.tmp-{os.getpid()}")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
        leftover.unlink(missing_ok=True)
    try:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                            [("schema_version", str(SCHEMA_VERSION)), ("generation", "0")])
        finally:
            con.close()  # checkpoints the WAL into the file
        try:
            os.link(tmp, db)  # fails if another process created it first: use theirs
        except FileExistsError:
            pass
        fsync_dir(db.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _has_wal(db: Path) -> bool:
    try:
        return os.path.getsize(f"{db}-wal") > 0
    except OSError:
        return False


def _progress_bar(total: int, enabled: bool):
    from matchkit.util.progress import progress_bar

    return progress_bar(total, enabled)


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i: i + n]
