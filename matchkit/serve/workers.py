"""Where gallery work runs: many readers, one writer per gallery.

SQLite connections belong to the thread that opened them, and a gallery's
indexes are loaded once per ``Gallery`` object, so work is not run on
whatever thread answers the request:

* Reads run on a bounded pool of reader threads. Each keeps its own open
  ``Gallery`` per folder (SQLite connections belong to their thread) and the
  labelers fitted on it, but the loaded indexes are shared by all readers
  (``cache.SharedIndexes``): one copy per saved state of the files,
  loaded by the first reader that needs it, freed when no reader holds it.
  All readers open every gallery when the server starts (``Pools.warm``), so
  nothing big is built later under load.
* When ``PRAGMA data_version`` says another connection committed, a reader
  reopens once the writer has *saved* new index files, and takes them as
  saved (``load_indexes(as_saved=True)``), even if more writes committed
  since: loading takes a fraction of a second, rebuilding the local-feature
  index from SQLite takes minutes for 10,000 images. Until then it answers
  from its older state, which is still one committed state: a read never
  sees a half-applied write. Only when the database moved on and the files
  did not for ``MAX_STALE_SECONDS`` (a CLI writer that has not saved) does a
  reader rebuild. Its labelers carry over to the new state when their
  labelled examples did not change (``Labeler.refresh``), so adding
  unlabelled images costs no new fit.
* Writes to a gallery go through one queue served by one writer thread,
  which holds the gallery's writer lock while work is queued. A job is
  answered only once the index files holding it are saved, so a client that
  got its 2xx reads its own write; saves are spaced so that saving takes
  at most ``SAVE_SHARE`` of the writer's time (a write right after a save
  waits for the rest of that gap, and the writes of a burst share one save:
  saving the local-feature index of 10,000 images writes ~120 MB, and every
  save is a new state for the readers to load). Once idle for ``idle_seconds`` it closes the gallery
  (releasing the lock for the CLI).

A request waits for its job with a timeout (``run``); a job still queued
when its request gives up is cancelled, one already running finishes. When
the server is told to stop (SIGTERM), ``Pools.drain`` cancels every queued
read and write, whose requests are answered 503, and refuses new ones;
running jobs finish.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from matchkit.config import Settings
from matchkit.store.gallery import Gallery
from matchkit.index.cache import SharedIndexes
from matchkit.serve.errors import ApiError, library_error, log

_local = threading.local()
#: Longest a reader answers from an older state while the database changes
#: and the index files do not (a writer that does not save), before rebuilding.
MAX_STALE_SECONDS = 30.0
#: Share of its time the writer may spend saving index files: the gap between
#: two saves is at least the last save's duration divided by this (a save of a
#: 10,000-image gallery takes about a second, of a small one milliseconds)...
SAVE_SHARE = 0.2
#: ...and at most this many seconds (the longest a write waits for its answer).
MAX_SAVE_GAP = 10.0
#: Labelers a reader keeps per gallery (one per parameter set asked for, least
#: recently used dropped first): each holds a feature cache.
LABELERS_PER_READER = 4
#: Gallery images whose local features each reader's labeler keeps (~32 KB each).
LABELER_CACHE_IMAGES = 1024
_shared_lock = threading.Lock()
_shared: dict[Path, SharedIndexes] = {}


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_trim = _malloc_trim()


def release_freed_memory() -> None:
    """Give the memory of a dropped gallery state back to the system.

    An index is many mid-sized allocations made on whichever reader thread
    loaded it; freed, they stay in that thread's malloc arena, so without
    this the resident size climbs with every state the readers load and
    drop (a new one after each save of a busy writer)."""
    if _trim is not None:
        _trim(0)


def shared_indexes(path: Path) -> SharedIndexes:
    """The index objects the readers of the gallery at ``path`` share."""
    with _shared_lock:
        return _shared.setdefault(Path(path), SharedIndexes())


class _ReaderEntry:
    def __init__(self, gallery: Gallery, stamps: tuple):
        self.gallery = gallery
        self.version = gallery.data_version()
        #: The saved index files this state was loaded from.
        self.stamps = stamps
        #: When the database was first seen ahead of unchanged files (None: not).
        self.behind_since: float | None = None
        #: Labelers fitted on this gallery, by parameters (LRU, closed when dropped).
        self.labelers: OrderedDict[Any, Any] = OrderedDict()

    def labeler(self, key, make: Callable[[Gallery], Any]):
        """The labeler for ``key`` (fitted by ``make(gallery)`` if this reader
        has none), keeping at most ``LABELERS_PER_READER``."""
        lab = self.labelers.get(key)
        if lab is None:
            lab = self.labelers[key] = make(self.gallery)
            while len(self.labelers) > LABELERS_PER_READER:
                self.labelers.popitem(last=False)[1].close()
        self.labelers.move_to_end(key)
        return lab

    def take_labelers(self, old: "_ReaderEntry") -> None:
        """Carry ``old``'s labelers over to this newer state where their
        labelled examples are unchanged; close the others."""
        for key, lab in old.labelers.items():
            try:
                kept = lab.refresh(self.gallery)
            except Exception:  # fit it again on the next request instead
                log.exception("could not carry a labeler over to the new state")
                kept = False
            if kept:
                self.labelers[key] = lab
            else:
                lab.close()
        old.labelers.clear()

    def close(self) -> None:
        for lab in self.labelers.values():
            lab.close()
        self.labelers.clear()
        self.gallery.close()


def _open_entry(path: Path, settings: Settings, *, rebuild: bool) -> _ReaderEntry | None:
    """The gallery with all its indexes (shared with the other readers) loaded
    from one committed state: the files as last saved, or None when one is
    missing or unusable; with ``rebuild``, from the database itself."""
    g = Gallery(path, settings, create=False)
    g.shared_indexes = shared_indexes(path)
    try:
        stamps = g.saved_index_stamps()  # before loading: a save meanwhile is seen next time
        if g.load_indexes(only_current=not rebuild, as_saved=not rebuild):
            return _ReaderEntry(g, stamps)
    except BaseException:
        g.close()
        raise
    g.close()
    return None


def reader_state(path: Path, settings: Settings) -> _ReaderEntry:
    """This reader thread's open gallery at ``path``: reopened onto the newest
    saved state after a write (see the module docstring)."""
    entries: dict[Path, _ReaderEntry] = _local.__dict__.setdefault("entries", {})
    entry = entries.get(path)
    if entry is None:
        entry = (_open_entry(path, settings, rebuild=False)
                 or _open_entry(path, settings, rebuild=True))
        entries[path] = entry
        return entry
    version = entry.gallery.data_version()
    if version == entry.version:
        return entry
    now = time.monotonic()
    if entry.gallery.saved_index_stamps() != entry.stamps:
        fresh = _open_entry(path, settings, rebuild=False)
    elif (now - (entry.behind_since or now) >= MAX_STALE_SECONDS
          and not _writer_busy(path)):  # (our own writer saves when it is done)
        fresh = _open_entry(path, settings, rebuild=True)
    else:
        entry.behind_since = entry.behind_since or now
        return entry
    if fresh is not None:
        fresh.take_labelers(entry)
        entry.close()
        entry = entries[path] = fresh
        release_freed_memory()
    return entry


def forget_reader_state() -> None:
    """Close this thread's galleries (a reader thread ending)."""
    for entry in _local.__dict__.pop("entries", {}).values():
        entry.close()


#: This process's writers by gallery path (a reader does not rebuild while one works).
_writers: dict[Path, "Writer"] = {}


def _writer_busy(path: Path) -> bool:
    w = _writers.get(path)
    return w is not None and w.busy


class Writer:
    """The single writer thread of one gallery."""

    def __init__(self, path: Path, settings: Settings, idle_seconds: float = 1.0):
        self.path = path
        #: True while a job runs or waits.
        self.busy = False
        self.settings = settings
        self.idle_seconds = idle_seconds
        self._jobs: queue.Queue = queue.Queue()
        self._last_save = time.monotonic() - MAX_SAVE_GAP  # the first write saves at once
        self._save_gap = 0.0
        self._thread = threading.Thread(target=self._loop, name=f"matchkit-writer-{path.name}",
                                        daemon=True)
        self._thread.start()
        _writers[path] = self

    def submit(self, fn: Callable[[Gallery], Any]) -> Future:
        fut: Future = Future()
        self.busy = True
        self._jobs.put((fn, fut))
        return fut

    def drain(self) -> None:
        """Cancel every queued job (its request is answered 503)."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:
                self._jobs.put(None)
                return
            job[1].cancel()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        g: Gallery | None = None
        #: Jobs done (committed) whose answers wait for the next save.
        held: list[tuple[Future, Any]] = []
        while True:
            if held:  # save when the gap since the last one is over
                timeout = max(0.0, self._last_save + self._save_gap - time.monotonic())
            else:
                timeout = self.idle_seconds if g is not None else None
            try:
                job = self._jobs.get(timeout=timeout)
            except queue.Empty:
                if held:
                    self._save(g)
                    self._answer(held)
                else:
                    g = self._close(g)
                continue
            if job is None:
                self._close(g)
                self._answer(held)
                return
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            self.busy = True
            g, outcome = self._run(g, fn)
            if isinstance(outcome, BaseException):
                self._answer(held)  # committed before the failed job
                fut.set_exception(outcome)
            else:
                held.append((fut, outcome[0]))
                if time.monotonic() - self._last_save >= self._save_gap:
                    self._save(g)
                    self._answer(held)
            self.busy = bool(held) or not self._jobs.empty()

    @staticmethod
    def _answer(held: list[tuple[Future, Any]]) -> None:
        for fut, result in held:
            fut.set_result(result)
        held.clear()

    def _run(self, g: Gallery | None, fn) -> tuple[Gallery | None, Any]:
        """Run one job (its error goes to its request, and the gallery is closed
        unsaved: its in-memory indexes may not match what was committed)."""
        try:
            if g is None:
                g = Gallery(self.path, self.settings, create=False)
                g.load_indexes()  # all of them, so every save stamps every file
            return g, (fn(g),)
        except BaseException as e:
            return self._close(g, save=False), e

    def _save(self, g: Gallery) -> None:
        start = time.monotonic()
        try:
            g.load_indexes()
            g.save()
        except Exception:  # committed all the same; readers rebuild instead
            log.exception("could not save the index files of %s", self.path)
        self._last_save = time.monotonic()
        self._save_gap = min(MAX_SAVE_GAP, (self._last_save - start) / SAVE_SHARE)

    def _close(self, g: Gallery | None, save: bool = True) -> None:
        if g is None:
            return None
        try:
            if save:
                self._save(g)
        finally:
            g.close(save=False)  # saved above when it should be
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
        #: Reads submitted and not yet finished (cancelled by ``drain``).
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self.draining = False

    def read(self, name: str, fn: Callable[[_ReaderEntry], Any]) -> Future:
        self._refuse_when_draining()
        path = self.paths[name]
        fut = self.readers.submit(lambda: fn(reader_state(path, self.settings)))
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: Future) -> None:
        with self._lock:
            self._pending.discard(fut)

    def write(self, name: str, fn: Callable[[Gallery], Any]) -> Future:
        self._refuse_when_draining()
        return self.writers[name].submit(fn)

    def _refuse_when_draining(self) -> None:
        if self.draining:
            raise ApiError(503, "the server is shutting down")

    def warm(self) -> Future:
        """Open every served gallery on every reader thread (in the background),
        so each reader's state is built before the load rather than under it:
        one task per thread, held at a barrier until all have started."""
        n = self.readers._max_workers
        barrier = threading.Barrier(n)

        def open_all() -> None:
            try:
                barrier.wait(timeout=60)  # all n tasks on n different threads
            except threading.BrokenBarrierError:
                pass
            for path in self.paths.values():
                try:
                    reader_state(path, self.settings)
                except Exception:  # the request that needs it will say why
                    log.exception("could not open %s", path)
        futs = [self.readers.submit(open_all) for _ in range(n)]
        done: Future = Future()
        remaining = [n]

        def one_done(_):
            with self._lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set_result(None)
        for f in futs:
            f.add_done_callback(one_done)
        return done

    def drain(self) -> None:
        """Stop taking work: refuse new requests and cancel the queued ones
        (their requests get 503); running reads and writes finish."""
        self.draining = True
        with self._lock:
            pending = list(self._pending)
        for fut in pending:
            fut.cancel()  # only succeeds for reads not yet started
        for w in self.writers.values():
            w.drain()

    def close(self) -> None:
        self.drain()
        for w in self.writers.values():
            w.stop()
            _writers.pop(w.path, None)
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
    except (asyncio.CancelledError, CancelledError):
        if not fut.cancelled():
            raise  # this request itself was cancelled
        raise ApiError(503, "the server is shutting down; try again later") from None
    except ApiError:
        raise
    except Exception as e:
        known = library_error(e)
        if known is None:
            raise
        raise known from None
