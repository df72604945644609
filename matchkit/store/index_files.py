"""The descriptor index file on the gallery's index worker: loaded ahead
(``Gallery.prefetch_indexes``) and written ahead (``Gallery.save_ahead``).

Plain functions of a file and its recorded stamp, reading no database, so
that the index worker (``gallery_indexes._IndexesMixin._worker``) may run
them while the gallery's own thread goes on.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from pathlib import Path

from matchkit.index.hamming import HammingIndex
from matchkit.index.ivf import IVFIndex
from matchkit.util.fs import verified_bytes


@dataclass(frozen=True)
class WrittenAhead:
    """A descriptor index file ``save_ahead`` wrote: from which index, at
    which generation, with how many keys, and its stamp (``HammingIndex.save``)."""

    index: HammingIndex | IVFIndex
    generation: int
    keys: int
    stamp: dict


def file_loader(file: Path, record: dict, loader, why: list[str]):
    """A function giving the index in ``file`` if its bytes match ``record``
    (size, digest; see ``util.fs.verified_bytes``) and it holds the recorded
    number of keys, else None with the reason in ``why[0]``. It reads no
    database, so another thread may call it (``prefetch_indexes``)."""
    def load():
        with verified_bytes(file, record) as data:
            if data is None:
                why[0] = ("missing" if not file.exists()
                          else "size or checksum differs from the record")
                return None
            try:
                idx = loader(data)
            except Exception as e:  # verified bytes: only a foreign record gets here
                why[0] = f"unreadable ({e})"
                return None
        if len(idx) != record.get("keys"):
            why[0] = f"holds {len(idx)} keys, the record says {record.get('keys')}"
            return None
        return idx
    return load


def write_ahead(idx, generation: int, file: Path,
                indexing: concurrent.futures.Future | None) -> WrittenAhead | None:
    """``save_ahead``'s work on the index worker: the index written to
    ``file``; nothing if the add before it (``indexing``, done by now) failed."""
    if indexing is not None and indexing.exception() is not None:
        return None
    return WrittenAhead(idx, generation, len(idx), idx.save(file))
