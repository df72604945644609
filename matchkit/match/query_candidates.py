"""Which gallery images a query is compared with, before any evidence: pHash
neighbours and descriptor votes, found as dedupe finds its candidates, and
for the zoomed second look the distinctive votes only. Each is the search of
its signal (``QueryCandidates.SEARCHES``), run in the signals' order through
the loop every matcher uses (``searches.signal_steps``).

A part of ``QueryMatcher`` (``match/query.py``), separate because choosing the
candidates is its own stage: :class:`QueryCandidates` holds these methods,
the matcher inherits them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from matchkit.match.candidates import phash_candidates, vote_candidates
from matchkit.match.searches import signal_steps
from matchkit.store.gallery import ORB_KEY_STRIDE
from matchkit.signals.hashing import PHASH_BITS

#: Best-voted images verified in the zoomed second look.
ZOOM_CANDIDATES = 4
#: The zoomed look votes with the keypoints of ORB's finest pyramid levels
#: only (0-3 of 8, scale step 1.2): at twice the usual working side, level 4
#: sees the image at 1/2.07 of that, the scale the first look already
#: searched. Chosen on the calib halves (gallery: 353 originals and 2,000
#: scale-set pictures, one core): hard-set screenshots found 290 of 353
#: against 279 voting with every level (levels 0-4: 287), the zoom's vote
#: search 53 against 85 ms per query; fewer near-duplicate votes from coarse
#: levels leave more of the distinctive ones (``_distinctive_votes``).
ZOOM_VOTE_LEVELS = 4


@dataclass
class QueryRun:
    """What one pass of a query's candidate searches found so far (the
    queries ``records`` under their ``keys``, gallery ids ``exclude``-d
    per query; ``first``: the first pass, not the zoomed second look)."""

    records: Sequence
    keys: list[int]
    exclude: list[set[int]]
    first: bool
    #: Per query: gallery id -> pHash distance (-1: not yet known).
    by_query: list[dict[int, int]] = field(init=False)
    #: Per query: gallery id -> descriptor votes.
    vote_of: list[dict[int, float]] = field(init=False)
    #: pHash crowd distance by query key.
    crowd: dict[int, int] = field(default_factory=dict)
    #: Query key -> its position in ``records``.
    index_of: dict[int, int] = field(init=False)
    #: Most gallery ids any query leaves out: searches ask for that many more.
    wider: int = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.records)
        self.by_query = [{} for _ in range(n)]
        self.vote_of = [{} for _ in range(n)]
        self.index_of = {k: i for i, k in enumerate(self.keys)}
        self.wider = max(len(e) for e in self.exclude)


class QueryCandidates:
    """The candidate search of ``query.QueryMatcher``, which inherits it:
    reads the matcher's ``settings``, ``gallery`` and ``allowed``."""

    #: Built-in signal -> the method that runs its search for queries
    #: (``searches.signal_steps``: the signals' order, enabled ones only).
    SEARCHES = {"phash": "_phash_query", "local": "_local_query"}

    def _candidates(self, records, keys, exclude, *, phash: bool):
        """Per query: gallery id -> pHash distance (-1: not yet known), votes
        by gallery id, and the pHash crowd distances. ``phash``: the first
        pass (the zoomed second look keeps the first pass's hashes)."""
        run = QueryRun(records, keys, exclude, first=phash)
        for step in signal_steps(self.SEARCHES, self.settings):
            getattr(self, step)(run)
        return run.by_query, run.vote_of, run.crowd

    def _phash_query(self, run: QueryRun) -> None:
        """Gallery images near each query by pHash (first pass only)."""
        if not run.first:
            return
        s, records, keys, exclude = self.settings, run.records, run.keys, run.exclude
        n, index_of, wider, by_query, crowd = (len(records), run.index_of, run.wider,
                                               run.by_query, run.crowd)
        base_id = self.gallery.last_id() + 1
        allowed = self.allowed if self.allowed is not None else range(1, base_id)
        max_distance = max(s.phash_max_distance, s.exact_check_distance)
        collect_top = 4
        found = phash_candidates(
            self.gallery.phash_index, keys, np.stack([r.phashes for r in records]),
            max_distance=max_distance, neighbours=s.neighbours + wider, allowed=allowed,
            collect_distance=s.phash_candidate_distance if s.local_features else None,
            collect_top=collect_top + wider)
        # Crowd distance: to the query's ``neighbours``-th nearest image,
        # not counting excluded ones (as the hash rule expects).
        for key, near in found.nearest.items():
            kept = [d for g, d in near if g not in exclude[index_of[key]]]
            crowd[key] = kept[s.neighbours - 1] if len(kept) >= s.neighbours else PHASH_BITS
        # Every pair within max_distance and the closest few looser ones,
        # after exclusion (as if excluded images were never indexed).
        loose: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for (g, q), d in found.pairs.items():
            i = index_of[q]
            if g in exclude[i]:
                continue
            if d <= max_distance:
                by_query[i][g] = d
            else:
                loose[i].append((d, g))
        for i in range(n):
            for d, g in sorted(loose[i])[:collect_top]:
                by_query[i][g] = d

    def _local_query(self, run: QueryRun) -> None:
        """Gallery images each query's descriptors vote for: all its
        strongest descriptors in the first pass, the distinctive ones of the
        zoomed look in the second (``_distinctive_votes``)."""
        s, records, keys, exclude = self.settings, run.records, run.keys, run.exclude
        n, index_of = len(records), run.index_of
        if run.first:
            queries = {k: r.local.desc[: s.query_features] for k, r in zip(keys, records)
                       if r.local is not None}
            votes = vote_candidates(
                self.gallery.orb_index, queries, key_stride=ORB_KEY_STRIDE,
                neighbours=s.vote_neighbours, max_distance=s.vote_max_distance,
                per_query=s.vote_candidates + run.wider, allowed=self.allowed)
        else:
            votes = self._distinctive_votes(records, keys, exclude)
        voted: list[list[tuple[float, int]]] = [[] for _ in range(n)]
        for (g, q), v in votes.items():
            i = index_of[q]
            if g not in exclude[i]:
                voted[i].append((-v, g))
        top = s.vote_candidates if run.first else ZOOM_CANDIDATES
        for i in range(n):
            for v, g in sorted(voted[i])[:top]:
                run.vote_of[i][g] = -v
                run.by_query[i].setdefault(g, -1)

    def _distinctive_votes(self, records, keys, exclude, ratio: float = 0.8,
                           neighbours: int = 16, min_votes: int = 3
                           ) -> dict[tuple[int, int], float]:
        """Votes of query descriptors that are distinctive: nearer to one
        gallery image than to any other by Lowe's ratio.

        The zoomed view of a screenshot or a poster has hundreds of keypoints
        on text and interface elements; shared votes would let gallery images
        full of similar text outvote the photo inside. A descriptor that is
        about as close to several images says nothing and casts no vote.
        """
        s = self.settings
        owners, descs = [], []
        for i, r in enumerate(records):
            if r.local is not None and len(r.local):
                desc = r.local.desc
                if r.local.octave is not None:  # (the zoomed look: ``ZOOM_VOTE_LEVELS``)
                    desc = desc[r.local.octave < ZOOM_VOTE_LEVELS]
                owners.append(np.full(len(desc), i))
                descs.append(desc)
        if not descs or len(self.gallery.orb_index) == 0:
            return {}
        owner = np.concatenate(owners)
        found, dists = self.gallery.orb_index.search(np.concatenate(descs), neighbours)
        images = np.where(found >= 0, found // ORB_KEY_STRIDE, -1)
        usable = images >= 0
        if self.allowed is not None:
            usable &= np.isin(images, np.fromiter(self.allowed, np.int64, len(self.allowed)))
        for i, skip in enumerate(exclude):
            if skip and (rows := np.flatnonzero(owner == i)).size:
                usable[rows] &= ~np.isin(images[rows], np.fromiter(skip, np.int64, len(skip)))
        # Per descriptor: the nearest usable image, and the nearest usable
        # neighbour of another image (none: twice the code length away).
        row = np.arange(len(images))
        has = usable.any(axis=1)
        at = usable.argmax(axis=1)
        first, d1 = images[row, at], dists[row, at].astype(np.float64)
        other = usable & (images != first[:, None])
        d2 = np.where(other.any(axis=1), dists[row, other.argmax(axis=1)],
                      2 * self.gallery.orb_index.nbits).astype(np.float64)
        cast = has & (d1 <= s.vote_max_distance) & (d1 <= ratio * d2)
        key_of = np.asarray(keys, np.int64)
        pairs, counts = np.unique(np.stack([first[cast], key_of[owner[cast]]], axis=1),
                                  axis=0, return_counts=True)
        votes = {(int(g), int(k)): float(c) for (g, k), c in zip(pairs.tolist(), counts.tolist())}
        # One or two distinctive votes happen by chance; a copy gets several.
        return {pair: v for pair, v in votes.items() if v >= min_votes}
