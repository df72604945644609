"""The picture two matched images share: where their verified matches lie.

A re-photographed print or screen (a recapture) shows the picture on a new
background, behind a monitor bezel, under a light gradient and a glare. Laid
on each other frame to frame, two such photos of one picture disagree over
most of their overlap (two backgrounds), so the whole-overlap comparison of
``local.compare_overlap`` vetoes them; and two *different* pictures shown on
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

from .local import Overlap, compare_overlap


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
    out = compare_overlap(thumb_a, thumb_b, transform, work_a, work_b,
                          content_a=ma, content_b=mb, points=points)
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


def picture_proves_copy(picture: Overlap | None, inliers: int) -> bool:
    """The shared picture agrees pixel for pixel, whatever surrounds it."""
    return (judged(picture) and inliers >= PICTURE_INLIERS
            and picture.agreement >= PICTURE_AGREEMENT
            and picture.correlation >= PICTURE_CORRELATION
            and min(picture.coverage_a, picture.coverage_b) >= PICTURE_SHARE)
