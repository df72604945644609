"""Every signal of one candidate pair as a named feature vector.

The calibrated decision (matchkit/match/calibrate.py) sees a pair only through
this vector: the union of the built-in signals' named features
(``Signal.features``, ``Signal.pair_features``), in the signals'
registration order (``matchkit.signals``). A profile stores the names it
was fitted on, reads its columns by name, and is refused if the names are
not the same set as ``FEATURES``.

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

from collections.abc import Mapping, Sequence

import numpy as np

from matchkit import signals as _signals
from matchkit.signals import PairContext
from matchkit.signals.hashing import UNKNOWN_CROWD, crowd_distance  # noqa: F401  (re-exported)
from matchkit.match.evidence import PairEvidence, relation_of
from matchkit.relation import in_level

#: The built-in signals whose numbers make the vector, in registration order.
SIGNALS = tuple(_signals.builtin())
#: The union of their named features: the columns of every feature row.
#: A profile maps its own columns by name (``calibrate.PairCalibrator``).
FEATURES: tuple[str, ...] = tuple(f for sig in SIGNALS for f in sig.features)
#: Which signal each feature belongs to.
SIGNAL_OF: dict[str, str] = {f: sig.name for sig in SIGNALS for f in sig.features}


def pair_features(ev: PairEvidence, crowd: Mapping[int, int],
                  sizes: Mapping[int, tuple[int, int]],
                  picture: Mapping[int, float] | None = None) -> np.ndarray:
    """The ``FEATURES`` vector of one pair (float64): each built-in signal's
    ``pair_features``, one after another.

    ``crowd`` maps an image id to its crowd distance (pHash distance to its
    16th-nearest image; ``PHASH_BITS`` when unknown), ``sizes`` to its
    (width, height); unknown sizes count as equal. ``picture`` gives the
    share of each image that is picture rather than flat fill or a template
    frame (1 when unknown): two different photos rotated onto black canvases
    look alike globally because of the canvas, so this tells the model how
    much of the global agreement is about pictures at all.
    """
    context = PairContext(crowd, sizes, picture or {})
    return np.array([x for sig in SIGNALS for x in sig.pair_features(ev, context)],
                    dtype=np.float64)


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
