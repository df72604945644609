"""From candidate pairs to evidence to a decision.

Candidates come from two cheap sources: nearest neighbours in pHash space
(global look) and votes of local descriptors (shared parts). Each candidate
pair then collects evidence: pHash distance, colour agreement and, where the
hashes do not settle it, geometric verification of local features followed
by a photometric check of the aligned overlap. ``hash_rule`` and
``local_rule`` turn evidence into match / no match; a calibrated model can
replace them (issue: calibration).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import cv2
import numpy as np

from matchkit.match import candidates as _candidates
from matchkit.util.arrays import PackedMasks
from matchkit.match.candidates import VoteDetail, phash_candidates, vote_candidates
from matchkit.util.checkpoint import checkpoint, report
from matchkit.signals.colour import BINS, histogram_similarities, histogram_similarity
from matchkit.config import Settings
from matchkit.store.gallery import ORB_KEY_STRIDE, Gallery
from matchkit.signals.hashing import PHASH_BITS, REFLECTIONS, dihedral_distance, dihedral_match_many, hamming
from matchkit import features as _features
from matchkit.features import digests_prove_same_pixels, full_pixel_digest
from matchkit.match.framed import framed_pairs, pairs_of, picture_hashes, unframed
from matchkit.io.load import ImageLoadError, load_image
from matchkit.match.keeper import FILL_TOLERANCE, hull_share
from matchkit.signals.local import (LocalFeatures, Overlap, Verification, compare_overlap, extract_local,
                                    perspective_strength, verify, working_grey)
from matchkit.match.picture import (PICTURE_SHARE, RIM_INLIERS, compare_picture, inner_share,
                                    picture_proves_copy, rephotograph, shared_frame)
from matchkit.relation import (FEATURE_MIN_CHROMA, FEATURE_MIN_COLOURFUL, LIGHT_DARK_COLOUR,
                               RECAPTURE_PERSPECTIVE, UNCHANGED_AGREEMENT, RelationEvidence,
                               classify, hue_histogram, in_level, redrawn_icons, soft_hues_agree,
                               soft_overlap, soften_hues)
from matchkit.store.stored import thumb_features
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
                                     local_rule,
                                     icon_rule,
                                     colour_facts,
                                     colour_evidence,
                                     lightness_evidence,
                                     )
from matchkit.match.template import (MIN_LOOKALIKES, border_box, content_mask, keypoints_in_mask,
                                     picture_mask)
from matchkit.signals.thumbcheck import frames_prove_copy, marks, thumbnails_refute
from matchkit.signals.thumbmatch import IconDecider, icon_candidates, icon_views


VERIFY_BATCH = 512


class _LocalCache:
    """Small LRU over the gallery's stored local features (and one over
    thumbnails read alone, ``thumb``)."""

    def __init__(self, gallery: Gallery, size: int = 4096):
        self.gallery, self.size, self.data = gallery, size, OrderedDict()
        self.thumbs: OrderedDict = OrderedDict()

    def thumb(self, image_id: int) -> np.ndarray | None:
        """An image's grey thumbnail: from its cached features, else read
        alone (template checks look at many look-alikes' thumbnails only)."""
        if image_id in self.data:
            value = self.data[image_id]
            return None if value is None else value[1]
        if image_id in self.thumbs:
            self.thumbs.move_to_end(image_id)
            return self.thumbs[image_id]
        thumb = self.thumbs[image_id] = self.gallery.thumbnail(image_id)
        if len(self.thumbs) > self.size:
            self.thumbs.popitem(last=False)
        return thumb

    def thumb_shapes(self, ids) -> dict[int, tuple[int, int]]:
        """(height, width) of the thumbnails of those of ``ids`` that have one
        (``Gallery.thumb_shapes``), from this cache where it holds them."""
        out, need = {}, []
        for i in ids:
            value = self.data[i][1] if self.data.get(i) is not None else self.thumbs.get(i)
            if value is not None:
                out[i] = value.shape[:2]
            elif i not in self.data and i not in self.thumbs:
                need.append(i)
        out.update(self.gallery.thumb_shapes(need))
        return out

    def get(self, image_id: int):
        if image_id in self.data:
            self.data.move_to_end(image_id)
            return self.data[image_id]
        value = self.gallery.local_features(image_id)
        self.data[image_id] = value
        if len(self.data) > self.size:
            self.data.popitem(last=False)
        return value


def _embedding_vectors(gallery: Gallery, ids: list[int], model: str | None
                       ) -> dict[int, np.ndarray]:
    if not model:
        return {}
    have = sorted(set(gallery.embedded_ids(model).tolist()) & set(ids))
    return dict(zip(have, gallery.vectors(model, have))) if have else {}


def embedding_candidates(gallery: Gallery, vectors: dict[int, np.ndarray],
                         settings: Settings) -> set[tuple[int, int]]:
    """Pairs (a < b) among ``vectors`` that are each other's nearest by the
    learned embedding (``embedding_neighbours`` per image, cosine at least
    ``cosine_candidate``): one kNN query per image."""
    if not vectors or settings.cosine_candidate is None:
        return set()
    ids = np.fromiter(vectors, dtype=np.int64, count=len(vectors))
    index = gallery.vector_index(settings.model)
    keys, sims = index.search(np.stack([vectors[i] for i in ids.tolist()]),
                              settings.embedding_neighbours + 1, allowed=np.sort(ids))
    out = set()
    for i, krow, srow in zip(ids.tolist(), keys.tolist(), sims.tolist()):
        for j, c in zip(krow, srow):
            if j >= 0 and j != i and c >= settings.cosine_candidate:
                out.add((i, j) if i < j else (j, i))
    return out


class PairMatcher:
    """Candidates and global evidence up front; local verification on demand.

    Building the matcher finds candidate pairs among ``ids`` and decides every
    pair the global signals can decide. Pairs that need local verification
    are marked ``pending``; ``verify`` checks a batch of them on worker
    threads. Callers that cluster lazily (see ``cluster.lazy_star_clusters``)
    only pay for the verifications that can change the result.
    """

    def __init__(self, gallery: Gallery, ids: list[int], settings: Settings,
                 same: dict[int, int] | None = None, calibrator=None):
        self._setup(gallery, ids, settings, calibrator)
        allowed = set(ids)
        variants = gallery.phash_variants(ids)
        #: The 8 dihedral pHashes of every image, loaded once per run.
        self.plain = {i: variants[n] for n, i in enumerate(ids)}
        found = phash_candidates(
            gallery.phash_index, ids, variants, neighbours=settings.neighbours, allowed=allowed,
            **self._phash_limits())
        pairs: dict[tuple[int, int], int] = dict(found.pairs)
        votes: dict[tuple[int, int], float] = {}
        pictures: dict[int, np.ndarray] = {}
        if settings.local_features:
            closer = _content_features_started(ids, self.paths, found, self.cache, settings,
                                               self._masks, self._pool)
            # While the pool looks closer at templated images (decodes and
            # ORB, outside the GIL), this thread hashes the pictures inside
            # frames (work that holds the GIL): the two overlap.
            look = [i for i in ids if not unframed(found.nearest.get(i), settings)]
            pictures = self.picture_hashes(look)
            self.templated = closer()
            votes = self.vote_search(ids, allowed)
            for pair in votes:
                pairs.setdefault(pair, -1)  # distance filled in below

        #: Learned embeddings of the images (model ``settings.model``), if any.
        self.vectors = _embedding_vectors(gallery, ids, settings.model)
        for pair in embedding_candidates(gallery, self.vectors, settings):
            pairs.setdefault(pair, -1)
        #: Icons drawn on transparency at up to 256 px (``thumbmatch``): their
        #: pairs of two sizes are decided on aligned thumbnails, not keypoints.
        self.icons = icon_views(gallery.icons(ids), self.sizes, self._pool)
        for pair in icon_candidates(self.icons):
            pairs.setdefault(pair, -1)
        #: Per-image context of the pair features: crowd distance.
        self.crowd = found.crowd
        top = {i: {j for j, _ in near[:settings.verify_top]} for i, near in found.nearest.items()}
        if settings.local_features:
            self.add_framed(ids, allowed, pairs, top, found.nearest, pictures)
        self.evidence = self.global_evidence(pairs, votes, top, same)

    def add_framed(self, ids: list[int], allowed: set[int], pairs: dict[tuple[int, int], int],
                   top: dict[int, set[int]], nearest: dict[int, list[tuple[int, int]]],
                   pictures: dict[int, np.ndarray] | None = None) -> None:
        """Candidate pairs of the pictures inside frames (``framed``: a print's
        border, a monitor's bezel, photographed at an angle), added to
        ``pairs`` and to ``top`` (worth verifying). Images with a strong pHash
        match (``nearest``: their nearest images) are copies the hashes found;
        their frames are not looked for (``framed.unframed``). ``pictures``:
        their ``picture_hashes`` when already computed."""
        if pictures is None:
            pictures = self.picture_hashes(
                [i for i in ids if not unframed(nearest.get(i), self.settings)])
        found = framed_pairs(self.gallery.phash_index, pictures, self.plain, ids, allowed)
        for (a, b) in pairs_of(found):
            pairs.setdefault((a, b), -1)
            top.setdefault(a, set()).add(b)

    def picture_hashes(self, ids) -> dict[int, np.ndarray]:
        """``framed.picture_hashes`` of those of ``ids`` that have any, from
        their stored grey thumbnails. The work on a thumbnail is small steps
        that mostly hold the GIL: on two worker threads it took longer than on
        one (hard eval half, 1,302 images: 3.3-3.8 s against 2.7 s), so it
        runs in the worker processes (``_processes``) or on this thread."""
        if len(ids) >= PROCESS_BATCH and self._processes is not None:
            thumbs = [(i, lf[1]) for i in ids if (lf := self.cache.get(i)) is not None]
            return {i: h for (i, _), h in zip(thumbs, self._in_processes(_picture_hashes_many,
                                                                         thumbs)) if len(h)}
        out = {}
        for start in range(0, len(ids), 512):
            checkpoint()
            for i in ids[start:start + 512]:
                lf = self.cache.get(i)
                h = picture_hashes(lf[1]) if lf is not None else ()
                if len(h):
                    out[i] = h
        return out

    def _setup(self, gallery: Gallery, ids: list[int], settings: Settings, calibrator) -> None:
        """What every matcher holds before any pair is looked at."""
        self.settings = settings
        #: A fitted ``calibrate.PairCalibrator`` replacing the hand rules (None: hand rules).
        self.calibrator = calibrator
        self.gallery = gallery
        self.cache = _LocalCache(gallery)
        self.templated: dict[int, LocalFeatures] = {}
        #: Content masks (thumbnail pixels): template content or the area inside
        #: flat borders; None for images that are content edge to edge. Kept
        #: packed: one for every image a run verifies.
        self._masks: PackedMasks = PackedMasks()
        stored = gallery.images(ids)
        self.paths = {i: img.path for i, img in stored.items()}
        self._full_digests: dict[int, str | None] = {}
        self._picture_shares: dict[int, float] = {}
        #: id -> pair whose relation ``settle_relation`` has settled.
        self._settled: dict[int, PairEvidence] = {}
        self.sizes = {i: (img.width, img.height) for i, img in stored.items()}
        self.formats = {i: img.format for i, img in stored.items()}
        self._lightness: dict[int, float | None] = {}
        self.vectors: dict[int, np.ndarray] = {}
        #: Share of each image's thumbnail that stands out from its background.
        self._marked: dict[int, float] = {}
        #: Image id -> ``colour_facts`` (ids name the same images for the run).
        self._colour_facts: dict[int, tuple] = {}
        #: Thumbnail features of the mirrored look, by image (``ThumbLooks``):
        #: a new image's flipped look serves all its pairs (a 50-image add to
        #: 4,950 made 136 mirrored looks of 50 images).
        self._looks = ThumbLooks()

    def _phash_limits(self) -> dict:
        s = self.settings
        return dict(max_distance=max(s.phash_max_distance, s.exact_check_distance),
                    collect_distance=s.phash_candidate_distance if s.local_features else None)

    def _vote_limits(self) -> dict:
        s = self.settings
        return dict(neighbours=s.vote_neighbours, max_distance=s.vote_max_distance,
                    per_query=s.vote_candidates, min_votes=s.vote_min_votes)

    def vote_queries(self, ids) -> dict[int, np.ndarray]:
        """The descriptors each image votes with: its strongest (content-only
        for templated images)."""
        queries = {}
        for i in ids:
            checkpoint()
            lf = self.cache.get(i)
            if lf is not None:
                queries[i] = self.templated.get(i, lf[0]).desc[: self.settings.query_features]
        return queries

    def vote_search(self, ids: list[int], allowed: set[int],
                    detail: VoteDetail | None = None) -> dict[tuple[int, int], float]:
        """``vote_candidates`` of ``ids`` against the descriptor index, in parts
        of about ``candidates.SEARCH_CHUNK`` query descriptors, reporting the
        images done as phase "match" (``checkpoint.report``) between parts.
        The same result as one search: an image's votes come from its own
        descriptors' neighbour lists alone (parts' pairs combine by maximum,
        as one call combines its two directions)."""
        out: dict[tuple[int, int], float] = {}
        step = max(1, _candidates.SEARCH_CHUNK // max(1, self.settings.query_features))
        report("match", 0, len(ids))
        for start in range(0, len(ids), step):
            part = ids[start:start + step]
            found = vote_candidates(self.gallery.orb_index, self.vote_queries(part),
                                    key_stride=ORB_KEY_STRIDE, allowed=allowed, detail=detail,
                                    **self._vote_limits())
            for pair, v in found.items():
                if v > out.get(pair, 0.0):
                    out[pair] = v
            report("match", start + len(part), len(ids))
        return out

    def global_evidence(self, pairs: dict[tuple[int, int], int], votes: dict[tuple[int, int], float],
                        top: dict[int, set[int]], same: dict[int, int] | None
                        ) -> list[PairEvidence]:
        """Evidence of every candidate pair (a < b -> pHash distance, -1 when
        unknown) from the global signals, decided where those settle it and
        marked ``pending`` where local verification is still worth doing.
        ``self.crowd`` and ``self.templated`` must be known for the pairs' images."""
        settings, plain, calibrator = self.settings, self.plain, self.calibrator
        colours = self.gallery.colours(sorted({i for pair in pairs for i in pair}))
        evidence: list[PairEvidence] = []
        # Known copies (same file bytes) have nothing to measure.
        todo = [(a, b, d) for (a, b), d in sorted(pairs.items())
                if same is None or same.get(a, a) != same.get(b, b)]
        # Global evidence of all pairs at once (tens of thousands of pairs).
        dists, variants_ab = dihedral_match_many(
            np.array([plain[a] for a, _, _ in todo]).reshape(-1, 8, PHASH_BITS // 8),
            np.array([plain[b][0] for _, b, _ in todo]).reshape(-1, PHASH_BITS // 8))
        row = {i: r for r, i in enumerate(colours)}
        sims = histogram_similarities(np.array(list(colours.values())).reshape(-1, BINS),
                                      [row[a] for a, _, _ in todo], [row[b] for _, b, _ in todo])
        for (a, b, d), best, variant, sim in zip(todo, dists.tolist(), variants_ab.tolist(),
                                                 sims.tolist()):
            ev = PairEvidence(a, b, best if d < 0 else d, sim, votes=votes.get((a, b), 0.0))
            if variant in REFLECTIONS:
                ev.extra["reflect"] = True
            if variant:
                ev.extra["dihedral"] = variant  # turned or mirrored: an edit
            colour_evidence(ev, colours, self._colour_facts)
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
            mark_verifiable(ev, top, settings)
            evidence.append(ev)
        self.icon_decider = IconDecider(self.icons, [(ev.a, ev.b) for ev in evidence], self._pool)
        if calibrator is None:
            for ev in evidence:
                icon_rule(ev, self.icon_decider, settings)
        if calibrator is not None:
            from matchkit.match.pairfeatures import globally_decidable
            self.decide(evidence, "model", [globally_decidable(ev, self.crowd) for ev in evidence])
        for ev in evidence:
            ev.pending = ev.extra["verifiable"] and not ev.rule
        return evidence

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
                      self.settings, self.calibrator is None, self._looks)

    def finish(self) -> None:
        """Clustering ended normally: work started in the background is done
        when this returns (an incremental matcher's verification ahead,
        ``incremental.IncrementalMatcher``); ``close`` follows."""

    @property
    def _pool(self) -> ThreadPoolExecutor | None:
        """One worker pool for the matcher's lifetime, ended by ``close``."""
        if self.settings.n_workers() <= 1:
            return None
        if getattr(self, "_threads", None) is None:
            self._threads = ThreadPoolExecutor(max_workers=self.settings.n_workers())
        return self._threads

    @property
    def _processes(self) -> ProcessPoolExecutor | None:
        """Worker processes for the matcher's lifetime (ended by ``close``),
        for large batches of work whose Python glue holds the GIL (settling
        relations: thousands of thumbnail comparisons; hashing the pictures
        inside frames), where two threads did the work of 1.0-1.3 cores (hard
        eval half). None with one worker, in runs under ``PROCESSES_FROM``
        images (starting processes would cost more than it saves), and after
        a worker died (``_in_processes`` then works here)."""
        if (self.settings.n_workers() <= 1 or len(self.sizes) < PROCESSES_FROM
                or getattr(self, "_processes_broken", False)):
            return None
        if getattr(self, "_procs", None) is None:
            self._procs = ProcessPoolExecutor(
                max_workers=self.settings.n_workers(), mp_context=_features._pool_context(),
                initializer=_features._one_thread_each)
        return self._procs

    def _in_processes(self, fn: Callable[[list], list], items: list) -> list:
        """``fn(part)`` over parts of ``items`` in the worker processes, the
        results joined in order; a part whose worker died runs here."""
        procs = self._processes
        if procs is None:
            return fn(items)
        size = max(1, -(-len(items) // (4 * self.settings.n_workers())))
        parts = [items[i:i + size] for i in range(0, len(items), size)]
        futures = [procs.submit(fn, part) for part in parts]
        out = []
        for part, future in zip(parts, futures):
            try:
                out += future.result()
            except BrokenProcessPool:
                self._processes_broken = True
                out += fn(part)
        return out

    def close(self) -> None:
        if getattr(self, "_threads", None) is not None:
            self._threads.shutdown()
            self._threads = None
        if getattr(self, "_procs", None) is not None:
            self._procs.shutdown(cancel_futures=True)
            self._procs = None


    def mark_redrawn(self, ev: PairEvidence) -> None:
        """Flag a pair of lossless icons of one size (``relation.redrawn_icons``)."""
        if ev.a in self.sizes and ev.b in self.sizes and redrawn_icons(
                self.sizes[ev.a], self.formats[ev.a], self.sizes[ev.b], self.formats[ev.b]):
            ev.extra["redrawn"] = True

    def lightness(self, image_id: int) -> float | None:
        """Mean grey level of the image's stored thumbnail (None without one)."""
        if image_id not in self._lightness:
            thumb = self._thumb(image_id) if self.settings.local_features else None
            self._lightness[image_id] = None if thumb is None else float(thumb.mean())
        return self._lightness[image_id]

    def thumbnails_refute(self, ev: PairEvidence) -> bool:
        """Whether the stored thumbnails refute a match decided on global
        signals alone (``thumbcheck.thumbnails_refute``: a near-blank picture
        whose few marks lie elsewhere, or thumbnails that clearly disagree);
        then local verification, if the pair qualifies, decides it."""
        marked = self._marked_thumbs(ev)
        if marked is None:
            return False
        ta, tb, shares = marked
        if thumbnails_refute(ta, tb, bool(ev.extra.get("dihedral")), shares):
            ev.extra["thumbnails_refute"] = True
            return True
        return False

    def frames_rule(self, ev: PairEvidence) -> bool:
        """Decide ``ev`` as "frames" when its thumbnails prove a copy whose
        relation the level groups (``frames_prove_copy``); whether it did."""
        if not self.frames_prove_copy(ev):
            return False
        kind = relation_of(ev, global_only=True)
        # The pHash moved far over pixels that stayed: something was laid
        # over the picture (a logo), not a mere resize.
        ev.extra["relation"] = kind = "edited" if kind == "resized" else kind
        ev.rule = "frames" if in_level(kind, self.settings.level) else ""
        return bool(ev.rule)

    def frames_prove_copy(self, ev: PairEvidence) -> bool:
        """Whether the stored thumbnails of two images of one aspect ratio,
        frame to frame, prove a copy that the pHash missed
        (``thumbcheck.frames_prove_copy``: a logo on a smooth wallpaper)."""
        if (ev.extra.get("dihedral") or ev.a not in self.sizes or ev.b not in self.sizes
                or reframed(self.sizes[ev.a], self.sizes[ev.b])):
            return False
        marked = self._marked_thumbs(ev)
        return marked is not None and frames_prove_copy(*marked)

    def _marked_thumbs(self, ev: PairEvidence
                       ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]] | None:
        """The pair's stored thumbnails and their shares of marks
        (``thumbcheck.marks``, kept per image); None without thumbnails."""
        ta, tb = self._thumb(ev.a), self._thumb(ev.b)
        if ta is None or tb is None:
            return None
        for i, t in ((ev.a, ta), (ev.b, tb)):
            if i not in self._marked:
                self._marked[i] = marks(t)[0]
        return ta, tb, (self._marked[ev.a], self._marked[ev.b])

    def _thumb(self, image_id: int) -> np.ndarray | None:
        lf = self.cache.get(image_id)
        return lf[1] if lf is not None else None

    def may_share_pixels(self, a: int, b: int) -> bool:
        """False when the stored grey thumbnails prove the two images' pixels
        differ (an overlay, a blur, another picture): then the full-resolution
        decode that compares pixel digests is not worth doing.

        Identical pixels give near-identical thumbnails; they differ only by
        how each file was reduced (a JPEG decoded in draft mode, a PNG at full
        size), a few grey levels at strong edges. So only a difference far
        beyond that, at more than a few thumbnail pixels, counts as proof.
        Without thumbnails (``--hash-only``) nothing is proven."""
        ta, tb = self._thumb(a), self._thumb(b)
        if ta is None or tb is None or ta.shape != tb.shape:
            return True
        diff = cv2.absdiff(ta, tb)
        return int(np.count_nonzero(diff > SAME_PIXELS_MAX_DIFF)) <= SAME_PIXELS_OUTLIERS

    def same_pixels(self, ev: PairEvidence) -> bool:
        """Whether two images of one size with near-equal *unrotated* hashes
        have identical pixels; only then is it worth decoding both files at
        full resolution (the digests are kept in the gallery)."""
        a, b = ev.a, ev.b
        if (hamming(self.plain[a][0], self.plain[b][0]) > self.settings.exact_check_distance
                or not self.may_share_pixels(a, b)):
            return False
        return digests_prove_same_pixels(
            self.gallery.pixel_digest(a), self.gallery.pixel_digest(b),
            lambda: self._full_pixel_digest(a), lambda: self._full_pixel_digest(b))

    def _full_pixel_digest(self, image_id: int) -> str | None:
        """``features.full_pixel_digest`` of a stored image's file, once per
        matcher: the one file read of matching outside templated images, for
        the rare pair ``same_pixels`` cannot settle from stored digests."""
        if image_id not in self._full_digests:
            path = self.paths.get(image_id)
            self._full_digests[image_id] = (
                None if path is None else full_pixel_digest(path, self.settings))
        return self._full_digests[image_id]

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
        thread."""
        todo = {id(ev): ev for ev in evidence
                if self._settled.get(id(ev)) is not ev and self._unsettled(ev)}
        items = [(ev, self.cache.get(ev.a), self.cache.get(ev.b),
                  (self.sizes.get(ev.a), self.sizes.get(ev.b))) for ev in todo.values()
                 if _settles(ev)]
        procs = self._processes if len(items) >= PROCESS_BATCH else None
        if procs is not None:
            # Only the thumbnails and sizes travel; the relation comes back.
            sent = [(_Settle(ev.rule, {"relation": ev.relation()}),
                     fa and (_Size(fa[0].width, fa[0].height), fa[1]),
                     fb and (_Size(fb[0].width, fb[0].height), fb[1]), sizes)
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
        for ev in todo.values():
            self._settled[id(ev)] = ev

    def _unsettled(self, ev: PairEvidence) -> bool:
        """Whether ``settle_relation`` has anything to compute for ``ev``
        (subclasses that store relations know more)."""
        return True

    def content_mask(self, image_id: int, thumb: np.ndarray | None = None) -> np.ndarray | None:
        """Where the picture is, in thumbnail pixels (None: everywhere): a
        template's content slot, or what lies inside a flat fill."""
        if image_id not in self._masks:
            self._masks[image_id] = thumb_content_mask(
                self._thumb(image_id) if thumb is None else thumb)
        return self._masks[image_id]

    def picture_fractions(self, evidence: list[PairEvidence]) -> dict[int, float]:
        """Share of each image of ``evidence`` that is picture (``content_mask``;
        1 without local features, where no thumbnail is stored)."""
        out = {}
        for i in {x for ev in evidence for x in (ev.a, ev.b)}:
            mask = self.content_mask(i) if self.settings.local_features else None
            out[i] = 1.0 if mask is None else float(mask.mean())
        return out

    def picture_share(self, image_id: int) -> float:
        """Fraction of the image that is the picture itself: without a template
        frame (screenshot furniture) or flat synthetic fill connected to the
        border (padding, the canvas of a rotated copy). Used to choose keepers;
        1.0 when no thumbnail is stored (``--hash-only``)."""
        if image_id in self.templated:
            return float(self._masks[image_id].mean())
        if image_id not in self._picture_shares:  # (keepers are chosen again per pass)
            thumb = self._thumb(image_id)
            # The hull: flat patches inside the picture (a dark sky) are not fill.
            self._picture_shares[image_id] = (
                1.0 if thumb is None else hull_share(picture_mask(thumb, tolerance=FILL_TOLERANCE)))
        return self._picture_shares[image_id]

    def rephotographed(self, ev: PairEvidence) -> tuple[int, float] | None:
        """The image of a matched pair that is a re-photograph of the other
        (``picture.rephotograph``, found when the pair was verified) and the
        share of its frame the shown picture takes; None when neither is."""
        side, o = ev.extra.get("rephoto"), ev.overlap
        if not ev.rule or side not in ("a", "b") or o is None:
            return None
        return (ev.a, o.coverage_a) if side == "a" else (ev.b, o.coverage_b)

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


def _content_features(ids, paths: dict[int, str], found, cache: _LocalCache, settings: Settings,
                      masks: MutableMapping[int, np.ndarray | None],
                      pool: ThreadPoolExecutor | None = None) -> dict[int, LocalFeatures]:
    """Content-only local features of images that sit in a template crowd
    (``_content_features_started``, waited for)."""
    return _content_features_started(ids, paths, found, cache, settings, masks, pool)()


def _content_features_started(ids, paths: dict[int, str], found, cache: _LocalCache,
                              settings: Settings, masks: MutableMapping[int, np.ndarray | None],
                              pool: ThreadPoolExecutor | None = None
                              ) -> Callable[[], dict[int, LocalFeatures]]:
    """Content-only local features of images that sit in a template crowd,
    started: the returned function gives them (waiting for the pool, if one
    was given, or computing them then); ``masks`` receives each such image's
    content mask (thumbnail pixels) at once.
    The closer look (a decode and ORB, both outside the GIL) runs on ``pool``.
    It is the one look of verification that still reads the image file: the
    stored keypoints alone, inside the mask, lost most screenshot pairs of the
    hard set (a frame takes most of an image's 500 keypoints; see RESULTS.md
    "Compact stored features")."""
    found_masks = content_masks(ids, found, cache, settings, pool)
    masks.update((i, mask) for i, mask, _ in found_masks)

    def content(item) -> LocalFeatures:
        i, mask, feats = item
        # The frame took most of the image's keypoints; look again, closely,
        # at the content region only (it is often small: a photo in a screenshot).
        closer = _features_in_region(paths[i], mask, feats, settings)
        if closer is not None:
            feats = closer
        return feats.subset(keypoints_in_mask(feats.xy, (feats.width, feats.height), mask))

    if pool is not None and len(found_masks) > 1:
        results = pool.map(content, found_masks)  # (submitted now, collected when asked)
    else:
        results = map(content, found_masks)
    return lambda: {i: feats for (i, _, _), feats in zip(found_masks, results)}


def content_masks(ids, found, cache: _LocalCache, settings: Settings,
                  pool: ThreadPoolExecutor | None = None
                  ) -> list[tuple[int, np.ndarray, LocalFeatures]]:
    """(image, content mask, stored features) of the images among ``ids``
    that sit in a template crowd: enough look-alikes among their ``found``
    hash neighbours that a shared frame shows (from stored thumbnails only).

    The thumbnails are read here (SQLite belongs to this thread), in parts of
    ``MASK_PART`` images; each part's masks are made on ``pool`` (OpenCV and
    NumPy's sorts run outside the GIL) while the next part is read. In a
    large collection of photos of one size every image has its eight
    look-alikes, so every image is checked: 1,855 checks of 2.3 ms in a 1%
    add to 50,500 scale-set images, all on this thread before."""
    crowds = {}
    for i in ids:
        close = [j for j, d in found.nearest.get(i, []) if d <= settings.template_crowd_distance]
        if len(close) >= MIN_LOOKALIKES:
            crowds[i] = close
    # Only look-alikes of the image's own thumbnail shape take part
    # (``content_mask``): the others are not decoded, and an image with too
    # few of them has no template (most photos: they differ in aspect).
    shapes = cache.thumb_shapes({j for i, close in crowds.items() for j in (i, *close)})
    out: list[tuple[int, np.ndarray, LocalFeatures]] = []
    part: list[tuple[int, np.ndarray, list[np.ndarray]]] = []
    running = None  # (a part, its masks being made)

    def collect(done) -> None:
        if done is not None:
            for (i, _, _), mask in zip(*done):
                if mask is not None:
                    out.append((i, mask, cache.get(i)[0]))

    def start(part):
        masks = (pool.map if pool is not None and len(part) > 1 else map)(
            lambda job: content_mask(job[1], job[2]), part)
        return part, masks

    for i, close in crowds.items():
        checkpoint()
        shape = shapes.get(i)
        if shape is None:
            continue
        close = [j for j in close if shapes.get(j) == shape]
        if len(close) < MIN_LOOKALIKES:
            continue
        thumb = cache.thumb(i)
        part.append((i, thumb, [t for t in (cache.thumb(j) for j in close) if t is not None]))
        if len(part) == MASK_PART:
            collect(running)
            running, part = start(part), []
    collect(running)
    if part:
        collect(start(part))
    return out


#: Images whose template checks are made at once (``content_masks``): their
#: thumbnails and their look-alikes' are held meanwhile, two parts at most.
MASK_PART = 64


def _features_in_region(path: str, mask: np.ndarray, feats: LocalFeatures,
                        settings: Settings) -> LocalFeatures | None:
    """ORB features of the mask's bounding box, at up to full resolution,
    in the coordinates of the image's working frame."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    try:
        img = load_image(path, max_pixels=settings.max_pixels).image
    except ImageLoadError:
        return None
    mh, mw = mask.shape
    sx, sy = img.width / mw, img.height / mh
    box = (int(cols.min() * sx), int(rows.min() * sy),
           int(np.ceil((cols.max() + 1) * sx)), int(np.ceil((rows.max() + 1) * sy)))
    crop = img.crop(box)
    grey = working_grey(crop, min(settings.work_side, max(crop.size)))
    local = extract_local(grey, settings.n_features)
    if not len(local):
        return None
    to_full = crop.width / grey.shape[1]
    to_work = feats.width / img.width
    xy = (local.xy * to_full + np.array(box[:2], np.float32)) * to_work
    return LocalFeatures(xy.astype(np.float32), local.desc, feats.width, feats.height)


def thumb_content_mask(thumb: np.ndarray | None) -> np.ndarray | None:
    """The area inside flat borders of a stored thumbnail (None: everywhere)."""
    mask = picture_mask(thumb) if thumb is not None else None
    return None if mask is None or mask.all() else mask


def verify_stored(ev: PairEvidence, fa, fb, mask_a, mask_b, templated: dict[int, LocalFeatures],
                  settings: Settings, hand_rules: bool, looks: ThumbLooks | None = None) -> None:
    """Local verification of one pending pair from its images' stored
    features ``fa``/``fb`` (``Gallery.local_features``) and content masks; a
    function of its arguments, so it runs the same in a thread or in a task
    on another machine. The mirrored look comes from the stored thumbnails
    (``mirrored_look``; ``looks`` keeps its features for the next pair of
    the same image); only templated images' content features
    (``templated``, from ``_content_features``) were read from their files."""
    mirror = fb is not None and (ev.extra.get("second_hop")
                                 or ev.phash_distance <= settings.mirror_max_distance)
    if mirror and ev.extra.get("reflect"):
        ev.extra["mirror_tried"] = True  # (if the straight look fails)
    _verify_pair(ev, fa, fb, templated, settings, mask_a, mask_b, mirror=mirror, looks=looks)
    if hand_rules:
        ev.rule = local_rule(ev, settings)
    ev.pending = False


def _verify_pair(ev: PairEvidence, fa, fb, templated: dict[int, LocalFeatures],
                 settings: Settings, mask_a=None, mask_b=None, mirror: bool = False,
                 looks: ThumbLooks | None = None) -> None:
    """Verify a against b; with ``mirror``, for pairs whose hashes align best
    under a reflection, also against b mirrored (``mirrored_look``, its
    thumbnail features kept in ``looks``)."""
    if fa is None or fb is None:
        return
    (la, ta), (lb, tb) = fa, fb
    la, lb = templated.get(ev.a, la), templated.get(ev.b, lb)
    _check(ev, la, ta, lb, tb, settings, mask_a, mask_b)
    if (mirror and ev.extra.get("reflect") and ev.b not in templated
            and not local_rule(ev, settings)):
        ma, mb, mtb = mirrored_look(fa, fb, settings, looks)
        if ev.a in templated and mask_a is not None:  # content only, as in the straight look
            ma = ma.subset(keypoints_in_mask(ma.xy, (ma.width, ma.height), mask_a))
        if len(mb):
            before = (ev.verification, ev.overlap_correlation, ev.overlap,
                      ev.extra.get("picture"), ev.extra.get("inner"), ev.extra.get("rephoto"))
            _check(ev, ma, ta, mb, mtb, settings, mask_a,
                   None if mask_b is None else np.ascontiguousarray(mask_b[:, ::-1]))
            if ev.verification.inliers > before[0].inliers:
                ev.verification.mirrored = True
            else:
                ev.verification, ev.overlap_correlation, ev.overlap = before[:3]
                if before[3] is not None:
                    ev.extra["picture"], ev.extra["inner"] = before[3], before[4]
                ev.extra["rephoto"] = before[5]


def _check(ev: PairEvidence, la, ta, lb, tb, settings: Settings, mask_a=None,
           mask_b=None) -> None:
    """Geometric then photometric check, as a cascade: a first look with the
    strongest ``verify_features`` keypoints of each image (matching cost grows
    with the product of the two counts), and all keypoints only when that look
    was inconclusive: no match, but some inliers or strong descriptor votes.
    Most candidates are look-alikes that the first look rejects outright."""
    n = settings.verify_features
    if n and (len(la) > n or len(lb) > n):
        _fit(ev, la.head(n), ta, lb.head(n), tb, mask_a, mask_b)
        if local_rule(ev, settings) or (ev.inliers < settings.verify_retry_inliers
                                        and ev.votes < settings.verify_retry_votes):
            return
    _fit(ev, la, ta, lb, tb, mask_a, mask_b)


def _fit(ev: PairEvidence, la, ta, lb, tb, mask_a=None, mask_b=None) -> None:
    ev.verification = v = verify(la, lb)
    ev.overlap_correlation = ev.overlap = None
    ev.extra.pop("picture", None)
    ev.extra.pop("inner", None)
    ev.extra.pop("rephoto", None)
    if v.transform:
        transform = v.matrix() if v.homography else v.transform
        ev.overlap = compare_overlap(
            ta, tb, transform, (la.width, la.height),
            (lb.width, lb.height), content_a=mask_a, content_b=mask_b, points=v.points)
        if v.inliers >= PICTURE_MIN_INLIERS and _needs_picture(ev):
            ev.extra["picture"] = compare_picture(ta, tb, transform, v.points,
                                                  (la.width, la.height), (lb.width, lb.height),
                                                  mask_a, mask_b)
            ev.extra["inner"] = inner_share(np.asarray(v.points, np.float32)[:, :2])
        ev.overlap_correlation = ev.overlap.correlation
        ev.extra["perspective"] = (perspective_strength(v.homography, la.width, la.height)
                                   if v.homography else 0.0)
        ev.extra["padded"] = abs(_border_share(ta) - _border_share(tb)) > PADDING_SHARE
        # One image a photograph of the other inside a frame (a print, a screen)?
        ev.extra["rephoto"] = rephotograph(ta, tb, v.matrix(), (la.width, la.height),
                                           (lb.width, lb.height), ev.overlap.coverage_a,
                                           ev.overlap.coverage_b,
                                           None if v.homography else v.points)


#: Runs of this many images or more use worker processes (``PairMatcher._processes``).
PROCESSES_FROM = 1000
#: Smallest batch of work sent to the worker processes.
PROCESS_BATCH = 256


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


def _settle_many(items: list) -> list[str | None]:
    """Worker process: ``settle_global_relation`` of each (pair, a, b,
    sizes); the relation each pair has then."""
    for ev, fa, fb, sizes in items:
        settle_global_relation(ev, fa, fb, sizes)
    return [ev.relation() for ev, _, _, _ in items]


def _picture_hashes_many(thumbs: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
    """Worker process: ``framed.picture_hashes`` of each (id, thumbnail)."""
    return [picture_hashes(t) for _, t in thumbs]


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


#: Pairs with fewer inliers are not worth the picture comparison (no rule
#: accepts them: ``Settings.min_inliers`` defaults to 12).
PICTURE_MIN_INLIERS = 12


def _needs_picture(ev: PairEvidence) -> bool:
    """Whether the picture comparison can change ``relation_of``'s answer:
    few inliers (a shared frame?), whole-overlap tests that fail (at the
    default correlation), or whole-image colours that would make a variant.
    Most verified copies need none of it."""
    o = ev.overlap
    copy = not shared_part(o) and (o.correlation >= 0.5 or o.agreement >= COPY_AGREEMENT)
    return (ev.verification.inliers < RIM_INLIERS or not copy
            or not ev.extra.get("colour_agree", True)
            or ev.colour_similarity < LIGHT_DARK_COLOUR)


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


#: One image has this much more flat border (padding, letterboxing) than the
#: other, as a share of its area: a padded copy.
PADDING_SHARE = 0.05


def _border_share(thumb: np.ndarray) -> float:
    """Share of a thumbnail taken by flat borders (``template.border_box``)."""
    top, bottom, left, right = border_box(thumb)
    return 1.0 - (bottom - top) * (right - left) / max(thumb.size, 1)


class ThumbLooks:
    """ORB features of stored thumbnails (``stored.thumb_features``) kept for
    the next pair of the same image.

    Why: the mirrored look runs ORB on both thumbnails of a pair (about 2 ms
    each), and one check query is compared with a dozen gallery images, so
    recomputing its mirrored features per pair was about a sixth of an
    unmatched query's time. Entries are keyed by the thumbnail object itself
    (its ``id`` checked against the object kept with the entry, so a freed
    and reused id never answers for another image); the least recently used
    are dropped beyond ``size``. Threads may share one: a race computes an
    entry twice, with the same result.
    """

    def __init__(self, size: int = 512):
        self.size = size
        self._entries: OrderedDict[tuple, tuple[np.ndarray, LocalFeatures]] = OrderedDict()

    def features(self, thumb: np.ndarray, work_size: tuple[int, int], n_features: int,
                 mirror: bool = False) -> LocalFeatures:
        key = (id(thumb), tuple(work_size), n_features, mirror)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is thumb:
            try:
                self._entries.move_to_end(key)
            except KeyError:  # dropped by another thread meanwhile
                pass
            return hit[1]
        found = thumb_features(thumb, work_size, n_features, mirror=mirror)
        self._entries[key] = (thumb, found)
        while len(self._entries) > self.size:
            try:
                self._entries.popitem(last=False)
            except KeyError:
                break
        return found


def mirrored_look(fa, fb, settings: Settings, looks: ThumbLooks | None = None) -> tuple:
    """Features of a and of b mirrored left-right, both from their stored
    thumbnails (``stored.thumb_features``), and b's mirrored thumbnail: the
    look at a flipped copy, made of stored data only. ``fa``/``fb`` are
    (local features, thumbnail) of a and b; ``looks`` keeps features found
    for the next pair of the same image."""
    (la, ta), (lb, tb) = fa, fb
    n = settings.n_features
    find = thumb_features if looks is None else looks.features
    return (find(ta, (la.width, la.height), n),
            find(tb, (lb.width, lb.height), n, mirror=True),
            np.ascontiguousarray(tb[:, ::-1]))
