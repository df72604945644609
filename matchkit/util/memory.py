"""Freed heap memory handed back to the operating system after an add's batches.

Adding images passes every image's features through this process: each
arrives from a decoding worker as a pickle, is unpickled into arrays, written
to SQLite and to the descriptor index, then freed. The frees leave holes
between the allocations that stay (the descriptor graph, stored records), and
glibc's allocator returns only the free memory at the top of its heap to the
system on its own; the holes stay resident. Measured on the scale set's
distinct pictures (first ``dedupe --gallery`` run, one process): after adding
10,000 images the process held 640 MB, of which ``malloc_trim`` gave back
330 MB; with a call after every written batch the whole run peaked at 943 MB
instead of 1,258 MB (50,000 images: 3,967 instead of 5,545). The 40 calls of
that add took 0.05 s in all. Later stages gained little from it (at 4,000
images: 15-25 MB a call) and reuse their own holes: trimming those only makes
the pages fault in again.

Elsewhere than glibc (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the C library this process runs on
    except (OSError, AttributeError):  # (not glibc)
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_memory() -> bool:
    """Return the allocator's free pages to the system (glibc ``malloc_trim(0)``:
    free chunks inside the heap too, not only at its top). True if the C
    library offers it. Safe from any thread: it takes each arena's lock."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


#: glibc ``mallopt`` parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Allocations from this size up get their own pages, handed back when freed.
STEADY_MMAP_THRESHOLD = 128 * 1024
#: Heaps that threads allocate from, at most.
STEADY_ARENAS = 2


def steady_heap(mmap_threshold: int = STEADY_MMAP_THRESHOLD,
                arenas: int = STEADY_ARENAS) -> bool:
    """Keep a long-lived process's heap from holding freed memory (glibc
    ``mallopt``). glibc serves allocations of 128 KiB and more from their
    own pages, but after such a block is freed it raises that threshold to
    the block's size (up to 32 MiB), so the next large transient arrays land
    inside the heap and leave holes there that ``release_memory`` cannot
    always return. A fixed threshold keeps them out; fewer arenas keep each
    thread's frees from stranding pages in a heap of its own. For the Ray
    driver, which holds a collection's pairs for the whole run while steps
    come and go around them. True if the C library took both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) & bool(mallopt(_M_ARENA_MAX, int(arenas)))
