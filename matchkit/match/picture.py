"""The picture two matched images share: where their verified matches lie.

A re-photographed print or screen (a recapture) shows the picture on a new
background, behind a monitor bezel, under a light gradient and a glare. Laid
on each other frame to frame, two such photos of one picture disagree over
most of their overlap (two backgrounds), so the whole-overlap comparison of
``local_overlap.compare_overlap`` vetoes them; and two *different* pictures shown on
one monitor setup agree over the frame (bezel, desk, light) while their
pictures differ.

Both are told apart by comparing only the picture: the convex hull of the
inliers in each image. A copy's pixels agree inside that hull (the
matches came from the picture and the picture is one plane); a shared frame
puts its inliers on the rim of the hull and the other picture fills the
inside, which disagrees.
"""

from __future__ import annotations

import cv2
import numpy as np

from matchkit.signals.local import Overlap, compare_overlap


def hull_mask(xy: np.ndarray, work_size: tuple[int, int], thumb_shape: tuple[int, int]
              ) -> np.ndarray:
    """Boolean thumbnail mask of the convex hull of points ``xy`` (working pixels)."""
    h, w = thumb_shape[:2]
    p = np.asarray(xy, np.float32).reshape(-1, 2) * (w / max(work_size[0], 1))
    mask = np.zeros((h, w), np.uint8)
    if len(p) >= 3:
        hull = cv2.convexHull(p.reshape(-1, 1, 2))
        cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1)
    return mask.astype(bool)


def compare_picture(thumb_a: np.ndarray, thumb_b: np.ndarray, transform, points: list,
                    work_a: tuple[int, int], work_b: tuple[int, int],
                    content_a: np.ndarray | None = None,
                    content_b: np.ndarray | None = None) -> Overlap:
    """``compare_overlap`` restricted to the inliers' hull in each image (and to
    the ``content`` masks, if any): the pixels of the shared picture only.
    ``Overlap.coverage_a``/``coverage_b`` become the hull's share of each
    thumbnail (how much of each image the shared picture is)."""
    pts = np.asarray(points, np.float32).reshape(-1, 4)
    if len(pts) < 4:
        return Overlap()
    ma = hull_mask(pts[:, :2], work_a, thumb_a.shape)
    mb = hull_mask(pts[:, 2:], work_b, thumb_b.shape)
    share_a, share_b = float(ma.mean()), float(mb.mean())
    if content_a is not None:
        ma &= content_a
    if content_b is not None:
        mb &= content_b
    # (Measured against the hull's area: an emoji pasted on two different
    # photos is a hull of flat fill whose few textured lines agree; against
    # its texture alone it "proved" a copy, scale set, 10,000 images.)
    out = compare_overlap(thumb_a, thumb_b, transform, work_a, work_b,
                          content_a=ma, content_b=mb, points=points, of_texture=False)
    out.coverage_a, out.coverage_b = share_a, share_b
    return out


def inner_share(xy: np.ndarray, shrink: float = 0.6) -> float:
    """Share of points inside their own convex hull shrunk by ``shrink`` about
    their centroid: about 0.36 for matches spread over a picture, 0 for
    matches on a frame's rim around it."""
    p = np.ascontiguousarray(np.asarray(xy, np.float32).reshape(-1, 2))
    if len(p) < 3:
        return 0.0
    hull = cv2.convexHull(p.reshape(-1, 1, 2)).reshape(-1, 2).astype(np.float64)
    if len(hull) < 3:
        return 0.0
    centre = p.mean(axis=0)
    inner = (hull - centre) * shrink + centre
    # Inside a convex polygon: on the same side of every edge (no Python loop).
    edge = np.roll(inner, -1, axis=0) - inner
    rel = p[:, None, :].astype(np.float64) - inner[None, :, :]
    cross = edge[None, :, 0] * rel[..., 1] - edge[None, :, 1] * rel[..., 0]
    inside = (cross >= 0).all(axis=1) | (cross <= 0).all(axis=1)
    return float(inside.mean())


# Chosen on calib halves only (60-photo subsets of the recapture and hard
# calib sets, every candidate pair verified; see RESULTS.md "recapture"):
#: Fewer inliers than this is weak evidence: they may all sit on a shared
#: frame (different pictures on one monitor setup: 12-21 inliers) ...
WEAK_INLIERS = 20
#: ... so the picture they span must agree: at least this share of its cells
#: or this correlation (false pairs on one monitor: cells 0.17-0.69,
#: correlation 0.16-0.81; 2 of 1,822 true hard pairs fall under both).
FRAME_AGREEMENT = 0.7
FRAME_CORRELATION = 0.85
#: A picture that agrees this well (cells, correlation) proves a copy even
#: when the rest of the frames differ (two photos of one print or screen on
#: two backgrounds): true recaptures 0.94 / 0.72 at their 5th percentile ...
PICTURE_AGREEMENT = 0.9
PICTURE_CORRELATION = 0.7
#: ... with enough inliers, and a picture of at least this share of each
#: image (a shared sticker or logo is smaller).
PICTURE_INLIERS = 24
PICTURE_SHARE = 0.05


def judged(picture: Overlap | None) -> bool:
    """Whether the picture comparison could judge the pixels at all."""
    return picture is not None and picture.correlation > -1.0


#: Up to this many inliers, none of them inside the middle of their own hull
#: (``inner_share`` under ``RIM_SHARE``) is a frame too (false pairs on one
#: monitor: 13-28 inliers, all on the rim) ...
RIM_INLIERS = 30
RIM_SHARE = 0.01
#: ... unless the picture inside agrees this well (cells, correlation).
RIM_AGREEMENT = 0.9
RIM_CORRELATION = 0.85


def shared_frame(picture: Overlap | None, inliers: int, inner: float = 1.0) -> bool:
    """Matches on a shared frame (a monitor bezel, the desk around it), not on
    the picture: few inliers whose picture disagrees, or inliers all on the
    rim of the region they span (``inner``: ``inner_share`` of a's inliers)
    around pixels that do not clearly agree."""
    if not judged(picture):
        return False
    if (inliers < WEAK_INLIERS and picture.agreement < FRAME_AGREEMENT
            and picture.correlation < FRAME_CORRELATION):
        return True
    return (inliers < RIM_INLIERS and inner < RIM_SHARE
            and not (picture.agreement >= RIM_AGREEMENT
                     and picture.correlation >= RIM_CORRELATION))


#: A picture under ``PICTURE_SHARE`` may still be the shared picture rather
#: than a sticker: ORB keypoints crowd on its most textured part (two photos
#: of one print or screen: 40-230 inliers within 2-5% of each frame, the
#: rest of the picture too smooth or too differently lit to match). Alone
#: that proves nothing (a shared sticker looks the same), but it supports a
#: join of two clusters that a matched pair already links
#: (``dedupe_clusters.find_clusters``), with at least this many inliers (false pairs
#: of the recapture calib half, every candidate verified: at most 27, all on
#: a shared monitor frame).
DENSE_INLIERS = 40


def agrees(picture: Overlap | None, inliers: int) -> bool:
    """The picture the inliers span agrees pixel for pixel (of any size)."""
    return (judged(picture) and inliers >= PICTURE_INLIERS
            and picture.agreement >= PICTURE_AGREEMENT
            and picture.correlation >= PICTURE_CORRELATION)


def dense_picture(picture: Overlap | None, inliers: int) -> bool:
    """Many inliers on a part of the picture that agrees, however small:
    one picture shown twice, or one sticker on two pictures."""
    return inliers >= DENSE_INLIERS and agrees(picture, inliers)


def picture_proves_copy(picture: Overlap | None, inliers: int) -> bool:
    """The shared picture agrees pixel for pixel, whatever surrounds it."""
    return (agrees(picture, inliers)
            and min(picture.coverage_a, picture.coverage_b) >= PICTURE_SHARE)


# ---------------------------------------------------------------- which is the re-photograph

def frame_quad(transform: np.ndarray, size_from: tuple[int, int], size_to: tuple[int, int],
               thumb_to: tuple[int, int]) -> np.ndarray:
    """The corners of one image's frame (working ``size_from``) in the other
    image's thumbnail pixels (``thumb_to`` = its thumbnail's (height, width)),
    through ``transform`` (3x3, working pixels from -> to)."""
    w, h = size_from
    corners = np.float64([[0, 0], [w, 0], [w, h], [0, h]]).reshape(-1, 1, 2)
    quad = cv2.perspectiveTransform(corners, np.asarray(transform, np.float64)).reshape(-1, 2)
    return quad * (thumb_to[1] / max(size_to[0], 1))


def _band(thumb: np.ndarray, p0: np.ndarray, p1: np.ndarray, normal: np.ndarray,
          offset: float, n: int) -> np.ndarray | None:
    """Grey levels sampled along the segment p0-p1 shifted by ``offset`` along
    ``normal`` (None when part of it falls off the thumbnail)."""
    t = np.linspace(0.1, 0.9, n)[:, None]
    pts = p0 + (p1 - p0) * t + normal * offset
    h, w = thumb.shape[:2]
    if (pts < 0).any() or (pts[:, 0] > w - 1).any() or (pts[:, 1] > h - 1).any():
        return None
    x0, y0 = np.floor(pts).astype(int).T
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = pts[:, 0] - x0, pts[:, 1] - y0
    t = np.asarray(thumb, np.float64)
    return ((t[y0, x0] * (1 - fx) + t[y0, x1] * fx) * (1 - fy)
            + (t[y1, x0] * (1 - fx) + t[y1, x1] * fx) * fy)


# Chosen on the calib halves (matched pairs whose one image holds the other's
# whole frame: recapture set 245 of 324 recaptures against their original
# with 3 or more framed sides, hard set 0 of 261 originals or captioned copies
# against their crop):
#: Thumbnail pixels either side of the shown picture's edge that are compared.
BAND_OFFSETS = (3.5,)
#: Samples per side of the edge.
BAND_SAMPLES = 24
#: A side is a frame (a bezel, a print's border) when the grey levels just
#: outside the shown picture vary along it less than this share of how they
#: vary just inside (a crop's edge runs through more of the same picture).
FRAME_ROUGHNESS = 0.5
#: Least roughness inside (grey levels between neighbouring samples) for a
#: side to say anything: along a flat part of the picture (sky) both are flat.
MIN_ROUGHNESS = 2.0


def _roughness(levels: np.ndarray | None) -> float | None:
    """Mean change of grey level between neighbouring samples."""
    return None if levels is None else float(np.abs(np.diff(levels)).mean())


def framed_sides(thumb: np.ndarray, quad: np.ndarray) -> tuple[int, int]:
    """How many sides of ``quad`` (another picture's frame laid on ``thumb``)
    run along a frame, of how many could be judged: outside the edge the grey
    levels are smooth (a monitor's bezel, a print's white border) where
    inside they are not (the picture)."""
    quad = np.asarray(quad, np.float64).reshape(4, 2)
    centre = quad.mean(axis=0)
    framed = judged_sides = 0
    for k in range(4):
        p0, p1 = quad[k], quad[(k + 1) % 4]
        d = p1 - p0
        length = float(np.hypot(*d))
        if length < 8:
            continue
        normal = np.array([d[1], -d[0]]) / length
        if normal @ ((p0 + p1) / 2 - centre) < 0:
            normal = -normal  # outward
        # The frame may lie a few pixels off where the transform puts it (an
        # affine fit of a keystone): the roughest look inside and the
        # smoothest outside count.
        inside = [_roughness(_band(thumb, p0, p1, normal, -off, BAND_SAMPLES))
                  for off in BAND_OFFSETS]
        outside = [_roughness(_band(thumb, p0, p1, normal, off, BAND_SAMPLES))
                   for off in BAND_OFFSETS]
        inside = [r for r in inside if r is not None]
        outside = [r for r in outside if r is not None]
        if not inside or not outside:
            continue
        rough_in = max(inside)
        if rough_in < MIN_ROUGHNESS:
            continue
        judged_sides += 1
        if min(outside) < FRAME_ROUGHNESS * rough_in:
            framed += 1
    return framed, judged_sides


#: At least this many sides of the shown picture must run along a frame ...
FRAMED_SIDES = 3
#: ... the re-photograph shows the other's whole picture (its share inside
#: the aligned overlap at least this) ...
SHOWN_WHOLE = 0.75
#: ... as a part of its own frame (its share inside the overlap at most this).
SHOWN_PART = 0.6


def rephotograph(thumb_a: np.ndarray, thumb_b: np.ndarray, transform: np.ndarray,
                 work_a: tuple[int, int], work_b: tuple[int, int], coverage_a: float,
                 coverage_b: float, points: list | None = None) -> str | None:
    """Which of two matched images ("a" or "b") is a re-photograph of the
    other (a print or a screen photographed with what surrounds it), or None.

    The re-photograph holds the other's whole frame as a part of its own
    (``coverage_*``: each image's share inside the aligned overlap), and
    that part is framed: just outside the other's frame edges lies a smooth
    bezel or border, where a crop's edge runs through more picture
    (``framed_sides``). ``transform`` maps a to b (3x3, working pixels);
    ``points`` (inlier pairs xa, ya, xb, yb) of an affine fit: the frame is
    placed by a homography through them instead, which follows a keystone
    that the affine fit's tolerance absorbed (the print sides it found
    framed on the recapture calib set: 194 of 284 -> 225, crops still 0)."""
    if not (coverage_a <= SHOWN_PART and coverage_b >= SHOWN_WHOLE
            or coverage_b <= SHOWN_PART and coverage_a >= SHOWN_WHOLE):
        return None
    pts = np.asarray(points if points is not None else [], np.float64).reshape(-1, 4)
    if len(pts) >= 8:
        h, _ = cv2.findHomography(pts[:, :2], pts[:, 2:], 0)
        if h is not None and abs(h[2, 2]) > 1e-9:
            transform = h / h[2, 2]
    if coverage_a <= SHOWN_PART and coverage_b >= SHOWN_WHOLE:
        outer, thumb, inner_size, outer_size = "a", thumb_a, work_b, work_a
        try:
            m = np.linalg.inv(np.asarray(transform, np.float64))
        except np.linalg.LinAlgError:
            return None
    elif coverage_b <= SHOWN_PART and coverage_a >= SHOWN_WHOLE:
        outer, thumb, inner_size, outer_size = "b", thumb_b, work_a, work_b
        m = np.asarray(transform, np.float64)
    else:
        return None
    framed, _ = framed_sides(thumb, frame_quad(m, inner_size, outer_size, thumb.shape))
    return outer if framed >= FRAMED_SIDES else None
