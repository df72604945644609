"""Places inside long loops where the caller of a run may stop it.

``dedupe(on_progress=...)`` reports each phase, and a server cancels a dedupe
job by raising from that callback; but one phase (the candidate search of
10,000 images) runs for minutes between two reports. The loops inside call
``checkpoint()``: under ``watching(fn)`` (set up by ``dedupe`` on the thread
that runs it) that calls ``fn()`` at most every ``every`` seconds, and ``fn``
raising stops the run there; elsewhere it costs one thread-local lookup.
``report(phase, done, total)`` tells the same watcher (given ``on_progress``)
how far a phase has got from code that has no callback of its own (the
matchers' candidate searches); elsewhere it does nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_local = threading.local()


def checkpoint() -> None:
    """Let the watcher of this thread's run look in (and stop it by raising)."""
    watch = getattr(_local, "watch", None)
    if watch is not None:
        fn, every, last = watch
        now = time.monotonic()
        if now - last >= every:
            _local.watch = (fn, every, now)
            fn()


def report(phase: str, done: int, total: int) -> None:
    """Progress inside a phase, for this thread's watcher (if it asked for it)."""
    fn = getattr(_local, "report", None)
    if fn is not None:
        fn(phase, done, total)


@contextmanager
def watching(fn: Callable[[], None], every: float = 0.5,
             on_progress: Callable[[str, int, int], None] | None = None) -> Iterator[None]:
    """Call ``fn`` from this thread's checkpoints, at most every ``every``
    seconds, and ``on_progress`` from its ``report`` calls."""
    outer = getattr(_local, "watch", None), getattr(_local, "report", None)
    _local.watch = (fn, every, time.monotonic())
    _local.report = on_progress
    try:
        yield
    finally:
        _local.watch, _local.report = outer
