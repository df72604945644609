"""Incremental matching: a gallery run redoes only what new or changed images affect.

A ``dedupe --gallery`` run keeps, in the gallery, two things per settings key
(``settings_key``: every setting that changes matching, the calibration
profile, matchkit's version):

- per image, a *record* of its own candidate search: its pHash neighbours,
  crowd distance and how far each hash variant's search reached, the pairs its
  hash and descriptor searches found (with distances and votes), and each
  query descriptor's neighbour list (image ids and distances);
- per candidate pair, its evidence as the global signals left it ("before")
  and, once local verification ran, what verification changed in it
  ("after", ``verification_json``), plus
  the same-pixels check and the relation a report settled for it.

A run brings every record up to date instead of searching again:

- a record naming an image that is gone, changed or out of the run: searched
  again from scratch (as are new images and those never searched);
- a new image whose pHash is within the record's crowd distance, or within
  some variant's reach and the pair (or nearest looser pair) distance: it is
  merged into the record's hash search (``merge_hash_search``: its nearest
  list, pairs, loose pairs and each variant's reach, from the last few
  distances each variant's search kept), and the template check is made again
  where the image's look-alikes changed (templated images are searched again
  in full); where the record cannot tell (a tie at a reach, the image pushed
  out of a variant's search may be a kept loose pair, an extended search)
  the hash search is redone;
- descriptors: each new image's indexed descriptors ask the index which
  stored query descriptors they come within the vote distance of (in an
  approximate index, among their ``WITHIN_MAX_NEIGHBOURS`` nearest), and are
  merged into those neighbour lists as the index's own search would rank them
  (at equal distance the smaller key first, as exact and IVF searches rank
  them; in an approximate HNSW search, the one indexed last); the votes are counted
  again from the lists.

With exact searches (an index whose ``ranks_ties_by_key``: below
``index.EXACT_SEARCH_BELOW`` codes per index or shard, or IVF) every record
is then what a search now would return, so the candidate pairs, distances,
votes, crowd and "verify top" sets are those of a full run. Pairs between
two images whose neighbourhood did not change reuse their stored evidence
(votes patched in where only they moved); pairs touching an image whose
crowd distance changed are measured again, as are the pairs that a changed
hash search added, dropped or moved into or out of an image's nearest few
(``_note_change``; its other pairs keep their evidence); these are measured
again, keeping their stored verification when the new evidence is
the same but for the votes, on the same side of ``verify_retry_votes`` (no
templated image: content features depend on neighbours; no calibrator: it
reads the votes). A verification is looked up before it is done. Clustering
runs unchanged over this evidence, so the clusters, keepers and relations are
those of a full run. Above that size the index is an approximate (HNSW)
graph, whose answer for an unchanged image can move when others are
inserted: a stored answer is kept, so a pair's votes can differ from a fresh
run's by such noise (measured: identical clusters, keepers and relations).

Records of images outside the run are kept as markers (seen, not searched),
so a later run knows they are not new. Changing any setting, the profile or
the version gives another key; each key keeps its own state (the last
``gallery.MAX_MATCH_KEYS`` keys used), so switching ``--level`` back and forth
reuses both, and nothing made under one key is read under another.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import cv2
import numpy as np

from matchkit.util.version import __version__
from matchkit.util.arrays import bit_sums, unique
from matchkit.util.jsonfmt import dumps_sorted, loads
from matchkit.match.candidates import VoteDetail, phash_candidates, search_in_chunks, tally_votes
from matchkit.util.checkpoint import checkpoint, report
from matchkit.config import Settings
from matchkit.store.gallery import ORB_KEY_STRIDE, Gallery
from matchkit.signals.hashing import PHASH_BITS
from matchkit.index.hamming import EXACT_SEARCH_BELOW, HammingIndex, transient_index
from matchkit.index.ivf import IVFIndex
from matchkit.util.linequeue import LineQueue
from matchkit.signals.local import Overlap, Verification
from matchkit.match.framed import framed_pairs, unframed
from matchkit.index.pictures import PictureIndex, forget_picture_files, picture_file, picture_rows
from matchkit.match.pairs import (VERIFY_BATCH, PairEvidence, PairMatcher, _content_features,
                                  content_masks, mark_verifiable)
from matchkit.signals.thumbmatch import IconComparison, IconDecider, icon_candidates, icon_views

#: Bump when what a record or a stored pair means changes, and when the
#: decision rules change within one matchkit version (2: recapture pictures,
#: thumbnail checks of pHash matches, recolours by histogram; 3: mirrored
#: looks and icon views made from stored features, ``stored.py``; 4: re-photographs
#: found by the frame around the shown picture; 5: candidates from the picture
#: inside a frame, records "fh" and "fr", ``framed.py``; 6: a pair's "after"
#: holds only what verification changed, ``verification_json``; 7: texts stored
#: deflated, ``stored_text.py``, which earlier builds of one version cannot read;
#: 8: hash searches keep their reach tails and loose pairs, "rt" and "lk", which
#: an add merges new images into, ``merge_hash_search``: an earlier build would
#: update a record and leave them behind; 9: the overlap check measures a
#: picture's texture, not its area, and pale hues decide colour agreement
#: where saturated ones cannot: stored verifications decided otherwise;
#: 10: images tied in votes at a query's cut are left out together,
#: ``candidates.tally_votes``: stored records kept the first by id; 11: the
#: overlap check counts no texture at the edge of the warped picture,
#: ``local.compare_overlap``; 12: a perspective fit from a small patch that
#: explains under half the matches is a shared part, ``match.relation_of``;
#: 13: the inliers' spread is measured in the frame the overlap is compared
#: in, ``local.compare_overlap``, and ``match.MIN_SPREAD`` chosen again).
STATE_VERSION = 13
#: In an approximate (HNSW) descriptor index, a new descriptor is merged into
#: the neighbour lists of at most this many of its nearest stored descriptors
#: (``_within``), not of every one within the vote distance: its search from
#: the new side is no more exact than theirs, and the few descriptors that
#: lie near thousands of others (flat, generic patches) cost most of an add.
#: Measured on 1% added to the scale set's galleries (RESULTS "incremental
#: add: the reverse search's cap"): at 10,100 images the report of a run from
#: scratch down to a cap of 64; at 50,500 + 500, 256 against 1,024: the same
#: clusters, keepers, relations and pairs (the vote counts shown differ in 25
#: of 2,446 clusters), 35-60 s less CPU; 64 changed 4 clusters.
WITHIN_MAX_NEIGHBOURS = 256
#: Steps of bringing the stored state up to date, told as phase "stored"
#: (``checkpoint.report``): stored records read, gone images found, hash
#: searches redone, votes patched, frames looked for again, new images
#: searched (phase "match" inside it), pair evidence read or made.
UPDATE_STEPS = 7

#: Verify a run's new pending pairs ahead (``IncrementalMatcher._verify_ahead``)
#: only if earlier runs left at most this share of their pending pairs
#: unasked (5,000 scale-set images: 41 of 50,052, 0.1%; 2,000 transformed-set
#: images: 7,707 of 9,185, 84%).
AHEAD_MAX_UNASKED = 0.1
#: At most this many pairs are verified ahead in the background, while
#: clustering starts (``IncrementalMatcher._verify_in_background``); more are
#: verified ahead in batches before it (their features would all be held).
AHEAD_IN_BACKGROUND = 4096
#: When more than this share of a gallery's images are new to its indexes
#: (new or changed since the stored searches), every image is searched again
#: instead of patching the stored searches; stored verifications are still
#: reused where a pair's evidence is the same. Patching grows with the new
#: descriptors' neighbourhoods: adding 5,100 images to a 5,000-image gallery
#: took 511 s and peaked at 20.5 GB RSS, where a first run of all 10,100 takes
#: about 290 s and 1.45 GB.
SEARCH_ALL_ABOVE = 0.25
#: Settings that change no stored decision: how many threads run, and the
#: burstiness check (``burst``), which is measured afresh every run after the
#: stored verifications are read (it depends on which images are in the run).
_NOT_MATCHING = ("workers", "burst_pictures")
#: Pair kinds in the ``match_pairs`` table: a candidate pair, and the second
#: look a cluster takes at a pair outside the candidates (straight, mirrored).
CANDIDATE, HOP, HOP_MIRRORED = 0, 1, 2


def settings_key(settings: Settings, calibrator=None) -> str:
    """What every stored decision depends on besides the two images: the
    matching settings (level, thresholds, features, model), the calibrated
    decision (``calibrator``, a fitted ``calibrate.PairCalibrator``), and
    matchkit's version (feature extraction and rules)."""
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k not in _NOT_MATCHING}
    if values.get("vote_index") == "hnsw":  # (the default, as before the IVF index existed)
        values.pop("vote_index")
        values.pop("ivf_probes", None)
    if not values.get("signals"):  # (none: the default, as before signals existed)
        values.pop("signals", None)
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
    if isinstance(o, (IconComparison, Overlap)):  # (``extra["icon"]``, ``extra["picture"]``)
        return dataclasses.asdict(o)
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


#: Top-level fields of ``evidence_json`` a verification can change, and the
#: ``PairEvidence`` attributes they are (``ver``, ``ov`` and ``x`` apart).
_CHANGEABLE = {"d": "phash_distance", "c": "colour_similarity", "cos": "cosine",
               "oc": "overlap_correlation", "r": "rule", "p": "pending"}


def verification_json(before: str, ev: PairEvidence) -> str:
    """What verifying a pair changed in its evidence, as canonical JSON: the
    fields of ``ev`` that differ from ``before`` (the ``evidence_json`` it was
    verified from), "x+" the extra entries added or changed, "x-" the names
    of those removed. Never the votes: a stored verification is reused under
    other votes (``_same_verification``), which the pair keeps.

    Stored instead of the whole verified evidence: on 5,000 images, 150
    bytes per verified pair against 440, and less to read back on every run
    (``apply_verification``)."""
    old, new = loads(before), loads(evidence_json(ev))
    out = {k: new[k] for k in (*_CHANGEABLE, "ver", "ov") if new[k] != old[k]}
    plus = {k: v for k, v in new["x"].items() if k not in old["x"] or old["x"][k] != v}
    gone = sorted(k for k in old["x"] if k not in new["x"])
    if plus:
        out["x+"] = plus
    if gone:
        out["x-"] = gone
    return json.dumps(out, sort_keys=True)


def apply_verification(ev: PairEvidence, text: str) -> None:
    """Bring ``ev`` (the evidence a stored verification was made from) to
    what that verification left (``verification_json``)."""
    d = loads(text)
    # (all read before any is set: a damaged text leaves ``ev`` as it was)
    changes = {_CHANGEABLE[k]: v for k, v in d.items() if k in _CHANGEABLE}
    if "ver" in d:
        changes["verification"] = Verification(**d["ver"]) if d["ver"] else None
    if "ov" in d:
        changes["overlap"] = Overlap(**d["ov"]) if d["ov"] else None
    if "x+" in d or "x-" in d:
        extra = {k: v for k, v in ev.extra.items() if k not in d.get("x-", ())}
        extra.update(_extra_objects(d.get("x+", {})))
        changes["extra"] = extra
    for name, value in changes.items():  # (a few fields: what verification changed)
        setattr(ev, name, value)


def _extra_objects(extra: dict) -> dict:
    """Extra entries stored as dicts back to the objects they were."""
    if "icon" in extra:
        extra["icon"] = IconComparison(**extra["icon"])
    if isinstance(extra.get("picture"), dict):
        extra["picture"] = Overlap(**extra["picture"])
    return extra


def evidence_from_json(text: str, into: PairEvidence | None = None) -> PairEvidence:
    """The evidence ``evidence_json`` wrote (filling ``into`` in place if given)."""
    d = loads(text)
    ev = into if into is not None else PairEvidence(d["a"], d["b"], d["d"], d["c"])
    ev.phash_distance, ev.colour_similarity, ev.votes = d["d"], d["c"], d["v"]
    ev.cosine, ev.overlap_correlation, ev.rule, ev.pending = d["cos"], d["oc"], d["r"], d["p"]
    ev.extra = _extra_objects(d["x"])
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


def _phash_fields(found, i: int) -> dict:
    """What an image's record keeps of its hash search."""
    return {"crowd": found.crowd[i], "near": [list(x) for x in found.nearest.get(i, [])],
            "ph": sorted([j, d] for j, d in found.by_owner.get(i, {}).items()),
            "reach": found.reach.get(i), "lreach": found.loose_reach.get(i),
            "rt": found.tails.get(i), "lk": [list(x) for x in found.loose_kept.get(i, [])]}


#: Record fields whose change alone leaves a pair's global evidence as it was
#: (``IncrementalMatcher._update``): descriptor lists, how far searches reached,
#: votes (patched into the pairs' evidence) and hits.
_NOT_NEIGHBOURHOOD = frozenset({"nb", "reach", "lreach", "rt", "lk", "vo", "hits"})


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


def _vote_fields(detail: VoteDetail, i: int) -> dict:
    """What an image's record keeps of its descriptor votes."""
    return {"vo": sorted([j, v] for j, v in detail.by_owner.get(i, {}).items()),
            "hits": _pack_ids(detail.hits.get(i, []))}


def _pack_ids(ids) -> str:
    """Image ids as base64 of int32 (a record's neighbour lists and "hits"):
    the "hits" (about 130 ids at 10,000 images) read back as one string
    instead of a list of Python ints (all 10,000 records of a 1% add parsed
    in 0.18 s instead of 0.31 s)."""
    return base64.b64encode(np.ascontiguousarray(ids, "<i4").tobytes()).decode()


def _unpack_ids(text: str) -> np.ndarray:
    """The int32 ids ``_pack_ids`` wrote (a read-only view)."""
    return np.frombuffer(base64.b64decode(text), "<i4")


def _hits(rec: dict) -> np.ndarray:
    """A record's "hits" (stored as ``_pack_ids``, or as a JSON list by earlier builds)."""
    hits = rec["hits"]
    if isinstance(hits, str):
        return _unpack_ids(hits).astype(np.int64)
    return np.asarray(hits, np.int64)


def _pack_lists(ids: np.ndarray, dists: np.ndarray) -> list:
    return [ids.shape[1] if ids.ndim == 2 else 0, _pack_ids(ids), _b64(dists)]


def _lists(rec: dict) -> tuple[np.ndarray, np.ndarray]:
    """A record's descriptor neighbour lists (image ids, distances)."""
    k, ids, dists = rec["nb"]
    return _unpack_ids(ids).reshape(-1, k or 1), _unb64(dists).reshape(-1, k or 1)


def _merge_rows(ids: np.ndarray, dists: np.ndarray, found: np.ndarray, *,
                by_key: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists (ids, dists: rows x k) with new neighbours merged in:
    ``found`` rows are (row, distance, descriptor key). Nearest first; at
    equal distance the descriptor indexed last ranks first, as an approximate
    HNSW search ranks them (new ones were indexed after every stored one);
    ``by_key``: the smaller key first, as exact and IVF searches rank them."""
    k = ids.shape[1]
    found = found[np.lexsort((found[:, 2] if by_key else -found[:, 2], found[:, 1],
                              found[:, 0]))]
    rows, start = np.unique(found[:, 0], return_index=True)
    pos = np.arange(len(found)) - np.repeat(start, np.diff(np.append(start, len(found))))
    width = int(pos.max()) + 1
    slot = np.searchsorted(rows, found[:, 0])
    new_ids = np.full((len(rows), width), -1, np.int64)
    new_d = np.full((len(rows), width), 1 << 20, np.int64)  # (padding: after every stored entry)
    new_ids[slot, pos] = found[:, 2] // ORB_KEY_STRIDE
    new_d[slot, pos] = found[:, 1]
    all_ids = np.concatenate([new_ids, ids[rows].astype(np.int64)], 1)
    all_d = np.concatenate([new_d, dists[rows].astype(np.int64)], 1)
    if by_key:  # (equal distance: smaller image id, i.e. smaller key, first; none last)
        order = np.lexsort((np.where(all_ids < 0, np.iinfo(np.int64).max, all_ids), all_d),
                           axis=1)[:, :k]
    else:
        order = np.argsort(all_d, axis=1, kind="stable")[:, :k]
    ids, dists = ids.copy(), dists.copy()
    ids[rows] = np.take_along_axis(all_ids, order, 1)
    dists[rows] = np.take_along_axis(all_d, order, 1)
    return ids, dists


def _merge_all(lists: dict[int, tuple[np.ndarray, np.ndarray]], hits: np.ndarray, *,
               by_key: bool = False) -> list[int]:
    """Merge new neighbours into the lists of every image at once (as
    ``_merge_rows`` of each image's lists would): ``hits`` rows are (image,
    its descriptor row, distance, new descriptor key); rows an image does not
    have are ignored. Replaces the lists that changed in ``lists`` and
    returns those images, ascending (else every new descriptor was farther
    than its lists). ``by_key``: ties ordered as ``_merge_rows`` says."""
    images = unique(hits[:, 0]).tolist()
    if not images:
        return []
    touched: list[int] = []
    by_width: dict[int, list[int]] = {}
    for j in images:
        by_width.setdefault(lists[j][0].shape[1], []).append(j)
    for group in by_width.values():  # (one group: every list has vote_neighbours columns)
        counts = np.array([len(lists[j][0]) for j in group], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        at = np.searchsorted(group, hits[:, 0])
        mine = (at < len(group)) & (np.asarray(group, np.int64)[np.minimum(at, len(group) - 1)]
                                    == hits[:, 0])
        part, at = hits[mine], at[mine]
        part = part[part[:, 1] < counts[at]]
        if not len(part):
            continue
        ids = np.concatenate([lists[j][0] for j in group])
        dists = np.concatenate([lists[j][1] for j in group])
        found = np.stack([starts[np.searchsorted(group, part[:, 0])] + part[:, 1],
                          part[:, 2], part[:, 3]], 1)
        # A neighbour farther than a list's last (of its k, all stored before
        # it) never enters it: most of a crowded descriptor's many neighbours.
        found = found[found[:, 1] <= dists[found[:, 0], -1]]
        if not len(found):
            continue
        new_ids, new_d = _merge_rows(ids, dists, found, by_key=by_key)
        moved = np.nonzero((new_ids != ids).any(1) | (new_d != dists).any(1))[0]
        for n in unique(np.searchsorted(starts, moved, "right") - 1).tolist():
            j, a = group[n], int(starts[n])
            lists[j] = (new_ids[a:a + counts[n]], new_d[a:a + counts[n]])
            touched.append(j)
    return sorted(touched)


def _within(index: HammingIndex, queries: np.ndarray, limit: int, max_k: int | None = None):
    """(query row, key, distance) rows (int64, n x 3) of every indexed code
    within ``limit`` of each query (the neighbour count grows while the
    farthest is still within; up to ``max_k`` neighbours when given)."""
    rows, k = np.arange(len(queries)), 16
    found = []
    while len(rows) and len(index):
        asked = min(k, len(index))
        keys, dists = search_in_chunks(index, queries[rows], asked,
                                       rows=WITHIN_SEARCH_SLOTS // asked)
        ok = (keys >= 0) & (dists <= limit)
        more = ok[:, -1]
        last = not more.any() or k >= len(index) or (max_k is not None and k >= max_k)
        done = ok & ~more[:, None] if not last else ok  # (rows searched again: later)
        r, c = np.nonzero(done)
        found.append(np.stack([rows[r], keys[r, c], dists[r, c]], 1))
        if last:
            break
        rows, k = rows[more], k * 4
    return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


#: Neighbour slots (query rows x k) asked of the index in one search: its
#: result arrays and their copies cost about 60 bytes a slot, and an add asks
#: each new descriptor for up to ``WITHIN_MAX_NEIGHBOURS`` (a 1% add to
#: 10,000 images: 10,000 descriptors; unchunked, that step peaked 76 MB higher).
WITHIN_SEARCH_SLOTS = 1 << 20


#: Stored images whose neighbour lists an add merges and counts at once
#: (``IncrementalMatcher._patch_votes``). All at once, the merge and count of
#: a 1% add to 10,000 images peaked at 1,080 MB; in parts, 833 MB.
PATCH_IMAGES = 4096


def _within_ready(ready: Callable[[], HammingIndex], queries: np.ndarray, limit: int):
    """``_within`` over the index ``ready()`` gives, up to
    ``WITHIN_MAX_NEIGHBOURS`` each from an approximate one."""
    index = ready()
    return _within(index, queries, limit,
                   None if index.ranks_ties_by_key else WITHIN_MAX_NEIGHBOURS)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.uint8).tobytes()).decode()


def _unb64(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), np.uint8)


def _nearest_distance(queries: np.ndarray, codes: np.ndarray, nbits: int) -> np.ndarray:
    """Per query row (packed bits), the Hamming distance to the nearest row of
    ``codes`` (``nbits + 1`` if there is none): exact below
    ``index.EXACT_SEARCH_BELOW`` codes, by OpenCV's Hamming ``batchDistance``
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


class IncrementalMatcher(PairMatcher):
    """A ``PairMatcher`` whose candidate searches, global evidence and
    verifications come from the gallery's stored state where it is still
    exact, and are computed (and stored by ``save``) where it is not.

    ``reused`` and ``verified`` count the verifications looked up and done.
    """

    def __init__(self, gallery: Gallery, ids: list[int], settings: Settings,
                 same: dict[int, int] | None = None, calibrator=None, *,
                 rematch: bool = False):
        report("stored", 0, UPDATE_STEPS)
        self._setup(gallery, ids, settings, calibrator)
        self.key = settings_key(settings, calibrator)
        self.reused = self.verified = 0
        self._told_damaged = False  # (``_damaged``: one warning a run)
        #: The run's frame-picture index, when it searched frames (saved by ``save``).
        self._pictures: PictureIndex | None = None
        ids = sorted(ids)
        current = gallery.image_digests()
        stored = {} if rematch else self._read_state(gallery.match_records)
        rematch = rematch or stored is None
        stored = stored or {}
        #: Images new to the indexes since the records were made (new or changed).
        fresh = [i for i in current if i not in stored or stored[i][0] != current[i][0]]
        if len(fresh) > SEARCH_ALL_ABOVE * len(current):
            # (a large add: every image is searched again; the stored pair
            # rows still give their verifications where the evidence is the same)
            stored, fresh = {}, list(current)
        # The new images' descriptor search (``_patch_votes``) starts first, on
        # a worker thread, while this one reads the stored state and checks
        # the stored hash searches (it is the longest step of an add).
        new = (self._new_descriptors(fresh) if fresh and stored
               and self.settings.local_features else None)
        rows = {} if rematch else self._read_state(gallery.match_pairs)
        records = None if rows is None else self._read_state(
            lambda _: {i: loads(r) for i, (d, r) in stored.items()
                       if i in current and current[i][0] == d})
        if rows is None or records is None:  # (unreadable: every image is matched again)
            rematch, stored, rows, records, new = True, {}, {}, {}, None
            fresh = list(current)
        self.rematch = rematch
        self._rows = {k: PairRow(*v) for k, v in rows.items()}
        self._changed_rows: set[tuple[int, int, int]] = set()
        report("stored", 1, UPDATE_STEPS)
        allowed = set(ids)
        entering = fresh + [i for i in ids if i in records and not records[i].get("run")]
        self.records, self.digests = records, current
        self._write: set[int] = set()
        #: Images whose record changed this run beyond their votes (their
        #: pairs are measured again).
        self.changed: set[int] = set()
        #: Images whose record changed only for some pairs: the other images
        #: of those pairs (measured again; ``_note_change``).
        self.partners: dict[int, set[int]] = {}
        #: Images whose votes alone changed: their stored votes, by other image.
        self.old_votes: dict[int, dict[int, float]] = {}
        searched = [i for i, r in records.items() if r.get("q")]
        full = self._stale(searched, allowed)
        report("stored", 2, UPDATE_STEPS)
        if entering:
            rest = [i for i in searched if i not in full]
            reached = self._phash_reached(rest, entering)
            if len(entering) == len(fresh) and not self._names_any(fresh):  # (only new images)
                reached, templated = self._merge_phash(reached, fresh, allowed)
                full |= templated
            full |= self._refresh_phash(reached, allowed)
            report("stored", 3, UPDATE_STEPS)
            if self.settings.local_features:
                self._patch_votes([i for i in searched if i not in full], new, allowed,
                                  retally=len(entering) > len(fresh))
        report("stored", 4, UPDATE_STEPS)
        # Kept images whose frames are looked for again: in the run's one
        # frame search (``_search``).
        reframe = (self._regate([i for i in searched if i not in full and i in allowed])
                   if self.settings.local_features else [])
        report("stored", 5, UPDATE_STEPS)
        for i, (digest, _) in current.items():  # markers: seen, not searched
            if i not in records or i in full or bool(records[i].get("run")) != (i in allowed):
                rec = records.get(i) if i not in full else None
                records[i] = {**(rec or {"q": 0}), "run": int(i in allowed)}
                self._write.add(i)
        #: Images searched again this run.
        self.searched = [i for i in ids if not records[i].get("q")]
        self._search(self.searched, allowed, reframe)
        self.changed.update(self.searched)
        self.plain = {}
        self.crowd = {i: records[i]["crowd"] for i in ids}
        # Icons (``thumbmatch``) are judged against each other's closest views
        # in this run: their pairs are measured again every run (from the
        # small stored icon views; cheap).
        self.icons = icon_views(self.gallery.icons(ids), self.sizes, self._pool)
        self.icon_decider = IconDecider(self.icons, [], self._pool)
        self.changed.update(self.icons)
        report("stored", 6, UPDATE_STEPS)
        self.evidence = self._evidence(ids, same)
        report("stored", UPDATE_STEPS, UPDATE_STEPS)
        self._ahead: set[tuple[int, int, int]] = set()
        #: Pairs being verified in the background (``_verify_in_background``):
        #: key -> (row, evidence, future).
        self._running: dict[tuple[int, int, int], tuple] = {}
        self._background: LineQueue | None = None
        self._verify_ahead()

    def _read_state(self, read):
        """``read(self.key)``: part of the stored state; None, with a warning,
        where a stored text does not read back (a damaged or foreign row):
        the state is then ignored and replaced, as with ``rematch``."""
        try:
            return read(self.key)
        except ValueError as e:
            warnings.warn(f"gallery {self.gallery.path}: stored matching state unreadable ({e}); "
                          "matching every image again")
            return None

    # -- which records still hold ------------------------------------------
    def _stale(self, searched: list[int], allowed: set[int]) -> set[int]:
        """Records naming an image that left (removed, changed, out of the run):
        searched again from scratch. Every record's named images are gathered
        flat and checked at once (a loop over every name took 0.4 s of a
        5,000-image run; an array per record, 0.8 s of a 10,000-image one)."""
        records, limit = self.records, self.settings.vote_max_distance
        # Owners and names, flat: those that must still have a record (hash
        # neighbours, near descriptors' images) and those that must be in
        # this run (pairs, votes, hits, framed pictures). Packed ids (hits,
        # descriptor lists) are gathered as bytes and read at once.
        kept_owner: list[int] = []
        kept_name: list[int] = []
        run_owner: list[int] = []
        run_name: list[int] = []
        packed: list[tuple[int, bytes, bytes | None]] = []  # (owner, int32 ids, uint8 dists)
        for i in searched:
            checkpoint()
            r = records[i]
            near = [x[0] for x in r["near"]]
            kept_name += near
            kept_owner += [i] * len(near)
            for field in ("ph", "vo", "fr"):
                names = [x[0] for x in r.get(field, ())]
                run_name += names
                run_owner += [i] * len(names)
            hits = r["hits"]
            if isinstance(hits, str):
                packed.append((i, base64.b64decode(hits), None))
            else:  # (a JSON list: earlier builds)
                run_name += hits
                run_owner += [i] * len(hits)
            if "nb" in r:  # a near descriptor of a gone image held a place
                _, ids, dists = r["nb"]
                packed.append((i, base64.b64decode(ids), base64.b64decode(dists)))
        kept_a = [np.asarray(kept_owner, np.int64), np.asarray(kept_name, np.int64)]
        run_a = [np.asarray(run_owner, np.int64), np.asarray(run_name, np.int64)]
        for into, rows in ((run_a, [p for p in packed if p[2] is None]),
                           (kept_a, [p for p in packed if p[2] is not None])):
            if not rows:
                continue
            ids = np.frombuffer(b"".join(p[1] for p in rows), "<i4").astype(np.int64)
            owner = np.repeat(np.array([p[0] for p in rows], np.int64),
                              [len(p[1]) // 4 for p in rows])
            if rows[0][2] is not None:
                near_enough = np.frombuffer(b"".join(p[2] for p in rows), np.uint8) <= limit
                ids, owner = ids[near_enough], owner[near_enough]
            into[0], into[1] = np.concatenate([into[0], owner]), np.concatenate([into[1], ids])
        out: set[int] = set()
        for (owner, names), known in ((kept_a, records), (run_a, allowed)):
            if len(owner):
                known = np.fromiter(known, np.int64, len(known))
                out.update(unique(owner[~np.isin(names, known)]).tolist())
        return out

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
            dists = bit_sums(mine[:, :, None, :] ^ codes[None, None])  # (n, 8, m)
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
        template check (``match.content_masks``) may now decide otherwise
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

    def _new_descriptors(self, fresh: list[int]):
        """The index descriptors of the images new to the index (keys and
        codes), and the search that finds every indexed descriptor each comes
        near (``_within``), started on a worker thread (a function giving
        its result); None without any descriptor.
        (Asked from the new side only where stored images' query descriptors
        are in the index, see ``_patch_votes``.)"""
        s = self.settings
        # (Through the cache: the new images' own search reads them next.)
        new = [(i, lf[0].desc[: s.index_features]) for i, lf in
               ((i, self.cache.get(i)) for i in fresh) if lf is not None]
        new = [(i, d) for i, d in new if len(d)]
        if not new:
            return None
        keys = np.concatenate([i * ORB_KEY_STRIDE + np.arange(len(d)) for i, d in new])
        descs = np.concatenate([d for _, d in new])
        near = None
        if s.query_features <= s.index_features and s.vote_index != "ivf":
            # (the index as soon as the add has put the new descriptors in:
            # ``Gallery.index_in_background``; meanwhile this thread goes on)
            search = functools.partial(_within_ready, self.gallery.orb_index_ready(), descs,
                                       s.vote_max_distance)
            near = self._pool.submit(search).result if self._pool is not None else search
        return keys, descs, near

    def _patch_votes(self, todo: list[int], new, allowed: set[int], retally: bool) -> None:
        """Votes of ``todo`` as a search now would give them: each stored
        neighbour list merged with the descriptors of the images new to the
        index (``new``: ``_new_descriptors``) that come near enough to count
        (within the vote distance), then counted again over the current run
        (all of ``todo`` if ``retally``: images joined the run; else only
        those whose lists changed)."""
        s = self.settings
        todo = sorted(i for i in todo if "nb" in self.records[i])
        if not todo:
            return
        hits = []  # (stored image, its descriptor row, distance, new descriptor key)
        if new is not None:
            keys, descs, near = new
            # (IVF: a query looks in several words, an entry sits in one, so
            # "near" is not symmetric: every stored image asks the new ones.)
            ivf = s.vote_index == "ivf"
            plain = np.array(sorted(i for i in todo if near is not None
                                    and not self.records[i].get("tdesc")), np.int64)
            # Stored images' query descriptors are in the index: ask from the
            # new side which of them a new descriptor comes near.
            near = near() if near is not None else np.zeros((0, 3), np.int64)
            j = near[:, 1] // ORB_KEY_STRIDE
            mine = np.isin(j, plain)
            near, j = near[mine], j[mine]
            hits.append(np.stack([j, near[:, 1] % ORB_KEY_STRIDE, near[:, 2],
                                  keys[near[:, 0]]], 1))
            del near, j, mine
            # The rest (content-only features of templated images) ask the new ones.
            in_plain = set(plain.tolist())
            others = [i for i in todo if i not in in_plain]
            if others:
                if ivf:
                    small = IVFIndex(self.gallery.orb_index.vocab, probes=s.ivf_probes)
                    small.add(keys, descs, replace=False)
                else:
                    small = transient_index(keys, descs, 256)
                queries = self._query_descriptors(others)
                owners = np.concatenate([np.full(len(queries[i]), i) for i in others])
                ranks = np.concatenate([np.arange(len(queries[i])) for i in others])
                near = _within(small, np.concatenate([queries[i] for i in others]),
                               s.vote_max_distance)
                hits.append(np.stack([owners[near[:, 0]], ranks[near[:, 0]], near[:, 2],
                                      near[:, 1]], 1))
        hits = np.concatenate(hits) if hits else np.zeros((0, 4), np.int64)
        hits = hits[np.argsort(hits[:, 0], kind="stable")]
        # In parts of the stored images (an image's lists and votes depend on
        # its own hits alone): the merge and the count hold a few arrays the
        # size of the lists and hits they are given.
        ends = np.searchsorted(hits[:, 0], todo, "right")
        for start in range(0, len(todo), PATCH_IMAGES):
            part = todo[start:start + PATCH_IMAGES]
            first = int(ends[start - 1]) if start else 0
            self._patch_part(part, hits[first:int(ends[start + len(part) - 1])],
                             allowed, retally)

    def _patch_part(self, part: list[int], hits: np.ndarray, allowed: set[int],
                    retally: bool) -> None:
        """``_patch_votes`` of the images ``part`` (ascending) and their ``hits``."""
        lists = {i: _lists(self.records[i]) for i in part}
        touched = _merge_all(lists, hits, by_key=self.gallery.orb_index.ranks_ties_by_key)
        recount = part if retally else touched
        if not recount:
            return
        owners = np.concatenate([np.full(len(lists[i][0]), i, np.int64) for i in recount])
        detail = VoteDetail()
        tally_votes(owners, np.concatenate([lists[i][0] for i in recount]).astype(np.int64),
                    np.concatenate([lists[i][1] for i in recount]).astype(np.int64),
                    allowed=allowed, detail=detail, **{k: v for k, v in self._vote_limits().items()
                                                       if k != "neighbours"})
        for i in recount:
            old = self.records[i].get("vo")
            self._update(i, {**_vote_fields(detail, i), "nb": _pack_lists(*lists[i])})
            if self.records[i]["vo"] != old:
                self.old_votes[i] = dict(map(tuple, old or []))

    def _query_descriptors(self, ids: list[int]) -> dict[int, np.ndarray]:
        """The descriptors each stored image voted with (content-only ones for
        templated images, kept in their records)."""
        out = {}
        for i in ids:
            r = self.records[i]
            if r.get("tdesc"):
                out[i] = _unb64(r["tdesc"]).reshape(-1, 32)
            else:
                lf = self.cache.get(i)
                out[i] = (lf[0].desc[: self.settings.query_features] if lf is not None
                          else np.zeros((0, 32), np.uint8))
        return out

    def _update(self, image_id: int, fields: dict) -> None:
        """Set fields of a record. If its hash neighbourhood or pairs changed,
        the pairs that can change are measured again (``_note_change``); votes
        are patched into its pairs' evidence (``_evidence``); neighbour lists
        alone change nothing. (Its per-image values, ``memo``, depend on the
        image alone.)"""
        rec = self.records[image_id]
        if any(rec.get(k) != v for k, v in fields.items()):
            moved = [k for k, v in fields.items()
                     if k not in _NOT_NEIGHBOURHOOD and rec.get(k) != v]
            if moved:
                self._note_change(image_id, rec, fields, moved)
            rec.update(fields)
            self._write.add(image_id)

    def _note_change(self, i: int, rec: dict, fields: dict, moved: list[str]) -> None:
        """What a change of image ``i``'s hash search (fields ``moved``, from
        ``rec`` to ``fields``) can alter among its pairs' global evidence:
        all of them when its crowd distance changed (the hash rule and the
        calibrated decision read it) or anything but its nearest list and
        hash pairs; else only the pairs to images whose hash distance entry
        changed (new pairs) or that entered or left its ``verify_top``
        nearest (``mark_verifiable``). A pair's evidence depends on nothing
        else of the record (``global_evidence``)."""
        if self.calibrator is not None or any(k not in ("near", "ph") for k in moved):
            self.changed.add(i)
            return
        partners = self.partners.setdefault(i, set())
        if "near" in moved:
            top = self.settings.verify_top
            partners.update({j for j, _ in rec.get("near", [])[:top]}
                            ^ {j for j, _ in fields["near"][:top]})
        if "ph" in moved:
            old, new = dict(map(tuple, rec.get("ph", []))), dict(map(tuple, fields["ph"]))
            partners.update(j for j in old.keys() | new.keys() if old.get(j) != new.get(j))

    # -- searching the images that need it ---------------------------------
    def _search(self, todo: list[int], allowed: set[int], reframe: list[int]) -> None:
        """Candidate searches of ``todo`` against the whole gallery, as records.
        Its frame search also serves the kept images ``reframe`` (``_regate``),
        which have one of their own when nothing is searched."""
        if not todo:
            if reframe:
                self._framed_search([], allowed, {}, reframe)
            return
        s, g = self.settings, self.gallery
        variants = g.phash_variants(todo)
        found = phash_candidates(g.phash_index, todo, variants, neighbours=s.neighbours,
                                 allowed=allowed, per_owner=True, **self._phash_limits())
        detail = VoteDetail()
        if s.local_features:
            self.templated.update(_content_features(todo, self.paths, found, self.cache, s,
                                                    self._masks, self._pool))
            self.vote_search(todo, allowed, detail)
            framed = self._framed_search(todo, allowed, found.nearest, reframe)
        for i in todo:
            rec = {"q": 1, "run": 1, **_phash_fields(found, i), **_vote_fields(detail, i),
                   "tmpl": int(i in self.templated)}
            if s.local_features:
                rec.update(framed.get(i, {}))
            if i in detail.lists:
                rec["nb"] = _pack_lists(*detail.lists[i])
            if i in self.templated:
                rec["tdesc"] = _b64(self.templated[i].desc[: s.query_features])
            self.records[i] = rec
            self._write.add(i)

    def _framed_search(self, todo: list[int], allowed: set[int], nearest: dict[int, list],
                       again: list[int]) -> dict[int, dict]:
        """Record fields of ``framed`` pairs for ``todo``: "fh", the plain
        hashes of the pictures inside its frames; "fr", the images those pair
        it with, by distance; "fx", whether its frames were looked for (not
        ``framed.unframed`` by its ``nearest`` images). Searched against every
        image of the run (other images' pictures from their records), in both
        directions, so an image entering later finds the pairs of the ones
        searched before.

        The kept images ``again`` (``_regate``, by the nearest images of
        their records) join the same search, and their records are updated
        here: each search needs the pictures of every image of the run
        indexed (66,640 after an add of 500 images to 50,500), kept between
        runs (``PictureIndex``), saved with the records (``save``)."""
        todo = todo + again
        nearest = {**nearest, **{i: self.records[i]["near"] for i in again}}
        look = {i for i in todo if not unframed(nearest.get(i), self.settings)}
        pictures = self.picture_hashes(sorted(look))
        asked = set(todo)
        for i in allowed:
            fh = self.records.get(i, {}).get("fh") if i not in asked else None
            if fh:
                pictures[i] = _unb64(fh).reshape(-1, 1, PHASH_BITS // 8)
        plain = dict(zip(todo, self.gallery.phash_variants(todo)))
        # (kept beside the gallery: an add indexes only its own pictures)
        self._pictures = PictureIndex(picture_file(self.gallery.path, self.key),
                                      *picture_rows(pictures))
        found = framed_pairs(self.gallery.phash_index, pictures, plain, todo, allowed,
                             picture_index=self._pictures.index)
        out = {}
        for i in todo:
            fields = {"fr": sorted([j, d] for j, d in found.get(i, {}).items()),
                      "fx": int(i in look)}
            fields["fh"] = _b64(pictures[i][:, 0]) if i in pictures else ""
            out[i] = fields
        for i in again:
            self._update(i, out[i])
        return out

    def _regate(self, kept: list[int]) -> list[int]:
        """The kept images whose frames are looked for again, where their hash
        neighbours now say otherwise (``framed.unframed``: a copy entered near
        them), as a search from scratch would (``_framed_search``)."""
        return [i for i in kept if bool(self.records[i].get("fx"))
                == unframed(self.records[i]["near"], self.settings)]

    def _ensure_templated(self, ids) -> None:
        """Template-content features of clean images that need them (a
        verification or keeper choice touching them), from their records."""
        from matchkit.match.candidates import Candidates

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
        top, vo = {}, {}
        for q in ids:
            r = records[q]
            vo[q] = dict(map(tuple, r["vo"]))
            for j, d in r["ph"]:
                p = (q, j) if q < j else (j, q)
                if d < pairs.get(p, 1 << 30):
                    pairs[p] = d
            for j, v in r["vo"]:
                p = (q, j) if q < j else (j, q)
                votes[p] = max(votes.get(p, 0.0), v)
            top[q] = {j for j, _ in r["near"][:s.verify_top]}
        for q in ids:  # ``framed``: the picture inside a frame (worth verifying)
            for j, _ in records[q].get("fr", ()):
                pairs.setdefault((q, j) if q < j else (j, q), -1)
                top[q].add(j)
        for p in votes:
            pairs.setdefault(p, -1)
        for p in icon_candidates(self.icons):
            pairs.setdefault(p, -1)
        changed, old_votes, partners = self.changed, self.old_votes, self.partners
        #: Stored pending pairs that earlier runs never asked to verify, of all.
        self._unasked = [0, 0]
        self.templated_flags = {i for i in ids if records[i].get("tmpl")}
        keep: list[PairEvidence] = []
        fresh: dict[tuple[int, int], int] = {}
        for (a, b), d in pairs.items():
            if same is not None and same.get(a, a) == same.get(b, b):
                continue
            row = self._rows.get((a, b, CANDIDATE))
            if (row is None or a in changed or b in changed
                    or b in partners.get(a, ()) or a in partners.get(b, ())):
                fresh[(a, b)] = d
            elif (a in old_votes or b in old_votes) and votes.get((a, b), 0.0) != max(
                    old_votes.get(a, vo[a]).get(b, 0.0), old_votes.get(b, vo[b]).get(a, 0.0)):
                if self.calibrator is not None:  # (the votes are one of its features)
                    fresh[(a, b)] = d
                    continue
                # Only the votes changed (a new image took a share): the same
                # evidence with the new votes, as a new measurement would give.
                ev = self._stored_evidence((a, b), row)
                if ev is None:
                    fresh[(a, b)] = d
                    continue
                ev.votes = votes.get((a, b), 0.0)
                mark_verifiable(ev, top, s)
                ev.pending = ev.extra["verifiable"] and not ev.rule
                self._replace_row(ev, row)
                if self._rows[(a, b, CANDIDATE)].live:
                    keep.append(ev)
            elif row.live:  # (the others cannot change any cluster)
                ev = self._stored_evidence((a, b), row)
                if ev is None:
                    fresh[(a, b)] = d
                    continue
                keep.append(ev)
                if ev.pending:  # (how many earlier runs never asked for: ``_verify_ahead``)
                    self._unasked[0] += row.after is None
                    self._unasked[1] += 1
        need = sorted({i for p in fresh for i in p})
        self.plain.update(zip(need, self.gallery.phash_variants(need)))
        self._ensure_templated(need)  # "template" evidence: who is templated
        made = self.global_evidence(fresh, votes, top, same) if fresh else []
        for ev in made:
            self._replace_row(ev, self._rows.get((ev.a, ev.b, CANDIDATE)))
        return sorted(keep + made, key=lambda ev: (ev.a, ev.b))

    def _stored_evidence(self, pair: tuple[int, int], row: PairRow) -> PairEvidence | None:
        """A stored pair's evidence; None, with a warning, where its text does
        not read back (a damaged row): the pair is then measured again."""
        try:
            return evidence_from_json(row.before)
        except (ValueError, KeyError, TypeError) as e:
            self._damaged(f"pair {pair[0]}-{pair[1]}", e)
            del self._rows[(*pair, CANDIDATE)]
            return None

    def _damaged(self, what: str, error: Exception) -> None:
        """Warn of the first damaged stored pair of a run (one line, not one per pair)."""
        if self._told_damaged:
            return
        self._told_damaged = True
        warnings.warn(f"gallery {self.gallery.path}: stored matching state of {what} "
                      f"unreadable ({type(error).__name__}: {error}); measuring it again "
                      "(and any other such pair)")

    def _replace_row(self, ev: PairEvidence, old: PairRow | None) -> None:
        """Store a candidate pair's new evidence, keeping what was stored of
        it where that still holds: all of it if the evidence is the same, its
        verification if only the votes moved (``_same_verification``); never
        for templated images (their content features depend on neighbours)."""
        k = (ev.a, ev.b, CANDIDATE)
        text = evidence_json(ev)
        templated = ev.a in self.templated_flags or ev.b in self.templated_flags
        if old is not None and old.before == text and not templated:
            return
        row = self._rows[k] = PairRow.of(ev, self.settings.exact_check_distance)
        self._changed_rows.add(k)
        if old is not None and not templated and self._same_verification(old.before, text):
            row.after, row.same, row.relation = old.after, old.same, old.relation

    def _same_verification(self, old: str, new: str) -> bool:
        """Whether evidence ``new`` would be verified as ``old`` was: the same
        but for the descriptor votes (a new image took a share of them), which
        verification only asks about as "at least ``verify_retry_votes``".
        A calibrated decision reads the votes themselves: then never."""
        if self.calibrator is not None:
            return False
        a, b = loads(old), loads(new)
        limit = self.settings.verify_retry_votes
        va, vb = a.pop("v"), b.pop("v")
        return a == b and (va < limit) == (vb < limit)

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
        touched = {ev.a, ev.b} & self.changed
        if old is None or old.before != text or (templated and touched):
            self._rows[k] = PairRow.of(ev, self.settings.exact_check_distance)
            self._changed_rows.add(k)
        return ev

    def _verify_ahead(self) -> None:
        """Verify now, in batches shared by the workers, the pending candidate
        pairs this run measured (new, or whose evidence moved) when earlier
        runs on this gallery asked for nearly all their pending pairs
        (``AHEAD_MAX_UNASKED``). Clustering asks for them a star at a time:
        668 requests for 1,233 pairs on a 50-image add to 4,950 (scale set),
        mostly too few to share across the workers (2.9 s against 1.4-1.8 s
        verified ahead, two workers). Where clustering leaves most pending
        pairs unasked (2,000 transformed-set images: a first run asked for
        1,824 of 9,872), verifying them all costs more than sharing saves
        (55 s against 33 s): then, and in a first run (no history to tell),
        clustering verifies as it asks. Copies are
        verified and the results stored; the pairs stay pending until
        clustering asks (``verify`` then applies the result), so clustering
        sees what it saw before; results it never asks for are kept.

        Up to ``AHEAD_IN_BACKGROUND`` pairs (hand-set rules) are verified in
        the background: their features are read here, then workers of their
        own verify them while clustering starts; when clustering asks for a
        pair, ``verify`` takes its result, waiting for it if need be (a pair
        not started yet goes to the front of the queue, ``_collect``);
        ``finish`` waits for the rest."""
        unasked, pending = self._unasked
        if not pending or unasked > AHEAD_MAX_UNASKED * pending:
            return
        rows = []
        for ev in self.evidence:
            k = (ev.a, ev.b, CANDIDATE)
            if ev.pending and k in self._changed_rows:
                row = self._rows.get(k)
                if row is not None and row.after is None:
                    rows.append(row)
        if not rows:
            return
        if (self.calibrator is None and self._pool is not None
                and len(rows) <= AHEAD_IN_BACKGROUND):
            self._verify_in_background(rows)
            return
        for start in range(0, len(rows), VERIFY_BATCH):
            report("ahead", start, len(rows))
            part = [(row, evidence_from_json(row.before))
                    for row in rows[start:start + VERIFY_BATCH]]
            self._ensure_templated({i for _, ev in part for i in (ev.a, ev.b)})
            PairMatcher.verify(self, [ev for _, ev in part])
            for row, ev in part:
                self._verified_ahead(row, ev)
        report("ahead", len(rows), len(rows))

    def _verified_ahead(self, row: PairRow, ev: PairEvidence) -> None:
        """Store a pair verified ahead (its row is among ``_changed_rows``
        already); it counts as verified, never also as reused."""
        row.after, row.relation = verification_json(row.before, ev), None
        self._ahead.add((ev.a, ev.b, CANDIDATE))
        self.verified += 1

    def _verify_in_background(self, rows: list[PairRow]) -> None:
        """Start verifying ``rows`` (pending pairs, none verified) on workers
        of their own; ``_collect`` takes each result (in the order clustering
        asks for them), as the batches of ``_verify_ahead`` would have left it.
        Their features are read here (SQLite belongs to this thread): at most
        ``AHEAD_IN_BACKGROUND`` pairs, so what the queued work holds stays small."""
        report("ahead", 0, len(rows))
        part = [(row, evidence_from_json(row.before)) for row in rows]
        self._ensure_templated({i for _, ev in part for i in (ev.a, ev.b)})
        items = self._read_pairs([ev for _, ev in part])
        self._background = LineQueue(self._verify_read, self.settings.n_workers())
        for (row, ev), item in zip(part, items):
            k = (ev.a, ev.b, CANDIDATE)
            self._running[k] = (row, ev)
            self._background.put(k, item)
        report("ahead", len(rows), len(rows))

    def _collect(self, keys) -> None:
        """Take the background verification of those of ``keys`` it holds and
        store each result, as ``_verify_ahead`` does; those not started yet
        go to the front of its queue (``linequeue.LineQueue``), so clustering
        waits only for what it asks for."""
        keys = [k for k in keys if k in self._running]
        if not keys:
            return
        self._background.take(keys)
        for k in keys:
            row, ev = self._running.pop(k)
            self._verified_ahead(row, ev)

    def finish(self) -> None:
        self._collect(sorted(self._running))

    def close(self) -> None:
        """Workers end; background verification not yet taken is dropped (a
        stopped run: those pairs stay unverified, as if never asked)."""
        if self._background is not None:
            self._background.close()
            self._background = None
        self._running.clear()
        super().close()

    def verify(self, todo: list[PairEvidence]) -> None:
        todo = [ev for ev in todo if ev.pending]
        if self._running:
            self._collect([self._kind(ev) for ev in todo])
        work = []
        for ev in todo:
            row = self._rows.get(self._kind(ev))
            if row is not None and row.after is not None:
                try:
                    apply_verification(ev, row.after)
                except (ValueError, KeyError, TypeError) as e:
                    self._damaged(f"pair {ev.a}-{ev.b}", e)  # (verified again)
                    row.after = None
                    work.append(ev)
                    continue
                self.reused += self._kind(ev) not in self._ahead
            else:
                work.append(ev)
        if not work:
            return
        self._ensure_templated({i for ev in work for i in (ev.a, ev.b)})
        super().verify(work)
        self.verified += len(work)
        for ev in work:
            row = self._rows[self._kind(ev)]
            row.after, row.relation = verification_json(row.before, ev), None
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

    def _unsettled(self, ev: PairEvidence) -> bool:
        row = self._rows.get(self._kind(ev))
        return row is None or row.relation is None

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
        records = {i: (self.digests[i][0], dumps_sorted(self.records[i]))
                   for i in self._write if i in self.digests}
        rows = {k: self._rows[k].astuple() for k in self._changed_rows}
        self.gallery.save_match_state(self.key, records, rows, replace=self.rematch)
        if self._pictures is not None:
            self._pictures.save()
        forget_picture_files(self.gallery.path, self.gallery.match_keys())
