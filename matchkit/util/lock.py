"""One writer at a time per gallery: an OS file lock beside the database.

Two processes that both add images to a gallery would each keep their own
in-memory copy of the USearch indexes and each save it, so the last one to
save would overwrite the other's additions. SQLite serialises single
transactions, not whole runs, so the writers take an exclusive ``flock`` on
``G/gallery.lock`` first and hold it until the gallery is closed. Readers
(``check``, ``search``, ``label``) take no lock: SQLite's WAL journal gives
them a consistent snapshot and every cache file is verified against the
database before use.

The OS releases a ``flock`` when its process dies, so a killed writer never
leaves a stale lock behind. Within one process, several ``Gallery`` objects
on the same folder share the lock (a process cannot wait for itself); their
index stamps stay truthful through the generation tracking in
``store/gallery_indexes.py``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

try:  # POSIX; elsewhere galleries rely on SQLite's locking and the generation checks
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "gallery.lock"
#: Environment variable: seconds a writer waits for another before giving up.
TIMEOUT_ENV = "MATCHKIT_LOCK_TIMEOUT"
_POLL = 0.05

#: Locks this process holds: resolved folder -> [fd, users, pid].
_HELD: dict[str, list] = {}
_GUARD = threading.Lock()


class LockTimeout(Exception):
    """Another process kept the gallery's writer lock longer than we would wait."""


def default_timeout() -> float | None:
    """Seconds to wait for another writer: ``$MATCHKIT_LOCK_TIMEOUT``, else forever."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _say(message: str) -> None:
    print(f"matchkit: {message}", file=sys.stderr, flush=True)


class WriterLock:
    """The exclusive writer lock of one gallery folder (acquired lazily, re-entrant)."""

    def __init__(self, folder: str | os.PathLike, timeout: float | None = None,
                 on_wait: Callable[[str], None] = _say):
        self.folder = Path(folder)
        self.timeout = timeout
        self.on_wait = on_wait
        self._key = str(self.folder.resolve())
        self.held = False

    def acquire(self) -> None:
        """Take the lock (no-op if this object holds it); wait for another
        writer, telling stderr once, or raise :class:`LockTimeout`."""
        if self.held or fcntl is None:
            self.held = True
            return
        with _GUARD:
            entry = _HELD.get(self._key)
            if entry is not None and entry[2] == os.getpid():
                entry[1] += 1
                self.held = True
                return
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._wait(fd)
        except BaseException:
            os.close(fd)
            raise
        try:  # who holds it, for the message another writer prints
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        with _GUARD:
            _HELD[self._key] = [fd, 1, os.getpid()]
        self.held = True

    def _wait(self, fd: int) -> None:
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - start
            holder = _holder(fd)
            if self.timeout is not None and waited >= self.timeout:
                raise LockTimeout(
                    f"gallery {self.folder} is being written by another matchkit{holder}; "
                    f"gave up after {waited:.0f} s (wait longer with {TIMEOUT_ENV}=SECONDS, "
                    "or try again when it has finished)")
            if not told:
                self.on_wait(f"waiting for another matchkit{holder} writing to "
                             f"{self.folder} ...")
                told = True
            time.sleep(_POLL)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if fcntl is None:
            return
        with _GUARD:
            entry = _HELD.get(self._key)
            if entry is None or entry[2] != os.getpid():
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _HELD[self._key]
        try:
            fcntl.flock(entry[0], fcntl.LOCK_UN)
        finally:
            os.close(entry[0])


def _holder(fd: int) -> str:
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    return f" (pid {pid})" if pid else ""
