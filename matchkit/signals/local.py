"""Local features (ORB) and geometric verification.

Perceptual hashes see the whole frame, so a crop, an arbitrary rotation, an
overlay or a photo shown inside a screenshot moves them far away. Local
features survive those edits: two images are the same picture when many of
their keypoints match under one geometric transform. ORB is binary (256-bit
descriptors, Hamming distance), fast on a CPU and needs no model weights.

Features are extracted on a grey working image whose longer side is
``work_side`` pixels, whatever the file's size: a 25% thumbnail and the full
photo are compared at the same scale. Keypoints are kept sorted by response,
strongest first, so "the best M" is a prefix.

Comparing the aligned pixels once a transform is found (``Overlap``,
``compare_overlap``) lives in ``local_overlap``; its names are imported back
here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from matchkit.signals.local_overlap import (  # noqa: F401  (re-exported)
    CELL, CELL_AGREE, WINDOW_SCALE, WINDOW_SHARE, Overlap, _cell_agreement, _framed, _jacobian,
    _local_std, compare_overlap, overlap_correlation)

DESC_BYTES = 32


@dataclass
class LocalFeatures:
    """Keypoints of one image, strongest first."""

    xy: np.ndarray      # (n, 2) float32, working-image pixels
    desc: np.ndarray    # (n, 32) uint8 ORB descriptors
    width: int          # working image size the coordinates refer to
    height: int
    #: (n,) ORB pyramid level of each keypoint (0: the working image itself),
    #: when asked for (``extract_local(octaves=True)``); never stored.
    octave: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.desc)

    def head(self, n: int) -> "LocalFeatures":
        """The ``n`` strongest keypoints."""
        return LocalFeatures(self.xy[:n], self.desc[:n], self.width, self.height,
                             None if self.octave is None else self.octave[:n])

    def subset(self, keep: np.ndarray) -> "LocalFeatures":
        """The keypoints where ``keep`` is true, order preserved."""
        return LocalFeatures(self.xy[keep], self.desc[keep], self.width, self.height,
                             None if self.octave is None else self.octave[keep])


def working_grey(image: Image.Image, work_side: int) -> np.ndarray:
    """Grey uint8 array of ``image`` scaled so its longer side is ``work_side``.

    Small images are enlarged too, so thumbnails meet originals at one scale.
    """
    w, h = image.size
    s = work_side / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    grey = np.asarray(image.convert("L"))
    if size != (w, h):
        # OpenCV's resize is about 3x faster than Pillow's here; area
        # averaging when shrinking (no aliasing), bicubic when enlarging.
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    return grey


#: One ORB detector per thread and feature count: extraction and
#: verification call it from several threads at once, and OpenCV does not
#: promise that one detector object may be used that way.
_ORB_CACHE = threading.local()


#: FAST corner threshold of the ORB detector. 15 rather than 10: ORB runs 17%
#: faster (3.5 vs 4.2 ms per 512-pixel image) for 0.4% less recall on the calib
#: half of the hard set (0.950 vs 0.954); 20 lost 0.9%.
FAST_THRESHOLD = 15


#: ORB ignores this many pixels at every border (and its patch is 31 wide).
EDGE_THRESHOLD = 15
#: ORB finds no keypoint in an image whose shorter side is below this, and
#: OpenCV 5 fails an assertion (resize, inv_scale_x > 0) on a side of 1 pixel
#: while building its pyramid: such images simply have no local features.
ORB_MIN_SIDE = 2 * EDGE_THRESHOLD + 1


def _orb(n_features: int):
    mine = _ORB_CACHE.__dict__.setdefault("by_count", {})
    orb = mine.get(n_features)
    if orb is None:
        orb = cv2.ORB_create(nfeatures=n_features, scaleFactor=1.2, nlevels=8,
                             edgeThreshold=EDGE_THRESHOLD, patchSize=31,
                             fastThreshold=FAST_THRESHOLD)
        mine[n_features] = orb
    return orb


def extract_local(grey: np.ndarray, n_features: int = 500, *,
                  octaves: bool = False) -> LocalFeatures:
    """ORB keypoints and descriptors of a grey working image, strongest first
    (with each keypoint's pyramid level if ``octaves``)."""
    h, w = grey.shape[:2]
    if min(h, w) < ORB_MIN_SIDE:
        kps, desc = (), None
    else:
        kps, desc = _orb(n_features).detectAndCompute(grey, None)
    if desc is None or not kps:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, DESC_BYTES), np.uint8), w, h,
                             np.zeros(0, np.int8) if octaves else None)
    order = np.argsort([-k.response for k in kps], kind="stable")
    xy = np.array([kps[i].pt for i in order], dtype=np.float32).reshape(-1, 2)
    level = np.array([kps[i].octave for i in order], np.int8) if octaves else None
    return LocalFeatures(xy, np.ascontiguousarray(desc[order]), w, h, level)


@dataclass(slots=True)
class Verification:
    """Outcome of matching two images' keypoints under one similarity transform."""

    matches: int = 0           # matches passing the ratio test
    inliers: int = 0           # of those, consistent with the transform
    transform: list = field(default_factory=list)  # 2x3 affine mapping a -> b (working px)
    mirrored: bool = False     # b was matched as a mirror image
    #: 3x3 homography a -> b (working px) when a perspective transform explained
    #: the matches clearly better than an affine one (a recapture); else empty.
    homography: list = field(default_factory=list)
    #: Inlier keypoint pairs (xa, ya, xb, yb), working-image pixels, for drawing.
    points: list = field(default_factory=list)

    @property
    def inlier_ratio(self) -> float:
        return self.inliers / self.matches if self.matches else 0.0

    @property
    def scale(self) -> float:
        """Geometric-mean scale of the transform (area ratio ** 0.5)."""
        if not self.transform:
            return 0.0
        (a, b, _), (c, d, _) = self.transform
        return float(abs(a * d - b * c) ** 0.5)

    def matrix(self) -> np.ndarray:
        """The transform a -> b as a 3x3 matrix (the homography if there is one)."""
        if self.homography:
            return np.asarray(self.homography, np.float64)
        return np.vstack([np.asarray(self.transform, np.float64).reshape(2, 3), [0, 0, 1]])


def plausible_affine(m: np.ndarray, max_stretch: float = 3.0) -> bool:
    """An edit, not a degenerate fit: no mirroring, bounded scale and stretch."""
    a = np.asarray(m, np.float64)[:, :2]
    if np.linalg.det(a) <= 0:
        return False
    s = np.linalg.svd(a, compute_uv=False)
    return bool(s[1] > 0 and s[0] / s[1] <= max_stretch and 1 / 16 <= s[1] and s[0] <= 16)


def ratio_matches(a: np.ndarray, b: np.ndarray, ratio: float = 0.8,
                  max_distance: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of descriptor pairs passing Lowe's ratio test."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros(0, int), np.zeros(0, int)
    dist, idx = cv2.batchDistance(a, b, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2, crosscheck=False)
    d1, d2 = dist[:, 0].astype(np.float32), dist[:, 1].astype(np.float32)
    keep = (d1 <= ratio * d2) & (d1 <= max_distance) & (idx[:, 0] >= 0)
    ia = np.nonzero(keep)[0]
    ib = idx[keep, 0]
    # One-to-one: a keypoint of b claimed by several of a keeps its best.
    if len(ib):
        order = np.lexsort((d1[keep], ib))
        first = np.ones(len(order), bool)
        first[1:] = ib[order][1:] != ib[order][:-1]
        sel = order[first]
        ia, ib = ia[sel], ib[sel]
    return ia, ib


def perspective_strength(h: np.ndarray, width: float, height: float) -> float:
    """How much a homography's depth term varies over a ``width`` x ``height``
    image: 0 for an affine map, about 0.05 for a 10-degree keystone. Inf when
    the image's corners do not all stay in front of the camera."""
    h = np.asarray(h, np.float64)
    corners = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], np.float64)
    w = corners @ h[2]
    if (w <= 0).any():
        return float("inf")
    return float((w.max() - w.min()) / w.max())


#: Strongest perspective a recapture may show (a 45-degree keystone is about 0.5).
MAX_PERSPECTIVE = 0.6


def plausible_homography(h: np.ndarray, width: float, height: float) -> bool:
    """A photographed picture, not a degenerate fit: bounded perspective, and
    the image's corners map to a convex, non-mirrored quadrilateral whose
    affine part is plausible."""
    if perspective_strength(h, width, height) > MAX_PERSPECTIVE:
        return False
    h = np.asarray(h, np.float64) / h[2, 2]
    corners = np.float64([[0, 0], [width, 0], [width, height], [0, height]]).reshape(-1, 1, 2)
    quad = cv2.perspectiveTransform(corners, h).reshape(-1, 2)
    edges = np.roll(quad, -1, axis=0) - quad
    nxt = np.roll(edges, -1, axis=0)
    turns = edges[:, 0] * nxt[:, 1] - edges[:, 1] * nxt[:, 0]
    return bool((turns > 0).all() and plausible_affine(h[:2]))


def verify(a: LocalFeatures, b: LocalFeatures, *, ratio: float = 0.8,
           reproj: float = 6.0, min_matches: int = 6) -> Verification:
    """Match a against b and fit one planar transform with RANSAC: affine, or
    a homography where perspective (a re-photographed screen or print)
    explains clearly more matches."""
    ia, ib = ratio_matches(a.desc, b.desc, ratio)
    out = Verification(matches=len(ia))
    if len(ia) < min_matches:
        return out
    pa, pb = a.xy[ia], b.xy[ib]
    # Full affine: copies get stretched (resized to a square) as well as
    # rotated and scaled. Degenerate or mirroring fits are rejected below.
    m, mask = cv2.estimateAffine2D(pa, pb, method=cv2.RANSAC, ransacReprojThreshold=reproj,
                                   maxIters=2000, confidence=0.995, refineIters=10)
    inl = (mask.ravel().astype(bool) if m is not None and mask is not None
           and plausible_affine(m) else np.zeros(len(pa), bool))
    homography = None
    n_inl = int(inl.sum())
    if HOMOGRAPHY_MIN_INLIERS <= n_inl < HOMOGRAPHY_SHARE * len(pa):
        # Matches off the affine fit: perhaps a keystoned recapture.
        hm, hmask = cv2.findHomography(pa, pb, cv2.RANSAC, reproj, maxIters=2000,
                                       confidence=0.995)
        if hm is not None and hmask is not None and plausible_homography(hm, a.width, a.height):
            hinl = hmask.ravel().astype(bool)
            n_h = int(hinl.sum())
            if n_h >= max(HOMOGRAPHY_GAIN * n_inl, n_inl + 8) or (
                    n_h > n_inl and perspective_strength(hm, a.width, a.height) >= KEYSTONE):
                homography, inl = hm / hm[2, 2], hinl
                # The affine map closest to it on the inliers, for whoever reads
                # a 2x3 transform (reports, the evidence drawing).
                m = cv2.estimateAffine2D(pa[inl], pb[inl], method=cv2.LMEDS)[0]
                if m is None:
                    m = homography[:2]
    if not inl.any() or m is None:
        return out
    out.inliers = int(inl.sum())
    out.transform = np.round(m, 5).tolist()
    if homography is not None:
        out.homography = np.round(homography, 8).tolist()
    out.points = np.round(np.hstack([pa[inl], pb[inl]]), 1).tolist()
    return out


#: A homography is tried only when the affine fit explains less than this
#: share of the ratio-test matches but at least this many of them (unrelated
#: pairs rarely get 6; the fit would cost time for nothing) ...
HOMOGRAPHY_SHARE = 0.9
HOMOGRAPHY_MIN_INLIERS = 6
#: ... and is taken when it explains this many times the affine inliers (more
#: freedom fits more chance matches) or more of them with a clear keystone.
HOMOGRAPHY_GAIN = 1.5
KEYSTONE = 0.05
