"""Extracting many files: :func:`extract_many` and its worker processes.

Large batches run in a pool of worker processes (a decoder that kills its
worker skips only that file), small ones on threads of the caller. Kept
apart from :mod:`matchkit.features.record`, which extracts one file, because
this is process machinery: start methods, priorities, crash recovery. The
tunables (``PROCESS_POOL_MIN_FILES``, ``EXTRACT_IN_WORKERS``,
``IMAGES_AHEAD``, ``WORKER_NICE``) are read from this module, so set them
here (``matchkit.features`` only re-exports their values).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from matchkit.util.spawned import GUARD_ADVICE, WorkerStartError
from matchkit.config import Settings
from matchkit.io.load import ImageLoadError
from matchkit.features.record import ImageRecord, extract


def _extract_or_reason(path: str, settings: Settings
                       ) -> ImageRecord | tuple[str, str, int | None, int | None]:
    """Process-pool worker: failures travel back as (path, reason, size, mtime_ns)."""
    try:
        return extract(path, settings)
    except ImageLoadError as e:
        return (e.path, e.reason, e.size, e.mtime_ns)


#: Below this many files a process pool costs more to start than it saves:
#: smaller batches (and ``--workers 1``) run in this process, unless
#: ``EXTRACT_IN_WORKERS``.
PROCESS_POOL_MIN_FILES = 200

#: Small batches (and one worker) in a worker process too. A decoder's
#: segfault in the caller's process cannot be caught: it ends the run. Off
#: by default: each call would start a forkserver worker (cost not yet
#: measured), and with it on, a gallery test of a writer killed mid-save left
#: a temp file behind (not yet understood). Large batches always run in
#: worker processes, where a crash skips only its file.
EXTRACT_IN_WORKERS = False

#: Tests only: worker processes kill themselves with SIGSEGV on the file of
#: this name, standing in for a decoder that crashes. Read once in the parent
#: and handed to each worker, so it works whatever the start method. Unset in
#: production, where it does nothing.
CRASH_HOOK_ENV = "MATCHKIT_TEST_CRASH_ON"

#: Files the extraction pool may have out ahead of its caller (at least two
#: chunks per worker); see ``_in_pool``. With 4,096, a 10,000-image
#: ``Gallery.add`` took 118.6 s and peaked at 297 MiB; with 1,024, 121-129 s:
#: workers that run beside the writer for the whole add slow it (its CPU
#: time rose from 92-97 s to 99-103 s; shared caches, probably), while
#: workers far ahead finish sooner and leave it the machine.
IMAGES_AHEAD = 4096

#: How much lower extraction workers run than their caller (``os.nice``
#: increment); 0 keeps them equal. See ``_yield_to_caller``.
WORKER_NICE = 10
_crash_on: str | None = None


def _pool_context():
    """Worker processes start from a forkserver (spawn where there is none),
    never by forking this process: a child forked while one of this process's
    native thread pools held a lock waits for it for ever (seen: ``dedupe``
    in a process that had run label and query work before; no Python-level
    check sees those threads). The server imports this module once, so each
    worker still starts in milliseconds."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _one_thread_each() -> None:
    """Worker processes already use every core between them: OpenCV's own
    thread pool in each would only oversubscribe the cores."""
    import cv2

    cv2.setNumThreads(1)


def _worker_init(crash_on: str | None) -> None:
    global _crash_on
    _crash_on = crash_on
    _one_thread_each()
    _yield_to_caller()


def _yield_to_caller() -> None:
    """Workers run at a lower priority than the process that takes their
    results. That process (the gallery's writer) is the slower side, and at
    equal priority it shares the cores with the workers, so the whole add
    waits on it; niced workers take the time it leaves. A 10,000-image
    ``Gallery.add`` on two cores: 133.1 s at equal priority, 117.1-117.2 s
    with the workers niced by 10 (main-process CPU 104.8 s, 92-94 s)."""
    if WORKER_NICE and hasattr(os, "nice"):
        try:
            os.nice(WORKER_NICE)
        except OSError:
            pass


def _in_worker(path: str, settings: Settings):
    """Extraction as a worker process runs it (never in the caller's process)."""
    if _crash_on is not None and os.path.basename(path) == _crash_on:
        os.kill(os.getpid(), signal.SIGSEGV)
    return _extract_or_reason(path, settings)


def _extract_chunk(paths: list[str], settings: Settings) -> list:
    return [_in_worker(p, settings) for p in paths]


#: What a :class:`_SoloWorker` process sends once it is ready for files.
_READY = "ready"


def _solo_loop(conn, settings: Settings, crash_on: str | None) -> None:
    """Body of a :class:`_SoloWorker` process: one path in, one result out."""
    _worker_init(crash_on)
    conn.send(_READY)
    while True:
        try:
            path = conn.recv()
        except EOFError:
            return
        if path is None:
            return
        conn.send(_in_worker(path, settings))


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            how = f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"signal {-exitcode}"
    else:
        how = f"exit code {exitcode}"
    return f"the decoder crashed on this file (worker process died: {how})"


class _SoloWorker:
    """One worker process fed one file at a time. A segfault or an OOM kill
    cannot be caught inside the process it hits; here it only ends this
    worker, and the file it was given is the one that killed it."""

    def __init__(self, settings: Settings, crash_on: str | None):
        self._settings, self._crash_on = settings, crash_on
        self._proc = None

    def _start(self) -> None:
        ctx = _pool_context()
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_solo_loop, args=(child, self._settings, self._crash_on),
                                 daemon=True)
        self._proc.start()
        child.close()
        try:  # (a worker that dies before it is ready died of no file)
            ready = self._conn.recv()
        except (EOFError, OSError):
            ready = None
        if ready != _READY:
            raise WorkerStartError(f"worker processes could not start (exit code "
                                   f"{self._ended()}): {GUARD_ADVICE}")

    def _ended(self) -> int | None:
        """Exit code of the worker, which has died (or is ending); a fresh
        one is started when next needed."""
        self._proc.join()
        code = self._proc.exitcode
        self._conn.close()
        self._proc = None
        return code

    def run(self, path: str):
        """The worker's result for ``path``; an :class:`ImageLoadError` if the
        worker died on it (a fresh worker takes the next file)."""
        try:  # stamped with the file's state when it was read, as extract() does
            st = os.stat(path)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        except OSError:
            size = mtime_ns = None
        if self._proc is None:
            self._start()
        try:
            self._conn.send(path)
            return self._conn.recv()
        except (EOFError, OSError):
            return ImageLoadError(path, _death(self._ended()), size=size, mtime_ns=mtime_ns)

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
        self._proc = None


def _one_at_a_time(indices: list[int], paths: list[str], settings: Settings,
                   crash_on: str | None) -> Iterator[tuple[int, object]]:
    solo = _SoloWorker(settings, crash_on)
    try:
        for i in indices:
            yield i, solo.run(paths[i])
    finally:
        solo.close()


def _in_pool(paths: list[str], settings: Settings, n: int,
             crash_on: str | None) -> Iterator[tuple[int, object]]:
    """(index, result) for every path, from a pool of ``n`` worker processes;
    not necessarily in input order.

    At most ``IMAGES_AHEAD`` files (and at least two chunks per worker) are
    out at once: the caller (the gallery's writer) is slower than the
    workers, and results it has not taken yet wait in this process's memory
    (1.6 GB of them at 50,000 images when every chunk was submitted at once).

    A worker that dies (segfault, OOM kill) breaks the whole pool and fails
    every unfinished chunk. Workers take chunks in submission order, so the
    chunks they held are the first ``n`` unfinished ones: those files run
    again one at a time in a single worker (which names the culprit), the
    rest go to a fresh pool. Each round settles at least one chunk for good,
    so a culprit missed by that bound only costs another round.
    """
    size = max(1, min(32, len(paths) // (n * 8)))
    todo = [list(range(i, min(i + size, len(paths)))) for i in range(0, len(paths), size)]
    ahead = max(2 * n, IMAGES_AHEAD // size)
    while todo:
        pool = ProcessPoolExecutor(max_workers=n, mp_context=_pool_context(),
                                   initializer=_worker_init, initargs=(crash_on,))
        broken: list[list[int]] = []
        pending = collections.deque(todo)
        out: collections.deque = collections.deque()
        dead = False  # the pool broke before a chunk could be submitted
        try:
            while out or (pending and not broken and not dead):
                while pending and len(out) < ahead and not broken and not dead:
                    chunk = pending.popleft()
                    try:
                        future = pool.submit(_extract_chunk, [paths[i] for i in chunk], settings)
                    except BrokenProcessPool:
                        # A worker died since the last result came back: this
                        # chunk was never sent, so it waits for the next pool.
                        pending.appendleft(chunk)
                        dead = True
                        break
                    out.append((chunk, future))
                if not out:
                    break
                chunk, future = out.popleft()
                try:
                    results = future.result()
                except BrokenProcessPool:
                    broken.append(chunk)
                    continue
                yield from zip(chunk, results)
        finally:
            pool.shutdown(cancel_futures=True)
        broken.extend(pending)  # never submitted: the next pool takes them
        held, todo = broken[:n], broken[n:]
        yield from _one_at_a_time([i for c in held for i in c], paths, settings, crash_on)


def _in_threads(paths: list[str], settings: Settings, n: int):
    """(index, result) of each file, in order, from ``n`` threads of this
    process: for batches too small to start worker processes for. Decoding
    and ORB release the GIL: 50 scale-set images took 0.43 s on two threads
    against 0.78-1.03 s on one."""
    pool = ThreadPoolExecutor(max_workers=n)
    try:
        yield from enumerate(pool.map(lambda p: _extract_or_reason(p, settings), paths))
    finally:
        pool.shutdown(cancel_futures=True)


def extract_many(
    paths: Iterable[str | os.PathLike],
    settings: Settings = Settings(),
    on_done: Callable[[], None] | None = None,
) -> Iterator[tuple[str, ImageRecord | ImageLoadError]]:
    """Extract records for many files in worker processes, yielding in input order.

    Failures are yielded as :class:`ImageLoadError` values, not raised, so one
    bad file never stops the others. That includes a decoder that kills its
    worker process (segfault, OOM kill): only that file is skipped. Large
    batches use a pool of worker processes (the Python part of decoding and
    hashing holds the GIL, so threads scale poorly); small ones run on threads
    of this process, where such a crash ends the run, unless
    ``EXTRACT_IN_WORKERS``.
    """
    paths = [str(p) for p in paths]
    if not paths:
        return
    crash_on = os.environ.get(CRASH_HOOK_ENV) or None
    n = min(settings.n_workers(), len(paths))
    if n > 1 and len(paths) >= PROCESS_POOL_MIN_FILES:
        results = _in_pool(paths, settings, n, crash_on)
    elif EXTRACT_IN_WORKERS:
        results = _one_at_a_time(list(range(len(paths))), paths, settings, crash_on)
    elif n > 1:
        results = _in_threads(paths, settings, n)
    else:
        results = ((i, _extract_or_reason(p, settings)) for i, p in enumerate(paths))
    # Results arrive out of order after a worker dies; ids depend on order.
    waiting: dict[int, object] = {}
    next_i = 0
    try:
        for i, result in results:
            waiting[i] = result
            while next_i in waiting:
                result = waiting.pop(next_i)
                if on_done:
                    on_done()
                if isinstance(result, tuple):
                    result = ImageLoadError(result[0], result[1], size=result[2],
                                            mtime_ns=result[3])
                yield paths[next_i], result
                next_i += 1
    finally:
        results.close()
