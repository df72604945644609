"""Stored hash searches kept current: an add merges its new images into them.

What an image's record keeps of its pHash search (``_phash_fields``), the
merge of entering images into it (``merge_hash_search``), the distance of
stored hash variants to new codes (``_nearest_distance``), and the
``IncrementalMatcher`` methods that choose the records a new image reaches
and merge or redo their searches (``HashSearchUpdates``). Separate from
``match/incremental.py``: the hash side of an update, apart from the descriptor
votes (``incremental_votes.py``) and the pair rows (``incremental_pairs.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import cv2
import numpy as np

from matchkit.util.arrays import cross_bit_distances
from matchkit.match.candidates import phash_candidates
from matchkit.util.checkpoint import checkpoint
from matchkit.signals.hashing import PHASH_BITS
from matchkit.index.hamming import EXACT_SEARCH_BELOW, transient_index
from matchkit.match.pairs import content_masks


def _phash_fields(found, i: int) -> dict:
    """What an image's record keeps of its hash search."""
    return {"crowd": found.crowd[i], "near": [list(x) for x in found.nearest.get(i, [])],
            "ph": sorted([j, d] for j, d in found.by_owner.get(i, {}).items()),
            "reach": found.reach.get(i), "lreach": found.loose_reach.get(i),
            "rt": found.tails.get(i), "lk": [list(x) for x in found.loose_kept.get(i, [])]}


def _by_distance(x) -> tuple[int, int]:
    return x[1], x[0]


def merge_hash_search(rec: dict, entering: Sequence[int], dists: np.ndarray,
                      allowed: set[int], *, max_distance: int, collect_distance: int | None,
                      collect_top: int = 4, neighbours: int = 16, nbits: int = PHASH_BITS,
                      ties_after: bool = False) -> dict | None:
    """The hash-search fields of a record (``_phash_fields``) once the images
    ``entering`` the index (ascending ids, none of them in it before) are
    there: ``dists[n, v]`` is the distance from the record's hash variant
    ``v`` to entering image ``n``. Equal to searching again
    (``phash_candidates`` on an exact index) where it returns a dict, but for
    "rt", which may be shorter; None where the record does not hold enough
    to tell (the image is searched again instead). ``ties_after``: every
    entering id is larger than every id indexed before, so one at a
    variant's reach exactly ranks after the one there (exact searches rank
    ties by id).

    Why it can: the nearest list is the exact ``neighbours`` nearest by
    smallest variant distance, so an entering image merges in; each variant's
    search keeps its ``neighbours`` nearest, so an image enters it when
    nearer than its reach and pushes out the farthest (the tail, "rt", says
    what the reach becomes); the loose pairs ("lk") are the ``collect_top``
    nearest of those the variants' searches saw beyond ``max_distance``.
    It cannot tell when a search was extended (saturated), the tail runs
    out, or the image pushed out could be a kept loose pair."""
    collect = max(max_distance, collect_distance or 0)
    reach, tails, kept = rec.get("reach"), rec.get("rt"), rec.get("lk")
    if reach is None or tails is None or kept is None or collect in reach:
        return None
    kept = [tuple(x) for x in kept]
    lreach = rec.get("lreach")
    if (lreach is not None) != (len(kept) == collect_top):
        return None
    kept_ids = {j for j, _ in kept}
    pairs = {j: d for j, d in rec.get("ph", ())}
    # (the nearer pairs: those not kept as loose, or kept but nearer than that)
    direct = {j: d for j, d in pairs.items() if j not in kept_ids or d <= max_distance}
    tails = [list(t) for t in tails]
    near = [tuple(x) for x in rec["near"]]
    for e, dv in zip(entering, np.asarray(dists).tolist()):
        entered = []
        for v, d in enumerate(dv):
            t = tails[v]
            if not t:
                return None
            if d > t[-1] or (d == t[-1] and ties_after):
                continue
            if d == t[-1] or (t[-1] <= nbits and any(x == t[-1] for _, x in kept)):
                return None  # (a tie, or the one pushed out may be a kept pair)
            new = sorted(t[:-1] + [d])
            tails[v] = new[1:] if d < t[0] else new
            if not tails[v] or tails[v][-1] <= max_distance:
                return None
            entered.append(d)
        near = sorted(near + [(e, min(dv))], key=_by_distance)[:neighbours]
        if e not in allowed:
            continue
        close = [d for d in entered if d <= max_distance]
        if close:
            direct[e] = min(close)
        far = [d for d in entered if max_distance < d <= collect]
        if far and (len(kept) < collect_top or (min(far), e) < _by_distance(kept[-1])):
            kept = sorted(kept + [(e, min(far))], key=_by_distance)[:collect_top]
            if len(kept) == collect_top:
                lreach = kept[-1][1]
    for j, d in kept:
        direct[j] = min(d, direct.get(j, d))
    k = max(1, neighbours)
    return {"crowd": near[k - 1][1] if len(near) >= k else nbits,
            "near": [list(x) for x in near], "ph": sorted([j, d] for j, d in direct.items()),
            "reach": [t[-1] for t in tails], "lreach": lreach, "rt": tails,
            "lk": [list(x) for x in kept]}


def _nearest_distance(queries: np.ndarray, codes: np.ndarray, nbits: int) -> np.ndarray:
    """Per query row (packed bits), the Hamming distance to the nearest row of
    ``codes`` (``nbits + 1`` if there is none): exact below
    ``hamming.EXACT_SEARCH_BELOW`` codes, by OpenCV's Hamming ``batchDistance``
    in parts of ``NEAREST_ROWS`` queries. The stored records' 8 hash variants
    (404,000 at 50,500 images) against an add's 500 new codes: 1.8 s, where
    an exhaustive USearch search took 4.3 s (the same distances). From that
    many codes on, an approximate (HNSW) search of a transient index."""
    out = np.full(len(queries), nbits + 1, np.int64)
    if not len(queries) or not len(codes):
        return out
    if len(codes) >= EXACT_SEARCH_BELOW:
        return transient_index(np.arange(len(codes)), codes, nbits).search(queries, 1)[1][:, 0]
    queries = np.ascontiguousarray(queries, np.uint8).reshape(len(queries), -1)
    codes = np.ascontiguousarray(codes, np.uint8).reshape(len(codes), -1)
    for start in range(0, len(queries), NEAREST_ROWS):
        checkpoint()
        d, _ = cv2.batchDistance(queries[start:start + NEAREST_ROWS], codes, cv2.CV_32S,
                                 normType=cv2.NORM_HAMMING, K=1)
        out[start:start + NEAREST_ROWS] = d[:, 0]
    return out


#: Query rows of one ``batchDistance`` call in ``_nearest_distance`` (a
#: ``checkpoint`` between them: at a million images that search is minutes).
NEAREST_ROWS = 65536


class HashSearchUpdates:
    """``IncrementalMatcher``'s hash-search updates (a mixin: it reads the
    attributes ``IncrementalMatcher.__init__`` sets, such as ``records``, and
    changes records through ``_update``, ``incremental_records.py``)."""

    def _phash_reached(self, rest: list[int], entering: list[int]) -> list[int]:
        """Records whose hash search an entering image would join: nearer than
        the crowd distance (the neighbour list), or within the collect
        distance and some hash variant's reach (that search's results)."""
        if not rest:
            return []
        limits = self._phash_limits()
        max_distance = limits["max_distance"]
        collect = max(max_distance, limits["collect_distance"] or 0)
        codes = self.gallery.phash_variants(entering)[:, 0]
        near = _nearest_distance(self.gallery.phash_variants(rest).reshape(-1, PHASH_BITS // 8),
                                 codes, PHASH_BITS).reshape(len(rest), 8)
        out = []
        for i, d in zip(rest, near.tolist()):
            r = self.records[i]
            # Beyond the pair distance, a new image counts only if it is
            # among the nearest few kept there (``collect_top``).
            limit = max(max_distance, min(r.get("lreach") or collect, collect))
            reach = r.get("reach") or [collect] * 8
            if min(d) <= r["crowd"] or any(x <= min(y, limit) for x, y in zip(d, reach)):
                out.append(i)
        return out

    def _names_any(self, ids: list[int]) -> bool:
        """Whether a stored hash search names any of ``ids``: they were in the
        index before (changed images keep their id, and their own records
        are dropped), so they cannot be merged in as new (``_merge_phash``)."""
        ids = set(ids)
        for r in self.records.values():
            for field in ("near", "ph", "lk"):
                if any(x[0] in ids for x in r.get(field, ())):
                    return True
        return False

    def _merge_phash(self, todo: list[int], entering: list[int], allowed: set[int]
                     ) -> tuple[list[int], set[int]]:
        """Hash searches of ``todo`` brought up to date by merging in the images
        ``entering`` the index (``merge_hash_search``; searching 2,246 images
        again took 4.7 s of a 1% add to 10,000). Returns the images it could
        not merge (to be searched again, ``_refresh_phash``) and those its
        template check finds templated now (searched in full)."""
        s, g = self.settings, self.gallery
        mergeable = [i for i in todo if i in self.paths and not self.records[i].get("tmpl")
                     and "rt" in self.records[i]]
        if not mergeable or not entering:
            return todo, set()
        entering = sorted(entering)
        new = set(entering)
        ties_after = entering[0] > max((i for i in self.digests if i not in new), default=-1)
        codes = g.phash_variants(entering)[:, 0].copy().view(np.uint64)  # (m, words)
        limits = self._phash_limits()
        merged: dict[int, dict] = {}
        step = max(1, (1 << 22) // (8 * len(entering) * codes.shape[1]))
        for at in range(0, len(mergeable), step):
            part = mergeable[at:at + step]
            mine = g.phash_variants(part).copy().view(np.uint64)  # (n, 8, words)
            dists = cross_bit_distances(mine, codes)  # (n, 8, m)
            for n, i in enumerate(part):
                rec = self.records[i]
                # (only the images that come near enough change anything)
                near = ((dists[n].min(0) <= rec["crowd"])
                        | (dists[n] <= np.asarray(rec["reach"])[:, None]).any(0))
                cols = np.nonzero(near)[0]
                out = merge_hash_search(rec, [entering[c] for c in cols], dists[n][:, cols].T,
                                        allowed, neighbours=s.neighbours, ties_after=ties_after,
                                        **limits)
                if out is not None:
                    merged[i] = out
        templated: set[int] = set()
        if s.local_features:  # the template check, where its look-alikes changed (as there)
            moved = self._template_moved({i: out["near"] for i, out in merged.items()})
            found = SimpleNamespace(nearest={i: merged[i]["near"] for i in moved})
            templated = {i for i, _, _ in content_masks(moved, found, self.cache, s,
                                                             self._pool)}
        for i, out in merged.items():
            if i not in templated:
                self._update(i, out)
        return [i for i in todo if i not in merged], templated

    def _template_moved(self, near: dict[int, list]) -> list[int]:
        """Those of the images ``near`` gives new hash neighbours for whose
        template check (``content.content_masks``) may now decide otherwise
        than when their record was made (none of them templated then): the
        look-alikes it uses, close neighbours with the image's own thumbnail
        shape, are another set. A newcomer of another shape changes nothing
        (on a 1% add to the 10,000-image scale gallery, 191 checks of 0.9 s
        in all were for such lists)."""
        crowd = self.settings.template_crowd_distance

        def close(lst) -> set[int]:
            return {int(x[0]) for x in lst if x[1] <= crowd}

        moved = {i: (close(lst), close(self.records[i]["near"])) for i, lst in near.items()}
        moved = {i: sets for i, sets in moved.items() if sets[0] != sets[1]}
        if not moved:
            return []
        shapes = self.cache.thumb_shapes(
            set(moved) | {j for now, was in moved.values() for j in now | was})

        def alike(i: int, ids: set[int]) -> set[int]:
            return {j for j in ids if shapes.get(j) == shapes.get(i)}

        return [i for i, (now, was) in moved.items()
                if i in shapes and alike(i, now) != alike(i, was)]

    def _refresh_phash(self, todo: list[int], allowed: set[int]) -> set[int]:
        """Hash searches of ``todo`` again (cheap), and their template check;
        returns the images that must be searched in full: those templated
        before or now (their votes come from content-only features), and
        those outside the run."""
        if not todo:
            return set()
        full = {i for i in todo if i not in self.paths or self.records[i].get("tmpl")}
        todo = [i for i in todo if i not in full]
        s = self.settings
        found = phash_candidates(self.gallery.phash_index, todo, self.gallery.phash_variants(todo),
                                 neighbours=s.neighbours, allowed=allowed, per_owner=True,
                                 **self._phash_limits())
        if s.local_features:  # the template check, where its look-alikes changed
            moved = self._template_moved({i: found.nearest.get(i, []) for i in todo})
            full.update(i for i, _, _ in content_masks(moved, found, self.cache, s, self._pool))
        for i in todo:
            if i not in full:
                self._update(i, _phash_fields(found, i))
        return full
