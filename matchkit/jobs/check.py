"""Check incoming images against a reference gallery (copyright and fraud checks).

The job: a collection you own or have seen before lives in a gallery; for
each new image, say which gallery images it is a copy of (cropped, flipped,
overlaid, re-encoded...), how sure, and why. The matching itself is
:mod:`matchkit.match.query` (the same candidates, rules and verification as
dedupe); this module turns its neighbours into a report people and scripts
can read: per query its matches with a score, the kind of match, the rule
that decided it and the evidence (pHash distance, RANSAC inliers, transform,
overlap correlation), unreadable queries with their reason, and counts.

Scores: with the hand rules a match's ``score`` is
:func:`matchkit.match.query.match_strength` (>= 0.5 exactly when a rule matched; it
ranks, it is not a probability). With a calibrated ``profile`` the profile
decides and the score is its calibrated P(duplicate). A custom ``scorer=``
(evidence, settings -> value in [0, 1]) with ``threshold=`` and
``score_name=`` re-scores matches for display. The JSON's ``stats.score``
says which scale the scores are on, ``stats.score_threshold`` where the line
is, and ``stats.profile`` / ``stats.target_precision`` which profile decided.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from matchkit.util.cvthreads import single_opencv_thread
from matchkit.relation import check_level
from matchkit.util.fs import atomic_write_bytes
from matchkit.config import Settings
from matchkit.features import digests_prove_same_pixels, full_pixel_digest, stored_pixel_digest
from matchkit.util.fspath import csv_bytes, json_text
from matchkit.store.gallery import Gallery
from matchkit.signals.hashing import file_digest
from matchkit.io.load import ImageLoadError, iter_image_files
from matchkit.match.pairs import PairEvidence
from matchkit.match.query import Neighbour, QueryMatcher
from matchkit.report.dedupe_report import SkippedFile
from matchkit.store.shards import ShardedGallery, open_gallery

#: Scores a query's matches: (pair evidence, settings) -> value in [0, 1].
Scorer = Callable[[PairEvidence, Settings], float]
#: Where :func:`matchkit.match.query.match_strength` puts the match line.
MATCH_STRENGTH_THRESHOLD = 0.5
#: Matches kept per query unless asked otherwise.
DEFAULT_K = 5


class CheckError(ValueError):
    """The check cannot run (e.g. the gallery holds no image)."""


@dataclass
class CheckMatch:
    """One gallery image a query was compared with."""

    id: int
    path: str
    score: float
    #: Whether the dedupe rules call the query a copy of this image.
    matched: bool
    #: "exact" (same bytes or same pixels), "near" (an edited copy) or "" (no match).
    kind: str
    #: The rule that decided: "phash", "phash+colour", "local" or "".
    rule: str
    evidence: dict = field(default_factory=dict)
    #: How the query relates to this image (``relation.KINDS``; "" when not matched).
    relation: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckResult:
    """One readable query and what it was found to copy, strongest first."""

    path: str
    #: Matches (and with ``include_all`` also the examined non-matches), at most k.
    matches: list[CheckMatch] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return any(m.matched for m in self.matches)

    @property
    def best(self) -> CheckMatch | None:
        return self.matches[0] if self.matches else None

    def to_dict(self) -> dict:
        return {"path": self.path, "matched": self.matched,
                "matches": [m.to_dict() for m in self.matches]}


@dataclass
class CheckReport:
    """Every query's outcome, unreadable queries with reasons, and counts."""

    gallery: str
    results: list[CheckResult] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"gallery": self.gallery, "results": [r.to_dict() for r in self.results],
                "skipped": [asdict(s) for s in self.skipped], "stats": dict(self.stats)}

    def to_json(self, indent: int | None = 2) -> str:
        return json_text(self.to_dict(), indent=indent)

    def to_csv(self) -> str:
        """One row per (query, match); a query without matches, or unreadable, gets one row."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["query", "status", "gallery_path", "gallery_id", "matched", "score", "kind",
                    "rule", "phash_distance", "inliers", "overlap_correlation", "transform",
                    "reason", "relation"])
        for r in self.results:
            if not r.matches:
                w.writerow([r.path, "unmatched"] + [""] * 12)
            for m in r.matches:
                ev = m.evidence
                corr = ev.get("overlap_correlation")
                w.writerow([r.path, "matched" if r.matched else "unmatched", m.path, m.id,
                            int(m.matched), f"{m.score:.4f}", m.kind, m.rule,
                            ev.get("phash_distance", ""), ev.get("inliers", ""),
                            "" if corr is None else corr,
                            json.dumps(ev["transform"]) if ev.get("transform") else "", "",
                            m.relation])
        for s in self.skipped:
            w.writerow([s.path, "skipped"] + [""] * 10 + [s.reason, ""])
        return buf.getvalue()

    def summary(self) -> str:
        s = self.stats
        return (f"{s.get('queries', 0)} queries against {s.get('gallery_images', 0)} gallery "
                f"images: {s.get('matched', 0)} matched, {s.get('unmatched', 0)} unmatched, "
                f"{s.get('skipped', 0)} skipped ({s.get('seconds', 0):.1f} s)")

    def write_json(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, self.to_json().encode("utf-8"))

    def write_csv(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, csv_bytes(self.to_csv()))


def _evidence(ev: PairEvidence) -> dict:
    """The pair evidence of :meth:`PairEvidence.to_evidence`, plus how it was found."""
    out = ev.to_evidence()
    v = ev.verification
    # A local match says whether it was verified mirrored; a hash match that
    # its pHashes align best under a reflection.
    if (v.mirrored if ev.rule == "local" and v is not None else
            ev.rule and ev.extra.get("reflect")):
        out["mirrored"] = True
    if ev.extra.get("zoom"):
        out["zoomed"] = True  # found by the closer second look (small in a big frame)
    return out


class _ExactTest:
    """Same bytes, or same decoded pixels, as a gallery image (kind "exact")."""

    def __init__(self, gallery: Gallery, settings: Settings):
        self.gallery, self.settings = gallery, settings
        self._digests: dict[str, str] = {}

    def __call__(self, query: str, nb: Neighbour) -> bool:
        stored = self.gallery.get(nb.id)
        try:
            if query not in self._digests:
                self._digests[query] = file_digest(query)
            if self._digests[query] == stored.sha256:
                return True
            # Identical pixels give identical pHashes: only then decode again.
            if nb.evidence.phash_distance != 0:
                return False
            return digests_prove_same_pixels(
                stored_pixel_digest(query, self.settings), self.gallery.pixel_digest(nb.id),
                lambda: full_pixel_digest(query, self.settings),
                lambda: full_pixel_digest(stored.path, self.settings))
        except (OSError, ImageLoadError):
            return False


def _expand(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Folders become their image files (as dedupe reads them); anything else is
    kept as given, so a missing or unreadable file is reported, not dropped."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(str(f) for f in iter_image_files([p]))
        else:
            out.append(str(p))
    return out


@single_opencv_thread
def check(gallery: Gallery | str | os.PathLike, paths: Iterable[str | os.PathLike], *,
          k: int = DEFAULT_K, include_all: bool = False, settings: Settings | None = None,
          scorer: Scorer | None = None, threshold: float = MATCH_STRENGTH_THRESHOLD,
          score_name: str = "match_strength", profile=None,
          level: str | None = None, ray: str | None = None) -> CheckReport:
    """Check image files against a gallery without adding them.

    ``paths`` are image files or folders (walked like dedupe's). Each
    readable query lists up to ``k`` gallery images it matches,
    strongest first (``include_all``: the examined non-matches too, so a
    reviewer sees the near misses). Unreadable files go to ``skipped`` with
    their reason; the run never stops for them. ``scorer``/``threshold``/
    ``score_name`` re-score matches; a ``profile`` (``profiles.Profile``)
    replaces the hand rules with its calibrated decision (module docstring).
    ``level`` ("copies", "variants" or "similar"; default the settings')
    chooses which relations count as a match. ``gallery`` may be sharded
    (``store/shards.py``); ``ray`` (an address, "auto" or "local") has its shards'
    actors on a Ray cluster answer the candidate searches (``distributed/ray_jobs.py``;
    the query files are read here). A gallery opened here from its path
    without ``settings`` is searched with the descriptor index it was written
    with (``Gallery.saved_vote_index``).

    >>> report = check("my-gallery", ["found-online.jpg"])   # doctest: +SKIP
    >>> [(m.path, m.score, m.kind) for m in report.results[0].matches]  # doctest: +SKIP
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    start = time.perf_counter()
    run = None
    if ray is not None:
        from matchkit.distributed.ray_jobs import RayRun
        run = RayRun(ray, getattr(gallery, "path", gallery), settings or Settings(), create=False)
        own, g = False, run.gallery
    else:
        own = not isinstance(gallery, (Gallery, ShardedGallery))
        g = open_gallery(gallery, settings, create=False) if own else gallery
    try:
        n_gallery = len(g)
        if n_gallery == 0:
            raise CheckError(f"gallery {g.path} holds no images (add some with `matchkit index`)")
        s = settings or g.settings
        calibrator = None
        if profile is not None:
            s, calibrator = profile.apply(s, level), profile.calibrator
            if scorer is None:
                threshold, score_name = calibrator.probability_threshold_, "p_duplicate"
        if level is not None:
            s = s.with_(level=check_level(level))
        is_exact = _ExactTest(g, s)
        report = CheckReport(str(g.path))
        with QueryMatcher(g, s, calibrator=calibrator) as matcher:
            found = matcher.match(_expand(paths))
        for q in found:
            if q.error is not None:
                report.skipped.append(SkippedFile(q.path, q.error))
                continue
            chosen = [nb for nb in q.neighbours if include_all or nb.matched][:k]
            matches = []
            for nb in chosen:
                score = nb.score if scorer is None else round(float(scorer(nb.evidence, s)), 6)
                kind = ("exact" if is_exact(q.path, nb) else "near") if nb.matched else ""
                relation = ("exact" if kind == "exact" else
                            (nb.evidence.relation() or "") if nb.matched else "")
                matches.append(CheckMatch(nb.id, nb.path, score, nb.matched, kind,
                                          nb.evidence.rule, _evidence(nb.evidence), relation))
            matches.sort(key=lambda m: (not m.matched, -m.score, m.id))
            report.results.append(CheckResult(q.path, matches))
    finally:
        if own:
            g.close()
        if run is not None:
            run.close()
    matched = sum(r.matched for r in report.results)
    report.stats = {
        "queries": len(report.results) + len(report.skipped), "matched": matched,
        "unmatched": len(report.results) - matched, "skipped": len(report.skipped),
        "gallery_images": n_gallery, "k": k, "include_all": include_all,
        "score": score_name, "score_threshold": threshold,
        "profile": profile.name if profile is not None else None,
        "target_precision": profile.target_precision if profile is not None else None,
        "level": s.level,
        "seconds": round(time.perf_counter() - start, 3)}
    return report
