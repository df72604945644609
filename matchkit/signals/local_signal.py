"""Local features as a signal: ORB keypoints, verified geometrically.

The features and the verification are :mod:`.local` (and the aligned
overlap :mod:`.local_overlap`); this module says what the signal keeps,
proposes and adds to a pair. A pair the matcher has not verified (yet) has
``verified = 0`` and zeros for the rest, so one calibrated model scores
both the global-only view of a pair and the verified view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from matchkit.signals import PairContext, Signal
from matchkit.signals.local import extract_local
from matchkit.signals.local_stored import COLUMNS, encode_local


@dataclass(frozen=True)
class LocalSignal(Signal):
    name: str = "local"
    features: tuple[str, ...] = (
        "template",             # one image sits in a shared template frame (1/0)
        "verified",             # local verification was run (1/0)
        "log_matches",          # log(1 + ratio-test matches), 0 when not verified
        "log_inliers",          # log(1 + RANSAC inliers), 0 when not verified
        "inlier_ratio",         # inliers / matches, 0 when not verified
        "overlap_missing",      # no aligned-overlap correlation (not verified or no transform)
        "overlap_correlation",  # correlation of the aligned overlap (0 when missing)
        "picture_fraction",     # smaller share of picture (not flat fill / template frame) of the two
    )
    record_fields: tuple[str, ...] = ("local", "thumb")
    tables: tuple[str, ...] = ("local_features",)
    stores: tuple[str, ...] = ("local_features.xy", "local_features.descriptors",
                               "local_features.thumb", "orb.usearch", "orb.ivf")
    candidates: str | None = ("images the strongest descriptors vote for "
                              "(match.candidates.vote_candidates over the descriptor index), "
                              "and pictures inside frames (match.framed)")

    def enabled(self, settings) -> bool:
        return bool(settings.local_features)

    def extract_fields(self, views, settings) -> dict:
        # The grey thumbnail serves the photometric checks and the template
        # masks; both come from the decode, never from the file again.
        return {"local": extract_local(views.grey_work, settings.n_features),
                "thumb": views.grey_thumb}

    def to_rows(self, record) -> dict[str, dict]:
        if record.local is None:
            return {}
        return {"local_features": dict(zip(COLUMNS, encode_local(record.local, record.thumb)))}

    def pair_features(self, pair, context: PairContext) -> tuple[float, ...]:
        v = pair.verification
        has_overlap = v is not None and pair.overlap_correlation is not None
        picture = context.picture
        return (
            1.0 if pair.extra.get("template") else 0.0,
            0.0 if v is None else 1.0,
            0.0 if v is None else math.log1p(v.matches),
            0.0 if v is None else math.log1p(v.inliers),
            0.0 if v is None else float(v.inlier_ratio),
            0.0 if has_overlap else 1.0,
            float(pair.overlap_correlation) if has_overlap else 0.0,
            min(picture.get(pair.a, 1.0), picture.get(pair.b, 1.0)),
        )

    def evidence(self, pair) -> dict:
        out: dict = {}
        if pair.votes:
            out["votes"] = round(pair.votes, 2)
        v = pair.verification
        if v is None:
            return out
        out.update(matches=v.matches, inliers=v.inliers,
                   inlier_ratio=round(v.inlier_ratio, 3), transform=v.transform)
        if pair.overlap_correlation is not None:
            out["overlap_correlation"] = round(pair.overlap_correlation, 3)
        o = pair.overlap
        if o is not None and o.correlation > -1.0:
            out.update(agreement=round(o.agreement, 3), spread=round(o.spread, 3),
                       coverage=[round(o.coverage_a, 3), round(o.coverage_b, 3)],
                       contained=round(o.contained, 3))
        if v.homography:
            out["homography"] = v.homography
        return out
