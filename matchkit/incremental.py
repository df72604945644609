"""Incremental matching: a gallery run redoes only what new or changed images affect.

A ``dedupe --gallery`` run keeps, in the gallery, two things per settings key
(``settings_key``: every setting that changes matching, the calibration
profile, matchkit's version):

- per image, a *record* of its own candidate search: its pHash neighbours and
  crowd distance, the pairs its hash and descriptor searches found (with
  distances and votes), which images its descriptors voted for at all, and
  how far each descriptor's neighbour list reached;
- per candidate pair, its evidence as the global signals left it ("before")
  and, once local verification ran, as verification left it ("after"), plus
  the outcome of the same-pixels check.

A run then loads the records, and searches again only for images whose
record is missing (new, changed, never in a run) or *dirty*: an image its
record names is gone or changed, or a new image is near enough to have
entered its neighbour lists (its pHash within the crowd or collect distance,
or one of its indexed descriptors nearer than some query descriptor's
farthest neighbour). Every other record is exactly what a search would
return now, so the candidate pairs, their pHash distances, votes, crowd and
"verify top" sets, and hence the global evidence, are those of a full run.
Pairs between two clean images reuse their stored evidence; pairs touching a
re-searched image are measured again and keep their stored verification
only when the new evidence is identical to the stored one (and no
template-content features, which depend on neighbours, are involved).
Verification itself is looked up first: a pair is verified only when no
stored "after" exists. Clustering then runs unchanged over this evidence, so
the clusters, keepers and relations are those of a full run, as long as the
approximate (HNSW) index searches return what a fresh index would.

Records of images outside the run are kept as markers (seen, not searched),
so a later run knows they are not new. Changing any setting, the profile or
the version gives another key; each key keeps its own state (the last
``gallery.MAX_MATCH_KEYS`` keys used), so switching ``--level`` back and forth
reuses both, and nothing made under one key is read under another.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

import numpy as np

from . import __version__
from .candidates import VoteDetail, phash_candidates, vote_candidates
from .config import Settings
from .gallery import ORB_KEY_STRIDE, Gallery
from .hashing import PHASH_BITS
from .index import HammingIndex
from .local import Overlap, Verification
from .match import PairEvidence, PairMatcher, _content_features

#: Bump when what a record or a stored pair means changes.
STATE_VERSION = 1
#: Settings that do not change any decision (only how many threads run).
_NOT_MATCHING = ("workers",)
#: Pair kinds in the ``match_pairs`` table: a candidate pair, and the second
#: look a cluster takes at a pair outside the candidates (straight, mirrored).
CANDIDATE, HOP, HOP_MIRRORED = 0, 1, 2


def settings_key(settings: Settings, calibrator=None) -> str:
    """What every stored decision depends on besides the two images: the
    matching settings (level, thresholds, features, model), the calibrated
    decision (``calibrator``, a fitted ``calibrate.PairCalibrator``), and
    matchkit's version (feature extraction and rules)."""
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k not in _NOT_MATCHING}
    cal = None
    if calibrator is not None:
        cal = hashlib.sha256(json.dumps(calibrator.to_dict(), sort_keys=True,
                                        default=_plain).encode()).hexdigest()
    text = json.dumps({"settings": values, "calibrator": cal, "version": __version__,
                       "state": STATE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _plain(o):
    """JSON for numpy values (exact: float32 widens to the same value)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON: {type(o).__name__}")


def evidence_json(ev: PairEvidence) -> str:
    """A pair's evidence as canonical JSON (equal evidence, equal text)."""
    return json.dumps({
        "a": ev.a, "b": ev.b, "d": ev.phash_distance, "c": ev.colour_similarity,
        "v": ev.votes, "cos": ev.cosine, "oc": ev.overlap_correlation, "r": ev.rule,
        "p": ev.pending, "x": ev.extra,
        "ver": dataclasses.asdict(ev.verification) if ev.verification else None,
        "ov": dataclasses.asdict(ev.overlap) if ev.overlap else None,
    }, sort_keys=True, default=_plain)


def evidence_from_json(text: str, into: PairEvidence | None = None) -> PairEvidence:
    """The evidence ``evidence_json`` wrote (filling ``into`` in place if given)."""
    d = json.loads(text)
    ev = into if into is not None else PairEvidence(d["a"], d["b"], d["d"], d["c"])
    ev.phash_distance, ev.colour_similarity, ev.votes = d["d"], d["c"], d["v"]
    ev.cosine, ev.overlap_correlation, ev.rule, ev.pending = d["cos"], d["oc"], d["r"], d["p"]
    ev.extra = d["x"]
    ev.verification = Verification(**d["ver"]) if d["ver"] else None
    ev.overlap = Overlap(**d["ov"]) if d["ov"] else None
    return ev


@dataclasses.dataclass
class PairRow:
    """One stored pair: its evidence as the global signals left it, as local
    verification left it (None: not verified yet), whether the two images
    have the same pixels (None: not checked), whether it can matter to
    clustering at all (``live``: matched, pending, or near enough to be an
    exact copy), and its settled relation in a report (None: not asked)."""

    before: str
    after: str | None = None
    same: int | None = None
    live: int = 1
    relation: str | None = None

    @classmethod
    def of(cls, ev: PairEvidence, exact_check_distance: int) -> "PairRow":
        return cls(evidence_json(ev), live=int(bool(
            ev.rule or ev.pending or ev.phash_distance <= exact_check_distance)))

    def astuple(self) -> tuple:
        return self.before, self.after, self.same, self.live, self.relation


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.uint8).tobytes()).decode()


def _unb64(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), np.uint8)


def _nearest_distance(queries: np.ndarray, codes: np.ndarray, nbits: int) -> np.ndarray:
    """Per query row (packed bits), the Hamming distance to the nearest row of
    ``codes`` (exact below ``index.EXACT_SEARCH_BELOW`` codes)."""
    if not len(queries):
        return np.zeros(0, np.int64)
    index = HammingIndex(nbits)
    index.add(np.arange(len(codes)), codes, replace=False)
    return index.search(queries, 1)[1][:, 0]


class IncrementalMatcher(PairMatcher):
    """A ``PairMatcher`` whose candidate searches, global evidence and
    verifications come from the gallery's stored state where it is still
    exact, and are computed (and stored by ``save``) where it is not.

    ``reused`` and ``verified`` count the verifications looked up and done.
    """

    def __init__(self, gallery: Gallery, ids: list[int], settings: Settings,
                 same: dict[int, int] | None = None, calibrator=None, *,
                 rematch: bool = False):
        self._setup(gallery, ids, settings, calibrator)
        self.key = settings_key(settings, calibrator)
        self.rematch = rematch
        self.reused = self.verified = 0
        ids = sorted(ids)
        current = gallery.image_digests()
        stored = {} if rematch else gallery.match_records(self.key)
        self._rows = {} if rematch else {k: PairRow(*v) for k, v in
                                         gallery.match_pairs(self.key).items()}
        self._changed_rows: set[tuple[int, int, int]] = set()
        records = {i: json.loads(r) for i, (d, r) in stored.items()
                   if i in current and current[i][0] == d}
        allowed = set(ids)
        entering = [i for i in current if i not in records
                    or (i in allowed and not records[i].get("run"))]
        dirty = self._dirty(records, allowed, entering)
        self._write: set[int] = set()
        for i, (digest, _) in current.items():  # markers: seen, not searched
            if i not in records or i in dirty or bool(records[i].get("run")) != (i in allowed):
                rec = records.get(i) if i not in dirty else None
                records[i] = {**(rec or {"q": 0}), "run": int(i in allowed)}
                self._write.add(i)
        self.records, self.digests = records, current
        #: Images searched again this run (their pairs are measured again).
        self.searched = [i for i in ids if not records[i].get("q")]
        self._search(self.searched, allowed)
        self.plain = {}
        self.crowd = {i: records[i]["crowd"] for i in ids}
        self.evidence = self._evidence(ids, same)

    # -- which records still hold ------------------------------------------
    def _dirty(self, records: dict[int, dict], allowed: set[int], entering: list[int]) -> set[int]:
        """Searched records that a search now could answer differently."""
        searched = [i for i, r in records.items() if r.get("q")]
        dirty = set()
        for i in searched:
            r = records[i]
            if (any(j not in records for j, _ in r["near"])
                    or any(j not in allowed for j, _ in r["ph"])
                    or any(j not in allowed for j, _ in r["vo"])
                    or any(j not in allowed for j in r["hits"])):
                dirty.add(i)
        if not entering:
            return dirty
        s = self.settings
        collect = max(max(s.phash_max_distance, s.exact_check_distance),
                      s.phash_candidate_distance if s.local_features else 0)
        # pHash: an entering image as near as the crowd or collect distance.
        # pHash: an entering image nearer than the crowd distance (it joins
        # the neighbour list), or within the collect distance and within
        # some hash variant's reach (it joins that search's results).
        rest = [i for i in searched if i not in dirty]
        codes = self.gallery.phash_variants(entering)[:, 0]
        if rest:
            near = _nearest_distance(self.gallery.phash_variants(rest).reshape(-1, PHASH_BITS // 8),
                                     codes, PHASH_BITS).reshape(len(rest), 8)
            for i, d in zip(rest, near.tolist()):
                r = records[i]
                reach = r.get("reach") or [collect] * 8
                if min(d) <= r["crowd"] or any(x <= min(y, collect) for x, y in zip(d, reach)):
                    dirty.add(i)
        if not s.local_features:
            return dirty
        # Descriptors: an entering image's indexed descriptor nearer than a
        # query descriptor's farthest neighbour (within the vote distance).
        rest = [i for i in searched if i not in dirty]
        new_desc = [lf[0].desc[: s.index_features] for lf in
                    (self.gallery.local_features(i) for i in entering) if lf is not None] \
            if rest else []
        if not new_desc:
            return dirty
        owners, queries, limits = [], [], []
        for i in rest:
            r = records[i]
            if r.get("tdesc"):
                q = _unb64(r["tdesc"]).reshape(-1, 32)
            else:
                lf = self.cache.get(i)
                q = lf[0].desc[: s.query_features] if lf is not None else np.zeros((0, 32), np.uint8)
            kth = _unb64(r["kth"]) if r.get("kth") else np.full(len(q), 255, np.uint8)
            owners.append(np.full(len(q), i))
            queries.append(q)
            limits.append(np.minimum(kth[:len(q)].astype(np.int64), s.vote_max_distance))
        near = _nearest_distance(np.concatenate(queries), np.concatenate(new_desc), 256)
        hit = near <= np.concatenate(limits)
        dirty.update(np.unique(np.concatenate(owners)[hit]).tolist())
        return dirty

    # -- searching the images that need it ---------------------------------
    def _search(self, todo: list[int], allowed: set[int]) -> None:
        """Candidate searches of ``todo`` against the whole gallery, as records."""
        if not todo:
            return
        s, g = self.settings, self.gallery
        variants = g.phash_variants(todo)
        found = phash_candidates(g.phash_index, todo, variants, neighbours=s.neighbours,
                                 allowed=allowed, per_owner=True, **self._phash_limits())
        detail = VoteDetail()
        if s.local_features:
            self.templated.update(_content_features(todo, self.paths, found, self.cache, s,
                                                    self._masks, self._pool))
            vote_candidates(g.orb_index, self.vote_queries(todo), key_stride=ORB_KEY_STRIDE,
                            allowed=allowed, detail=detail, **self._vote_limits())
        for i in todo:
            rec = {"q": 1, "run": 1, "crowd": found.crowd[i],
                   "near": [list(x) for x in found.nearest.get(i, [])],
                   "ph": sorted([j, d] for j, d in found.by_owner.get(i, {}).items()),
                   "vo": sorted([j, v] for j, v in detail.by_owner.get(i, {}).items()),
                   "hits": detail.hits.get(i, []), "tmpl": int(i in self.templated),
                   "reach": found.reach.get(i)}
            if i in detail.kth:
                rec["kth"] = _b64(detail.kth[i])
            if i in self.templated:
                rec["tdesc"] = _b64(self.templated[i].desc[: s.query_features])
            self.records[i] = rec
            self._write.add(i)

    def _ensure_templated(self, ids) -> None:
        """Template-content features of clean images that need them (a
        verification or keeper choice touching them), from their records."""
        from .candidates import Candidates

        todo = [i for i in ids if self.records.get(i, {}).get("tmpl") and i not in self.templated]
        if todo:
            found = Candidates(nearest={i: [tuple(x) for x in self.records[i]["near"]]
                                        for i in todo})
            self.templated.update(_content_features(todo, self.paths, found, self.cache,
                                                    self.settings, self._masks, self._pool))

    # -- evidence -----------------------------------------------------------
    def _evidence(self, ids: list[int], same: dict[int, int] | None) -> list[PairEvidence]:
        s, records = self.settings, self.records
        pairs: dict[tuple[int, int], int] = {}
        votes: dict[tuple[int, int], float] = {}
        top = {}
        for q in ids:
            r = records[q]
            for j, d in r["ph"]:
                p = (q, j) if q < j else (j, q)
                if d < pairs.get(p, 1 << 30):
                    pairs[p] = d
            for j, v in r["vo"]:
                p = (q, j) if q < j else (j, q)
                votes[p] = max(votes.get(p, 0.0), v)
            top[q] = {j for j, _ in r["near"][:s.verify_top]}
        for p in votes:
            pairs.setdefault(p, -1)
        searched = set(self.searched)
        keep: list[PairEvidence] = []
        fresh: dict[tuple[int, int], int] = {}
        for (a, b), d in pairs.items():
            if same is not None and same.get(a, a) == same.get(b, b):
                continue
            row = self._rows.get((a, b, CANDIDATE))
            if row is not None and a not in searched and b not in searched:
                if row.live:  # (the others cannot change any cluster)
                    keep.append(evidence_from_json(row.before))
            else:
                fresh[(a, b)] = d
        need = sorted({i for p in fresh for i in p})
        self.plain.update(zip(need, self.gallery.phash_variants(need)))
        self.templated_flags = {i for i in ids if records[i].get("tmpl")}
        self._ensure_templated(need)  # "template" evidence: who is templated
        made = self.global_evidence(fresh, votes, top, same) if fresh else []
        for ev in made:
            k = (ev.a, ev.b, CANDIDATE)
            text, old = evidence_json(ev), self._rows.get(k)
            templated = ev.a in self.templated_flags or ev.b in self.templated_flags
            if old is not None and old.before == text and not templated:
                continue  # measured again, the same: its verification still holds
            self._rows[k] = PairRow.of(ev, s.exact_check_distance)
            self._changed_rows.add(k)
        return sorted(keep + made, key=lambda ev: (ev.a, ev.b))

    def _kind(self, ev: PairEvidence) -> tuple[int, int, int]:
        kind = (HOP_MIRRORED if ev.extra.get("reflect") else HOP) if ev.extra.get(
            "second_hop") else CANDIDATE
        return ev.a, ev.b, kind

    def evidence_between(self, a: int, b: int, reflect: bool) -> PairEvidence:
        if a not in self.plain or b not in self.plain:
            need = [i for i in (a, b) if i not in self.plain]
            self.plain.update(zip(need, self.gallery.phash_variants(need)))
        ev = super().evidence_between(a, b, reflect)
        k = self._kind(ev)
        text, old = evidence_json(ev), self._rows.get(k)
        templated = {ev.a, ev.b} & self.templated_flags
        touched = {ev.a, ev.b} & set(self.searched)
        if old is None or old.before != text or (templated and touched):
            self._rows[k] = PairRow.of(ev, self.settings.exact_check_distance)
            self._changed_rows.add(k)
        return ev

    def verify(self, todo: list[PairEvidence]) -> None:
        todo = [ev for ev in todo if ev.pending]
        work = []
        for ev in todo:
            row = self._rows.get(self._kind(ev))
            if row is not None and row.after is not None:
                evidence_from_json(row.after, into=ev)
                self.reused += 1
            else:
                work.append(ev)
        if not work:
            return
        self._ensure_templated({i for ev in work for i in (ev.a, ev.b)})
        super().verify(work)
        self.verified += len(work)
        for ev in work:
            row = self._rows[self._kind(ev)]
            row.after, row.relation = evidence_json(ev), None
            self._changed_rows.add(self._kind(ev))

    def same_pixels(self, ev: PairEvidence) -> bool:
        k = (ev.a, ev.b, CANDIDATE)
        row = self._rows.get(k)
        if row is not None and row.same is not None:
            return bool(row.same)
        for i in (ev.a, ev.b):
            if i not in self.plain:
                self.plain[i] = self.gallery.phash_variants([i])[0]
        out = super().same_pixels(ev)
        if row is not None:
            row.same = int(out)
            self._changed_rows.add(k)
        return out

    def settle_relation(self, ev: PairEvidence) -> str | None:
        k = self._kind(ev)
        row = self._rows.get(k)
        if row is not None and row.relation is not None:
            ev.extra["relation"] = row.relation or None
            return ev.extra["relation"]
        out = super().settle_relation(ev)
        if row is not None:
            row.relation = out or ""
            self._changed_rows.add(k)
        return out

    # -- per-image values, kept in the records -------------------------------
    def _memo(self, image_id: int, name: str, compute):
        rec = self.records.get(image_id)
        if rec is None or not rec.get("q"):
            return compute()
        memo = rec.setdefault("memo", {})
        if name not in memo:
            memo[name] = compute()
            self._write.add(image_id)
        return memo[name]

    def picture_share(self, image_id: int) -> float:
        def compute():
            self._ensure_templated([image_id])
            return PairMatcher.picture_share(self, image_id)
        return self._memo(image_id, "share", compute)

    def lightness(self, image_id: int) -> float | None:
        return self._memo(image_id, "light", lambda: PairMatcher.lightness(self, image_id))

    def picture_fractions(self, evidence: list[PairEvidence]) -> dict[int, float]:
        out = {}
        for i in {x for ev in evidence for x in (ev.a, ev.b)}:
            def compute(i=i):
                self._ensure_templated([i])
                return PairMatcher.picture_fractions(
                    self, [PairEvidence(i, i, 0, 1.0)])[i]
            out[i] = self._memo(i, "frac", compute)
        return out

    # -- writing back ---------------------------------------------------------
    def save(self) -> None:
        """Store the records and pair rows this run made or completed (one transaction)."""
        records = {i: (self.digests[i][0], json.dumps(self.records[i], sort_keys=True))
                   for i in self._write if i in self.digests}
        rows = {k: self._rows[k].astuple() for k in self._changed_rows}
        self.gallery.save_match_state(self.key, records, rows, replace=self.rematch)
