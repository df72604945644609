"""Match images that are not in a gallery against it.

Dedupe compares gallery images with each other; a query compares outside
images with the gallery without adding them: to label a photo by its nearest
labelled examples, or to ask whether a picture is a copy of one in a
collection. Candidates come from the same two sources dedupe uses (pHash
neighbours over all 8 dihedral variants, and votes of local descriptors), and
evidence and decisions come from the same functions (``hash_rule``,
geometric + photometric verification with the mirrored retry, ``local_rule``,
the burstiness check of ``burst`` with the gallery's images as the run), so a
query matches a gallery image exactly when dedupe would have linked the two.

Each query gets a temporary key above the gallery's largest id; candidate
pairs are then ``(gallery id, query key)`` like any gallery pair, and
:class:`~matchkit.match.pairs.PairEvidence` describes them.

With a calibrator (a profile's ``calibrate.PairCalibrator``) the calibrated
decision replaces the hand rules, exactly as in dedupe: pairs may be accepted
on global signals only where ``pairfeatures.globally_decidable`` allows, the
rest after verification, and a neighbour's score is its calibrated P(duplicate).

The candidate search is in ``query_candidates.py`` (``QueryMatcher``'s base
class), the results and their score in ``query_results.py``; both are
imported back here.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from matchkit.match import burst
from matchkit.signals.colour import histogram_similarity
from matchkit.config import Settings, clamp_setting
from matchkit.features import ImageRecord, extract_many
from matchkit.store.gallery import ORB_KEY_STRIDE, Gallery
from matchkit.signals.hashing import REFLECTIONS, dihedral_match
from matchkit.io.load import ImageLoadError, load_image, shrink
from matchkit.signals.local import extract_local, working_grey
from matchkit.match.verification import mirror_worth_trying
from matchkit.match.pairs import (PairEvidence, ThumbLooks, _LocalCache, _verify_pair, colour_evidence,
                                  hash_rule, local_rule, settle_global_relation)
from matchkit.match.query_candidates import (  # noqa: F401  (re-exported)
    ZOOM_CANDIDATES, ZOOM_VOTE_LEVELS, QueryCandidates)
from matchkit.match.query_results import (  # noqa: F401  (re-exported)
    Neighbour, QueryResult, match_strength)
from matchkit.match.template import picture_mask

#: Descriptor votes (as ``vote_candidates`` counts them) that make a candidate
#: worth verifying before any other; 7 in 10 chance look-alikes have fewer.
STRONG_VOTES = 2.0


def _worth_verifying(ev: PairEvidence, s: Settings) -> bool:
    """A query candidate the descriptors voted for, or close enough in pHash."""
    return ev.votes > 0 or ev.phash_distance <= s.phash_candidate_distance


class QueryMatcher(QueryCandidates):
    """Candidates, evidence and decisions for query images against one gallery.

    ``allowed`` restricts the search to some gallery ids (a labeler passes
    its labelled images). The matcher keeps a cache of gallery features and a
    worker pool between calls; ``close`` ends the pool.
    """

    def __init__(self, gallery: Gallery, settings: Settings | None = None, *,
                 allowed: set[int] | None = None, zoom: bool = True, zoom_side: int = 1024,
                 zoom_features: int = 2000, calibrator=None, cache_size: int = 4096):
        self.gallery = gallery
        #: A fitted ``calibrate.PairCalibrator`` replacing the hand rules (None: hand rules).
        self.calibrator = calibrator
        # Pair-feature inputs of the calibrated decision, by gallery id or query key.
        self._sizes: dict[int, tuple[int, int]] = {}
        self._pictures: dict[int, float] = {}
        self._crowd: dict[int, int] = {}
        self.zoom, self.zoom_side, self.zoom_features = zoom, zoom_side, zoom_features
        self.settings = settings or gallery.settings
        self.allowed = None if allowed is None else set(allowed)
        #: Gallery images whose local features (~32 KB each) and picture masks
        #: stay in memory between calls, least recently used dropped first.
        self.cache = _LocalCache(gallery, cache_size)
        self._masks: OrderedDict[int, np.ndarray | None] = OrderedDict()
        #: Thumbnail features of the mirrored look, by image (``verification.ThumbLooks``).
        self._looks = ThumbLooks()
        self._threads: ThreadPoolExecutor | None = None

    def __enter__(self) -> "QueryMatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None

    # -- public ------------------------------------------------------------
    def match(self, paths: Iterable[str | os.PathLike]) -> list[QueryResult]:
        """Read each query file and match it; unreadable files get ``error``."""
        results, records, slots = [], [], []
        for path, rec in extract_many([str(p) for p in paths], self.settings):
            if isinstance(rec, ImageLoadError):
                results.append(QueryResult(path, error=rec.reason))
            else:
                results.append(QueryResult(path))
                records.append(rec)
                slots.append(len(results) - 1)
        for slot, neighbours in zip(slots, self.match_records(records)):
            results[slot].neighbours = neighbours
        return results

    def match_records(self, records: Sequence[ImageRecord],
                      exclude: Sequence[set[int]] | None = None) -> list[list[Neighbour]]:
        """Neighbours of each record, strongest first.

        ``exclude[i]`` leaves gallery ids out of query i's search as if they
        were not in the gallery (leave-one-out calibration). The same record
        object may appear several times with different exclusions; its
        evidence against a gallery image is then computed once.

        Queries that match nothing get a second, closer look (``zoom``):
        features found on a larger working image, many more of them, vote
        (distinctive votes only, see ``_distinctive_votes``) and the best
        voted images are verified with them. A photo shown small inside a
        screenshot or a poster has too few of the ordinary keypoints to be
        found; at twice the size it has enough. Only unmatched queries pay
        for this.
        """
        s = self.settings
        n = len(records)
        if n == 0:
            return []
        exclude = [set(e) for e in exclude] if exclude is not None else [set()] * n
        if len(exclude) != n:
            raise ValueError("exclude needs one set per record")
        base = self.gallery.last_id() + 1
        keys = list(range(base, base + n))
        by_query, vote_of, crowd = self._candidates(records, keys, exclude, phash=True)
        found = self._evidence(records, keys, by_query, vote_of, crowd, {})
        self._burst(records, keys, found)
        if self.zoom and s.local_features:
            redo = [i for i in range(n) if records[i].local is not None
                    and not any(ev.rule for ev in found[i])]
            if redo:
                zoomed: dict[int, ImageRecord] = {}
                for i in redo:
                    rec = records[i]
                    if id(rec) not in zoomed:
                        zoomed[id(rec)] = self._zoomed(rec)
                recs2 = [zoomed[id(records[i])] for i in redo]
                keys2 = [keys[i] for i in redo]
                excl2 = [exclude[i] for i in redo]
                by2, votes2, _ = self._candidates(recs2, keys2, excl2, phash=False)
                for j, i in enumerate(redo):  # the hashes are those of the first pass
                    for ev in found[i]:
                        if ev.a in by2[j]:
                            by2[j][ev.a] = ev.phash_distance
                second = self._evidence(recs2, keys2, by2, votes2, crowd, {}, force=True)
                self._burst(recs2, keys2, second)
                for j, i in enumerate(redo):
                    best = {ev.a: ev for ev in found[i]}
                    for ev in second[j]:
                        ev.extra["zoom"] = True
                        old = best.get(ev.a)
                        if old is None or (bool(ev.rule), self.strength(ev)) > (
                                bool(old.rule), self.strength(old)):
                            best[ev.a] = ev
                    found[i] = list(best.values())
        stored = self.gallery.images(sorted({ev.a for evs in found for ev in evs}))
        out = []
        for rec, evs in zip(records, found):
            # Blank images (one flat colour) all look alike: only a byte copy matches.
            evs = [ev for ev in evs if not (rec.blank or stored[ev.a].blank)
                   or rec.sha256 == stored[ev.a].sha256]
            neighbours = [Neighbour(ev.a, stored[ev.a].path, ev, self.strength(ev)) for ev in evs]
            neighbours.sort(key=lambda nb: (-nb.score, nb.id))
            out.append(neighbours)
        return out

    def _burst(self, records, keys, found: list[list[PairEvidence]]) -> None:
        """The burstiness check (``burst``) on the local matches of the queries
        (keys ``keys``), as dedupe applies it: a match on a part many gallery
        pictures carry (a sticker, a logo) is refused."""
        s = self.settings
        if not (s.local_features and s.burst_pictures):
            return
        by_key = dict(zip(keys, records))

        def features(i: int):
            if i in by_key:
                return by_key[i].local
            got = self.cache.get(i)
            return None if got is None else got[0]

        def hashes(ids):
            out = {i: by_key[i].phashes for i in ids if i in by_key}
            rest = [i for i in ids if i not in by_key]
            if rest:
                out.update(zip(rest, self.gallery.phash_variants(rest)))
            return out

        allowed = None if self.allowed is None else burst.run_mask(self.allowed)
        evidence = [ev for evs in found for ev in evs]
        for ev, part in burst.measure(evidence, self.gallery.orb_index, features, hashes, s,
                                      ORB_KEY_STRIDE, allowed):
            burst.apply(ev, part, s)

    def strength(self, ev: PairEvidence) -> float:
        """A neighbour's score: calibrated P(duplicate) under a calibrator,
        else :func:`match_strength`."""
        if self.calibrator is not None:
            return round(float(ev.extra.get("p", 0.0)), 6)
        return match_strength(ev, self.settings)

    def _decide(self, evidence: list[PairEvidence], rule: str,
                allowed: list[bool] | None = None) -> None:
        """Calibrated decision of ``evidence`` as it stands (``pairfeatures.decide``)."""
        from matchkit.match.pairfeatures import decide

        decide(self.calibrator, evidence, self._crowd, self._sizes, self._pictures, rule,
               allowed, level=self.settings.level)

    def _note_pictures(self, records, keys, gallery_ids) -> None:
        """Sizes and picture shares the calibrated decision needs."""
        for rec, key in zip(records, keys):
            self._sizes[key] = (rec.width, rec.height)
            mask = _mask(rec.thumb)
            self._pictures[key] = 1.0 if mask is None else float(mask.mean())
        new = [g for g in gallery_ids if g not in self._sizes]
        for g, img in self.gallery.images(new).items():
            self._sizes[g] = (img.width, img.height)
            mask = self._gallery_mask(g, self.cache.get(g)) if self.settings.local_features else None
            self._pictures[g] = 1.0 if mask is None else float(mask.mean())

    def _evidence(self, records, keys, by_query, vote_of, crowd, shared, *, force: bool = False
                  ) -> list[list[PairEvidence]]:
        """Evidence for every candidate pair, verified where the hashes do not
        decide (``force``: verify every pair the hashes did not match)."""
        s = self.settings
        gallery_ids = sorted({g for c in by_query for g in c})
        if not gallery_ids:
            return [[] for _ in records]
        variants = dict(zip(gallery_ids, self.gallery.phash_variants(gallery_ids)))
        colours = self.gallery.colours(gallery_ids)
        per_query: list[list[PairEvidence]] = []
        for i, (rec, key) in enumerate(zip(records, keys)):
            evs = []
            for g, d in sorted(by_query[i].items()):
                memo = (id(rec), g)
                if memo in shared:
                    evs.append(shared[memo])
                    continue
                best, variant = dihedral_match(variants[g], rec.phashes[0])
                ev = PairEvidence(g, key, best if d < 0 else d,
                                  histogram_similarity(colours[g], rec.colour),
                                  votes=vote_of[i].get(g, 0.0))
                if variant in REFLECTIONS:
                    ev.extra["reflect"] = True
                colour_evidence(ev, {g: colours[g], key: rec.colour})
                if self.calibrator is None:
                    ev.rule = hash_rule(ev, crowd, s)
                shared[memo] = ev
                evs.append(ev)
            per_query.append(evs)
        if self.calibrator is not None:
            from matchkit.match.pairfeatures import globally_decidable

            self._crowd.update(crowd)
            self._note_pictures(records, keys, gallery_ids)
            fresh = [ev for evs in per_query for ev in evs if "p" not in ev.extra]
            self._decide(fresh, "model", [globally_decidable(ev, crowd) for ev in fresh])
        for rec, evs in zip(records, per_query):
            for ev in evs:
                ev.pending = (s.local_features and rec.local is not None and not ev.rule
                              and not ev.verification and (force or _worth_verifying(ev, s)))
        # Strong candidates first; the weakly voted rest only for queries that
        # none of their strong candidates matched (most voted candidates are
        # chance look-alikes, and a query rarely has two real matches).
        strong = [(ev, rec) for rec, evs in zip(records, per_query) for ev in evs
                  if ev.pending and (force or self._strong(ev))]
        self._verify(strong)
        weak = [(ev, rec) for rec, evs in zip(records, per_query)
                if not any(ev.rule for ev in evs) for ev in evs if ev.pending]
        self._verify(weak)
        for rec, evs in zip(records, per_query):
            for ev in evs:
                if ev.pending:  # left unverified: a match was found elsewhere
                    ev.pending = False
                    ev.extra["unverified"] = True
                elif ev.rule and ev.verification is None and rec.local is not None:
                    settle_global_relation(ev, self.cache.get(ev.a), (rec.local, rec.thumb))
        return per_query

    def _strong(self, ev: PairEvidence) -> bool:
        return ev.votes >= STRONG_VOTES or ev.phash_distance <= self.settings.phash_max_distance

    def _zoom_settings(self) -> Settings:
        s = self.settings
        return s.with_(work_side=clamp_setting("work_side", max(s.work_side, self.zoom_side)),
                       n_features=clamp_setting("n_features",
                                                max(s.n_features, self.zoom_features)),
                       thumb_side=clamp_setting("thumb_side", 2 * s.thumb_side))

    def _zoomed(self, rec: ImageRecord) -> ImageRecord:
        """The record with local features and thumbnail from a larger view
        (no larger than the file itself, no smaller than the usual view)."""
        z = self._zoom_settings()
        try:
            img = load_image(rec.path, max_side=z.work_side, max_pixels=z.max_pixels).image
            side = max(self.settings.work_side, min(z.work_side, max(rec.width, rec.height)))
            local = extract_local(working_grey(img, side), z.n_features, octaves=True)
            thumb = np.asarray(shrink(img, z.thumb_side).convert("L"))
        except Exception:  # changed or odd file: the usual view has to do
            return rec
        return replace(rec, local=local, thumb=thumb)

    # -- verification ------------------------------------------------------
    def _verify(self, todo: list[tuple[PairEvidence, ImageRecord]]) -> None:
        """Geometric + photometric verification (gallery image a, query b),
        with the mirrored retry for pairs whose hashes align under a reflection.
        OpenCV drops the GIL, so pairs run on worker threads."""
        s = self.settings
        query_masks: dict[int, np.ndarray | None] = {}
        # One verification per evidence object: a caller that asks the same
        # records twice in one call (the labeler's calibration: known and
        # left-out askings together) shares the pair's evidence, and two
        # threads must not verify it at once.
        todo = list({id(ev): (ev, rec) for ev, rec in todo}.values())

        def work(item):
            ev, rec, fa, ma = item
            if id(rec) not in query_masks:
                query_masks[id(rec)] = _mask(rec.thumb)
            # The mirrored look only where the hashes align under a reflection
            # closely enough to mean it, by dedupe's rule without the crowd gate.
            _verify_pair(ev, fa, (rec.local, rec.thumb), {}, s, ma, query_masks[id(rec)],
                         mirror=mirror_worth_trying(ev, s), looks=self._looks)
            if self.calibrator is None:
                ev.rule = local_rule(ev, s)
            ev.pending = False

        for start in range(0, len(todo), 512):
            chunk = []
            for ev, rec in todo[start:start + 512]:
                fa = self.cache.get(ev.a)
                chunk.append((ev, rec, fa, self._gallery_mask(ev.a, fa)))
            pool = self._pool() if len(chunk) > 8 else None
            if pool is None:
                for item in chunk:
                    work(item)
            else:
                list(pool.map(work, chunk, chunksize=max(1, len(chunk) // 16)))
            if self.calibrator is not None:
                self._decide([item[0] for item in chunk], "local")

    def _pool(self) -> ThreadPoolExecutor | None:
        if self.settings.n_workers() <= 1:
            return None
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=self.settings.n_workers())
        return self._threads

    def _gallery_mask(self, image_id: int, features) -> np.ndarray | None:
        if image_id not in self._masks:
            self._masks[image_id] = _mask(features[1]) if features is not None else None
            if len(self._masks) > self.cache.size:
                self._masks.popitem(last=False)
        return self._masks[image_id]


def _mask(thumb: np.ndarray | None) -> np.ndarray | None:
    """Where the picture is inside any flat fill (None: everywhere), as dedupe does."""
    if thumb is None:
        return None
    mask = picture_mask(thumb)
    return None if mask.all() else mask


def query(gallery: Gallery | str | os.PathLike, paths: Iterable[str | os.PathLike],
          settings: Settings | None = None) -> list[QueryResult]:
    """Match image files against a gallery without adding them.

    >>> for r in query("my-gallery", ["found-online.jpg"]):   # doctest: +SKIP
    ...     print(r.path, [m.path for m in r.matches])
    """
    own = not isinstance(gallery, Gallery)
    g = Gallery(gallery, create=False) if own else gallery
    try:
        with QueryMatcher(g, settings) as matcher:
            return matcher.match(paths)
    finally:
        if own:
            g.close()
