"""Where gallery work runs: many readers, one writer per gallery.

SQLite connections belong to the thread that opened them, and a gallery's
indexes are loaded once per ``Gallery`` object, so work is not run on
whatever thread answers the request:

* Reads run on a bounded pool of reader threads. Each keeps its own open
  ``Gallery`` per folder (and the labelers fitted on it), so its indexes are
  loaded once. When ``PRAGMA data_version`` says another connection
  committed, the reader reopens once the index files are saved for the new
  state (loading them takes milliseconds; rebuilding the local-feature
  index from SQLite takes seconds per thousand images), or after
  ``MAX_STALE_SECONDS`` whatever the files say (e.g. a CLI writer that has
  not saved). Until then it answers from its older state, which is still one
  committed state: a read never sees a half-applied write. A reopen loads
  every index in one SQLite read snapshot and gives up (trying again on its
  next request) rather than rebuild when a file is not the one that
  snapshot names, e.g. because the writer was replacing it just then.
* Writes to a gallery go through one queue served by one writer thread,
  which holds the gallery's writer lock while work is queued. When the
  queue is empty after a job (or every ``SAVE_EVERY`` seconds while jobs
  keep coming) it saves the index files *before* the job is answered, so a
  client that got its 2xx reads its own write when no other writes queue
  up; once idle for ``idle_seconds`` it closes the gallery (releasing the
  lock for the CLI).

A request waits for its job with a timeout (``run``); a job still queued
when its request gives up is cancelled, one already running finishes.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..config import Settings
from ..gallery import Gallery
from .errors import ApiError, library_error, log

_local = threading.local()
#: Longest a reader answers from an older state while the index files lag.
MAX_STALE_SECONDS = 10.0
#: Longest the writer goes without saving the index files while jobs keep coming.
SAVE_EVERY = 2.0


def _open_loaded(path: Path, settings: Settings, *, only_current: bool) -> Gallery | None:
    """A gallery with all its indexes loaded from one committed state; with
    ``only_current``, None instead of rebuilding an index whose file lags
    behind the database (or was replaced by the writer meanwhile)."""
    g = Gallery(path, settings, create=False)
    try:
        if g.load_indexes(only_current=only_current):
            return g
    except BaseException:
        g.close()
        raise
    g.close()
    return None


class _ReaderEntry:
    def __init__(self, gallery: Gallery):
        self.gallery = gallery
        self.version = gallery.data_version()
        #: When this state was first seen to be behind the database (None: current).
        self.behind_since: float | None = None
        #: Per-thread caches built on this gallery state (labelers), closed with it.
        self.cache: dict[Any, Any] = {}

    def close(self) -> None:
        for value in self.cache.values():
            close = getattr(value, "close", None)
            if close:
                close()
        self.gallery.close()


def reader_state(path: Path, settings: Settings) -> _ReaderEntry:
    """This reader thread's open gallery at ``path``: reopened onto the newest
    committed state once its index files are saved (see the module docstring)."""
    entries: dict[Path, _ReaderEntry] = _local.__dict__.setdefault("entries", {})
    entry = entries.get(path)
    if entry is None:
        entry = entries[path] = _ReaderEntry(_open_loaded(path, settings, only_current=False))
    elif entry.gallery.data_version() != entry.version:
        now = time.monotonic()
        entry.behind_since = entry.behind_since or now
        waited_enough = now - entry.behind_since >= MAX_STALE_SECONDS
        fresh = _open_loaded(path, settings, only_current=not waited_enough)
        if fresh is not None:
            entry.close()
            entry = entries[path] = _ReaderEntry(fresh)
    return entry


def forget_reader_state() -> None:
    """Close this thread's galleries (a reader thread ending)."""
    for entry in _local.__dict__.pop("entries", {}).values():
        entry.close()


class Writer:
    """The single writer thread of one gallery."""

    def __init__(self, path: Path, settings: Settings, idle_seconds: float = 1.0):
        self.path = path
        self.settings = settings
        self.idle_seconds = idle_seconds
        self._jobs: queue.Queue = queue.Queue()
        self._last_save = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=f"matchkit-writer-{path.name}",
                                        daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Gallery], Any]) -> Future:
        fut: Future = Future()
        self._jobs.put((fn, fut))
        return fut

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        g: Gallery | None = None
        while True:
            try:
                job = self._jobs.get(timeout=self.idle_seconds if g is not None else None)
            except queue.Empty:
                g = self._close(g)
                continue
            if job is None:
                self._close(g)
                return
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            g, outcome = self._run(g, fn)
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome[0])

    def _run(self, g: Gallery | None, fn) -> tuple[Gallery | None, Any]:
        """Run one job, then save the index files when no other job waits or the
        last save is ``SAVE_EVERY`` seconds old (so readers load, rather than
        rebuild, what was written; a client hears of its write after that)."""
        try:
            if g is None:
                g = Gallery(self.path, self.settings, create=False)
                g.load_indexes()  # all of them, so every save stamps every file
            result = fn(g)
        except BaseException as e:  # the job's error goes to its request
            return self._close(g, save=False), e
        if self._jobs.empty() or time.monotonic() - self._last_save >= SAVE_EVERY:
            self._save(g)
        return g, (result,)

    def _save(self, g: Gallery) -> None:
        try:
            g.load_indexes()
            g.save()
        except Exception:  # committed all the same; readers rebuild instead
            log.exception("could not save the index files of %s", self.path)
        self._last_save = time.monotonic()

    def _close(self, g: Gallery | None, save: bool = True) -> None:
        if g is None:
            return None
        try:
            if save:
                self._save(g)
        finally:
            g.close()
        return None


class Pools:
    """The reader pool and one writer per served gallery."""

    def __init__(self, galleries: dict[str, Path], settings: Settings, readers: int,
                 idle_seconds: float = 1.0):
        self.settings = settings
        self.readers = ThreadPoolExecutor(max_workers=readers,
                                          thread_name_prefix="matchkit-reader")
        self.writers = {name: Writer(path, settings, idle_seconds)
                        for name, path in galleries.items()}
        self.paths = galleries

    def read(self, name: str, fn: Callable[[_ReaderEntry], Any]) -> Future:
        path = self.paths[name]
        return self.readers.submit(lambda: fn(reader_state(path, self.settings)))

    def write(self, name: str, fn: Callable[[Gallery], Any]) -> Future:
        return self.writers[name].submit(fn)

    def close(self) -> None:
        for w in self.writers.values():
            w.stop()
        n = self.readers._max_workers
        # Each reader thread closes its own galleries (their connections are its own).
        barrier = threading.Barrier(n)

        def forget():
            forget_reader_state()
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
        for _ in range(n):
            self.readers.submit(forget)
        self.readers.shutdown(wait=True)


async def run(fut: Future, timeout: float) -> Any:
    """The job's result, or an ApiError: 504 after ``timeout`` seconds, the
    library's request errors as 4xx; anything else propagates (a 500)."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise ApiError(504, f"the request took longer than {timeout:g} s") from None
    except ApiError:
        raise
    except Exception as e:
        known = library_error(e)
        if known is None:
            raise
        raise known from None
