"""Candidate keys from the picture inside a frame (a monitor's bezel, a
print's border), for re-photographs whose whole-image hash and descriptors
miss the original.

A photo of a print or a screen taken at 10-35 degrees holds the picture as a
keystoned quadrilateral on a new background: its pHash is that of the scene
around the picture, and its ORB descriptors are warped, so neither search may
propose the original. The outlines of the print, the bezel and the picture
are large convex quadrilaterals in the grey thumbnail (edges, contours,
corners). Each, rectified to a rectangle (and trimmed of the flat bars a
viewer letterboxes the picture with), hashes like the original; those hashes
are looked up in the pHash index as extra keys of the photo
(``framed_pairs``). Only pairs this close are proposed: the verification
decides, as for every candidate.

Chosen on the recapture calib half (1,059 photos): a rectified picture is
nearest to its own original for 93% of the photos (at distance 70 or less
for most), where a picture's nearest image of another photo's group lies at
78 or more on the recapture and hard calib halves.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from matchkit.signals.hashing import PHASH_BITS, dihedral_phashes
from matchkit.index.hamming import HammingIndex, transient_index
from matchkit.index.pictures import PICTURE_KEY_STRIDE, picture_rows

#: Least share of the thumbnail a frame's quadrilateral covers (a smaller
#: one is a door, a sign or a window in a scene).
MIN_AREA = 0.08
#: Largest share: a quadrilateral around the whole thumbnail is its edge.
MAX_AREA = 0.97
#: Canny thresholds tried (grey levels): the picture's edge against a dark
#: bezel is weak, against a white border strong.
CANNY = ((20, 60), (40, 120))
#: The stricter thresholds are tried only while fewer quadrilaterals than
#: this were found (recapture calib: the same pictures found as with both).
ENOUGH = 3
#: Corner simplification, as a share of the hull's perimeter.
APPROX = (0.02, 0.04)
#: Most quadrilaterals kept per image (largest first).
MAX_QUADS = 4
#: Mean grey change between neighbouring pixels under which a row or column
#: of the rectified picture is a flat bar (letterboxing on a black panel),
#: trimmed before hashing.
FLAT_ROUGHNESS = 2.5


def _ordered(quad: np.ndarray) -> np.ndarray:
    """Corners as top-left, top-right, bottom-right, bottom-left."""
    q = np.asarray(quad, np.float32).reshape(4, 2)
    c = q.mean(axis=0)
    q = q[np.argsort(np.arctan2(q[:, 1] - c[1], q[:, 0] - c[0]))]
    return np.roll(q, -int(np.argmin(q.sum(axis=1))), axis=0)


def frame_quads(thumb: np.ndarray) -> list[np.ndarray]:
    """Large convex quadrilaterals (4x2 thumbnail pixels, ordered corners)
    outlined by edges in ``thumb`` (grey), largest first: the outlines of a
    photographed print, screen or picture (and of other large four-sided
    things, which only cost a hash lookup)."""
    g = np.asarray(thumb)
    if g.ndim != 2 or min(g.shape) < 16:
        return []
    area = float(g.shape[0] * g.shape[1])
    blurred = cv2.GaussianBlur(g, (3, 3), 0)
    found: list[tuple[float, np.ndarray]] = []
    kernel = np.ones((2, 2), np.uint8)
    large = True
    for n, (lo, hi) in enumerate(CANNY):
        # Higher thresholds find a subset of the edges: no large edge
        # component before, none after.
        if n and (len(found) >= ENOUGH or not large):
            break
        edges = cv2.dilate(cv2.Canny(blurred, lo, hi), kernel)
        contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        # A contour's bounding box holds its area: most (hundreds per photo)
        # are too small, found at once from all their points together.
        wide = _boxes_at_least(contours, MIN_AREA * area)
        large = bool(len(wide))
        for c in (contours[n] for n in wide):
            if cv2.contourArea(c) < MIN_AREA * area:
                continue
            hull = cv2.convexHull(c)
            perimeter = cv2.arcLength(hull, True)
            for eps in APPROX:
                poly = cv2.approxPolyDP(hull, eps * perimeter, True)
                if len(poly) != 4:
                    continue
                a = cv2.contourArea(poly)
                if MIN_AREA * area <= a <= MAX_AREA * area and cv2.isContourConvex(poly):
                    q = _ordered(poly)
                    if all(np.abs(q - other).max() > 3 for _, other in found):
                        found.append((a, q))
                break
    found.sort(key=lambda item: -item[0])
    return [q for _, q in found[:MAX_QUADS]]


def _boxes_at_least(contours, least: float) -> np.ndarray:
    """Indices of the contours whose bounding box (as ``cv2.boundingRect``)
    covers at least ``least`` pixels, in order."""
    if not contours:
        return np.zeros(0, np.int64)
    lengths = np.fromiter((len(c) for c in contours), np.int64, len(contours))
    points = np.concatenate(contours).reshape(-1, 2)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    lo = np.minimum.reduceat(points, starts, axis=0).astype(np.int64)
    hi = np.maximum.reduceat(points, starts, axis=0).astype(np.int64)
    size = hi - lo + 1
    return np.flatnonzero(size[:, 0] * size[:, 1] >= least)


def _trim(grey: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) inside flat bars along the edges."""
    g = grey.astype(np.float32)
    h, w = g.shape
    rows = np.abs(np.diff(g, axis=1)).mean(axis=1)
    t, b = 0, h
    while t < b - 8 and rows[t] < FLAT_ROUGHNESS:
        t += 1
    while b - 1 > t + 8 and rows[b - 1] < FLAT_ROUGHNESS:
        b -= 1
    cols = np.abs(np.diff(g[t:b], axis=0)).mean(axis=0) if b - t > 1 else np.zeros(w)
    left, right = 0, w
    while left < right - 8 and cols[left] < FLAT_ROUGHNESS:
        left += 1
    while right - 1 > left + 8 and cols[right - 1] < FLAT_ROUGHNESS:
        right -= 1
    return t, b, left, right


def rectified(thumb: np.ndarray, quad: np.ndarray, margin: int = 2) -> np.ndarray:
    """The inside of ``quad`` warped to an upright rectangle of about its size."""
    tl, tr, br, bl = np.asarray(quad, np.float32).reshape(4, 2)
    w = int(round(max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl))))
    h = int(round(max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr))))
    w, h = max(w, 2 * margin + 8), max(h, 2 * margin + 8)
    m = cv2.getPerspectiveTransform(np.float32([tl, tr, br, bl]),
                                    np.float32([[0, 0], [w, 0], [w, h], [0, h]]))
    warped = cv2.warpPerspective(np.asarray(thumb), m, (w, h), flags=cv2.INTER_LINEAR)
    return warped[margin:h - margin, margin:w - margin]


def picture_hashes(thumb: np.ndarray) -> np.ndarray:
    """Dihedral pHashes (n, 8, 32) of the pictures inside ``thumb``'s frames:
    each rectified picture as it is and, when flat bars line it, trimmed."""
    out = []
    for q in frame_quads(thumb):
        pic = rectified(thumb, q)
        out.append(dihedral_phashes(Image.fromarray(pic)))
        t, b, left, right = _trim(pic)
        if (t, b, left, right) != (0, pic.shape[0], 0, pic.shape[1]) \
                and b - t >= 8 and right - left >= 8:
            inner = np.ascontiguousarray(pic[t:b, left:right])
            out.append(dihedral_phashes(Image.fromarray(inner)))
    if not out:
        return np.zeros((0, 8, PHASH_BITS // 8), np.uint8)
    return np.stack(out)


#: Largest dihedral pHash distance (of 256 bits) between a rectified picture
#: and another image that proposes the pair. Chosen on the recapture and hard
#: calib halves: a picture's nearest image of another group lies at 78 or more,
#: its own original (or copy) at 70 or less for 93% of those found.
MAX_DISTANCE = 70
#: Nearest images per picture hash looked at.
NEIGHBOURS = 2


def unframed(nearest, settings) -> bool:
    """Whether an image's frames need not be looked for: its nearest image by
    pHash (``nearest``: (id, distance) nearest first) is within
    ``settings.phash_strong_distance``, so it is a copy the hash search found
    (the recapture calib half: none of its 1,059 photos; the hard calib half:
    58% of its images). Keeps the frame search off most of a collection of
    copies."""
    return bool(nearest) and nearest[0][1] <= settings.phash_strong_distance


def framed_pairs(index, pictures: dict[int, np.ndarray], plain: dict[int, np.ndarray],
                 queries: list[int], allowed: set[int] | None = None,
                 max_distance: int = MAX_DISTANCE, neighbours: int = NEIGHBOURS,
                 picture_index: HammingIndex | None = None) -> dict[int, dict[int, int]]:
    """Per query image, the images its frames' pictures pair it with:
    {query id: {other id: distance}}. ``pictures``: image id ->
    ``picture_hashes`` (n, 8, 32) of every image of the run that has any
    (the queries' among them); ``plain``: query id -> its 8 dihedral pHashes.
    A query pairs with an image when

    - one of its pictures lies within ``max_distance`` of the image's pHash
      (``index``: the pHash index, one plain hash per image), among the
      ``neighbours`` nearest: a recapture and its original;
    - one of its pictures, or its own pHash, lies that near one of the
      image's pictures: two recaptures of one picture, an original and its
      recapture seen from the original's side.

    ``picture_index``: the plain codes of ``pictures`` under the keys of
    ``pictures.picture_rows`` (kept between runs: ``PictureIndex``);
    built here when not given.
    """
    out: dict[int, dict[int, int]] = {}
    mine, mine_owner, own, own_owner = [], [], [], []
    for i in queries:
        h = pictures.get(i)
        if h is not None and len(h):
            mine.append(np.asarray(h).reshape(-1, np.asarray(h).shape[-1]))
            mine_owner.append(np.full(len(mine[-1]), i, np.int64))
        if i in plain:
            own.append(np.asarray(plain[i]).reshape(-1, np.asarray(plain[i]).shape[-1]))
            own_owner.append(np.full(len(own[-1]), i, np.int64))
    if mine and len(index):
        _search_collect(out, index, np.concatenate(mine), np.concatenate(mine_owner),
                        neighbours + 1, allowed, max_distance)
    pics = picture_index
    if pics is None:
        keys, codes = picture_rows(pictures)
        pics = transient_index(keys, codes, codes.shape[1] * 8) if len(keys) else None
    if pics is not None and len(pics):
        k = min(len(pics), neighbours + 2 * MAX_QUADS)
        for q, q_owner in ((mine, mine_owner), (own, own_owner)):
            if q:
                _search_collect(out, pics, np.concatenate(q), np.concatenate(q_owner), k,
                                allowed, max_distance, picture_keys=True)
    return out


#: Query rows per search in ``framed_pairs``: every image's 8 plain hashes
#: searched at once held their whole answer, also as Python lists (the Ray
#: driver's RSS grew by 33 MiB over this search at 10,000 images).
SEARCH_ROWS = 16384


def _search_collect(out: dict[int, dict[int, int]], index, queries: np.ndarray,
                    owner: np.ndarray, k: int, allowed: set[int] | None, max_distance: int,
                    picture_keys: bool = False) -> None:
    """``index.search`` of ``queries`` in parts of ``SEARCH_ROWS``, each
    ``_collect``-ed (in row order: the same result as one search);
    ``picture_keys``: the index's keys name pictures (``PICTURE_KEY_STRIDE``)."""
    for start in range(0, len(queries), SEARCH_ROWS):
        keys, dists = index.search(queries[start:start + SEARCH_ROWS], k)
        if picture_keys:
            keys = np.where(keys >= 0, keys // PICTURE_KEY_STRIDE, -1)
        _collect(out, owner[start:start + SEARCH_ROWS], keys, dists, allowed, max_distance)


def _collect(out: dict[int, dict[int, int]], owner: np.ndarray, keys: np.ndarray,
             dists: np.ndarray, allowed: set[int] | None, max_distance: int) -> None:
    for i, krow, drow in zip(owner.tolist(), keys.tolist(), dists.tolist()):
        for j, d in zip(krow, drow):
            if d > max_distance:
                break
            if j < 0 or j == i or (allowed is not None and j not in allowed):
                continue
            seen = out.setdefault(i, {})
            if d < seen.get(j, max_distance + 1):
                seen[j] = d


def pairs_of(by_owner: dict[int, dict[int, int]]) -> dict[tuple[int, int], int]:
    """``framed_pairs``' pairs as (a < b) -> smallest distance."""
    out: dict[tuple[int, int], int] = {}
    for i, seen in by_owner.items():
        for j, d in seen.items():
            pair = (i, j) if i < j else (j, i)
            out[pair] = min(d, out.get(pair, d))
    return out
