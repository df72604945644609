"""A run's gallery rows kept as columns.

Dedupe reads the row of every image it clusters (paths, digests, sizes,
formats) and keeps it for the whole run. As :class:`StoredImage` objects in
a dict that cost about 1 KB an image (plus ~500 bytes for the matcher's own
dicts of paths, sizes, formats and qualities): 100 MiB of the Ray driver at
100,000 images. :class:`ImageTable` holds the same values in columns
(integers in ``array.array``, strings as one UTF-8 buffer with offsets),
about 200 bytes an image, and makes a :class:`StoredImage` only when one is
asked for. (``array.array`` rather than NumPy: the matcher reads one value
at a time, once or more per candidate pair, and a NumPy scalar costs ten
times a plain int to take out.)
"""

from __future__ import annotations

import copy
from array import array
from collections.abc import Iterable, Mapping

import numpy as np

from matchkit.store.records import StoredImage
from matchkit.util.arrays import ByPosition, IdPositions

#: Rows read from the gallery at once while the table is built (the
#: ``StoredImage`` objects of one part are the build's only transient).
READ_PART = 4096

#: ``jpeg_quality`` (and any other optional integer) when there is none.
_NONE = -(2 ** 63)


def _ints(values) -> array:
    return array("q", values)


class Strings:
    """A column of optional strings: one UTF-8 buffer and offsets. Any
    ``str`` is kept exactly, lone surrogates included (paths that are not
    valid UTF-8 arrive as such)."""

    def __init__(self, values: Iterable[str | None] = ()):
        blobs, none = [], []
        for v in values:
            none.append(v is None)
            blobs.append(b"" if v is None else v.encode("utf-8", "surrogatepass"))
        self._ends = _ints(np.cumsum([len(b) for b in blobs], dtype=np.int64).tolist())
        self._buffer = b"".join(blobs)
        self._none = array("b", none) if any(none) else None

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, p: int) -> str | None:
        if self._none is not None and self._none[p]:
            return None
        ends = self._ends
        return self._buffer[ends[p - 1] if p else 0:ends[p]].decode("utf-8", "surrogatepass")

    def take(self, positions) -> "Strings":
        return Strings(self[int(p)] for p in positions)

    @classmethod
    def joined(cls, pieces: list["Strings"]) -> "Strings":
        """One column of the strings of ``pieces`` in order (buffers joined
        as bytes: no string is made)."""
        out, shift = cls(), 0
        for s in pieces:
            out._ends.extend(e + shift for e in s._ends)
            shift += len(s._buffer)
        out._buffer = b"".join(s._buffer for s in pieces)
        if any(s._none is not None for s in pieces):
            out._none = array("b")
            for s in pieces:
                out._none.extend(s._none if s._none is not None else bytes(len(s)))
        return out

    @property
    def nbytes(self) -> int:
        return (len(self._buffer) + self._ends.itemsize * len(self._ends)
                + (0 if self._none is None else len(self._none)))


class Codes:
    """A column of a few distinct optional strings (file formats): a code
    per row and the strings once. Read once or twice per candidate pair
    (``pixelchecks.mark_redrawn``), where decoding a string each time cost
    more than the rest of the lookup."""

    def __init__(self, values: Iterable[str | None] = ()):
        self._names: list[str | None] = []
        seen: dict[str | None, int] = {}
        self._codes = array("H")
        for v in values:
            if v not in seen:
                seen[v] = len(self._names)
                self._names.append(v)
            self._codes.append(seen[v])

    def __len__(self) -> int:
        return len(self._codes)

    def __getitem__(self, p: int) -> str | None:
        return self._names[self._codes[p]]

    def take(self, positions) -> "Codes":
        return Codes(self[int(p)] for p in positions)

    @classmethod
    def joined(cls, pieces: list["Codes"]) -> "Codes":
        return cls(c[p] for c in pieces for p in range(len(c)))

    @property
    def nbytes(self) -> int:
        return 2 * len(self._codes)


class ImageTable(ByPosition):
    """Gallery rows by image id, kept as columns: ``table[i]`` is a fresh
    :class:`StoredImage` (equal to ``gallery.images([i])[i]``); the
    ``paths``, ``sizes``, ``formats`` and ``qualities`` mappings give one
    value each without making the row."""

    _STRINGS = ("path", "sha256", "pixel_sha256", "format")
    _INTS = ("size", "mtime_ns", "width", "height", "jpeg_quality")

    def __init__(self, rows: Iterable[StoredImage] = ()):
        rows = list(rows)
        self._at = IdPositions([r.id for r in rows])
        self._str = {name: (Codes if name == "format" else Strings)(getattr(r, name) for r in rows)
                     for name in self._STRINGS}
        self._int = {name: _ints(_NONE if getattr(r, name) is None else getattr(r, name)
                                 for r in rows) for name in self._INTS}
        self._blank = array("b", (bool(r.blank) for r in rows))
        #: Position -> meta / labels, for the rows that have any (most have none).
        self._meta = {p: r.meta for p, r in enumerate(rows) if r.meta}
        self._labels = {p: r.labels for p, r in enumerate(rows) if r.labels}

    @classmethod
    def read(cls, gallery, ids: Iterable[int], part: int = READ_PART) -> "ImageTable":
        """The rows of ``ids`` (in ascending id order; ids without a row are
        left out), read in parts so that only one part's objects exist at once."""
        ids = sorted(set(int(i) for i in ids))
        pieces = []
        for start in range(0, len(ids), part):
            got = gallery.images(ids[start:start + part])
            pieces.append(cls(got[i] for i in ids[start:start + part] if i in got))
        return cls.joined(pieces)

    @classmethod
    def joined(cls, pieces: list["ImageTable"]) -> "ImageTable":
        """One table of the rows of ``pieces``, in their order."""
        if len(pieces) == 1:
            return pieces[0]
        out = cls()
        out._at = IdPositions(np.concatenate([t._at.ids for t in pieces]) if pieces else [])
        for name in cls._STRINGS:
            out._str[name] = type(out._str[name]).joined([t._str[name] for t in pieces])
        for name in cls._INTS:
            for t in pieces:
                out._int[name].extend(t._int[name])
        offset = 0
        for t in pieces:
            out._blank.extend(t._blank)
            out._meta.update({offset + p: v for p, v in t._meta.items()})
            out._labels.update({offset + p: v for p, v in t._labels.items()})
            offset += len(t)
        return out

    def subset(self, ids: Iterable[int]) -> "ImageTable":
        """A table of only ``ids`` (all among this table's), in the order given."""
        ids = np.asarray(list(ids), np.int64)
        where = self._at.positions(ids).tolist()
        out = ImageTable()
        out._at = IdPositions(ids)
        out._str = {name: col.take(where) for name, col in self._str.items()}
        out._int = {name: _ints(col[p] for p in where) for name, col in self._int.items()}
        out._blank = array("b", (self._blank[p] for p in where))
        back = {p: n for n, p in enumerate(where)}
        out._meta = {back[p]: v for p, v in self._meta.items() if p in back}
        out._labels = {back[p]: v for p, v in self._labels.items() if p in back}
        return out

    @property
    def ids(self) -> list[int]:
        return self._at.ids.tolist()

    def _value(self, name: str, p: int):
        if name in self._str:
            return self._str[name][p]
        v = self._int[name][p]
        return None if v == _NONE else v

    def _at_position(self, p: int) -> StoredImage:
        s, n = self._str, self._int
        quality = n["jpeg_quality"][p]
        meta, labels = self._meta.get(p), self._labels.get(p)
        return StoredImage(int(self._at.ids[p]), s["path"][p], n["size"][p], n["mtime_ns"][p],
                           s["sha256"][p], s["pixel_sha256"][p], n["width"][p], n["height"][p],
                           s["format"][p],
                           meta={} if meta is None else copy.deepcopy(meta),
                           labels=[] if labels is None else copy.deepcopy(labels),
                           jpeg_quality=None if quality == _NONE else quality,
                           blank=bool(self._blank[p]))

    def blank(self, i: int) -> bool:
        return bool(self._blank[self._position(i)])

    def column(self, name: str) -> Mapping:
        """id -> one stored value (``path``, ``sha256``, ``size``...)."""
        if name not in self._str and name not in self._INTS:
            raise KeyError(name)
        return _Column(self, name)

    @property
    def paths(self) -> Mapping:
        return self.column("path")

    @property
    def formats(self) -> Mapping:
        return self.column("format")

    @property
    def qualities(self) -> Mapping:
        return self.column("jpeg_quality")

    @property
    def sizes(self) -> Mapping:
        """id -> (width, height)."""
        return _Sizes(self)

    @property
    def nbytes(self) -> int:
        """Bytes of the columns (without the few rows' meta and labels)."""
        return (sum(s.nbytes for s in self._str.values())
                + sum(a.itemsize * len(a) for a in self._int.values())
                + len(self._blank) + self._at.ids.nbytes)


class RowCache(dict):
    """Rows of an :class:`ImageTable` made once each, when first asked for
    (the rows a report of one cluster reads again and again)."""

    def __init__(self, table: ImageTable):
        super().__init__()
        self.table = table

    def __missing__(self, i: int) -> StoredImage:
        self[i] = row = self.table[i]
        return row


class _Column(ByPosition):
    """One column of an :class:`ImageTable` as a read-only mapping by id."""

    def __init__(self, table: ImageTable, name: str):
        self._table, self._name, self._at = table, name, table._at

    def _at_position(self, p: int):
        return self._table._value(self._name, p)


class _Sizes(ByPosition):
    """id -> (width, height) of an :class:`ImageTable`."""

    def __init__(self, table: ImageTable):
        self._at, self._w, self._h = table._at, table._int["width"], table._int["height"]

    def _at_position(self, p: int) -> tuple[int, int]:
        return self._w[p], self._h[p]
