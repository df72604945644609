"""``_memory.release_memory``: freed heap holes go back to the system."""

import ctypes
import sys

import numpy as np
import pytest

from matchkit._memory import release_memory


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version
    except AttributeError:
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(),
                    reason="malloc_trim is glibc's")
def test_release_memory_returns_holes_between_kept_allocations():
    # What an add does: blocks below the mmap threshold (features of one
    # image) freed between allocations that stay (the index's).
    kept, freed = [], []
    for _ in range(2000):
        freed.append(np.ones(64 * 1024, np.uint8))  # 64 KB, written (resident)
        kept.append(np.ones(512, np.uint8))
    del freed
    before = _rss_mib()
    assert release_memory() is True
    after = _rss_mib()
    # 125 MiB were freed in holes the allocator cannot give back by itself.
    assert before - after > 60, (before, after)
    assert all(k[0] == 1 for k in kept)  # (what stays is untouched)


def test_release_memory_is_harmless_when_nothing_is_free():
    release_memory()
    assert isinstance(release_memory(), bool)
