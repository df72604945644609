"""The relation of a pair matched on global signals alone ("resized" for want
of evidence), settled from its stored thumbnails laid frame to frame.

Split from ``pairs.py`` (which imports these names back): a report asks for
relations after matching, in batches (``RelationSettling``, mixed into
``PairMatcher``) sent to worker processes in large runs (``_settle_many``
and what it is sent), or one pair at a time (``QueryMatcher``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from matchkit.signals.local import compare_overlap
from matchkit.relation import UNCHANGED_AGREEMENT
from matchkit.match.evidence import PairEvidence
from matchkit.match.pools import PROCESS_BATCH


@dataclass
class _Size:
    """What ``settle_global_relation`` reads of an image's local features."""

    width: int
    height: int


@dataclass
class _Settle:
    """What ``settle_global_relation`` reads and writes of a pair's evidence
    (sent to a worker process instead of the whole of it)."""

    rule: str
    extra: dict
    overlap: None = None

    def relation(self) -> str | None:
        return self.extra["relation"]


#: Pairs whose images' thumbnails are read and compared at once (``settle_relations``).
SETTLE_PART = 1024


def _thumb(features) -> tuple | None:
    """What ``settle_global_relation`` reads of an image's (local features,
    thumbnail): its size and thumbnail (the descriptors are not held)."""
    return features and (_Size(features[0].width, features[0].height), features[1])


def _settle_many(items: list) -> list[str | None]:
    """Worker process: ``settle_global_relation`` of each (pair, a, b,
    sizes); the relation each pair has then."""
    for ev, fa, fb, sizes in items:
        settle_global_relation(ev, fa, fb, sizes)
    return [ev.relation() for ev, _, _, _ in items]


def _settles(ev: PairEvidence) -> bool:
    """Whether ``settle_global_relation`` has anything to settle for ``ev``
    given both images' features: a pair called "resized" for want of a
    verification, not an icon pair, not turned or mirrored (frame to frame
    says nothing then)."""
    return ev.relation() == "resized" and ev.overlap is None and ev.rule != "icon" and not (
        ev.extra.get("reflect") or ev.extra.get("dihedral"))


def settle_global_relation(ev: PairEvidence, fa, fb,
                           sizes: tuple[tuple[int, int] | None, tuple[int, int] | None]
                           = (None, None)) -> None:
    """A pair matched on global signals alone was not verified, so its
    relation says "resized" for want of evidence. Its stored thumbnails, laid
    on each other frame to frame, tell: agreeing cells a resize (stretched or
    not); another aspect ratio that does not agree stretched a crop; the same
    aspect ratio that does not agree an edit (an overlay, a blur) or a crop
    that kept the aspect ratio (told apart only by verification, which such
    pairs did not need). ``fa``/``fb`` are (local features, thumbnail) of a
    and b, or None; ``sizes`` their (width, height) in pixels, when known:
    then an aspect ratio that differs more than rounding either side to whole
    pixels explains is a re-framing (a crop), however well the stretched
    thumbnails agree (smooth wallpapers stretch without a trace). Thumbnails
    too flat to compare say nothing (a blank page and its thumbnail stay
    resized)."""
    if fa is None or fb is None or not _settles(ev):
        return
    (la, ta), (lb, tb) = fa, fb
    # Laid on each other frame to frame (stretched if the aspects differ).
    sx, sy = lb.width / max(la.width, 1), lb.height / max(la.height, 1)
    o = compare_overlap(ta, tb, [[sx, 0, 0], [0, sy, 0]], (la.width, la.height),
                        (lb.width, lb.height))
    if o.correlation <= -1.0:
        return  # too little texture to tell
    unchanged = o.agreement >= UNCHANGED_AGREEMENT
    if abs(sx - sy) > 0.02 * max(sx, sy):
        ev.extra["relation"] = ("resized" if unchanged and not reframed(*sizes) else "crop")
    elif not unchanged:
        ev.extra["relation"] = "edited"


def reframed(size_a: tuple[int, int] | None, size_b: tuple[int, int] | None) -> bool:
    """Whether two images' aspect ratios differ by more than rounding one of
    them to whole pixels explains (one pixel either side): another framing
    (False when a size is unknown)."""
    if not size_a or not size_b or min(*size_a, *size_b) <= 0:
        return False
    (wa, ha), (wb, hb) = size_a, size_b
    small_w, small_h, big_w, big_h = (wa, ha, wb, hb) if wa * ha <= wb * hb else (wb, hb, wa, ha)
    return (abs(small_w - small_h * big_w / big_h) > 1.0
            and abs(small_h - small_w * big_h / big_w) > 1.0)


class RelationSettling:
    """``settle_global_relation`` for a matcher's pairs, once each (mixed into
    ``pairs.PairMatcher``: reads its ``cache``, ``sizes`` and pools)."""

    def settle_relation(self, ev: PairEvidence) -> str | None:
        """The pair's relation, with ``settle_global_relation`` applied (once
        per pair: a report asks for one pair's relation many times, as a
        keeper pair and between members)."""
        if self._settled.get(id(ev)) is not ev:
            settle_global_relation(ev, self.cache.get(ev.a), self.cache.get(ev.b),
                                   (self.sizes.get(ev.a), self.sizes.get(ev.b)))
            self._settled[id(ev)] = ev  # (kept alive here, so the id stays its own)
        return ev.relation()

    def settle_relations(self, evidence: Iterable[PairEvidence]) -> None:
        """``settle_relation`` of many pairs at once, before a report asks
        for them one by one: in the worker processes (``_processes``: large
        batches in large runs; the thumbnail comparisons' Python glue holds
        the GIL) or else on the worker threads. Features are read on this
        thread, ``SETTLE_PART`` pairs at a time, and only each image's size
        and thumbnail are kept of them: every pair's local features held
        at once took the Ray driver's RSS up by about 114 MiB at the end
        of clustering 100,000 images (its peak)."""
        todo = list({id(ev): ev for ev in evidence
                     if self._settled.get(id(ev)) is not ev and self._unsettled(ev)}.values())
        for start in range(0, len(todo), SETTLE_PART):
            self._settle_part(todo[start:start + SETTLE_PART])
        for ev in todo:
            self._settled[id(ev)] = ev

    def _settle_part(self, part: list[PairEvidence]) -> None:
        items = [(ev, _thumb(self.cache.get(ev.a)), _thumb(self.cache.get(ev.b)),
                  (self.sizes.get(ev.a), self.sizes.get(ev.b))) for ev in part if _settles(ev)]
        procs = self._processes if len(items) >= PROCESS_BATCH else None
        if procs is not None:
            # Only the thumbnails and sizes travel; the relation comes back.
            sent = [(_Settle(ev.rule, {"relation": ev.relation()}), fa, fb, sizes)
                    for ev, fa, fb, sizes in items]
            for (ev, *_), rel in zip(items, self._in_processes(_settle_many, sent)):
                ev.extra["relation"] = rel
        else:
            pool = self._pool if len(items) > 1 else None
            if pool is None:
                for item in items:
                    settle_global_relation(*item)
            else:
                list(pool.map(lambda item: settle_global_relation(*item), items,
                              chunksize=max(1, len(items) // 16)))

    def _unsettled(self, ev: PairEvidence) -> bool:
        """Whether ``settle_relation`` has anything to compute for ``ev``
        (subclasses that store relations know more)."""
        return True
