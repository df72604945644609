"""Local verification of one pair from its images' stored features: the
geometric fit (ORB keypoints), the photometric check of the aligned overlap,
the picture comparison, and the mirrored look made from stored thumbnails.

Split from ``pairs.py`` (which imports these names back): these are plain
functions of their arguments (no matcher), so the same code runs on a
matcher's worker threads, in ``QueryMatcher`` and in Ray tasks
(``distributed/ray_jobs.py``).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from matchkit.config import Settings
from matchkit.signals.local import LocalFeatures, compare_overlap, perspective_strength, verify
from matchkit.match.picture import RIM_INLIERS, compare_picture, inner_share, rephotograph
from matchkit.relation import LIGHT_DARK_COLOUR
from matchkit.store.stored import thumb_features
from matchkit.match.evidence import COPY_AGREEMENT, PairEvidence, local_rule, shared_part
from matchkit.match.template import border_box, keypoints_in_mask


def verify_stored(ev: PairEvidence, fa, fb, mask_a, mask_b, templated: dict[int, LocalFeatures],
                  settings: Settings, hand_rules: bool, looks: ThumbLooks | None = None,
                  crowd: int | None = None) -> None:
    """Local verification of one pending pair from its images' stored
    features ``fa``/``fb`` (``Gallery.local_features``) and content masks; a
    function of its arguments, so it runs the same in a thread or in a task
    on another machine. The mirrored look comes from the stored thumbnails
    (``mirrored_look``; ``looks`` keeps its features for the next pair of
    the same image); only templated images' content features
    (``templated``, from ``_content_features``) were read from their files.
    ``crowd``: the pair's closer crowd distance (``hashing.crowd_distance``),
    which gates the mirrored look (``mirror_worth_trying``)."""
    mirror = fb is not None and mirror_worth_trying(ev, settings, crowd)
    if mirror and ev.extra.get("reflect"):
        ev.extra["mirror_tried"] = True  # (if the straight look fails)
    _verify_pair(ev, fa, fb, templated, settings, mask_a, mask_b, mirror=mirror, looks=looks)
    if hand_rules:
        ev.rule = local_rule(ev, settings)
    ev.pending = False


def mirror_worth_trying(ev: PairEvidence, settings: Settings, crowd: int | None = None) -> bool:
    """Whether a first-pass verification also looks at the pair mirrored:
    a second hop asks for it, or the hashes align (under a reflection, when
    ``ev.extra["reflect"]``) closer than chance: within
    ``mirror_max_distance`` and ``mirror_crowd_margin`` bits inside the
    pair's crowd distance ``crowd`` (None: not known, not used). The look
    runs ORB twice on thumbnails, the dearest part of verifying a pair that
    does not match."""
    if ev.extra.get("second_hop"):
        return True
    d = ev.phash_distance
    return d <= settings.mirror_max_distance and (
        crowd is None or d <= crowd - settings.mirror_crowd_margin)


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
