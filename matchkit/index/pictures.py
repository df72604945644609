"""The frame search's index of picture hashes, kept beside a gallery between runs.

``framed.framed_pairs`` searches the pictures inside every image's frames
(``framed.picture_hashes``) among those of every other image of the run.
Built anew in every run, that HNSW index cost a 1% add to 50,500 scale-set
images 12.5 s (66,640 pictures), a twelfth of the add, and it grows with the
gallery, not with what was added. Kept in a file (one per settings key) and
brought up to date, an add pays only for its own pictures.

The file is a cache, never the truth: it holds the keys and codes it
indexes, and a run uses it only after making it index exactly the run's
pictures (those of images gone, changed or out of the run removed; new ones
added). A file that does not read back, or that would need most of it
replaced, is built again. Below ``hamming.EXACT_SEARCH_BELOW`` pictures the
search is exhaustive on a transient index built in milliseconds (equal
distances ranked by key): no file is kept.

Keys are ``image id * PICTURE_KEY_STRIDE + picture number``, so a found key
names its image without a lookup table.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from matchkit.util.fs import atomic_write
from matchkit.index.hamming import EXACT_SEARCH_BELOW, HammingIndex, transient_index

#: Key space of one image's pictures (``framed.picture_hashes`` gives at most
#: two per frame quad, ``framed.MAX_QUADS`` = 4: eight).
PICTURE_KEY_STRIDE = 16
#: Rebuild instead of patching when the entries removed since the index was
#: built would pass this share of its entries (an HNSW graph only marks
#: removed nodes; many of them slow its searches and cost its recall).
REBUILD_ABOVE = 0.25


def picture_rows(pictures: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Keys (ascending) and plain codes of every picture of ``pictures``
    (image id -> ``framed.picture_hashes``, (n, 8, 32))."""
    keys, codes = [], []
    for i in sorted(pictures):
        h = np.asarray(pictures[i])
        if len(h):
            if len(h) > PICTURE_KEY_STRIDE:
                raise ValueError(f"image {i} has {len(h)} pictures, more than "
                                 f"{PICTURE_KEY_STRIDE}")
            keys.append(i * PICTURE_KEY_STRIDE + np.arange(len(h), dtype=np.int64))
            codes.append(h[:, 0])
    if not keys:
        return np.zeros(0, np.int64), np.zeros((0, 32), np.uint8)
    return np.concatenate(keys), np.ascontiguousarray(np.concatenate(codes), np.uint8)


def picture_file(folder: str | os.PathLike, key: str) -> Path:
    """Where a gallery keeps the picture index of settings key ``key``."""
    return Path(folder) / f"match-pictures-{key}.npz"


def forget_picture_files(folder: str | os.PathLike, keep: list[str]) -> None:
    """Delete the picture indexes of settings keys no longer kept (the
    gallery keeps the state of its last ``gallery_matches.MAX_MATCH_KEYS`` keys)."""
    wanted = {picture_file(folder, k).name for k in keep}
    for f in Path(folder).glob(picture_file("", "*").name):
        if f.name not in wanted:
            f.unlink(missing_ok=True)


class PictureIndex:
    """An index of exactly the pictures ``keys``/``codes``, from ``path``
    where it holds most of them, else built; ``save`` writes it back when
    it changed."""

    def __init__(self, path: str | os.PathLike, keys: np.ndarray, codes: np.ndarray):
        self.path = Path(path)
        self.keys, self.codes = keys, codes
        nbits = codes.shape[1] * 8
        #: Whether the index differs from the file (``save`` writes it).
        self.changed = False
        #: Entries removed from the graph since it was built (kept in the file).
        self.removed = 0
        if len(keys) < EXACT_SEARCH_BELOW:
            self.index = transient_index(keys, codes, nbits)
            return
        stored = _read(self.path, nbits)
        if stored is not None:
            old_keys, old_codes, index, removed = stored
            gone, new = _difference(old_keys, old_codes, keys, codes)
            if removed + len(gone) <= REBUILD_ABOVE * max(len(old_keys), 1):
                index.remove(gone.tolist())
                index.add(keys[new], codes[new], replace=False)
                self.index, self.changed = index, bool(len(gone) or len(new))
                self.removed = removed + len(gone)
                return
        self.index = HammingIndex(nbits)
        self.index.add(keys, codes, replace=False)
        self.changed = True

    def save(self) -> None:
        """Write the index where it will be looked for (atomically; a file
        that cannot be written only costs the next run a rebuild). Below
        ``EXACT_SEARCH_BELOW`` pictures no file is kept."""
        try:
            if len(self.keys) < EXACT_SEARCH_BELOW:
                self.path.unlink(missing_ok=True)
                return
            if not self.changed:
                return
            graph = np.frombuffer(self.index.to_bytes(), np.uint8)

            def write(tmp: Path) -> None:
                with open(tmp, "wb") as f:
                    np.savez(f, keys=self.keys, codes=self.codes, graph=graph,
                             removed=np.int64(self.removed))

            atomic_write(self.path, write)
            self.changed = False
        except OSError as e:
            warnings.warn(f"picture index {self.path} not saved ({e}); the next run builds it")


def _read(path: Path, nbits: int) -> tuple[np.ndarray, np.ndarray, HammingIndex, int] | None:
    """The stored keys, codes, index and count of entries removed from it;
    None where there is no file or it does not read back as one (it is then
    built again)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            keys, codes, graph = f["keys"], f["codes"], f["graph"]
            removed = int(f["removed"]) if "removed" in f.files else 0
        if (keys.dtype != np.int64 or codes.dtype != np.uint8 or codes.ndim != 2
                or codes.shape != (len(keys), nbits // 8)):
            raise ValueError("keys and codes do not match")
        index = HammingIndex.load(graph.tobytes(), nbits)
        if len(index) != len(keys):
            raise ValueError(f"{len(index)} entries for {len(keys)} keys")
    except Exception as e:  # (any damage: the file is only a cache)
        warnings.warn(f"picture index {path} unreadable ({type(e).__name__}: {e}); building it again")
        return None
    return keys, codes, index, removed


def _difference(old_keys: np.ndarray, old_codes: np.ndarray, keys: np.ndarray,
                codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored keys to remove (gone, or now with another code) and the rows of
    ``keys`` to add (new, or with another code). Both key arrays ascending."""
    at = np.searchsorted(keys, old_keys)
    found = at < len(keys)
    found[found] = keys[at[found]] == old_keys[found]
    same = found.copy()
    same[found] = (codes[at[found]] == old_codes[found]).all(1)
    kept = np.zeros(len(keys), bool)
    kept[at[same]] = True
    return old_keys[~same], np.nonzero(~kept)[0]
