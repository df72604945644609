"""Every signal of one candidate pair as a fixed, named feature vector.

The calibrated decision (matchkit/match/calibrate.py) sees a pair only through
this vector, so its order is part of a profile's contract: a profile stores
the names it was fitted on and is refused if they differ from ``FEATURES``.

Descriptor votes are deliberately not a feature: how many votes a pair
gets depends on the size and make-up of the descriptor index, i.e. on the
collection, so a profile would not carry over (they still choose which
pairs are verified). Missing signals are explicit: a pair that was not (yet) locally verified has
``verified = 0`` and its local-feature values filled with 0; a pair without a
learned embedding has ``cosine_missing = 1`` and ``cosine = 0``. One model then
scores both the global-only view of a pair (before verification) and the
verified view, which is what lets the matcher skip verification for pairs
the global signals already settle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from matchkit.signals.hashing import PHASH_BITS
from matchkit.match.evidence import PairEvidence, relation_of
from matchkit.relation import in_level

FEATURES: tuple[str, ...] = (
    "phash_distance",      # dihedral-minimum pHash distance / 256
    "phash_zero",          # identical dihedral pHash (1/0)
    "crowd_gap",           # (closer crowd distance of the two images - distance) / 256
    "colour_similarity",   # colour-histogram intersection
    "reflect",             # hashes align best under a mirror image (1/0)
    "template",            # one image sits in a shared template frame (1/0)
    "cosine_missing",      # no learned embedding for the pair (1/0)
    "cosine",              # embedding cosine (0 when missing)
    "verified",            # local verification was run (1/0)
    "log_matches",         # log(1 + ratio-test matches), 0 when not verified
    "log_inliers",         # log(1 + RANSAC inliers), 0 when not verified
    "inlier_ratio",        # inliers / matches, 0 when not verified
    "overlap_missing",     # no aligned-overlap correlation (not verified or no transform)
    "overlap_correlation", # correlation of the aligned overlap (0 when missing)
    "log_pixel_ratio",     # |log(pixels a / pixels b)|
    "aspect_difference",   # |log(aspect a / aspect b)|
    "picture_fraction",    # smaller share of picture (not flat fill / template frame) of the two
    "hue_similarity",      # hue-histogram intersection (1 when either image has too little colour)
)


def pair_features(ev: PairEvidence, crowd: Mapping[int, int],
                  sizes: Mapping[int, tuple[int, int]],
                  picture: Mapping[int, float] | None = None) -> np.ndarray:
    """The ``FEATURES`` vector of one pair (float64).

    ``crowd`` maps an image id to its crowd distance (pHash distance to its
    16th-nearest image; ``PHASH_BITS`` when unknown), ``sizes`` to its
    (width, height); unknown sizes count as equal. ``picture`` gives the
    share of each image that is picture rather than flat fill or a template
    frame (1 when unknown): two different photos rotated onto black canvases
    look alike globally because of the canvas, so this tells the model how
    much of the global agreement is about pictures at all.
    """
    picture = picture or {}
    d = ev.phash_distance
    bg = crowd_distance(ev, crowd)
    v = ev.verification
    wa, ha = sizes.get(ev.a, (1, 1))
    wb, hb = sizes.get(ev.b, (1, 1))
    wa, ha, wb, hb = max(wa, 1), max(ha, 1), max(wb, 1), max(hb, 1)
    has_overlap = v is not None and ev.overlap_correlation is not None
    return np.array([
        d / PHASH_BITS,
        1.0 if d == 0 else 0.0,
        (bg - d) / PHASH_BITS,
        float(ev.colour_similarity),
        1.0 if ev.extra.get("reflect") else 0.0,
        1.0 if ev.extra.get("template") else 0.0,
        1.0 if ev.cosine is None else 0.0,
        0.0 if ev.cosine is None else float(ev.cosine),
        0.0 if v is None else 1.0,
        0.0 if v is None else math.log1p(v.matches),
        0.0 if v is None else math.log1p(v.inliers),
        0.0 if v is None else float(v.inlier_ratio),
        0.0 if has_overlap else 1.0,
        float(ev.overlap_correlation) if has_overlap else 0.0,
        abs(math.log((wa * ha) / (wb * hb))),
        abs(math.log((wa / ha) / (wb / hb))),
        min(picture.get(ev.a, 1.0), picture.get(ev.b, 1.0)),
        1.0 if ev.extra.get("hue_similarity") is None else float(ev.extra["hue_similarity"]),
    ], dtype=np.float64)


#: Crowd distance used when a collection is too small to have a crowd (fewer
#: images than ``Settings.neighbours``; the search then reports PHASH_BITS):
#: the distance of two unrelated pictures' hashes. Without the cap a small
#: gallery made every unrelated pair look far closer than its "crowd", and a
#: profile fitted on large collections accepted them.
UNKNOWN_CROWD = PHASH_BITS // 2


def crowd_distance(ev: PairEvidence, crowd: Mapping[int, int]) -> int:
    """The closer crowd distance of the pair's two images, capped at UNKNOWN_CROWD."""
    return min(crowd.get(ev.a, PHASH_BITS), crowd.get(ev.b, PHASH_BITS), UNKNOWN_CROWD)


def globally_decidable(ev: PairEvidence, crowd: Mapping[int, int]) -> bool:
    """Whether global signals alone may accept this pair.

    Not when one image sits in a shared template frame (only content may
    decide), and not when the pair is no closer than either image's crowd
    distance: inside a crowd of look-alikes (documents, screenshots, photos
    rotated onto black canvases) global signals cannot tell copies from
    neighbours, and a model fitted on one collection's crowds misjudges
    another's. Such pairs are decided after local verification. Measured on
    the calib halves of the benchmark sets, without this the calibrated model
    accepted tens of rotated look-alikes globally.
    """
    if ev.extra.get("template"):
        return False
    return ev.phash_distance <= crowd_distance(ev, crowd)


def feature_matrix(evidence: Sequence[PairEvidence], crowd: Mapping[int, int],
                   sizes: Mapping[int, tuple[int, int]],
                   picture: Mapping[int, float] | None = None) -> np.ndarray:
    """``pair_features`` of many pairs, one row each (shape (n, len(FEATURES)))."""
    if not evidence:
        return np.zeros((0, len(FEATURES)))
    return np.stack([pair_features(ev, crowd, sizes, picture) for ev in evidence])


def decide(calibrator, evidence: Sequence[PairEvidence], crowd: Mapping[int, int],
           sizes: Mapping[int, tuple[int, int]], picture: Mapping[int, float] | None,
           rule: str, allowed: Sequence[bool] | None = None, level: str | None = None) -> None:
    """The calibrated decision of each pair as its evidence stands, in place:
    ``ev.rule`` becomes ``rule`` where ``calibrator`` (a fitted
    ``calibrate.PairCalibrator``) accepts the pair and ``allowed`` says it may
    be decided now, else ""; its P(duplicate) goes to ``ev.extra["p"]``.
    Dedupe (``pairs.PairMatcher``) and queries (``query.QueryMatcher``) both
    decide through here. With a ``level`` an accepted pair also needs a
    relation (``evidence.relation_of``) that the level groups: the profile scores
    how likely a pair is a duplicate, the relation says what kind, so a
    shared sticker or frame (no relation) or a recolour at the copies level
    is refused whatever the score."""
    if not evidence:
        return
    X = feature_matrix(evidence, crowd, sizes, picture)
    scores, probs = calibrator.score(X), calibrator.predict_proba(X)[:, 1]
    allowed = allowed or [True] * len(evidence)
    for ev, s, p, ok in zip(evidence, scores.tolist(), probs.tolist(), allowed):
        ev.extra["p"] = p
        ev.rule = rule if ok and s >= calibrator.threshold_ else ""
        if ev.rule and level is not None and not level_allows(ev, level):
            ev.rule = ""


def level_allows(ev: PairEvidence, level: str) -> bool:
    """Whether the pair's relation, as its evidence stands (``evidence.relation_of``,
    recorded in ``ev.extra["relation"]``), is one ``level`` groups. A calibrated
    decision is gated by this, so calibration fits only the pairs it lets through."""
    ev.extra["relation"] = kind = relation_of(ev, global_only=ev.verification is None)
    return kind is not None and in_level(kind, level)
