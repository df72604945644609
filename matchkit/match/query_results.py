"""What matching a query gives: each gallery image examined for it
(:class:`Neighbour`, ranked by :func:`match_strength`) and all of them for
one query file (:class:`QueryResult`).

Separate from the matcher (``match/query.py``): plain results and their score,
which ``check`` and the labeler read, with no matching in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from matchkit.config import Settings
from matchkit.signals.hashing import PHASH_BITS
from matchkit.match.pairs import PairEvidence


def match_strength(ev: PairEvidence, settings: Settings) -> float:
    """How strongly the evidence says "same picture", in [0, 1].

    At least 0.5 exactly when a rule matched (``ev.rule``), below 0.5
    otherwise, and increasing in every signal: closer hashes, more inliers,
    better-correlated overlap. It only ranks neighbours; what a value means
    as a probability is learned by calibration (see matchkit/jobs/classify.py).
    """
    s = settings
    d = ev.phash_distance
    strong, loose = max(1, s.phash_strong_distance), max(s.phash_max_distance, s.phash_strong_distance + 1)
    if ev.rule == "phash":
        hashed = 0.75 + 0.25 * (1.0 - min(d, strong) / strong)
    elif ev.rule in ("phash+colour", "frames"):  # frames: the pHash missed it
        hashed = 0.5 + 0.25 * max(0.0, (loose - d) / (loose - strong))
    else:  # a random pair sits near PHASH_BITS / 2
        hashed = 0.49 * max(0.0, 1.0 - d / (PHASH_BITS / 2))
    local = 0.0
    v = ev.verification
    if v is not None and v.inliers:
        corr = ev.overlap_correlation if ev.overlap_correlation is not None else -1.0
        if ev.rule == "local":
            span = max(1e-6, 1.0 - s.min_overlap_correlation)
            local = (0.5 + 0.25 * min(1.0, v.inliers / (5.0 * max(1, s.min_inliers)))
                     + 0.25 * min(1.0, max(0.0, (corr - s.min_overlap_correlation) / span)))
        else:
            local = 0.49 * min(1.0, v.inliers / max(1, s.min_inliers)) * max(0.0, corr)
    score = max(hashed, local)
    return round(min(score, 1.0) if ev.rule else min(score, 0.49), 6)


@dataclass
class Neighbour:
    """One gallery image's evidence for one query."""

    id: int
    path: str
    #: Pair evidence with ``a`` = the gallery image, ``b`` = the query's temporary key.
    evidence: PairEvidence
    #: :func:`match_strength` of the evidence.
    score: float

    @property
    def matched(self) -> bool:
        """Whether the dedupe rules call the query a copy of this image."""
        return bool(self.evidence.rule)

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "score": self.score,
                "matched": self.matched, "evidence": self.evidence.to_evidence()}


@dataclass
class QueryResult:
    """All gallery neighbours examined for one query file, strongest first."""

    path: str
    neighbours: list[Neighbour] = field(default_factory=list)
    #: Why the query could not be read (then ``neighbours`` is empty).
    error: str | None = None

    @property
    def matches(self) -> list[Neighbour]:
        return [n for n in self.neighbours if n.matched]

    def to_dict(self) -> dict:
        out: dict = {"path": self.path}
        if self.error:
            out["error"] = self.error
        else:
            out["matches"] = [n.to_dict() for n in self.matches]
        return out
