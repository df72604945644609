"""The worker threads and processes of a ``PairMatcher``, for its lifetime.

Split from ``pairs.py`` (which imports these names back): ``MatcherPools``
is mixed into ``PairMatcher`` and reads the ``settings`` and ``sizes`` the
matcher sets up; every part of the matcher's work (content features, icons,
verification, settling relations, hashing pictures inside frames) runs on
these pools.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from matchkit import features as _features


#: Runs of this many images or more use worker processes (``PairMatcher._processes``).
PROCESSES_FROM = 1000
#: Smallest batch of work sent to the worker processes.
PROCESS_BATCH = 256


class MatcherPools:
    """Worker pools of a matcher (mixed into ``pairs.PairMatcher``): threads
    for work outside the GIL, processes for large batches whose Python glue
    holds it; both ended by ``close``."""

    @property
    def _pool(self) -> ThreadPoolExecutor | None:
        """One worker pool for the matcher's lifetime, ended by ``close``."""
        if self.settings.n_workers() <= 1:
            return None
        if getattr(self, "_threads", None) is None:
            self._threads = ThreadPoolExecutor(max_workers=self.settings.n_workers())
        return self._threads

    @property
    def _processes(self) -> ProcessPoolExecutor | None:
        """Worker processes for the matcher's lifetime (ended by ``close``),
        for large batches of work whose Python glue holds the GIL (settling
        relations: thousands of thumbnail comparisons; hashing the pictures
        inside frames), where two threads did the work of 1.0-1.3 cores (hard
        eval half). None with one worker, in runs under ``PROCESSES_FROM``
        images (starting processes would cost more than it saves), and after
        a worker died (``_in_processes`` then works here)."""
        if (self.settings.n_workers() <= 1 or len(self.sizes) < PROCESSES_FROM
                or getattr(self, "_processes_broken", False)):
            return None
        if getattr(self, "_procs", None) is None:
            self._procs = ProcessPoolExecutor(
                max_workers=self.settings.n_workers(), mp_context=_features._pool_context(),
                initializer=_features._one_thread_each)
        return self._procs

    def _in_processes(self, fn: Callable[[list], list], items: list) -> list:
        """``fn(part)`` over parts of ``items`` in the worker processes, the
        results joined in order; a part whose worker died runs here."""
        procs = self._processes
        if procs is None:
            return fn(items)
        size = max(1, -(-len(items) // (4 * self.settings.n_workers())))
        parts = [items[i:i + size] for i in range(0, len(items), size)]
        futures = [procs.submit(fn, part) for part in parts]
        out = []
        for part, future in zip(parts, futures):
            try:
                out += future.result()
            except BrokenProcessPool:
                self._processes_broken = True
                out += fn(part)
        return out

    def close(self) -> None:
        if getattr(self, "_threads", None) is not None:
            self._threads.shutdown()
            self._threads = None
        if getattr(self, "_procs", None) is not None:
            self._procs.shutdown(cancel_futures=True)
            self._procs = None
