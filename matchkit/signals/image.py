"""The image as a whole: its size, its container, and whether it shows anything.

Not a similarity of its own, but two numbers every pair decision reads: how
far apart the two images' pixel counts and aspect ratios are. A thumbnail
and its original differ in the first, a crop in the second; the calibrated
decision learns how much of each a copy may show. Also here: ``is_blank``,
because blank images (one flat colour) are alike by construction and are
never near-duplicates of each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from matchkit.signals import PairContext, Signal

#: Largest difference (levels, any channel) from the median colour that a
#: blank image's hash thumbnail may have anywhere: JPEG noise on a flat
#: colour stays well under it, a visible shape does not.
BLANK_SPREAD = 6


def is_blank(thumb) -> bool:
    """Whether a (small RGB) image shows nothing: one flat colour. A fully
    transparent image is one, composited over the background; blank images
    are alike by construction and never near-duplicates of each other."""
    rgb = thumb.convert("RGB")
    if rgb.width * rgb.height == 0:
        return True
    # The median lies between each channel's extremes, so a channel spread
    # over more than twice the limit has a pixel beyond it: most pictures
    # are settled here, without the median.
    if max(hi - lo for lo, hi in rgb.getextrema()) > 2 * BLANK_SPREAD:
        return False
    a = np.asarray(rgb, np.int16).reshape(-1, 3)
    return bool(np.abs(a - np.median(a, axis=0)).max() <= BLANK_SPREAD)


def size_differences(wa: int, ha: int, wb: int, hb: int) -> tuple[float, float]:
    """|log| of the ratio of the pixel counts and of the aspect ratios
    (sides below 1 count as 1)."""
    wa, ha, wb, hb = max(wa, 1), max(ha, 1), max(wb, 1), max(hb, 1)
    return abs(math.log((wa * ha) / (wb * hb))), abs(math.log((wa / ha) / (wb / hb)))


@dataclass(frozen=True)
class ImageSignal(Signal):
    name: str = "image"
    features: tuple[str, ...] = (
        "log_pixel_ratio",    # |log(pixels a / pixels b)|
        "aspect_difference",  # |log(aspect a / aspect b)|
    )
    record_fields: tuple[str, ...] = ("width", "height", "format", "jpeg_quality", "blank")
    stores: tuple[str, ...] = ("images.width", "images.height", "images.format",
                               "images.jpeg_quality", "images.blank")

    def extract_fields(self, views, settings) -> dict:
        loaded = views.loaded
        return {"width": loaded.width, "height": loaded.height, "format": loaded.format,
                "jpeg_quality": loaded.jpeg_quality, "blank": is_blank(views.hash_thumb)}

    def to_columns(self, record) -> dict:
        return {"width": record.width, "height": record.height, "format": record.format,
                "jpeg_quality": record.jpeg_quality, "blank": int(record.blank)}

    def pair_features(self, pair, context: PairContext) -> tuple[float, ...]:
        # Unknown sizes count as equal.
        return size_differences(*context.sizes.get(pair.a, (1, 1)),
                                *context.sizes.get(pair.b, (1, 1)))
