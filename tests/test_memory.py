"""``_memory.release_memory``: freed heap holes go back to the system."""

import ctypes
import subprocess
import sys

import pytest

from matchkit.util.memory import release_memory

# Run in a fresh interpreter: the heap of a test process that has run other
# tests holds whatever they left, and new blocks land in their holes.
_SCENARIO = """
import sys
import numpy as np
from matchkit.util.memory import release_memory

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

# What an add does: blocks below the mmap threshold (features of one image)
# freed between blocks that stay (the index's); the last block stays, so the
# freed ones are holes, never the top of the heap.
freed, kept = [], []
for _ in range(2000):
    freed.append(np.ones(64 * 1024, np.uint8))  # written: resident
    kept.append(np.ones(64 * 1024, np.uint8))
del freed
before = rss()
released = release_memory() if sys.argv[1] == "release" else None
print(released, before - rss(), sum(int(k[0]) for k in kept))
"""


def _freed_mib(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", _SCENARIO, mode], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[2] == "2000"  # (the kept blocks are untouched)
    return out[0], float(out[1])


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version
    except AttributeError:
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(),
                    reason="malloc_trim is glibc's")
def test_release_memory_returns_holes_between_kept_allocations():
    released, freed = _freed_mib("release")
    assert released == "True"
    assert freed > 60  # of the 125 MiB freed in holes
    released, freed = _freed_mib("none")
    assert released == "None" and freed < 10  # (the allocator keeps them by itself)


def test_release_memory_is_harmless_when_nothing_is_free():
    release_memory()
    assert isinstance(release_memory(), bool)
