"""OpenCV's own thread pool, kept to one thread while matchkit runs its own.

Verification and the frame search run OpenCV calls (matching, warps, blurs,
edges) on matchkit's worker threads, one pair or thumbnail per thread. OpenCV
would also split each call over its own pool of one thread per core: on two
cores the threads then wait on each other. Measured on the hard eval half
(clustering 3,177 images on two cores): with OpenCV's pool, 10.2 s of system
time and 61k involuntary context switches; with one OpenCV thread, 2.8 s and
5.6k, the same wall time and 9 s less CPU. Checking 400 of its images
against the hard calib half: 17 s of system time with OpenCV's pool, 7 s
without, the same results.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable)


@contextmanager
def opencv_threads(n: int) -> Iterator[None]:
    """OpenCV uses ``n`` threads per call inside the block; the previous
    setting comes back after it (the setting is process-wide)."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def single_opencv_thread(fn: F) -> F:
    """``fn`` runs with one OpenCV thread per call (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with opencv_threads(1):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
