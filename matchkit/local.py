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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

DESC_BYTES = 32


@dataclass
class LocalFeatures:
    """Keypoints of one image, strongest first."""

    xy: np.ndarray      # (n, 2) float32, working-image pixels
    desc: np.ndarray    # (n, 32) uint8 ORB descriptors
    width: int          # working image size the coordinates refer to
    height: int

    def __len__(self) -> int:
        return len(self.desc)

    def head(self, n: int) -> "LocalFeatures":
        """The ``n`` strongest keypoints."""
        return LocalFeatures(self.xy[:n], self.desc[:n], self.width, self.height)

    def subset(self, keep: np.ndarray) -> "LocalFeatures":
        """The keypoints where ``keep`` is true, order preserved."""
        return LocalFeatures(self.xy[keep], self.desc[keep], self.width, self.height)

    def to_bytes(self) -> tuple[bytes, bytes]:
        return self.xy.astype("<f4").tobytes(), self.desc.tobytes()

    @classmethod
    def from_bytes(cls, xy: bytes, desc: bytes, width: int, height: int) -> "LocalFeatures":
        return cls(np.frombuffer(xy, "<f4").reshape(-1, 2),
                   np.frombuffer(desc, np.uint8).reshape(-1, DESC_BYTES), width, height)


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


_ORB_CACHE: dict[int, cv2.ORB] = {}


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
    orb = _ORB_CACHE.get(n_features)
    if orb is None:
        orb = cv2.ORB_create(nfeatures=n_features, scaleFactor=1.2, nlevels=8,
                             edgeThreshold=EDGE_THRESHOLD, patchSize=31,
                             fastThreshold=FAST_THRESHOLD)
        _ORB_CACHE[n_features] = orb
    return orb


def extract_local(grey: np.ndarray, n_features: int = 500) -> LocalFeatures:
    """ORB keypoints and descriptors of a grey working image, strongest first."""
    h, w = grey.shape[:2]
    if min(h, w) < ORB_MIN_SIDE:
        kps, desc = (), None
    else:
        kps, desc = _orb(n_features).detectAndCompute(grey, None)
    if desc is None or not kps:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, DESC_BYTES), np.uint8), w, h)
    order = np.argsort([-k.response for k in kps], kind="stable")
    xy = np.array([kps[i].pt for i in order], dtype=np.float32).reshape(-1, 2)
    return LocalFeatures(xy, np.ascontiguousarray(desc[order]), w, h)


@dataclass
class Verification:
    """Outcome of matching two images' keypoints under one similarity transform."""

    matches: int = 0           # matches passing the ratio test
    inliers: int = 0           # of those, consistent with the transform
    transform: list = field(default_factory=list)  # 2x3 affine mapping a -> b (working px)
    mirrored: bool = False     # b was matched as a mirror image
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


def verify(a: LocalFeatures, b: LocalFeatures, *, ratio: float = 0.8,
           reproj: float = 6.0, min_matches: int = 6) -> Verification:
    """Match a against b and fit a similarity transform with RANSAC."""
    ia, ib = ratio_matches(a.desc, b.desc, ratio)
    out = Verification(matches=len(ia))
    if len(ia) < min_matches:
        return out
    pa, pb = a.xy[ia], b.xy[ib]
    # Full affine: copies get stretched (resized to a square) as well as
    # rotated and scaled. Degenerate or mirroring fits are rejected below.
    m, mask = cv2.estimateAffine2D(pa, pb, method=cv2.RANSAC, ransacReprojThreshold=reproj,
                                   maxIters=2000, confidence=0.995, refineIters=10)
    if m is None or mask is None or not plausible_affine(m):
        return out
    inl = mask.ravel().astype(bool)
    out.inliers = int(inl.sum())
    out.transform = np.round(m, 5).tolist()
    out.points = np.round(np.hstack([pa[inl], pb[inl]]), 1).tolist()
    return out


def overlap_correlation(thumb_a: np.ndarray, thumb_b: np.ndarray, transform: list,
                        work_a: tuple[int, int], work_b: tuple[int, int],
                        min_pixels: int = 100, content_a: np.ndarray | None = None,
                        content_b: np.ndarray | None = None, min_overlap: float = 0.3) -> float:
    """Correlation of two grey thumbnails where they overlap once aligned.

    Keypoints can agree on a shared part (the same emoji, logo or screenshot
    frame on two different photos); the pixels of the whole overlap agree only
    for real copies. ``transform`` maps a's working-image pixels to b's. The
    image that the transform shrinks is warped into the other's frame, so no
    detail is invented. ``content_a``/``content_b`` (boolean masks, thumbnail
    pixels) leave out what is not the picture: padding, a screenshot's frame.
    Returns the zero-mean normalised cross-correlation of the overlapping
    pixels, or -1.0 when the overlap is too small to judge.
    """
    m = np.asarray(transform, dtype=np.float64).reshape(2, 3)
    sa = thumb_a.shape[1] / work_a[0]
    sb = thumb_b.shape[1] / work_b[0]
    # In thumbnail pixels: x_b = S_b (M (x_a / S_a)).
    t = np.vstack([m, [0, 0, 1]])
    t = np.diag([sb, sb, 1]) @ t @ np.diag([1 / sa, 1 / sa, 1])
    scale = float(np.sqrt(abs(np.linalg.det(t[:2, :2]))))
    if scale <= 1.0:
        src, dst, warp, src_keep, dst_keep = thumb_a, thumb_b, t, content_a, content_b
        scale_src = scale
    else:
        src, dst, warp, src_keep, dst_keep = thumb_b, thumb_a, np.linalg.inv(t), content_b, content_a
        scale_src = 1.0 / scale
    h, w = dst.shape[:2]
    src_f = cv2.GaussianBlur(src.astype(np.float32), (0, 0), 1.0)
    dst_f = cv2.GaussianBlur(dst.astype(np.float32), (0, 0), 1.0)
    warped = cv2.warpAffine(src_f, warp[:2], (w, h), flags=cv2.INTER_LINEAR)
    valid = np.ones_like(src_f) if src_keep is None else src_keep.astype(np.float32)
    mask = cv2.warpAffine(valid, warp[:2], (w, h), flags=cv2.INTER_NEAREST)
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0.5
    if dst_keep is not None:
        mask &= dst_keep
    # Flat areas in both images (fill colour around a rotated photo, plain
    # backgrounds) agree whatever the pictures are; only texture can testify.
    mask &= (_local_std(warped) > 2.0) | (_local_std(dst_f) > 2.0)
    # A copy shows most of the smaller picture; a shared sticker or logo
    # aligns only a corner of it.
    src_area = float(src.size if src_keep is None else src_keep.sum())
    if int(mask.sum()) < max(min_pixels, min_overlap * src_area * scale_src ** 2):
        return -1.0
    x = warped[mask] - warped[mask].mean()
    y = dst_f[mask] - dst_f[mask].mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else -1.0


def _local_std(a: np.ndarray, k: int = 5) -> np.ndarray:
    mean = cv2.blur(a, (k, k))
    sq = cv2.blur(a * a, (k, k))
    return np.sqrt(np.maximum(sq - mean * mean, 0.0))
