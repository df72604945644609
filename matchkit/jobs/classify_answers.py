"""What a labelling query answers: the records (``Support``: one example
behind an answer; ``Answer``: the label, how sure it is and the examples),
and the plain functions that turn supporting examples into an answer
(``vote``, ``raw_confidence``, ``calibrated``; see ``jobs/classify.py``'s
docstring for the reasoning).

Split from ``jobs/classify.py`` (which imports these names back): the records
and the voting are data and arithmetic, with nothing of the ``Labeler``'s
state; its neighbour search and calibration build on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Support:
    """One example behind an answer: a gallery image, a stored vector or a class name."""

    labels: list[str]
    score: float
    #: "image" (gallery image), "vector" (fitted vector) or "text" (class name).
    kind: str
    path: str | None = None
    id: int | None = None
    #: Instance evidence (matchkit/match/query.py) and/or ``cosine`` similarity.
    evidence: dict = field(default_factory=dict)
    #: The two signals behind ``score``: instance match strength and cosine.
    instance: float | None = None
    cosine: float | None = None

    def to_dict(self) -> dict:
        out = {"labels": self.labels, "score": round(self.score, 4), "kind": self.kind}
        if self.path is not None:
            out["path"] = self.path
        if self.id is not None:
            out["id"] = self.id
        if self.evidence:
            out["evidence"] = self.evidence
        return out


@dataclass
class Answer:
    """The label of one query, how sure it is, and the examples behind it."""

    path: str | None
    #: A class, or ``"unknown"``.
    label: str
    #: Probability that ``best`` is right (calibrated), or the raw confidence
    #: when the labeler is not calibrated (``calibrated`` False).
    confidence: float
    #: The best class even when the answer is ``unknown`` (None: no example at all).
    best: str | None
    calibrated: bool
    #: Raw confidence (see the module docstring); compared with the threshold.
    raw: float = 0.0
    #: Classes by vote weight, best first: (class, weight).
    top: list[tuple[str, float]] = field(default_factory=list)
    #: The k examples that voted, strongest first.
    neighbours: list[Support] = field(default_factory=list)
    #: Why the query could not be read.
    error: str | None = None

    def to_dict(self) -> dict:
        out = {"path": self.path, "label": self.label, "confidence": round(self.confidence, 4),
               "best": self.best, "calibrated": self.calibrated, "raw": round(self.raw, 4),
               "top": [[c, round(w, 6)] for c, w in self.top],
               "neighbours": [s.to_dict() for s in self.neighbours]}
        if self.error:
            out["error"] = self.error
        return out


# -- voting and calibration (plain functions, used by Labeler) ----------------

def vote(supports: Sequence[Support], sharpness: float = 4.0) -> list[tuple[str, float, float]]:
    """(class, weight, best score) for every class among ``supports``, best first.

    Weight is the sum of ``score ** sharpness`` over a class's examples. Ties
    are broken by the best single example, then alphabetically by class, so
    the order never depends on input order.
    """
    weight: dict[str, float] = {}
    best: dict[str, float] = {}
    for s in supports:
        w = max(0.0, s.score) ** sharpness
        for c in dict.fromkeys(s.labels):
            weight[c] = weight.get(c, 0.0) + w
            best[c] = max(best.get(c, 0.0), s.score)
    ranked = sorted(weight, key=lambda c: (-weight[c], -best[c], c))
    return [(c, weight[c], best[c]) for c in ranked]


def raw_confidence(ranked: Sequence[tuple[str, float, float]]) -> float:
    """Best score of the winner, discounted by the runner-up's share of the vote."""
    if not ranked or ranked[0][1] <= 0:
        return 0.0
    w1, best = ranked[0][1], ranked[0][2]
    w2 = ranked[1][1] if len(ranked) > 1 else 0.0
    return float(max(0.0, best * (1.0 - w2 / w1)))


def calibrated(raw: float | np.ndarray, calibration: dict) -> float | np.ndarray:
    """P(correct) for raw confidences, from :func:`fit_open_set` data."""
    return np.interp(raw, calibration["x"], calibration["y"])


def _support_order(s: Support) -> tuple:
    """Strongest first; equal scores in a fixed order (kind, then id or name)."""
    return (-s.score, s.kind, s.id if s.id is not None else -1, s.labels)
