"""The candidate searches of a pair matcher, one per built-in signal that
proposes pairs, run in the signals' registration order.

A signal says how it proposes candidates (``Signal.candidates``, in words);
its search is here, in the match layer, because it reads the gallery's
indexes and the matcher's state. ``CandidateSearches.search_candidates``
runs the search of each enabled built-in signal named in ``SEARCHES`` over
one :class:`CandidateRun`, each adding pairs (and what later searches read:
the pHash search's nearest images feed the local search's frames). A signal
without a search only judges pairs the others propose. The incremental
matcher (``incremental_records._search``) and gallery queries
(``query_candidates``) run the searches they have through the same loop
(:func:`signal_steps`), each over its own state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from matchkit import signals as _signals
from matchkit.match import candidates as _candidates
from matchkit.match.candidates import VoteDetail, phash_candidates, vote_candidates
from matchkit.match.content import _content_features_started
from matchkit.match.framed import framed_pairs, pairs_of, picture_hashes, unframed
from matchkit.match.pools import PROCESS_BATCH
from matchkit.signals.thumbmatch import icon_candidates, icon_views
from matchkit.store.gallery import ORB_KEY_STRIDE, Gallery
from matchkit.util.arrays import RowsById
from matchkit.util.checkpoint import checkpoint, report
from matchkit.config import Settings


def signal_steps(steps: Mapping[str, str], settings: Settings) -> list[str]:
    """The steps (``steps``: built-in signal name -> a matcher's method name)
    of the built-in signals enabled by ``settings``, in registration order.

    Every matcher runs its candidate searches through this: a run's
    (``CandidateSearches.SEARCHES``), the incremental matcher's for the
    images it searches again (``incremental_records.StoredRecords.SEARCHES``)
    and a gallery query's (``query_candidates.QueryCandidates.SEARCHES``).
    Each maps the signals it can search for; a signal it does not map only
    judges the pairs the others propose there. Why one loop: the order of
    the searches (the pHash search's nearest images feed the local search's
    frames and template checks) and which run are the signals' to say, in
    one place."""
    return [steps[sig.name] for sig in _signals.builtin()
            if sig.name in steps and sig.enabled(settings)]


@dataclass
class CandidateRun:
    """What one run's candidate searches found so far."""

    ids: list[int]
    allowed: set[int]
    #: Candidate pairs (a < b) -> pHash distance, -1 where not yet known.
    pairs: dict[tuple[int, int], int] = field(default_factory=dict)
    #: Descriptor votes of the pairs the local search found.
    votes: dict[tuple[int, int], float] = field(default_factory=dict)
    #: Images each image's pairs are worth verifying with.
    top: dict[int, set[int]] = field(default_factory=dict)
    #: The pHash search (``candidates.phash_candidates``): nearest images, crowd.
    found: object | None = None


#: Images whose thumbnails ``CandidateSearches.picture_hashes`` hands to the
#: worker processes at once.
PICTURE_HASH_PART = 1024


class CandidateSearches:
    """Mixed into ``pairs.PairMatcher``: its candidate searches by signal."""

    #: Built-in signal -> the method that runs its candidate search.
    SEARCHES = {"phash": "_phash_search", "local": "_local_search",
                "embedding": "_embedding_search", "icon": "_icon_search"}

    def search_candidates(self, ids: list[int]) -> CandidateRun:
        """The candidate pairs among ``ids``: each enabled built-in signal's
        search, in the signals' order."""
        run = CandidateRun(ids, set(ids))
        for step in signal_steps(self.SEARCHES, self.settings):
            getattr(self, step)(run)
            self.between_steps()
        return run

    def between_steps(self) -> None:
        """Called after each step of the candidate search and after the
        global evidence; nothing here. (A matcher that holds a whole sharded
        collection on the Ray driver hands freed heap memory back, so that
        no step's peak stands on the holes the steps before it left.)"""

    def _phash_search(self, run: CandidateRun) -> None:
        settings, ids = self.settings, run.ids
        variants = self.gallery.phash_variants(ids)
        #: The 8 dihedral pHashes of every image, loaded once per run.
        self.plain = RowsById(ids, variants)  # (not a dict of views: ~300 bytes an image)
        run.found = found = phash_candidates(
            self.gallery.phash_index, ids, variants, neighbours=settings.neighbours,
            allowed=run.allowed, **self._phash_limits())
        run.pairs.update(found.pairs)
        #: Per-image context of the pair features: crowd distance.
        self.crowd = found.crowd
        run.top = {i: {j for j, _ in near[:settings.verify_top]}
                   for i, near in found.nearest.items()}

    def _local_search(self, run: CandidateRun) -> None:
        settings, ids, found = self.settings, run.ids, run.found
        closer = _content_features_started(ids, self.paths, found, self.cache, settings,
                                           self._masks, self._pool)
        # While the pool looks closer at templated images (decodes and
        # ORB, outside the GIL), this thread hashes the pictures inside
        # frames (work that holds the GIL): the two overlap.
        look = [i for i in ids if not unframed(found.nearest.get(i), settings)]
        pictures = self.picture_hashes(look)
        self.templated = closer()
        self.between_steps()
        run.votes = self.vote_search(ids, run.allowed)
        self.between_steps()
        for pair in run.votes:
            run.pairs.setdefault(pair, -1)  # distance filled in by the evidence
        self.add_framed(ids, run.allowed, run.pairs, run.top, found.nearest, pictures)

    def _embedding_search(self, run: CandidateRun) -> None:
        #: Learned embeddings of the images (model ``settings.model``), if any.
        self.vectors = _embedding_vectors(self.gallery, run.ids, self.settings.model)
        for pair in embedding_candidates(self.gallery, self.vectors, self.settings):
            run.pairs.setdefault(pair, -1)

    def _icon_search(self, run: CandidateRun) -> None:
        #: Icons drawn on transparency at up to 256 px (``thumbmatch``): their
        #: pairs of two sizes are decided on aligned thumbnails, not keypoints.
        self.icons = icon_views(self.gallery.icons(run.ids), self.sizes, self._pool)
        for pair in icon_candidates(self.icons):
            run.pairs.setdefault(pair, -1)

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
        out = {}
        if len(ids) >= PROCESS_BATCH and self._processes is not None:
            # In parts: the thumbnails of all images at once (and their
            # pickled copies for the processes) took about 16 KB per image.
            for start in range(0, len(ids), PICTURE_HASH_PART):
                thumbs = [(i, lf[1]) for i in ids[start:start + PICTURE_HASH_PART]
                          if (lf := self.cache.get(i)) is not None]
                out.update((i, h) for (i, _), h in zip(
                    thumbs, self._in_processes(_picture_hashes_many, thumbs)) if len(h))
            return out
        for start in range(0, len(ids), 512):
            checkpoint()
            for i in ids[start:start + 512]:
                lf = self.cache.get(i)
                h = picture_hashes(lf[1]) if lf is not None else ()
                if len(h):
                    out[i] = h
        return out

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


def _picture_hashes_many(thumbs: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
    """Worker process: ``framed.picture_hashes`` of each (id, thumbnail)."""
    return [picture_hashes(t) for _, t in thumbs]
