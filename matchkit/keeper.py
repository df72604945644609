"""Which copy of a picture to keep: the one a person would choose.

Resolution first, but the resolution of the picture itself. A copy rotated
onto a canvas, padded, letterboxed or shown inside a screenshot has more
pixels than the photo inside it, yet none of the extra pixels is picture,
and the picture in it was resampled. So a copy is scored by its picture
pixels, discounted by the share of synthetic fill around them, and a grey
copy of a colour picture is discounted again. Copies with equal scores
(the usual case: same resolution, no fill) are ordered by the next
criteria: the larger file (less compression), then the older file, then
the path (a stable order).
"""

from __future__ import annotations

import numpy as np

from .colour import LEVELS
from .gallery import StoredImage

FILL_TOLERANCE = 1.0
"""Grey levels a pixel may differ from the border colour and still be fill.
Synthetic fill (a canvas, padding) is flat to within JPEG noise; natural flat
backgrounds (sky, studio white) are not that flat, so they stay picture."""

GREY_MASS = 0.98
"""Share of pixels on the grey diagonal of the colour histogram above which
a copy counts as grey."""

GREY_FACTOR = 0.5
"""Score factor of a grey copy: a colour copy wins unless the grey one has
more than twice the picture pixels."""

WHOLE_SHARE = 0.9
"""A picture share at least this large counts as the whole image. Natural
flat patches at the border (a black night sky, a white studio backdrop)
and JPEG noise move the measured share by a few percent between copies of
the same picture; those copies must tie, so that file size decides."""


def grey_share(histogram: np.ndarray) -> float:
    """Share of pixels whose RGB cell lies on the grey diagonal (r = g = b),
    from a :func:`colour.colour_histogram`; 1.0 for an empty histogram."""
    h = np.asarray(histogram, np.float64).reshape(LEVELS, LEVELS, LEVELS)
    total = h.sum()
    if total == 0:
        return 1.0
    diagonal = np.arange(LEVELS)
    return float(h[diagonal, diagonal, diagonal].sum() / total)


def picture_score(pixels: float, picture_share: float = 1.0, grey: bool = False) -> float:
    """Quality of a copy as pixels: picture pixels, less for fill and for grey.

    ``picture_share`` is the fraction of the image that is picture (not
    fill, frame or screen furniture); from WHOLE_SHARE up it counts as 1.
    The fill discount (``0.5 + 0.5 * share``) makes a rotated or padded copy
    lose to the plain copy with the same picture pixels, while a much larger
    copy still wins.
    """
    share = float(picture_share)
    share = 1.0 if share >= WHOLE_SHARE else max(0.0, share)
    score = pixels * share * (0.5 + 0.5 * share)
    return score * (GREY_FACTOR if grey else 1.0)


def keeper_priority(img: StoredImage, picture_share: float | None = None,
                    grey: bool = False) -> tuple:
    """Sort key, best first: picture score, then larger file, then older, then
    path. Without ``picture_share`` the whole image counts."""
    score = picture_score(img.pixels, 1.0 if picture_share is None else picture_share, grey)
    return (-round(score), -img.size, img.mtime_ns, img.path)
