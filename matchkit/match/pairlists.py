"""Evidence by pair and neighbours by class, as clustering keeps them
(``dedupe_clusters``).

Clustering files every candidate pair's evidence under the pair of exact-copy
classes it joins, and reads it back by pair many times. Most pairs hold one
piece of evidence: a dict of ``(x, y) -> [evidence]`` cost about 200 bytes a
pair beside the evidence itself (395,614 pairs on the Ray driver at 100,000
images: about 75 MiB). :class:`PairLists` keeps a lone piece as it is, under
one int key, for about 100.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

#: Ids below this are packed into one int key (``x << 32 | y``); others
#: (never seen: gallery ids are SQLite row ids) are keyed by the pair itself.
_PACKED = 1 << 32


class PairLists:
    """The evidence of each pair (x, y), x < y, in the order added. A pair
    never added reads as empty (``()``), as a ``defaultdict(list)`` would,
    without being added by the reading."""

    __slots__ = ("_by",)

    def __init__(self) -> None:
        self._by: dict = {}

    @staticmethod
    def _key(pair: tuple[int, int]):
        x, y = pair
        return (x << 32) | y if 0 <= x < _PACKED and 0 <= y < _PACKED else pair

    @staticmethod
    def _pair(key) -> tuple[int, int]:
        return (key >> 32, key & (_PACKED - 1)) if isinstance(key, int) else key

    @staticmethod
    def _seq(value) -> Sequence:
        return value if type(value) is list else (value,)

    def __getitem__(self, pair: tuple[int, int]) -> Sequence:
        value = self._by.get(self._key(pair))
        return () if value is None else self._seq(value)

    def get(self, pair: tuple[int, int], default=()) -> Sequence:
        value = self._by.get(self._key(pair))
        return default if value is None else self._seq(value)

    def add(self, pair: tuple[int, int], item) -> None:
        """File ``item`` under ``pair`` (x < y), after what it holds."""
        key = self._key(pair)
        value = self._by.get(key)
        if value is None:
            self._by[key] = item
        elif type(value) is list:
            value.append(item)
        else:
            self._by[key] = [value, item]

    def __len__(self) -> int:
        return len(self._by)

    def values(self) -> Iterator[Sequence]:
        return (self._seq(v) for v in self._by.values())

    def items(self) -> Iterator[tuple[tuple[int, int], Sequence]]:
        return ((self._pair(k), self._seq(v)) for k, v in self._by.items())


class Neighbours:
    """Each class's candidate neighbours (symmetric), as clustering reads
    them: a tuple per class, ascending, grown by ``add`` (second hops and
    links add a few). A ``defaultdict(set)`` of them cost about 600 bytes a
    class more: a set of 5-8 ids takes 728 bytes, their tuple 120. A class
    without neighbours reads as ``()``."""

    __slots__ = ("_of",)

    def __init__(self, pairs: Iterable[tuple[int, int]] = ()) -> None:
        lists: dict[int, list[int]] = {}
        for x, y in pairs:
            lists.setdefault(x, []).append(y)
            lists.setdefault(y, []).append(x)
        self._of: dict[int, tuple[int, ...]] = {
            x: tuple(sorted(set(ys))) for x, ys in lists.items()}

    def __getitem__(self, x: int) -> tuple[int, ...]:
        return self._of.get(x, ())

    def get(self, x: int, default=None):
        return self._of.get(x, default)

    def __contains__(self, x) -> bool:
        return x in self._of

    def __iter__(self) -> Iterator[int]:
        return iter(self._of)

    def __len__(self) -> int:
        return len(self._of)

    def add(self, x: int, y: int) -> None:
        """``x`` and ``y`` are each other's neighbours (if not yet)."""
        for a, b in ((x, y), (y, x)):
            have = self._of.get(a, ())
            if b not in have:
                self._of[a] = tuple(sorted((*have, b)))
