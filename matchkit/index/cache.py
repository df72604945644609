"""Loaded index files shared between open galleries of one process.

A server keeps one open ``Gallery`` per reader thread (SQLite connections
belong to their thread), and each used to load its own copy of every index:
the ORB index of a 10,000-image gallery is ~120 MB, so four readers held four
copies, and each reloaded them after every write. An index loaded from a
file whose recorded checksum and generation are known is the same object for
every reader that asks for that file: it is built once, searched by all (the
indexes are only read), and freed when the last gallery holding it lets go
(weak references), so memory follows the number of *states* in use, not the
number of threads.

A gallery that starts writing stops using the shared objects (it would change
them under the other readers): see ``Gallery._lock_for_writing``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any


class SharedIndexes:
    """Index objects by (index name, file checksum, generation), loaded once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        #: One lock per key being loaded, so two readers do not load the same file twice.
        self._loading: dict[tuple, threading.Lock] = {}

    def get_or_load(self, key: tuple, load: Callable[[], Any]) -> Any:
        """The shared object for ``key``, made by ``load()`` if nobody holds one
        (``load`` may return None: nothing is kept then)."""
        with self._lock:
            idx = self._loaded.get(key)
            if idx is not None:
                return idx
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                idx = self._loaded.get(key)
            if idx is None:
                idx = load()
                if idx is not None:
                    with self._lock:
                        self._loaded[key] = idx
            with self._lock:
                self._loading.pop(key, None)
        return idx

    def __len__(self) -> int:
        with self._lock:
            return len(self._loaded)
