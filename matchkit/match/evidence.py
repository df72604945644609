"""Pair evidence and the rules that read it.

:class:`PairEvidence` is everything known about one candidate pair (pHash
distance, colour agreement, the local verification's overlap, embedding
similarity, other signals' numbers). The rules here turn it into a decision
(``hash_rule``, ``local_rule``, ``embedding_rule``, ``icon_rule``) and a
relation (:func:`relation_of`: resized, cropped, recaptured...). They read
evidence only: gathering it is :mod:`.pairs`, and the calibrated decision
over the same evidence is :mod:`.pairfeatures`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from matchkit.config import Settings
from matchkit.signals.hashing import PHASH_BITS, closer_crowd
from matchkit.signals.local import (Overlap, Verification)
from matchkit.match.picture import (PICTURE_SHARE, picture_proves_copy, shared_frame)
from matchkit.relation import (FEATURE_MIN_CHROMA, FEATURE_MIN_COLOURFUL, LIGHT_DARK_COLOUR,
                               RECAPTURE_PERSPECTIVE, RelationEvidence, classify,
                               MIN_HUE_SIMILARITY, hue_histogram, in_level, soften_hues)
from matchkit.signals.thumbmatch import IconDecider
from matchkit import signals as _signals


#: Thumbnails of images with identical pixels differ by at most this many grey
#: levels (decode paths differ slightly) ... Measured: at most 3 levels over
#: 600 pairs of the same pixels as PNG, BMP and JPEG (also 4x-size JPEGs,
#: which are decoded in draft mode); 12 keeps a 4x margin. At 48 the blurred
#: and captioned copies of the hard set (same size as the original) all
#: passed, and 751 full-size decodes found nothing.
SAME_PIXELS_MAX_DIFF = 12
#: ... except at this many thumbnail pixels (strong edges).
SAME_PIXELS_OUTLIERS = 16


@dataclass(slots=True)
class PairEvidence:
    """Everything measured about one candidate pair (ids a < b)."""

    a: int
    b: int
    phash_distance: int
    colour_similarity: float
    votes: float = 0.0
    verification: Verification | None = None
    #: Cosine of the images' learned embeddings (None: no model configured).
    cosine: float | None = None
    overlap_correlation: float | None = None
    #: The aligned overlap in full (agreement, coverage, spread), when compared.
    overlap: Overlap | None = None
    #: Why the pair matched: "phash", "phash+colour", "frames", "local" or "" (no match).
    rule: str = ""
    #: Local verification still to do (undecided so far).
    pending: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def inliers(self) -> int:
        return self.verification.inliers if self.verification else 0

    def take(self, other: "PairEvidence") -> None:
        """Become ``other`` (the same pair measured elsewhere, as a Ray task
        returns it) in place: clustering holds this object in several lists."""
        for name in self.__slots__:
            setattr(self, name, getattr(other, name))

    def score(self) -> float:
        """The calibrated P(duplicate) when a profile decided the pair, else a
        rough similarity in [0, 1]."""
        if "p" in self.extra:
            return round(float(self.extra["p"]), 4)
        s = 1.0 - self.phash_distance / PHASH_BITS
        if self.verification and self.rule == "local":
            s = max(s, min(1.0, 0.5 + self.inliers / 100.0))
        return round(s, 4)

    def to_evidence(self) -> dict:
        """The pair's evidence for reports: what decided it, then what each
        built-in signal measured (``Signal.evidence``, in registration
        order), then the extra signals' evidence."""
        out: dict = {"rule": self.rule}
        if "p" in self.extra:
            out["probability"] = round(float(self.extra["p"]), 4)
        for sig in _signals.builtin():
            out.update(sig.evidence(self))
        if self.extra.get("carried_by") is not None:  # (``burst``)
            out["part_carried_by"] = self.extra["carried_by"]
        if self.extra.get("signals"):  # extra signals' evidence (``matchkit.signals``)
            out["signals"] = self.extra["signals"]
        return out

    def relation(self) -> str | None:
        """The relation kind of a matched pair (``relation.KINDS``)."""
        if "relation" not in self.extra:
            self.extra["relation"] = relation_of(
                self, global_only=self.rule not in ("local", "model") or self.overlap is None)
        return self.extra["relation"]


#: Pairs whose stored features are read before the workers verify them, at once.
def hash_rule(ev: PairEvidence, crowd: dict[int, int], settings: Settings) -> str:
    """Match on global signals alone: "phash", "phash+colour" or "" (also
    when the pair's relation is looser than ``settings.level`` allows)."""
    rule = hash_rule_by_distance(ev, crowd, settings)
    if not rule:
        return ""
    ev.extra["relation"] = kind = relation_of(ev, global_only=True)
    return rule if in_level(kind, settings.level) else ""


def hash_rule_by_distance(ev: PairEvidence, crowd, settings: Settings) -> str:
    """``hash_rule`` before its relation check: what the hash distance, colour
    and the pair's closer crowd distance (``hashing.closer_crowd`` in
    ``crowd``, read only when it decides) make of the pair. (Also asked by
    ``StoredPairs._crowd_moves``, with the crowd distances before and after.)"""
    d = ev.phash_distance
    if d <= settings.phash_strong_distance:
        return "phash"
    if d > settings.phash_max_distance or ev.colour_similarity < settings.colour_min_similarity:
        return ""
    return "phash+colour" if d <= closer_crowd(ev.a, ev.b, crowd) - settings.crowd_margin else ""


# Local decision, chosen on the calib half of the hard set (all candidate
# pairs verified, 7,720 true and 7 false pairs with 12+ inliers; see
# RESULTS.md "relations"):
#: Inliers must spread over at least this share of the overlap (their convex
#: hull): a shared sticker, logo or corner gathers them in a small part of it
#: (false pairs: 0.01-0.12, and at most 0.07 in the hard calib half's fits
#: with 12+ inliers once the hull was measured in the frame of the overlap,
#: ``local_overlap.compare_overlap``; true re-photographs of a punching bag and an
#: accordion, whose inliers sit on the object: 0.108 and 0.109) ...
MIN_SPREAD = 0.1
#: ... unless this share of the overlap's cells agree (false pairs with a low
#: spread: at most 0.50), as when the inliers sit on the one textured object.
SPREAD_EXEMPT_AGREEMENT = 0.7
#: A block of disagreeing overlap cells enclosed by agreeing ones larger than
#: this share is another picture in a shared frame: a monitor bezel or a
#: screenshot template (false pairs: 0.41-0.44; an emoji on a copy: up to 0.26
#: of a partial overlap).
MAX_ENCLOSED = 0.35
#: Overlap cells that agree (see ``local_overlap.Overlap.agreement``): at or above this
#: share (most of the overlap) the pixels prove a copy even when an overlay
#: (a caption bar) pulls the whole overlap's correlation under
#: ``Settings.min_overlap_correlation`` ...
COPY_AGREEMENT = 0.5
#: ... below this share, with a whole-overlap correlation under it too, the
#: layout lines up but the pixels differ (a variant).
VARIANT_AGREEMENT = 0.4
#: Variants need their matches to fit one transform well: inlier share of
#: the ratio-test matches and spread over the overlap.
VARIANT_INLIER_RATIO = 0.5
VARIANT_SPREAD = 0.4
#: Whole-image colour histograms say whether the pictures' colours agree only
#: when the overlap (or the picture the inliers span) is at least this share
#: of both images: a recapture's picture is 0.2-0.4 of its frame, the rest is
#: a desk, a wall, a bezel (a recoloured copy in tests/test_relation.py: 0.5).
WHOLE_COLOURS = 0.45
#: A shared part on two different pictures (the same emoji or logo drawn at
#: another size): inliers that gather in part of the overlap (spread under
#: this) ...
SHARED_PART_SPREAD = 0.4
#: ... of an overlap that is a small share of one image (coverage under this),
#: whose pixels do not correlate as a copy's do (under this). Found on the
#: 50,000-image scale set (seed 0), whose three false links (emojis, letters
#: of one font) all meet it, at correlation 0.53-0.75; no accepted link of the
#: calib halves does (the closest true one correlates at 0.818) nor of the
#: eval halves (RESULTS.md "precision: the candidate shared-part rule").
SHARED_PART_COVERAGE = 0.2
SHARED_PART_CORRELATION = 0.8


def shared_part(o: Overlap) -> bool:
    """Whether the aligned overlap shows only a part shared by two different
    pictures (a sticker, a logo, a frame), not a copy: it is too small to
    judge; a block of other picture sits inside agreeing surroundings (a
    bezel, an app frame); its inliers sit on one spot of an overlap that does
    not agree; or they gather in part of an overlap that is a small share of
    one image and correlates less than a crop's would (one emoji drawn at
    another size). ``relation_of`` refuses such a pair unless the picture
    comparison proves a copy, and ``_needs_picture`` asks for that
    comparison."""
    return (o.correlation <= -1.0 or o.enclosed > MAX_ENCLOSED
            or (o.spread < MIN_SPREAD and o.agreement < SPREAD_EXEMPT_AGREEMENT)
            or (o.spread < SHARED_PART_SPREAD
                and min(o.coverage_a, o.coverage_b) < SHARED_PART_COVERAGE
                and o.correlation < SHARED_PART_CORRELATION))


def relation_of(ev: PairEvidence, global_only: bool = False) -> str | None:
    """The relation kind of a pair as its evidence stands (see
    ``relation.classify``); None when the evidence relates the two images
    through a shared part only (a sticker, a frame) or not at all.
    ``global_only``: judge by global signals (the pair was not verified)."""
    grey_a, grey_b = ev.extra.get("grey", (False, False))
    base = dict(colour_agree=ev.extra.get("colour_agree", True), grey_a=grey_a, grey_b=grey_b,
                lightness_shift=ev.extra.get("lightness_shift", 0.0),
                colour_similarity=ev.colour_similarity, redrawn=bool(ev.extra.get("redrawn")))
    v, o = ev.verification, ev.overlap
    if global_only or v is None or not v.transform:
        if not global_only:
            return None
        return classify(RelationEvidence(
            reoriented=bool(ev.extra.get("reflect") or ev.extra.get("dihedral")), **base))
    picture = ev.extra.get("picture")
    if shared_frame(picture, v.inliers, ev.extra.get("inner", 1.0)):
        return None  # matches on a frame around two different pictures
    # The picture the inliers span agrees, whatever surrounds it (a recapture
    # on a new background): the whole-overlap tests below do not apply.
    recaptured = picture_proves_copy(picture, v.inliers)
    keystone = ev.extra.get("perspective", 0.0) >= RECAPTURE_PERSPECTIVE
    # A perspective fit from a small patch (the inliers span less than a
    # sticker's share of an image) that explains fewer than half the matches:
    # projected over the pictures it is a guess, and whatever its overlap
    # correlates is not evidence (two emojis on two pictures, scale set: 30
    # of 66 matches, 3% of each image, overlap 0.63).
    guessed = (keystone and v.inlier_ratio < VARIANT_INLIER_RATIO and picture is not None
               and min(picture.coverage_a, picture.coverage_b) < PICTURE_SHARE)
    if not recaptured and (guessed or o is None or shared_part(o)):
        return None  # a shared part only: a sticker, a logo, a frame
    frames_agree = o.correlation >= ev.extra.get("min_correlation", 0.5) or (
        o.agreement >= COPY_AGREEMENT)
    pixels_agree = recaptured or frames_agree
    # Re-photographed: a keystone, or the one picture shown inside a frame (a
    # bezel, a print's border) of the other image (``picture.rephotograph``).
    photographed = keystone or ev.extra.get("rephoto") is not None
    if (photographed and min(o.coverage_a, o.coverage_b) < WHOLE_COLOURS) or (
            recaptured and not frames_agree
            and min(picture.coverage_a, picture.coverage_b) < WHOLE_COLOURS):
        # Whole-image colours compare mostly what surrounds the shared picture
        # (a re-photograph whose overlap is a small part of its frame, or a
        # picture on two different backgrounds): no evidence of a recolour or
        # of a light/dark version. Where the whole frames line up and agree
        # (light and dark versions of one wallpaper, whose matches crowd on a
        # few details), or one is a flat crop of the other (a portrait slice
        # of a landscape wallpaper: the rest is more of the same artwork,
        # not surroundings), they are that evidence.
        base["colour_agree"], base["colour_similarity"] = True, 1.0
    # Pixels that disagree over a layout that lines up everywhere: a variant;
    # over a partial fit (matches of one depth plane, or a part that agrees):
    # another shot of the scene.
    geometry = pixels_agree or (o.agreement < VARIANT_AGREEMENT
                                and v.inlier_ratio >= VARIANT_INLIER_RATIO
                                and o.spread >= VARIANT_SPREAD)
    (a, b, _), (c, d, _) = v.transform
    rotated = abs(np.degrees(np.arctan2(c - b, a + d))) > 2.0
    # Verified: lightness compared where the pictures overlap, not over whole
    # frames (a photo inside a white screenshot frame is a copy).
    base["lightness_shift"] = (picture if recaptured else o).lightness_shift
    return classify(RelationEvidence(
        geometry=geometry, pixels_agree=pixels_agree, coverage_a=o.coverage_a,
        contained=o.contained,
        coverage_b=o.coverage_b, agreement=(picture if recaptured else o).agreement,
        perspective=ev.extra.get("perspective", 0.0),
        reoriented=v.mirrored or rotated, padded=bool(ev.extra.get("padded")), **base))


def embedding_rule(ev: PairEvidence, settings: Settings) -> str:
    """Match on the learned embedding alone: "embedding" or "".

    Only with a model and a ``min_cosine`` chosen for that model (a cosine
    means different things for different models)."""
    if ev.cosine is None or settings.min_cosine is None:
        return ""
    return "embedding" if ev.cosine >= settings.min_cosine else ""


def mark_verifiable(ev: PairEvidence, top: dict[int, set[int]], settings: Settings,
                    crowd: int | None = None) -> None:
    """Whether the pair is worth verifying locally (if the global signals do
    not settle it): descriptors voted for it, the embeddings are close, or
    one is among the other's ``verify_top`` nearest by hash (``top``) and,
    with ``crowd`` (the pair's closer crowd distance, None: not known), more
    than ``verify_crowd_margin`` bits closer than that: a hash neighbour
    only as near as the crowd's unrelated pictures is not worth the look."""
    mark_verifiable_as(ev, ev.b in top.get(ev.a, ()) or ev.a in top.get(ev.b, ()), settings,
                       crowd)


def mark_verifiable_as(ev: PairEvidence, neighbour: bool, settings: Settings,
                       crowd: int | None = None) -> None:
    """``mark_verifiable`` given whether one image is among the other's
    ``verify_top`` nearest by hash (``neighbour``), looked up beforehand."""
    near = (ev.cosine is not None and settings.cosine_candidate is not None
            and ev.cosine >= settings.cosine_candidate)
    if neighbour and crowd is not None and settings.verify_crowd_margin:
        neighbour = not crowd - settings.verify_crowd_margin < ev.phash_distance <= crowd
    ev.extra["verifiable"] = bool(settings.local_features and (ev.votes > 0 or near or neighbour))


def local_rule(ev: PairEvidence, settings: Settings) -> str:
    """Match on verified local features: "local" when enough inliers of one
    planar transform relate the pictures as ``settings.level`` allows."""
    v = ev.verification
    if v is None or v.inliers < settings.min_inliers:
        return ""
    ev.extra["min_correlation"] = settings.min_overlap_correlation
    ev.extra["relation"] = kind = relation_of(ev)
    return "local" if kind is not None and in_level(kind, settings.level) else ""


#: What clustering reads of a pair it verified and refused
#: (``jobs.dedupe_clusters``): whether the mirrored look was tried and, for a
#: pair refused as sharing a part only, its relation (None) and picture
#: comparison (``supports``, with the inlier count).
REFUSED_KEEPS = ("mirror_tried", "relation", "picture")


def forget_refused(ev: PairEvidence) -> None:
    """Keep of a pair verified and refused only what clustering reads of it.
    A matcher that holds every pair of a large run (the Ray driver) held
    about 1 KB a pair, most of them refused; reports describe and draw
    matched pairs only. Pending and matched pairs are left as they are."""
    if ev.rule or ev.pending:
        return
    ev.extra = {k: ev.extra[k] for k in REFUSED_KEEPS if k in ev.extra}
    v = ev.verification
    if v is not None:  # (empty tuples, shared: no lists a refused pair never fills)
        ev.verification = Verification(v.matches, v.inliers, (), v.mirrored, (), ())


def icon_rule(ev: PairEvidence, decider: IconDecider, settings: Settings) -> None:
    """A pair of icons (``thumbmatch.IconDecider``) is decided by aligned
    thumbnails, whatever the hash rules said: at two sizes "icon" with the
    relation ``resized`` (a theme's rendering of one drawing at another size)
    or no match; at one size, a drawn difference (a state, a colour) is a
    variant. Either way no local verification: ORB has too few keypoints on a
    48 px drawing to prove or refute anything."""
    ok, cmp = decider.decide(ev.a, ev.b)
    if ok is None:
        return
    ev.extra["verifiable"] = False
    ev.extra["icon"] = cmp
    ev.pending = False
    same_size = decider.views[ev.a].size == decider.views[ev.b].size
    ev.extra["relation"] = kind = "resized" if ok else ("variant" if same_size else None)
    ev.rule = "icon" if kind is not None and in_level(kind, settings.level) else ""


def colour_facts(histogram: np.ndarray) -> tuple:
    """What the pair colour checks need of one image's colour histogram: is it
    grey, and its hue histograms for ``hues_agree`` and for the
    ``hue_similarity`` feature. One image is in tens of candidate pairs, so a
    matcher computes these once per image (``colour_evidence``'s ``cache``)."""
    from matchkit.match.keeper import GREY_MASS, grey_share

    return (grey_share(histogram) >= GREY_MASS, soften_hues(hue_histogram(histogram)),
            soften_hues(hue_histogram(histogram, FEATURE_MIN_CHROMA, FEATURE_MIN_COLOURFUL)))


def colour_evidence(ev: PairEvidence, colours: dict[int, np.ndarray],
                    cache: dict | None = None) -> None:
    """Record whether the pair's colours agree and which images are grey
    (from the stored colour histograms), for ``relation_of``; and the hue
    similarity feature (``colour_evidence_many`` of this one pair). ``cache``
    (image id -> ``colour_facts``) must only be shared while ids name the
    same images."""
    record_colour(ev, colour_evidence_many([(ev.a, ev.b)], colours,
                                           {} if cache is None else cache)[0])


def record_colour(ev: PairEvidence, facts: tuple | None) -> None:
    """Put one pair's ``colour_evidence_many`` result in its evidence (None:
    an image without colours, nothing recorded)."""
    if facts is not None:
        ev.extra["grey"], ev.extra["colour_agree"], ev.extra["hue_similarity"] = facts


def colour_evidence_many(pairs: list[tuple[int, int]], colours: dict[int, np.ndarray],
                         cache: dict) -> list[tuple | None]:
    """For each pair, None (an image without colours: nothing to record) or
    (whether each image is grey, whether their hues agree, their hue
    similarity): what ``colour_evidence`` records. Saturated hues decide;
    where one image has too few of them to say and neither is grey, the
    paler ones do (a dark, muted recolour of a green wallpaper, real dev
    set: pale hue similarity 0.001, which the saturated hues alone, having
    nothing to compare, called agreeing). Whole arrays, one row per pair:
    ``global_evidence`` measures tens of thousands of pairs, where one at a
    time each cost two small NumPy reductions and their Python calls; a row's
    minimum and sum are those of one pair's arrays, bit for bit."""
    ids = sorted({i for pair in pairs for i in pair if i in colours})
    for i in ids:
        if i not in cache:
            cache[i] = colour_facts(colours[i])
    row = {i: r for r, i in enumerate(ids)}
    bins = next((len(h) for i in ids for h in cache[i][1:] if h is not None), 1)

    def table(k: int) -> tuple[np.ndarray, np.ndarray]:
        values, valid = np.zeros((len(ids), bins)), np.zeros(len(ids), bool)
        for r, i in enumerate(ids):
            if cache[i][k] is not None:
                values[r], valid[r] = cache[i][k], True
        return values, valid

    (hue, hue_ok), (feat, feat_ok) = table(1), table(2)
    grey = np.array([cache[i][0] for i in ids], bool)
    both = [p for p, (a, b) in enumerate(pairs) if a in row and b in row]
    ra = np.array([row[pairs[p][0]] for p in both], np.int64)
    rb = np.array([row[pairs[p][1]] for p in both], np.int64)
    pale = (~hue_ok[ra] | ~hue_ok[rb]) & ~grey[ra] & ~grey[rb]
    xa = np.where(pale[:, None], feat[ra], hue[ra])
    xb = np.where(pale[:, None], feat[rb], hue[rb])
    x_ok = np.where(pale, feat_ok[ra] & feat_ok[rb], hue_ok[ra] & hue_ok[rb])
    agree = ~x_ok | (np.minimum(xa, xb).sum(axis=1) >= MIN_HUE_SIMILARITY)
    feat_sim = np.minimum(feat[ra], feat[rb]).sum(axis=1)
    feat_both = feat_ok[ra] & feat_ok[rb]
    out: list[tuple | None] = [None] * len(pairs)
    # (One (grey, grey) tuple of each kind, shared: a tuple per pair was 56
    # bytes of every pair's evidence, held for the run.)
    greys: dict[tuple, tuple] = {}
    for p, ag, sim, ok in zip(both, agree.tolist(), feat_sim.tolist(), feat_both.tolist()):
        a, b = pairs[p]
        pair_grey = (cache[a][0], cache[b][0])
        out[p] = (greys.setdefault(pair_grey, pair_grey), ag, sim if ok else None)
    return out


def lightness_evidence(ev: PairEvidence, mean_a: float | None, mean_b: float | None) -> None:
    """Record how far the mean grey level moved between the two images'
    thumbnails (``relation.light_dark``); only pairs whose colours changed can
    be light/dark versions, so only those need it."""
    if mean_a is not None and mean_b is not None and ev.colour_similarity < LIGHT_DARK_COLOUR:
        ev.extra["lightness_shift"] = abs(mean_a - mean_b)
