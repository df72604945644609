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
``gallery.lock`` and holds it until ``close`` (see :mod:`matchkit.util.lock`);
another writer waits, saying so on stderr. Each in-memory index remembers the
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

``Gallery`` is written in parts, one module each in :mod:`matchkit.store`;
this one opens, locks and closes a gallery and holds its transactions and
``meta`` table. The rest are mixins it is made of: :mod:`.gallery_reading`
and :mod:`.gallery_writing` (the images' rows; the add pipeline that feeds
them is :mod:`.adding`), :mod:`.gallery_signals` (extra signals' payloads),
:mod:`.gallery_indexes` (the pHash and ORB index files),
:mod:`.gallery_verify` (checking those files), :mod:`.gallery_vectors`
(embeddings and their vector indexes) and :mod:`.gallery_matches` (the state
of incremental matching). The tables, creating a database and migrating an
older one are in :mod:`.schema`; the row types in :mod:`.records`. The names
those modules define are importable from here too.
"""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from matchkit.util.spawned import refuse_while_starting
from matchkit.config import Settings
from matchkit.features import extract_many
from matchkit.index.hamming import HammingIndex
from matchkit.util.fs import remove_stale_temps
from matchkit.util.lock import LockTimeout, WriterLock, default_timeout
from matchkit.store.adding import AddReport, Skipped, _key, add_files  # noqa: F401  (re-exported)
from matchkit.store.gallery_indexes import (  # noqa: F401  (re-exported)
    ORB_INDEX_NAME, ORB_IVF_INDEX_NAME, ORB_KEY_STRIDE, PHASH_INDEX_NAME, _IndexesMixin,
    _MODEL_KEY)
from matchkit.store.gallery_matches import (  # noqa: F401  (re-exported)
    MAX_MATCH_KEYS, _MatchStateMixin)
from matchkit.store.gallery_reading import _ReadingMixin
from matchkit.store.gallery_signals import _SignalsMixin
from matchkit.store.gallery_vectors import (  # noqa: F401  (re-exported)
    EMBED_DECODE_SIDE, EmbedReport, _VectorsMixin, vector_file_name)
from matchkit.store.gallery_verify import VerifyReport, _VerifyMixin  # noqa: F401  (re-exported)
from matchkit.store.gallery_writing import _WritingMixin
from matchkit.store.records import StoredImage, read_local_features  # noqa: F401  (re-exported)
from matchkit.store.schema import (  # noqa: F401  (re-exported)
    DB_NAME, SCHEMA_VERSION, GalleryError, _BUSY_TIMEOUT, _SCHEMA, _create_database, _has_wal,
    _migrate)

if TYPE_CHECKING:  # pragma: no cover
    from matchkit.index.vectors import VectorIndex

#: The gallery opened last in this process, for the CLI's damaged-database hint.
last_opened: Path | None = None


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


class Gallery(_ReadingMixin, _WritingMixin, _SignalsMixin, _IndexesMixin, _VerifyMixin,
              _VectorsMixin, _MatchStateMixin):
    """A persistent collection of images and their features.

    Its methods are in the modules of its mixins (see this module's
    docstring); opening, locking, transactions and ``add`` are here.

    >>> with Gallery("my-gallery") as g:          # doctest: +SKIP
    ...     report = g.add(["photos/"])
    ...     g.save()
    """

    def __init__(self, path: str | os.PathLike, settings: Settings | None = None,
                 *, create: bool = True, lock_timeout: float | None = None):
        """Open (or with ``create``, make) the gallery in folder ``path``.

        ``settings``: default ``Settings()``, with the descriptor index kind
        the gallery was last written with (``saved_vote_index``) and, for an
        IVF index, its vocabulary, probes and nodes (``saved_index_settings``),
        so a reader that is not told searches what the writer built.

        ``lock_timeout``: seconds a write waits for another process writing
        to this gallery before raising :class:`GalleryError` (default:
        ``$MATCHKIT_LOCK_TIMEOUT``, else wait as long as it takes).
        """
        global last_opened
        refuse_while_starting()  # (else a worker importing an unguarded script waits for our lock)
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
            _migrate(self._db)
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"cannot update gallery {self.path}: {e}") from None
        remove_stale_temps(self.path)
        last_opened = self.path
        if settings is None and (saved := self.saved_index_settings()):
            try:
                self.settings = self.settings.with_(**saved)
            except ValueError:  # (a damaged record: the kind alone)
                self.settings = self.settings.with_(vote_index=saved["vote_index"])
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
        #: (``cache.SharedIndexes``, for read-only use), or None.
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
        #: The descriptor index file being written ahead on ``_index_worker``
        #: (``save_ahead``), or None.
        self._saving: concurrent.futures.Future | None = None
        self._index_worker: concurrent.futures.ThreadPoolExecutor | None = None
        #: The descriptor index file being loaded ahead on ``_index_worker``
        #: (``prefetch_indexes``): (the stamp it was checked against, future), or None.
        self._prefetched: tuple[dict, concurrent.futures.Future] | None = None

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

    # -- adding ------------------------------------------------------------
    def add(self, paths: Iterable[str | os.PathLike],
            progress: Callable[[int], None] | None = None) -> AddReport:
        """Add image files (already expanded from folders), skipping unchanged ones.

        ``progress(n)`` is called as files are processed. Returns the ids of
        all readable files in ``paths`` (new, updated or unchanged) and the
        skipped files with reasons. A gallery is the one-shard case of a
        sharded one: the same code (``adding.add_files``) does the work.
        """
        return add_files([self], paths, self.settings, progress, extract=extract_many)
