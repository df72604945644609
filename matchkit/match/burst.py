"""Bursty matches: a pair whose inliers rest on descriptors many images hold.

Why: instance retrieval knows that structures shared by many images (a logo,
a watermark, a sticker, the strokes of one font) match everywhere, so their
matches are weak evidence ("burstiness", Jegou, Douze and Schmid, CVPR 2009).
matchkit met it at scale: at 10,000-50,000 images every false link left in
the scale sets was the copy suite's sticker on copies of two *different*
pictures, fitted by a transform whose inliers all sit on the sticker; no
test of the pair alone told them from copies whose picture survives in one
place (benchmarks/RESULTS.md, "relations: the inliers' spread ..." and
"precision: how common the descriptors under a false link's inliers are").
What tells them apart is the rest of the collection: a sticker's
descriptors are held by many other images, a picture's by its own copies.

The measure: each inlier's descriptor (from the stored keypoints) is looked
up in the run's descriptor index; the images holding a descriptor within the
vote distance among its ``K`` nearest *hold* that inlier. Not counted: the
pair's two images, images outside the run, and images within the pHash match
distance of either (copies of the same picture hold its descriptors too).
An image that holds at least ``SHARED_SHARE`` of the inliers (and at least
``SHARED_MIN``) carries the matched part. When the inliers gather in part of
the overlap (spread under ``SPREAD``) and ``Settings.burst_pictures`` images
carry it, or ``burst_weak_pictures`` do and under ``burst_weak_votes`` of the
pair's descriptors voted for it, the match is refused (:func:`refuses`).

Why co-occurrence and not each descriptor's frequency: blurred, low-texture
or re-photographed copies match on generic corners that many images hold one
by one (on the hard calib half, 31 of 1,635 true local matches had under 3
inliers held by 10 or fewer other images), but few images hold many of
them at once; a sticker's other instances hold its whole constellation.
Why the spread: a picture with many edited copies (a meme under many
captions) is carried by many images too, but its inliers cover the overlap
(benchmarks/RESULTS.md, "precision: a part many pictures carry").

What images hold depends on which images are in the run, so they are not stored
with a pair's verification: :class:`BurstMatcher` measures them each run,
after verification (fresh or reused), for the pairs the local rule matched;
an incremental run therefore decides as a full run on the same images.
The one exception is a run on exactly the images, gallery and settings of
the run before (a re-run with nothing new): its measurements are those of
the run before, which a :class:`BurstMemo` in the gallery folder keeps (a
re-run of 50,500 images spent 14 of its 57 s here, searching again).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matchkit.util.fs import atomic_write_bytes
from matchkit.signals.hashing import dihedral_match_many

#: Neighbours asked of the index per inlier descriptor: enough to tell a
#: count above any cap used (several may come from one image).
K = 64
#: An image carries a pair's matched part when it holds at least this share
#: of the pair's inliers ...
SHARED_SHARE = 0.2
#: ... and at least this many.
SHARED_MIN = 6
#: Refused only when the inliers spread over less than this share of the
#: overlap (``local_overlap.Overlap.spread``; stickers on the dev set: 0.06-0.40).
SPREAD = 0.45
#: Pixels between an inlier's point and the stored keypoint it came from
#: (the same keypoint: the points are copied from the stored coordinates).
POINT_TOLERANCE = 1.5
#: The file in a gallery folder that keeps the last run's measurements.
MEMO_FILE = "match-burst.npz"
#: Changes when what a measurement means changes (with K and the shares).
MEMO_VERSION = 1


def inlier_rows(xy: np.ndarray, points: np.ndarray, tol: float = POINT_TOLERANCE) -> np.ndarray:
    """Row in ``xy`` (n, 2) of the keypoint at each of ``points`` (m, 2);
    -1 where no keypoint is within ``tol`` pixels (a templated image's
    content features, re-extracted)."""
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    points = np.asarray(points, np.float32).reshape(-1, 2)
    if not len(xy) or not len(points):
        return np.full(len(points), -1, np.int64)
    d = ((points[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    rows = d.argmin(1)
    return np.where(d[np.arange(len(points)), rows] <= tol * tol, rows, -1)


def holders(keys: np.ndarray, dists: np.ndarray, max_distance: int,
            key_stride: int) -> np.ndarray:
    """Per query row of an index search (``keys``/``dists`` (n, k), key =
    image id * ``key_stride`` + keypoint), the images holding a descriptor
    within ``max_distance``, each once per row: (n, k) ids, -1 elsewhere."""
    keys, dists = np.asarray(keys, np.int64), np.asarray(dists)
    img = np.sort(np.where((keys >= 0) & (dists <= max_distance), keys // key_stride, -1), 1)
    img[:, 1:][img[:, 1:] == img[:, :-1]] = -1
    return img


def carrying_need(inliers: int) -> float:
    """Of a part of ``inliers`` inliers, how many an image must hold to carry it."""
    return max(SHARED_MIN, SHARED_SHARE * inliers)


@dataclass(frozen=True)
class Part:
    """What the other images of a run hold of a pair's matched part."""

    #: Inliers of the pair (descriptors looked up).
    inliers: int
    #: Other images holding any of them (not the pair, nor its copies among
    #: those that could carry it), and how many of the inliers each holds.
    images: np.ndarray
    held: np.ndarray

    @property
    def need(self) -> float:
        """Inliers an image must hold to carry the part."""
        return carrying_need(self.inliers)

    def carriers(self) -> int:
        """How many images carry the part."""
        return int((self.held >= self.need).sum())


@dataclass(frozen=True)
class Carried:
    """A :class:`Part` summed up: how many inliers, how many images carry
    them (what :func:`apply` needs; what a :class:`BurstMemo` keeps)."""

    inliers: int
    count: int

    @property
    def need(self) -> float:
        return carrying_need(self.inliers)

    def carriers(self) -> int:
        return self.count


def summed(part: Part | None) -> Carried | None:
    """``part`` as a :class:`Carried` (None stays None: not measurable)."""
    return None if part is None else Carried(part.inliers, part.carriers())


def run_mask(ids) -> np.ndarray:
    """The images of a run as a boolean mask by id (``measure``'s ``allowed``)."""
    ids = sorted(ids)
    mask = np.zeros(ids[-1] + 1 if ids else 0, bool)
    mask[ids] = True
    return mask


def refuses(carried_by: int, spread: float | None, settings, votes: float | None = None) -> bool:
    """Whether a local match whose part ``carried_by`` other images carry, with
    inliers of ``spread`` over the overlap, is refused as a part many pictures
    carry (``Settings.burst_pictures``; 0 turns the check off), or fewer
    (``burst_weak_pictures``) and under ``burst_weak_votes`` ``votes``."""
    need, weak = settings.burst_pictures, settings.burst_weak_pictures
    if not need or (spread is not None and spread >= SPREAD):
        return False
    return carried_by >= need or (bool(weak) and votes is not None and carried_by >= weak
                                  and votes < settings.burst_weak_votes)


def inlier_descriptors(ev, features: Callable) -> np.ndarray | None:
    """The stored descriptors of a pair's inliers: image a's keypoints at the
    inliers' points (b's when a's points are not its stored keypoints, as for
    a templated image's content features, and b is not mirrored).
    ``features(image)`` gives an image's ``LocalFeatures`` or None."""
    pts = np.asarray(ev.verification.points, np.float32).reshape(-1, 4)
    sides = [(ev.a, pts[:, :2])]
    if not ev.verification.mirrored:
        sides.append((ev.b, pts[:, 2:]))
    for image, xy in sides:
        feats = features(image)
        if feats is None:
            continue
        rows = inlier_rows(feats.xy, xy)
        if (rows >= 0).sum() * 2 >= len(rows):
            return feats.desc[rows[rows >= 0]]
    return None


def copies(a: int, b: int, others: set[int], hashes: Callable, max_distance: int) -> set[int]:
    """Those of ``others`` within pHash ``max_distance`` of ``a`` or ``b`` (any
    dihedral variant): copies of the pair's pictures, not other pictures
    carrying the same part. ``hashes(ids)`` gives {id: (8, bytes) uint8}."""
    got = hashes(sorted(others | {a, b}))
    ids = sorted(i for i in others if i in got)
    if not ids:
        return set()
    theirs = np.stack([np.asarray(got[i], np.uint8)[0] for i in ids])      # (n, bytes)
    close = np.zeros(len(ids), bool)
    for image in (a, b):
        if image in got:
            mine = np.broadcast_to(np.asarray(got[image], np.uint8), (len(ids), *got[image].shape))
            close |= dihedral_match_many(mine, theirs)[0] <= max_distance
    return {i for i, c in zip(ids, close.tolist()) if c}


def measurable(ev) -> bool:
    """Whether the check may refuse ``ev`` and has not measured it yet: a
    local match with inlier points, spread under ``SPREAD``."""
    return (ev.rule == "local" and not ev.pending and ev.verification is not None
            and bool(ev.verification.points)
            and (ev.overlap is None or ev.overlap.spread < SPREAD)
            and "carried_by" not in ev.extra)


def measure(evidence: Sequence, index, features: Callable, hashes: Callable, settings,
            key_stride: int, allowed: np.ndarray | None = None
            ) -> list[tuple[object, Part | None]]:
    """(pair, :class:`Part`) for the local matches among ``evidence``
    (``evidence.PairEvidence``) not measured yet that the check could refuse
    (spread under ``SPREAD``), with one search of the descriptor ``index``
    for all their inliers; None where the inliers' descriptors cannot be
    told. Not counted: the pair, its copies (:func:`copies`, looked for
    among the images that could carry the part), images outside the run
    (``allowed``: a boolean mask by image id)."""
    todo = [ev for ev in evidence if measurable(ev)]
    if not todo:
        return []
    found = [inlier_descriptors(ev, features) for ev in todo]
    have = [d for d in found if d is not None]
    if not have:
        return [(ev, None) for ev in todo]
    # Only neighbours within the vote distance hold an inlier: a shard sends
    # back those alone (most of the K are farther; ``hamming.within``).
    keys, dists = index.search(np.concatenate(have), K,
                               max_distance=settings.vote_max_distance)
    img = holders(keys, dists, settings.vote_max_distance, key_stride)
    out, at = [], 0
    for ev, desc in zip(todo, found):
        if desc is None:
            out.append((ev, None))
            continue
        rows = img[at:at + len(desc)]
        at += len(desc)
        images, held = np.unique(rows[rows >= 0], return_counts=True)
        keep = (images != ev.a) & (images != ev.b)
        if allowed is not None:
            inside = images < len(allowed)
            keep &= inside
            keep[inside] &= allowed[images[inside]]
        images, held = images[keep], held[keep]
        part = Part(len(desc), images, held)
        could = set(images[held >= part.need].tolist())
        if could:
            skip = copies(ev.a, ev.b, could, hashes, settings.phash_max_distance)
            if skip:
                keep = ~np.isin(images, np.fromiter(skip, np.int64, len(skip)))
                part = Part(len(desc), images[keep], held[keep])
        out.append((ev, part))
    return out


def apply(ev, part: Part | Carried | None, settings) -> None:
    """Record how many images carry the pair's matched part (``extra["carried_by"]``);
    refuse it if :func:`refuses`: ``rule`` cleared, the reason in ``extra["veto"]``."""
    if part is None:
        ev.extra["carried_by"] = None  # (cannot tell: left as matched)
        return
    n = part.carriers()
    ev.extra["carried_by"] = n
    spread = ev.overlap.spread if ev.overlap is not None else None
    if refuses(n, spread, settings, ev.votes):
        why = (f"a part {n} other pictures carry: at least {round(part.need)} of its "
               f"{part.inliers} inliers each")
        ev.extra["veto"] = why if n >= settings.burst_pictures else f"{why}, {ev.votes:.2f} votes"
        ev.extra["relation"] = None
        ev.rule = ""


def pair_key(ev) -> tuple[int, int, int]:
    """What a measurement of ``ev`` depends on besides the run: its two
    images and its inliers (points, mirrored), as (a, b, 63-bit digest)."""
    v = ev.verification
    pts = np.asarray(v.points, np.float32).tobytes() + bytes([bool(v.mirrored)])
    digest = int.from_bytes(hashlib.blake2b(pts, digest_size=8).digest(), "little")
    return int(ev.a), int(ev.b), digest >> 1


def run_key(base: str, ids) -> str:
    """The key of a run's measurements: ``base`` (the caller's: settings and
    gallery generation) with this module's constants and the run's images."""
    ids = np.asarray(sorted(ids), np.int64)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{MEMO_VERSION}:{K}:{SHARED_SHARE}:{SHARED_MIN}:{base}:".encode())
    h.update(ids.tobytes())
    return h.hexdigest()


class BurstMemo:
    """The measurements of one run, kept in a file for a run on the same
    images, gallery and settings (``key``: :func:`run_key`): a re-run with
    nothing new looks none of them up again. Any other run finds a key that
    differs and measures afresh (what other images carry changes with every
    add or removal), and then the file keeps its measurements instead.

    The file is a cache: written atomically, read only when whole and of
    this key; anything else is as if there were none."""

    def __init__(self, path: str | Path, key: str):
        self.path, self.key = Path(path), key
        #: The stored measurements by :func:`pair_key`.
        self.stored: dict[tuple[int, int, int], Carried | None] = self._read()
        #: This run's, stored ones it used included.
        self.made: dict[tuple[int, int, int], Carried | None] = {}

    def _read(self) -> dict:
        try:
            with np.load(self.path) as z:
                if str(z["key"]) != self.key:
                    return {}
                rows = zip(z["a"].tolist(), z["b"].tolist(), z["digest"].tolist(),
                           z["inliers"].tolist(), z["count"].tolist())
                return {(a, b, d): None if n < 0 else Carried(n, c) for a, b, d, n, c in rows}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            # (missing, torn, foreign: as none)
            return {}

    def get(self, ev) -> tuple[bool, Carried | None]:
        """(found, measurement) of ``ev`` in the stored run."""
        key = pair_key(ev)
        if key not in self.stored:
            return False, None
        self.made[key] = self.stored[key]
        return True, self.stored[key]

    def put(self, ev, carried: Carried | None) -> None:
        self.made[pair_key(ev)] = carried

    def save(self) -> None:
        """Write this run's measurements (not if stored). Unwritable: the next run searches."""
        if self.made.keys() <= self.stored.keys():
            return
        keys = list(self.made)
        vals = [self.made[k] for k in keys]
        buf = io.BytesIO()
        np.savez(buf, key=np.array(self.key),
                 a=np.array([k[0] for k in keys], np.int64),
                 b=np.array([k[1] for k in keys], np.int64),
                 digest=np.array([k[2] for k in keys], np.int64),
                 inliers=np.array([-1 if v is None else v.inliers for v in vals], np.int32),
                 count=np.array([0 if v is None else v.count for v in vals], np.int32))
        try:
            atomic_write_bytes(self.path, buf.getvalue(), durable=False)
        except OSError:
            pass


class BurstMatcher:
    """A pair matcher (``pairs.PairMatcher`` or one with its interface) whose
    local matches pass the burstiness check: after every verification
    (fresh, or reused from the gallery) and for its initial evidence, pairs
    matched by the local rule are measured and applied (:func:`measure`,
    :func:`apply`) against the run's images. With a ``memo``
    (:class:`BurstMemo`), measurements of the same run before are reused and
    this run's are kept by ``finish``."""

    def __init__(self, matcher, gallery, settings, key_stride: int,
                 memo: BurstMemo | None = None):
        self._m, self._gallery, self._settings = matcher, gallery, settings
        self._stride, self.memo = key_stride, memo
        ids = getattr(matcher, "paths", None)
        #: Images of the run, as a mask by id (None: not known, every image counts).
        self._allowed = run_mask(ids) if ids else None
        self.check(matcher.evidence)

    def __getattr__(self, attr):
        return getattr(self._m, attr)

    def verify(self, todo) -> None:
        todo = list(todo)
        self._m.verify(todo)
        self.check(todo)

    def evidence_between(self, a: int, b: int, reflect: bool):
        ev = self._m.evidence_between(a, b, reflect)
        self.check([ev])
        return ev

    def check(self, evidence: Sequence) -> None:
        """Measure and apply the check to the local matches among ``evidence``
        (the descriptor index is loaded only if a measurement is not in the memo)."""
        todo = [ev for ev in evidence if measurable(ev)]
        if self.memo is not None:
            rest = []
            for ev in todo:
                found, carried = self.memo.get(ev)
                if found:
                    self.apply(ev, carried)
                else:
                    rest.append(ev)
            todo = rest
        if not todo:
            return
        # (the index is loaded here, only when there is something to look up)
        for ev, part in measure(todo, self._gallery.orb_index, self._features,
                                self._hashes, self._settings, self._stride, self._allowed):
            carried = summed(part)
            if self.memo is not None:
                self.memo.put(ev, carried)
            self.apply(ev, carried)

    def finish(self) -> None:
        self._m.finish()
        if self.memo is not None:
            self.memo.save()

    def _hashes(self, ids) -> dict:
        """pHash variants of ``ids``: the matcher's (an incremental matcher
        loads only those it needs), the rest read from the gallery."""
        plain = getattr(self._m, "plain", {})
        missing = [i for i in ids if i not in plain]
        read = dict(zip(missing, self._gallery.phash_variants(missing))) if missing else {}
        if isinstance(plain, dict):  # (an incremental matcher's: it keeps them too)
            plain.update(read)
        return {i: read[i] if i in read else plain[i] for i in ids}

    def apply(self, ev, part: Part | Carried | None) -> None:
        apply(ev, part, self._settings)

    def _features(self, image: int):
        got = self._m.cache.get(image)
        return None if got is None else got[0]


def bursting(matcher, gallery, settings, key_stride: int, memo_base: str | None = None):
    """``matcher`` wrapped in :class:`BurstMatcher` when the check is on.
    ``memo_base`` (what the run's measurements depend on besides its images:
    settings, the gallery's generation) keeps them in the gallery folder
    (:class:`BurstMemo`) for a run on the same images; None: not kept."""
    if not settings.local_features or not settings.burst_pictures:
        return matcher
    memo = None
    ids = getattr(matcher, "paths", None)
    if memo_base is not None and ids:
        memo = BurstMemo(Path(gallery.path) / MEMO_FILE, run_key(memo_base, ids))
    return BurstMatcher(matcher, gallery, settings, key_stride, memo)


__all__ = ["BurstMatcher", "BurstMemo", "Carried", "Part", "apply", "bursting", "copies", "holders",
           "inlier_descriptors", "inlier_rows", "measurable", "measure", "pair_key", "refuses",
           "run_key", "run_mask", "summed", "K", "MEMO_FILE"]
