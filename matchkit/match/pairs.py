"""From candidate pairs to evidence to a decision.

Candidates come from two cheap sources: nearest neighbours in pHash space
(global look) and votes of local descriptors (shared parts). Each candidate
pair then collects evidence: pHash distance, colour agreement and, where the
hashes do not settle it, geometric verification of local features followed
by a photometric check of the aligned overlap. ``hash_rule`` and
``local_rule`` turn evidence into match / no match; a calibrated model can
replace them (issue: calibration).

This module holds ``PairMatcher`` and ``match_pairs``; the pieces they use
live beside it: the evidence and hand rules (``evidence.py``), stored and
content features (``content.py``), the verification of one pair
(``verification.py``), checks on stored pixels (``pixelchecks.py``), the
settling of relations (``settle.py``) and the worker pools (``pools.py``).
Their names are imported back here, so older imports keep working.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from matchkit.match import candidates as _candidates  # noqa: F401  (old paths)
from matchkit.util.arrays import PackedMasks, SparseRows
from matchkit.match.candidates import VoteDetail, phash_candidates, vote_candidates  # noqa: F401  (old paths)
from matchkit.util.checkpoint import checkpoint, report  # noqa: F401  (old paths)
from matchkit.signals.colour import BINS, histogram_similarities, histogram_similarity
from matchkit.config import Settings
from matchkit.store.gallery import ORB_KEY_STRIDE, Gallery
from matchkit.store.image_table import ImageTable
from matchkit.signals.hashing import (PHASH_BITS, REFLECTIONS, crowd_distance, dihedral_distance,
                                     dihedral_match_many)
from matchkit.match.framed import framed_pairs, pairs_of, picture_hashes, unframed  # noqa: F401  (old paths)
from matchkit.signals.local import LocalFeatures
from matchkit.relation import LIGHT_DARK_COLOUR
from matchkit.match.evidence import (  # noqa: F401  (also re-exported: old paths)
                                     SAME_PIXELS_MAX_DIFF,
                                     SAME_PIXELS_OUTLIERS,
                                     PairEvidence,
                                     hash_rule,
                                     MIN_SPREAD,
                                     SPREAD_EXEMPT_AGREEMENT,
                                     MAX_ENCLOSED,
                                     COPY_AGREEMENT,
                                     VARIANT_AGREEMENT,
                                     VARIANT_INLIER_RATIO,
                                     VARIANT_SPREAD,
                                     WHOLE_COLOURS,
                                     SHARED_PART_SPREAD,
                                     SHARED_PART_COVERAGE,
                                     SHARED_PART_CORRELATION,
                                     shared_part,
                                     relation_of,
                                     embedding_rule,
                                     mark_verifiable,
                                     mark_verifiable_as,
                                     local_rule,
                                     icon_rule,
                                     colour_facts,
                                     colour_evidence,
                                     colour_evidence_many,
                                     record_colour,
                                     lightness_evidence,
                                     )
from matchkit.signals.thumbmatch import IconDecider, icon_candidates, icon_views  # noqa: F401  (old paths)
# Moved from here to the modules beside it; imported back for older imports.
from matchkit.match.content import (  # noqa: F401  (re-exported)
    MASK_PART, _LocalCache, _content_features, _content_features_started, _features_in_region,
    content_masks, thumb_content_mask)
from matchkit.match.verification import (  # noqa: F401  (re-exported)
    PADDING_SHARE, PICTURE_MIN_INLIERS, ThumbLooks, _border_share, _check, _fit, _needs_picture,
    _verify_pair, mirrored_look, verify_stored)
from matchkit.match.settle import (  # noqa: F401  (re-exported)
    RelationSettling, _Settle, _settle_many, _settles, _Size, reframed, settle_global_relation)
from matchkit.match.pixelchecks import PixelChecks
from matchkit.match.pools import PROCESS_BATCH, PROCESSES_FROM, MatcherPools  # noqa: F401  (re-exported)
from matchkit.match.searches import (  # noqa: F401  (re-exported)
    CandidateRun, CandidateSearches, _embedding_vectors, _picture_hashes_many,
    embedding_candidates)


VERIFY_BATCH = 512
#: Candidate pairs whose global evidence ``PairMatcher.global_evidence`` measures at once.
EVIDENCE_PART = 8192
#: Images whose colour histograms ``colour_table`` reads at once.
COLOUR_PART = 2048


def colour_table(gallery: Gallery, ids: list[int]) -> tuple[SparseRows, dict[int, int]]:
    """The colour histograms of those of ``ids`` that have one, as the rows
    of one table (``util.arrays.SparseRows``, ``BINS`` wide), and each
    image's row. Read in parts, kept sparse: a hash thumbnail fills about 50
    of the 512 cells, so a row takes about 200 bytes (every image's
    histogram in a dict beside a stacked copy held about 4 KB an image at
    once; with the Ray driver at 20,000 images its peak fell from 479.8 to
    448.4 MiB without them). The counts are of a hash thumbnail's pixels:
    16 bits hold them unless ``hash_side`` is set above 255 (32 bits then)."""
    table, row = SparseRows(BINS, "<u2"), {}
    for start in range(0, len(ids), COLOUR_PART):
        got = gallery.colours(ids[start:start + COLOUR_PART])
        if not got:
            continue
        table.append(np.stack(list(got.values())))  # (widened to 32 bits if need be)
        row.update((i, len(row)) for i in got)
    return table, row


class _TableRows(Mapping):
    """``colour_table``'s rows by image id, each as the stored histogram's
    dtype (uint32) when asked: what ``colour_evidence_many`` reads, without a
    view object per image held for the whole step."""

    def __init__(self, table: SparseRows, row: dict[int, int]):
        self.table, self.row = table, row

    def __getitem__(self, i: int) -> np.ndarray:
        return self.table.dense([self.row[i]])[0].astype("<u4")

    def __contains__(self, i) -> bool:
        return i in self.row

    def __iter__(self):
        return iter(self.row)

    def __len__(self) -> int:
        return len(self.row)


def _pair_arrays(pairs: dict[tuple[int, int], int], same: dict[int, int] | None,
                 votes: dict[tuple[int, int], float] | None = None,
                 top: dict[int, set[int]] | None = None) -> tuple[np.ndarray, ...]:
    """The candidate pairs (a < b -> pHash distance) as int64 arrays of a, b
    and distance in (a, b) order, without the pairs whose images ``same``
    maps to one value (known copies); with ``votes`` and ``top`` also each
    pair's votes and whether one image is among the other's ``top``. (A
    sorted list of (a, b, d) tuples beside the dict's sorted items held about
    130 bytes a pair: 133,000 pairs at 20,000 images.)"""
    n = len(pairs)
    ab = np.fromiter((i for pair in pairs for i in pair), np.int64, count=2 * n).reshape(n, 2)
    d = np.fromiter(pairs.values(), np.int64, count=n)
    top = top or {}
    more = [] if votes is None else [
        np.fromiter((votes.get(p, 0.0) for p in pairs), np.float64, count=n),
        np.fromiter((b in top.get(a, ()) or a in top.get(b, ()) for a, b in pairs), bool,
                    count=n)]
    if same is not None and n:
        ids = np.unique(ab)
        to = np.fromiter((same.get(i, i) for i in ids.tolist()), np.int64, count=len(ids))
        mapped = to[np.searchsorted(ids, ab)]
        keep = mapped[:, 0] != mapped[:, 1]
        ab, d, more = ab[keep], d[keep], [x[keep] for x in more]
    order = np.lexsort((ab[:, 1], ab[:, 0]))
    return (ab[order, 0], ab[order, 1], d[order], *(x[order] for x in more))


class PairMatcher(CandidateSearches, PixelChecks, RelationSettling, MatcherPools):
    """Candidates and global evidence up front; local verification on demand.

    Building the matcher finds candidate pairs among ``ids`` and decides every
    pair the global signals can decide. Pairs that need local verification
    are marked ``pending``; ``verify`` checks a batch of them on worker
    threads. Callers that cluster lazily (see ``cluster.lazy_star_clusters``)
    only pay for the verifications that can change the result.

    The candidate searches by signal (``searches.CandidateSearches``), the
    checks on stored pixels (``pixelchecks.PixelChecks``), the settling of
    relations (``settle.RelationSettling``) and the worker pools
    (``pools.MatcherPools``) are mixed in from their own modules.
    """

    #: Keep the evidence of pairs the global signals refuse that are not worth
    #: verifying either (calibration reads them; an incremental run stores
    #: their decisions). Clustering never looks at them: a matcher that holds
    #: many images' pairs in memory (the Ray driver) drops them.
    keep_refused: bool = True
    #: Images whose stored features ``cache`` keeps (``content._LocalCache``).
    cache_size: int = 4096

    def __init__(self, gallery: Gallery, ids: list[int], settings: Settings,
                 same: dict[int, int] | None = None, calibrator=None,
                 images: ImageTable | None = None):
        self._setup(gallery, ids, settings, calibrator, images)
        run = self.search_candidates(ids)  # (``searches``: each signal's search)
        # The pairs as arrays, then the search's dicts and sets go before the
        # evidence is built (about 300 bytes a pair held beside it: Ray
        # driver, 395,614 pairs at 100,000 images).
        table = _pair_arrays(run.pairs, same, run.votes, run.top)
        del run
        self.between_steps()
        self.evidence = self.evidence_of(*table)
        self.between_steps()

    def _setup(self, gallery: Gallery, ids: list[int], settings: Settings, calibrator,
               images: ImageTable | None = None) -> None:
        """What every matcher holds before any pair is looked at. ``images``:
        the rows of exactly ``ids`` when the caller has read them already."""
        self.settings = settings
        #: A fitted ``calibrate.PairCalibrator`` replacing the hand rules (None: hand rules).
        self.calibrator = calibrator
        self.gallery = gallery
        self.cache = _LocalCache(gallery, self.cache_size)
        self.templated: dict[int, LocalFeatures] = {}
        #: Content masks (thumbnail pixels): template content or the area inside
        #: flat borders; None for images that are content edge to edge. Kept
        #: packed: one for every image a run verifies.
        self._masks: PackedMasks = PackedMasks()
        # The rows as columns, read-only mappings by id (``ImageTable``).
        if images is not None and not np.array_equal(images.ids,
                                                     np.unique(np.asarray(ids, np.int64))):
            raise ValueError("PairMatcher(images=...) must hold the rows of exactly ``ids``")
        stored = ImageTable.read(gallery, ids) if images is None else images
        self.paths = stored.paths
        self._full_digests: dict[int, str | None] = {}
        self._picture_shares: dict[int, float] = {}
        #: id -> pair whose relation ``settle_relation`` has settled.
        self._settled: dict[int, PairEvidence] = {}
        self.sizes, self.formats, self.qualities = stored.sizes, stored.formats, stored.qualities
        self._lightness: dict[int, float | None] = {}
        self.vectors: dict[int, np.ndarray] = {}
        #: Image id -> pHash crowd distance (the pHash search sets it; None until then).
        self.crowd: dict[int, int] | None = None
        #: Icon views by image (``thumbmatch``), made by the icon signal's search.
        self.icons: dict = {}
        #: Share of each image's thumbnail that stands out from its background.
        self._marked: dict[int, float] = {}
        #: Image id -> ``colour_facts`` of the images in pairs found outside
        #: the candidate search (``evidence_between``; ids name the same
        #: images for the run). ``global_evidence`` keeps its own for the step:
        #: kept here, every image's facts stayed for the run (about 460 bytes
        #: an image: 9.2 MiB of the Ray driver at 20,000 images).
        self._colour_facts: dict[int, tuple] = {}
        #: Thumbnail features of the mirrored look, by image (``ThumbLooks``):
        #: a new image's flipped look serves all its pairs (a 50-image add to
        #: 4,950 made 136 mirrored looks of 50 images).
        self._looks = ThumbLooks()

    def global_evidence(self, pairs: dict[tuple[int, int], int], votes: dict[tuple[int, int], float],
                        top: dict[int, set[int]], same: dict[int, int] | None
                        ) -> list[PairEvidence]:
        """Evidence of every candidate pair (a < b -> pHash distance, -1 when
        unknown) from the global signals, decided where those settle it and
        marked ``pending`` where local verification is still worth doing.
        ``self.crowd`` and ``self.templated`` must be known for the pairs' images."""
        # Known copies (same file bytes) have nothing to measure.
        return self.evidence_of(*_pair_arrays(pairs, same, votes, top))

    def evidence_of(self, first: np.ndarray, second: np.ndarray, distance: np.ndarray,
                    votes: np.ndarray, neighbour: np.ndarray) -> list[PairEvidence]:
        """``global_evidence`` of the pairs as arrays (``_pair_arrays``): a, b,
        pHash distance, votes and whether one is among the other's top."""
        settings, plain, calibrator = self.settings, self.plain, self.calibrator
        hists, row = colour_table(self.gallery, np.union1d(first, second).tolist())
        colours, facts_of = _TableRows(hists, row), {}
        evidence: list[PairEvidence] = []
        # Global evidence of many pairs at once (tens of thousands of pairs),
        # in parts: the arrays of every pair's hashes and colours at once
        # grew with the collection (the Ray driver's RSS rose by 54 MiB over
        # this step at 10,000 images).
        for start in range(0, len(first), EVIDENCE_PART):
            cut = slice(start, start + EVIDENCE_PART)
            part = list(zip(first[cut].tolist(), second[cut].tolist(), distance[cut].tolist()))
            voted, near = votes[cut].tolist(), neighbour[cut].tolist()
            dists, variants_ab = dihedral_match_many(
                np.array([plain[a] for a, _, _ in part]).reshape(-1, 8, PHASH_BITS // 8),
                np.array([plain[b][0] for _, b, _ in part]).reshape(-1, PHASH_BITS // 8))
            sims = histogram_similarities(hists, [row[a] for a, _, _ in part],
                                          [row[b] for _, b, _ in part])
            colour_of = colour_evidence_many([(a, b) for a, b, _ in part], colours, facts_of)
            for (a, b, d), best, variant, sim, facts, vote, top_near in zip(
                    part, dists.tolist(), variants_ab.tolist(), sims.tolist(), colour_of, voted,
                    near):
                ev = PairEvidence(a, b, best if d < 0 else d, sim, votes=vote)
                if variant in REFLECTIONS:
                    ev.extra["reflect"] = True
                if variant:
                    ev.extra["dihedral"] = variant  # turned or mirrored: an edit
                record_colour(ev, facts)  # (``colour_evidence``, for all pairs at once)
                self.mark_redrawn(ev)
                if sim < LIGHT_DARK_COLOUR:
                    lightness_evidence(ev, self.lightness(a), self.lightness(b))
                if a in self.vectors and b in self.vectors:
                    ev.cosine = float(self.vectors[a] @ self.vectors[b])
                if a in self.templated or b in self.templated:
                    ev.extra["template"] = True  # the frame is shared; only content may decide
                elif calibrator is None:
                    ev.rule = hash_rule(ev, self.crowd, settings)
                    if ev.rule and self.thumbnails_refute(ev):
                        ev.rule = ""
                    if not ev.rule:
                        self.frames_rule(ev)
                    ev.rule = ev.rule or embedding_rule(ev, settings)
                mark_verifiable_as(ev, top_near, settings, self.pair_crowd(ev))
                if self.keep_refused or calibrator is not None or not self._refused(ev):
                    evidence.append(ev)
        self.icon_decider = IconDecider(self.icons, [(ev.a, ev.b) for ev in evidence])
        if calibrator is None:
            for ev in evidence:
                icon_rule(ev, self.icon_decider, settings)
        if calibrator is not None:
            from matchkit.match.pairfeatures import globally_decidable
            self.decide(evidence, "model", [globally_decidable(ev, self.crowd) for ev in evidence])
        for ev in evidence:
            ev.pending = ev.extra["verifiable"] and not ev.rule
        if not self.keep_refused:
            evidence = [ev for ev in evidence if not self._refused(ev)]
        return evidence

    def _refused(self, ev: PairEvidence) -> bool:
        """Whether ``ev`` is settled as no match by its global evidence, with
        nothing left to look at: no rule, not worth verifying, not near enough
        in pHash to be the same pixels (``find_clusters`` checks those) and not
        a pair of icons (decided by ``icon_rule`` after all pairs are known)."""
        return not (ev.rule or ev.extra.get("verifiable")
                    or ev.phash_distance <= self.settings.exact_check_distance
                    or (ev.a in self.icons and ev.b in self.icons))

    def decide(self, evidence: list[PairEvidence], rule: str,
               allowed: list[bool] | None = None) -> None:
        """Calibrated decision of ``evidence`` as it stands: ``rule`` if the
        calibrator accepts the pair (and ``allowed`` says it may be decided
        now), else ""; P(duplicate) goes to ``extra["p"]``."""
        from matchkit.match.pairfeatures import decide

        if evidence:
            decide(self.calibrator, evidence, self.crowd, self.sizes,
                   self.picture_fractions(evidence), rule, allowed, level=self.settings.level)

    def verify(self, todo: list[PairEvidence]) -> None:
        """Geometric + photometric verification of pending pairs, on worker threads
        (OpenCV drops the GIL); features are read from SQLite on this thread,
        the next batch's while the workers verify this one. The content masks
        are made by the workers (from the thumbnails read here): made here,
        they were a third of this thread's time while the workers waited."""
        todo = [ev for ev in todo if ev.pending]
        read, work = self._read_pairs, self._verify_read

        def finish(batch) -> None:
            """Wait for a batch's results; then the calibrated decision (hand-set
            rules were applied as each pair was verified)."""
            if batch is not None:
                part, results = batch
                list(results)
                if self.calibrator is not None:
                    self.decide(part, "local")

        pool = self._pool if len(todo) > 1 else None
        running = None  # (the batch the workers have, its results)
        for start in range(0, len(todo), VERIFY_BATCH):
            part = todo[start:start + VERIFY_BATCH]
            chunk = read(part)
            if pool is None:
                finish((part, map(work, chunk)))
            else:
                finish(running)
                running = part, pool.map(work, chunk, chunksize=max(1, len(chunk) // 16))
        finish(running)

    def _read_pairs(self, part: list[PairEvidence]) -> list[tuple]:
        """What verifying each pair reads from the gallery (SQLite: on the
        calling thread), as items for ``_verify_read``."""
        out = []
        for ev in part:
            fa, fb = self.cache.get(ev.a), self.cache.get(ev.b)
            if fa is None:  # (its mask would read SQLite: here, not on a worker)
                self.content_mask(ev.a)
            if fb is None:
                self.content_mask(ev.b)
            out.append((ev, fa, fb))
        return out

    def _verify_read(self, item: tuple) -> None:
        """Verify one pair read by ``_read_pairs`` (on a worker thread; the
        hand-set rules apply as it is verified)."""
        ev, fa, fb = item
        # (Two workers may make one image's mask at once: the same mask.)
        verify_stored(ev, fa, fb, self.content_mask(ev.a, fa[1] if fa else None),
                      self.content_mask(ev.b, fb[1] if fb else None), self.templated,
                      self.settings, self.calibrator is None, self._looks,
                      crowd=self.pair_crowd(ev))

    def pair_crowd(self, ev: PairEvidence) -> int | None:
        """The pair's closer crowd distance (``hashing.crowd_distance``), None
        when no pHash search ran (no crowd known)."""
        return None if self.crowd is None else crowd_distance(ev, self.crowd)

    def finish(self) -> None:
        """Clustering ended normally: work started in the background is done
        when this returns (an incremental matcher's verification ahead,
        ``incremental.IncrementalMatcher``); ``close`` follows."""


    def evidence_between(self, a: int, b: int, reflect: bool) -> PairEvidence:
        """Fresh, pending evidence for a pair found outside the candidate search."""
        a, b = min(a, b), max(a, b)
        cols = self.gallery.colours([a, b])
        ev = PairEvidence(a, b, dihedral_distance(self.plain[a], self.plain[b][0]),
                          histogram_similarity(cols[a], cols[b]))
        ev.extra["reflect"] = reflect
        colour_evidence(ev, cols, self._colour_facts)
        self.mark_redrawn(ev)
        lightness_evidence(ev, self.lightness(a), self.lightness(b))
        ev.extra["second_hop"] = True
        ev.pending = self.settings.local_features
        if self.calibrator is None:
            if not reflect and self.frames_rule(ev):
                ev.pending = False
            icon_rule(ev, self.icon_decider, self.settings)
        return ev


def match_pairs(gallery: Gallery, ids: list[int], settings: Settings,
                same: dict[int, int] | None = None, calibrator=None) -> list[PairEvidence]:
    """Evidence and decision for every candidate pair among ``ids`` (all verified).

    Returns every candidate pair examined (``rule`` empty when it did not
    match). Pairs whose images map to the same value in ``same`` (known
    exact copies, e.g. id -> first id with the same file bytes) are skipped.
    """
    matcher = PairMatcher(gallery, ids, settings, same, calibrator)
    matcher.verify(matcher.evidence)
    return matcher.evidence
