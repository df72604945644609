"""A gallery's SQLite database: its tables, making a new one, and bringing
one written by an older release up to date.

SQLite is the gallery's source of truth (see :mod:`matchkit.store.gallery`).
A new database is built complete under a temporary name and linked into
place (:func:`_create_database`), so a 0-byte database is always damage; one
written before the columns of ``_ADDED_COLUMNS`` gets them when it is opened
(:func:`_migrate`). The tables of incremental matching and of extra signals
are made by the first writer that needs them, so read-only galleries open as
before.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from matchkit.util.fs import fsync_dir

#: 2: compact stored features (``store/stored.py``: encoding column of
#: ``local_features``, icon views, pixel digests made at extraction).
SCHEMA_VERSION = 2
DB_NAME = "gallery.sqlite"
#: Seconds a statement waits for another connection's write transaction.
_BUSY_TIMEOUT = 60.0

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

#: Tables of incremental matching (``match/incremental.py``): per image, what its
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

#: Columns added after schema 1 was released, with their SQL types. Galleries
#: written before get them on open (``_migrate``).
_ADDED_COLUMNS = {"jpeg_quality": "INTEGER", "blank": "INTEGER", "icon": "BLOB"}


class GalleryError(Exception):
    """A gallery folder that cannot be opened or used as asked."""


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns of ``_ADDED_COLUMNS`` to a gallery written before them.

    Their values come from decoding the file (JPEG quantisation tables;
    transparency composited over grey, where older versions flattened it
    onto white), so the rows they are added to are marked for one more
    decode: their stored modification time is cleared, and the next
    ``add`` of those files treats them as changed. Runs in one
    transaction, checked again inside it, so two processes opening an
    old gallery at once migrate it once."""
    def missing() -> list[str]:
        have = {r[1] for r in db.execute("PRAGMA table_info(images)")}
        return [c for c in _ADDED_COLUMNS if c not in have]

    def old_local() -> bool:
        return "encoding" not in {r[1] for r in db.execute(
            "PRAGMA table_info(local_features)")}

    if not missing() and not old_local():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for column in missing():
            db.execute(f"ALTER TABLE images ADD COLUMN {column} {_ADDED_COLUMNS[column]}")
        if old_local():  # encoding-1 rows stay readable until re-extracted
            db.execute("ALTER TABLE local_features ADD COLUMN encoding "
                       "INTEGER NOT NULL DEFAULT 1")
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                   ("schema_version", str(SCHEMA_VERSION)))
        db.execute("UPDATE images SET mtime_ns = -1")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


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
