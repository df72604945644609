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

import threading
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


@dataclass
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


@dataclass
class Overlap:
    """How the aligned pixels of two images compare where they overlap."""

    #: Zero-mean normalised cross-correlation of the whole textured overlap
    #: (-1.0: the overlap is too small to judge).
    correlation: float = -1.0
    #: Share of the textured overlap (by pixels, judged in cells) whose cell
    #: correlates at ``CELL_AGREE`` or more: a copy agrees nearly everywhere
    #: except under an overlay; a shared sticker or frame agrees only there.
    agreement: float = 0.0
    #: Share judged in cells that correlate at ``-CELL_AGREE`` or less
    #: (light/dark versions of one artwork).
    inverted: float = 0.0
    #: Share of each image's picture that lies inside the overlap.
    coverage_a: float = 0.0
    coverage_b: float = 0.0
    #: The larger of the two frames' shares that lie inside the other frame,
    #: whole frames, pictures or not (1.0: one image lies inside the other, a
    #: crop or a resize; less: each shows what the other lacks, two windows
    #: onto a larger picture). 1.0 when not measured (``WINDOW_SCALE``).
    contained: float = 1.0
    #: Convex hull of the inliers over the area of the overlap, in the frame
    #: the comparison is made in: matches spread over the shared picture, or
    #: sit on one corner, logo or sticker.
    spread: float = 0.0
    #: Share of the judged overlap in the largest block of disagreeing cells
    #: that agreeing cells enclose on every side: another picture inside a
    #: shared frame (a monitor's bezel, a phone's UI), never an overlay on a copy
    #: (those are small, or reach the edge like a caption bar).
    enclosed: float = 0.0
    #: How far the mean grey level of the textured overlap moved between the
    #: two images (0-255): a light and a dark version of one artwork.
    lightness_shift: float = 0.0


#: Thumbnails related by at most this scale (either way) show the picture at
#: about one size: only then is ``Overlap.contained`` measured (the real dev
#: set's map pages: 1.0 and 1.1; the hard calib half's screenshot against a
#: padded copy, whose frames each hold what the other lacks, flat UI and
#: padding: 0.24-0.76).
WINDOW_SCALE = 1.18
#: ... or share less than this of either picture (``Overlap.coverage_a/b``;
#: real dev set: a sunset photo cut by the edge of the brochure page it is
#: laid out on, 0.16 and 0.46; the hard calib screenshots 0.83 and more).
WINDOW_SHARE = 0.5


#: Cell side (thumbnail pixels) and the correlation at which a cell agrees.
CELL = 16
CELL_AGREE = 0.5


def overlap_correlation(thumb_a: np.ndarray, thumb_b: np.ndarray, transform: list,
                        work_a: tuple[int, int], work_b: tuple[int, int],
                        min_pixels: int = 100, content_a: np.ndarray | None = None,
                        content_b: np.ndarray | None = None, min_overlap: float = 0.3) -> float:
    """The correlation of ``compare_overlap`` alone."""
    return compare_overlap(thumb_a, thumb_b, transform, work_a, work_b, min_pixels=min_pixels,
                           content_a=content_a, content_b=content_b,
                           min_overlap=min_overlap).correlation


def compare_overlap(thumb_a: np.ndarray, thumb_b: np.ndarray, transform,
                    work_a: tuple[int, int], work_b: tuple[int, int],
                    min_pixels: int = 100, content_a: np.ndarray | None = None,
                    content_b: np.ndarray | None = None, min_overlap: float = 0.3,
                    points: list | None = None, of_texture: bool = True) -> Overlap:
    """Compare two grey thumbnails where they overlap once aligned.

    Keypoints can agree on a shared part (the same emoji, logo or screenshot
    frame on two different photos); the pixels of the whole overlap agree only
    for real copies. ``transform`` maps a's working-image pixels to b's (2x3
    affine or 3x3 homography). The image that the transform shrinks is warped
    into the other's frame, so no detail is invented. ``content_a``/
    ``content_b`` (boolean masks, thumbnail pixels) leave out what is not the
    picture: padding, a screenshot's frame. ``points`` (inlier rows xa, ya,
    xb, yb in working pixels) give the spread of the matches.
    ``of_texture``: the overlap must cover ``min_overlap`` of the smaller
    picture's area and hold as much of its texture; else its textured part
    must be ``min_overlap`` of that area (``picture.compare_picture``, whose
    "picture" is the inliers' hull, where a flat sticker's fill is part of
    what must agree).
    """
    out = Overlap()
    m = np.asarray(transform, dtype=np.float64)
    t = m if m.shape == (3, 3) else np.vstack([m.reshape(2, 3), [0, 0, 1]])
    sa = thumb_a.shape[1] / work_a[0]
    sb = thumb_b.shape[1] / work_b[0]
    # In thumbnail pixels: x_b = S_b (M (x_a / S_a)).
    t = np.diag([sb, sb, 1]) @ t @ np.diag([1 / sa, 1 / sa, 1])
    t = t / t[2, 2]
    centre = np.array([thumb_a.shape[1] / 2, thumb_a.shape[0] / 2])
    scale = float(np.sqrt(abs(np.linalg.det(_jacobian(t, centre)))))
    if scale <= 1.0:
        src, dst, warp, src_keep, dst_keep = thumb_a, thumb_b, t, content_a, content_b
        scale_src, to_dst = scale, (slice(2, 4), sb)
    else:
        src, dst, warp, src_keep, dst_keep = thumb_b, thumb_a, np.linalg.inv(t), content_b, content_a
        scale_src, to_dst = 1.0 / scale, (slice(0, 2), sa)
    h, w = dst.shape[:2]
    src_f = cv2.GaussianBlur(src.astype(np.float32), (0, 0), 1.0)
    dst_f = cv2.GaussianBlur(dst.astype(np.float32), (0, 0), 1.0)
    def warp_to_dst(a: np.ndarray, flags: int) -> np.ndarray:
        if m.shape == (3, 3):
            return cv2.warpPerspective(a, warp, (w, h), flags=flags)
        return cv2.warpAffine(a, warp[:2], (w, h), flags=flags)

    def inside(valid: np.ndarray) -> np.ndarray:
        return cv2.erode(warp_to_dst(valid, cv2.INTER_NEAREST), np.ones((3, 3), np.uint8)) > 0.5

    warped = warp_to_dst(src_f, cv2.INTER_LINEAR)
    ones = np.ones_like(src_f)
    # ``aligned``: where the two frames overlap at all, pictures or not.
    aligned = inside(ones)
    mask = aligned.copy() if src_keep is None else inside(src_keep.astype(np.float32))
    if dst_keep is not None:
        mask &= dst_keep
    overlap = int(mask.sum())
    src_area = float(src.size if src_keep is None else src_keep.sum())
    dst_area = float(dst.size if dst_keep is None else dst_keep.sum())
    cov_dst = overlap / max(dst_area, 1.0)
    cov_src = min(1.0, overlap / max(scale_src ** 2, 1e-9) / max(src_area, 1.0))
    out.coverage_a, out.coverage_b = (cov_src, cov_dst) if scale <= 1.0 else (cov_dst, cov_src)
    # Frames only, not eroded: how much of either frame the other holds, for
    # frames that show the picture at about one scale (windows cut from one
    # canvas) or that share less than half of either picture (a photo laid
    # out, cut by the page's edge, as a small part of a page); a picture
    # shown small but whole inside another frame (a screenshot, a padded
    # canvas) has surroundings that are no picture, and is not judged.
    if (1.0 / WINDOW_SCALE <= scale <= WINDOW_SCALE
            or max(out.coverage_a, out.coverage_b) < WINDOW_SHARE):
        framed = float((warp_to_dst(ones, cv2.INTER_NEAREST) > 0.5).sum())
        out.contained = min(1.0, max(
            framed / max(float(dst.size), 1.0),
            framed / max(scale_src ** 2, 1e-9) / max(float(src.size), 1.0)))
    if points is not None and len(points) >= 3 and overlap:
        xy = np.asarray(points, np.float32)[:, to_dst[0]] * to_dst[1]
        hull = cv2.contourArea(cv2.convexHull(xy.reshape(-1, 1, 2)))
        out.spread = float(min(1.0, hull / overlap))
    # Flat areas in both images (fill colour around a rotated photo, plain
    # backgrounds) agree whatever the pictures are; only texture can testify.
    # The warped picture's texture counts only where its 5x5 window lies
    # inside the warp: at its edge the window sees the black outside, and a
    # ring as long as the frame's edge would count as texture (two flat
    # pictures were judged on that ring alone).
    textured_warp = _local_std(warped) > 2.0
    textured_warp &= cv2.erode(aligned.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    mask &= textured_warp | (_local_std(dst_f) > 2.0)
    # A copy shows most of the smaller picture; a shared sticker or logo
    # aligns only a corner of it. "Most" in area, and in texture rather than
    # textured area: a smooth photo (a product on a plain backdrop, a blurred
    # background) has little texture anywhere, and asked for textured pixels
    # over a share of its whole area even its own crop was "too small to
    # judge" and refused (e.g. a drumstick's 50% crop with 177 inliers; hard
    # calib half: 7 pairs; scale set, 10,000 images: 8 planted pairs).
    if of_texture:
        if cov_src < min_overlap:
            return out
        textured_src = _local_std(src_f) > 2.0
        if src_keep is not None:
            textured_src &= src_keep
        src_area = float(textured_src.sum())
    if int(mask.sum()) < max(min_pixels, min_overlap * src_area * scale_src ** 2):
        return out
    wm, dm = warped[mask], dst_f[mask]
    x = wm - wm.mean()
    y = dm - dm.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    out.correlation = float((x * y).sum() / denom) if denom > 0 else -1.0
    out.lightness_shift = abs(float(wm.mean() - dm.mean()))
    out.agreement, out.inverted, out.enclosed = _cell_agreement(warped, dst_f, mask, aligned)
    return out


def _jacobian(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The 2x2 derivative of the homography ``t`` at point ``p``."""
    x, y = p
    u, v, w = t @ np.array([x, y, 1.0])
    return (t[:2, :2] * w - np.outer([u, v], t[2, :2])) / (w * w)


def _cell_agreement(x: np.ndarray, y: np.ndarray, mask: np.ndarray, aligned: np.ndarray
                    ) -> tuple[float, float, float]:
    """Shares of the masked pixels whose CELL x CELL cell correlates at
    +CELL_AGREE or more / -CELL_AGREE or less, and the share in the largest
    enclosed block of disagreeing cells (see ``Overlap.enclosed``). Cells with
    few masked pixels are not judged; a cell flat in one image and textured in
    the other disagrees (something covers the picture there). ``aligned``
    is the whole overlap, flat parts included: outside it is the edge."""
    h, w = mask.shape
    hc, wc = -(-h // CELL), -(-w // CELL)

    def cells(a):
        pad = np.zeros((hc * CELL, wc * CELL), np.float64)
        pad[:h, :w] = a
        return pad.reshape(hc, CELL, wc, CELL).swapaxes(1, 2).reshape(hc, wc, -1)

    m = cells(mask)
    n = m.sum(axis=2)
    xs, ys = cells(x) * m, cells(y) * m
    nn = np.maximum(n, 1)
    mx, my = xs.sum(axis=2) / nn, ys.sum(axis=2) / nn
    vx = (xs * xs).sum(axis=2) / nn - mx ** 2
    vy = (ys * ys).sum(axis=2) / nn - my ** 2
    cxy = (xs * ys).sum(axis=2) / nn - mx * my
    judged = n >= CELL * CELL / 4
    textured = (vx > 4.0) | (vy > 4.0)
    judged &= textured
    total = float(n[judged].sum())
    if total == 0:
        return 0.0, 0.0, 0.0
    r = cxy / np.sqrt(np.maximum(vx, 1e-3) * np.maximum(vy, 1e-3))
    r = np.where((vx > 4.0) & (vy > 4.0), r, 0.0)
    agree = float(n[judged & (r >= CELL_AGREE)].sum()) / total
    inverted = float(n[judged & (r <= -CELL_AGREE)].sum()) / total
    # Disagreeing blocks that touch the overlap's edge (outside cells or the
    # grid border) are overlays from the side; the rest are enclosed.
    bad = (judged & (r < CELL_AGREE)).astype(np.uint8)
    count, labels = cv2.connectedComponents(_framed(bad, 0), connectivity=4)
    outside = _framed((cells(aligned).sum(axis=2) < CELL * CELL / 4).astype(np.uint8), 1)
    near_outside = cv2.dilate(outside, np.ones((3, 3), np.uint8)) > 0
    touching = np.zeros(count, bool)
    touching[labels[near_outside]] = True
    # Each block's weight (whole pixel counts: the sums are exact in any order).
    weights = np.bincount(labels.ravel(), _framed(n * judged, 0).ravel(), minlength=count)
    weights[touching] = 0.0
    enclosed = float(weights[1:].max()) if count > 1 else 0.0
    return agree, inverted, enclosed / total


def _framed(a: np.ndarray, value) -> np.ndarray:
    """``a`` inside a one-cell border of ``value`` (``np.pad(a, 1)``, without
    its overhead: this runs for every compared pair)."""
    out = np.full((a.shape[0] + 2, a.shape[1] + 2), value, a.dtype)
    out[1:-1, 1:-1] = a
    return out


def _local_std(a: np.ndarray, k: int = 5) -> np.ndarray:
    mean = cv2.blur(a, (k, k))
    sq = cv2.blur(a * a, (k, k))
    return np.sqrt(np.maximum(sq - mean * mean, 0.0))
