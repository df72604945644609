"""Where gallery work runs: many readers, one writer per gallery.

SQLite connections belong to the thread that opened them, and a gallery's
indexes are loaded once per ``Gallery`` object, so work is not run on
whatever thread answers the request:

* Reads run on a bounded pool of reader threads. Each keeps its own open
  ``Gallery`` per folder (and the labelers fitted on it) and reopens it when
  ``PRAGMA data_version`` says another connection committed, so a read sees
  one committed state (SQLite WAL) and never a half-applied write.
* Writes to a gallery go through one queue served by one writer thread,
  which holds the gallery's writer lock while work is queued and, once idle
  for ``idle_seconds``, saves the index files and closes the gallery
  (releasing the lock for the CLI).

A request waits for its job with a timeout (``run``); a job still queued
when its request gives up is cancelled, one already running finishes.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..config import Settings
from ..gallery import Gallery
from .errors import ApiError, library_error

_local = threading.local()


class _ReaderEntry:
    def __init__(self, gallery: Gallery):
        self.gallery = gallery
        self.version = gallery.data_version()
        #: Per-thread caches built on this gallery state (labelers), closed with it.
        self.cache: dict[Any, Any] = {}

    def close(self) -> None:
        for value in self.cache.values():
            close = getattr(value, "close", None)
            if close:
                close()
        self.gallery.close()


def reader_state(path: Path, settings: Settings) -> _ReaderEntry:
    """This reader thread's open gallery at ``path``, current with the database."""
    entries: dict[Path, _ReaderEntry] = _local.__dict__.setdefault("entries", {})
    entry = entries.get(path)
    if entry is not None and entry.gallery.data_version() != entry.version:
        entry.close()
        entry = None
    if entry is None:
        entry = entries[path] = _ReaderEntry(Gallery(path, settings, create=False))
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
            try:
                if g is None:
                    g = Gallery(self.path, self.settings, create=False)
                fut.set_result(fn(g))
            except BaseException as e:  # the job's error goes to its request
                fut.set_exception(e)
                g = self._close(g, save=False)

    def _close(self, g: Gallery | None, save: bool = True) -> None:
        if g is None:
            return None
        try:
            if save:
                g.save()
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
