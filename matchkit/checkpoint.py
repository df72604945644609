"""Places inside long loops where the caller of a run may stop it.

``dedupe(on_progress=...)`` reports each phase, and a server cancels a dedupe
job by raising from that callback; but one phase (the candidate search of
10,000 images) runs for minutes between two reports. The loops inside call
``checkpoint()``: under ``watching(fn)`` (set up by ``dedupe`` on the thread
that runs it) that calls ``fn()`` at most every ``every`` seconds, and ``fn``
raising stops the run there; elsewhere it costs one thread-local lookup.
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


@contextmanager
def watching(fn: Callable[[], None], every: float = 0.5) -> Iterator[None]:
    """Call ``fn`` from this thread's checkpoints, at most every ``every`` seconds."""
    outer = getattr(_local, "watch", None)
    _local.watch = (fn, every, time.monotonic())
    try:
        yield
    finally:
        _local.watch = outer
