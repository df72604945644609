"""Array helpers where NumPy's general function is slow for our shapes."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import numpy as np


def unique(values) -> np.ndarray:
    """``np.unique(values)`` of a 1-d array, by sorting.

    NumPy 2.3+ finds the distinct values of a plain ``np.unique`` call with a
    hash table, then sorts them: measured here (NumPy 2.4, 1.2M random
    int64) 1.33 s against 0.09 s for a sort and a comparison of neighbours.
    Incremental matching and vote counting call it on millions of keys.
    """
    values = np.sort(np.asarray(values).ravel())
    if len(values) < 2:
        return values
    keep = np.empty(len(values), bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def bit_sums(words: np.ndarray) -> np.ndarray:
    """Set bits of each row of uint64 words (summed over the last axis), as
    int64: the Hamming distance of codes once their words are XORed.

    Adding the words' counts one column at a time in uint16 halves
    ``np.bitwise_count(words).sum(-1)``: 4,096 codes against 8 nodes of 64
    visual words, 0.056 s against 0.098 s; an add's hash-search merge at
    50,500 images (8 variants of 262 images against 500 new ones, 193 times),
    5.2 s against 10.2 s.
    """
    counts = np.bitwise_count(words)
    total = counts[..., 0].astype(np.uint16)
    for i in range(1, counts.shape[-1]):
        total += counts[..., i]
    return total.astype(np.int64)


def cross_bit_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance between every code of ``a`` (..., words) and every
    code of ``b`` (m, words), uint64 words: (..., m) int64.

    One word at a time, so the XOR of all words is never held at once:
    ``bit_sums(a[..., None, :] ^ b)`` streams four times the memory (an add's
    hash-search merge, 10,000 images' 8 variants against 100 new ones: 0.23 s
    against 0.044 s).
    """
    a, b = np.asarray(a, np.uint64), np.asarray(b, np.uint64)
    total = np.zeros((*a.shape[:-1], len(b)), np.uint16)
    for w in range(a.shape[-1]):
        total += np.bitwise_count(np.bitwise_xor(a[..., w, None], b[:, w]))
    return total.astype(np.int64)


class PackedMasks(MutableMapping):
    """Boolean masks by key, held as packed bits (8 pixels a byte).

    A matcher keeps every image's content mask (thumbnail pixels) for the
    whole run: about 11 KB an image as bool arrays, 45 MB of a 4,000-image
    run's 335 MB of Python objects when clustering ended, and growing with
    the gallery. Packed they take an eighth of that; a mask is unpacked as
    it is asked for (a fresh array each time: a few microseconds). None
    (a mask that is everywhere) is kept as None.
    """

    def __init__(self, items=()):
        self._packed: dict = {}
        self.update(items)

    def __getitem__(self, key) -> np.ndarray | None:
        v = self._packed[key]
        if v is None:
            return None
        bits, shape = v
        return np.unpackbits(bits, count=shape[0] * shape[1]).view(bool).reshape(shape)

    def __setitem__(self, key, mask) -> None:
        if mask is None:
            self._packed[key] = None
            return
        mask = np.asarray(mask, bool)
        if mask.ndim != 2:
            raise ValueError(f"a mask is 2-d, not {mask.ndim}-d")
        self._packed[key] = (np.packbits(mask), mask.shape)

    def __delitem__(self, key) -> None:
        del self._packed[key]

    def __contains__(self, key) -> bool:
        return key in self._packed

    def __iter__(self):
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)


class NearLists(Mapping):
    """Key -> its nearest others as ``[(other, distance), ...]``, nearest
    first, held as arrays: the pHash search's neighbour lists of every image
    of a run (16 an image), which as Python tuples took about 1.7 KB an image
    on the Ray driver. A list is made as it is asked for. Parts are added
    whole (``add``), as the search finds them; a key added again takes its
    new list."""

    def __init__(self, items=()):
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        #: key -> (part, start, end) of its list.
        self._at: dict = {}
        self.update(items)

    def add(self, keys, starts, ends, others: np.ndarray, distances: np.ndarray) -> None:
        """Lists of ``keys``: key n's is ``others[starts[n]:ends[n]]`` with
        ``distances`` at the same places."""
        part = len(self._parts)
        self._parts.append((np.asarray(others, np.int64), np.asarray(distances, np.int32)))
        for key, start, end in zip(keys, np.asarray(starts).tolist(), np.asarray(ends).tolist()):
            self._at[key] = (part, start, end)

    def update(self, items=()) -> None:
        if isinstance(items, NearLists):  # (its parts' arrays shared, one pass over its keys)
            by_part: dict[int, list] = {}
            for key, (part, start, end) in items._at.items():
                by_part.setdefault(part, []).append((key, start, end))
            for part, rows in by_part.items():
                keys, starts, ends = zip(*rows)
                self.add(keys, starts, ends, *items._parts[part])
            return
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        if pairs:
            lengths = np.array([len(v) for _, v in pairs], np.int64)
            ends = np.cumsum(lengths)
            flat = np.asarray([x for _, v in pairs for x in v], np.int64).reshape(-1, 2)
            self.add([k for k, _ in pairs], ends - lengths, ends, flat[:, 0], flat[:, 1])

    def __getitem__(self, key) -> list[tuple[int, int]]:
        part, start, end = self._at[key]
        others, dists = self._parts[part]
        return list(zip(others[start:end].tolist(), dists[start:end].tolist()))

    def __contains__(self, key) -> bool:
        return key in self._at

    def __iter__(self):
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)


class SparseRows:
    """Rows of counts stored as their non-zero entries (compressed sparse
    rows), given back dense when asked: a table of colour histograms that
    a collection's pairs read again and again. A 64x64 thumbnail fills about
    45-60 of a histogram's 512 cells (scale set and ImageNet sample), so its
    row takes about 200 bytes here against 1 KB dense in 16 bits.

    ``append(dense)`` adds rows of non-negative integers (the table widens
    to 32 or 64 bits when a value does not fit ``dtype``); ``dense(rows)``
    gives those rows as a (len(rows), width) array of ``dtype``, the same
    values bit for bit."""

    def __init__(self, width: int, dtype="<u4"):
        self.width, self.dtype = int(width), np.dtype(dtype)
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._frozen: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def append(self, dense: np.ndarray) -> None:
        dense = np.asarray(dense).reshape(-1, self.width)
        rows, cols = np.nonzero(dense)
        top = int(dense.max(initial=0))
        if top > np.iinfo(self.dtype).max:
            self.widen("<u4" if top <= np.iinfo("<u4").max else "<u8")
        self._cols.append(cols.astype(np.uint16 if self.width <= 1 << 16 else np.int64))
        self._vals.append(dense[rows, cols].astype(self.dtype))
        self._counts.append(np.bincount(rows, minlength=len(dense)))
        self._frozen = None

    def widen(self, dtype) -> None:
        """Hold the values as ``dtype`` from now on (a wider integer type)."""
        self.dtype = np.dtype(dtype)
        self._vals = [v.astype(self.dtype) for v in self._vals]
        self._frozen = None

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._frozen is None:
            counts = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64)
            starts = np.zeros(len(counts) + 1, np.int64)
            np.cumsum(counts, out=starts[1:])
            cols = np.concatenate(self._cols) if self._cols else np.zeros(0, np.uint16)
            vals = np.concatenate(self._vals) if self._vals else np.zeros(0, self.dtype)
            self._cols, self._vals, self._counts = [cols], [vals], [counts]
            self._frozen = starts, cols, vals
        return self._frozen

    def __len__(self) -> int:
        return len(self._arrays()[0]) - 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays())

    def dense(self, rows) -> np.ndarray:
        starts, cols, vals = self._arrays()
        rows = np.asarray(rows, np.int64).ravel()
        out = np.zeros((len(rows), self.width), self.dtype)
        first, lengths = starts[rows], starts[rows + 1] - starts[rows]
        total = int(lengths.sum())
        if total:
            which = np.repeat(np.arange(len(rows)), lengths)
            # position of each entry inside its row's run, then in ``cols``
            offset = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            at = np.repeat(first, lengths) + offset
            out[which, cols[at].astype(np.int64)] = vals[at]
        return out


class IdPositions:
    """Where each of a set of integer ids sits in arrays kept in the order
    the ids were given: ``position(i)`` is that index, or None for an id not
    among them. A dict of N ids costs about 100 bytes an id on top of the
    arrays it points into; this costs 16 (8 when the ids are consecutive,
    as a collection's usually are: then a position is one subtraction).
    Asked once or more per candidate pair, so the usual case is kept short."""

    def __init__(self, ids):
        ids = np.asarray(ids, np.int64).ravel()
        self.ids = ids
        self._n = n = len(ids)
        self._start: int | None = None
        self._sorted = self._order = None
        if n and int(ids[-1]) - int(ids[0]) == n - 1 and (n == 1 or bool((np.diff(ids) == 1).all())):
            self._start = int(ids[0])
        else:
            self._order = np.argsort(ids, kind="stable")
            self._sorted = ids[self._order]
            if n > 1 and bool((self._sorted[1:] == self._sorted[:-1]).any()):
                raise ValueError("ids must be distinct")

    def __len__(self) -> int:
        return self._n

    def position(self, i) -> int | None:
        cls = i.__class__
        if cls is not int:
            if cls is bool or not isinstance(i, np.integer):
                return None
            i = int(i)
        if self._start is not None:
            p = i - self._start
            return p if 0 <= p < self._n else None
        k = int(np.searchsorted(self._sorted, i))
        return int(self._order[k]) if k < self._n and self._sorted[k] == i else None

    def positions(self, ids) -> np.ndarray:
        """Positions of ``ids`` (all among them; KeyError otherwise)."""
        ids = np.asarray(ids, np.int64).ravel()
        if self._start is not None:
            p = ids - self._start
            bad = (p < 0) | (p >= self._n)
        else:
            k = np.minimum(np.searchsorted(self._sorted, ids), max(self._n - 1, 0))
            bad = (self._sorted[k] != ids) if self._n else np.ones(len(ids), bool)
            p = self._order[k] if self._n else k
        if bad.any():
            raise KeyError(int(ids[np.argmax(bad)]))
        return p


class ByPosition(Mapping):
    """A read-only mapping id -> a value kept at that id's position
    (``IdPositions``) in arrays or columns: a subclass says what is at a
    position (``_at_position``). In place of a dict per id, which costs
    about 100 bytes an id on top of the values."""

    _at: IdPositions

    def _at_position(self, p: int):
        raise NotImplementedError

    def _position(self, i) -> int:
        p = self._at.position(i)
        if p is None:
            raise KeyError(i)
        return p

    def __getitem__(self, i):
        return self._at_position(self._position(i))

    def get(self, i, default=None):
        p = self._at.position(i)
        return default if p is None else self._at_position(p)

    def __contains__(self, i) -> bool:
        return self._at.position(i) is not None

    def __iter__(self):
        return iter(self._at.ids.tolist())

    def __len__(self) -> int:
        return len(self._at)


class RowsById(ByPosition):
    """Read-only id -> ``array[position]`` (a view made when asked): the rows
    of one array that a run loaded for its ids in one go, without a view
    object and a dict entry per id held for the run (about 300 bytes an
    image for the pHash variants' 64)."""

    def __init__(self, ids, array: np.ndarray):
        self._at = ids if isinstance(ids, IdPositions) else IdPositions(ids)
        if len(array) != len(self._at):
            raise ValueError(f"{len(array)} rows for {len(self._at)} ids")
        self.array = array

    def _at_position(self, p: int) -> np.ndarray:
        return self.array[p]
