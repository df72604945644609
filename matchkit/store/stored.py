"""The stored form of an image's features: compact, and all verification needs.

A gallery keeps, per image, what matching and verification read: keypoint
coordinates, ORB descriptors and a grey thumbnail (``local_features`` table),
the colour histogram, and for the images that need them an icon view
(``thumbmatch_views.icon_blob``) and a pixel digest (``load.LoadedImage.pixel_sha256``).
The mirrored look at a flipped copy is made from the stored thumbnails
(``thumb_features``), icons are compared on their stored views, and same
pixels are told by stored digests, so those no longer open the image file.
One look still does: the closer, content-only look at an image inside a
template crowd (``content._content_features``; without it most screenshot
pairs of the hard set were lost).

The local features' row is written and read by the signal's own module
(``signals/local_stored.py``, names imported back here); this module keeps
the mirrored look made from it. Encoding 2 against encoding 1 (raw arrays),
per 500-keypoint photo: coordinates as uint16 sixteenths of a working pixel (4,000 -> 2,000
bytes; 1/32 px rounding, far below ORB's own keypoint precision), the
thumbnail as JPEG at quality 90 (about 11.3 -> 3.7 KB on the hard set;
``THUMB_QUALITY``), the colour histogram zlib-compressed (2,048 -> about
160 bytes; the colour signal's ``encode_colour``). Descriptors are random
bits and do not compress. Rows of encoding 1 stay readable.
"""

from __future__ import annotations

import cv2
import numpy as np

from matchkit.signals.colour import decode_colour, encode_colour  # noqa: F401  (re-exported)
from matchkit.signals.local import LocalFeatures, extract_local
from matchkit.signals.local_stored import (  # noqa: F401  (re-exported)
    ENCODING, THUMB_QUALITY, XY_SCALE, decode_thumb, decode_xy, encode_local, encode_thumb,
    encode_xy, stored_features)

#: Longer side of the grey image the mirrored look runs ORB on: the stored
#: thumbnail enlarged to it (ORB ignores a 15-pixel border and needs room for
#: its pyramid, so the 128-pixel thumbnail itself yields few keypoints).
MIRROR_SIDE = 256


def thumb_features(thumb: np.ndarray, work_size: tuple[int, int], n_features: int,
                   mirror: bool = False) -> LocalFeatures:
    """ORB features of a stored thumbnail (left-right mirrored if ``mirror``),
    in the coordinates of the image's working frame ``work_size``.

    ORB descriptors are not mirror-symmetric, so a flipped copy is verified
    against features found on the mirrored picture; both sides of that look
    come from thumbnails, so they see the picture at one scale and sharpness."""
    grey = np.ascontiguousarray(thumb[:, ::-1] if mirror else thumb)
    h, w = grey.shape[:2]
    s = MIRROR_SIDE / max(h, w, 1)
    big = cv2.resize(grey, (max(1, round(w * s)), max(1, round(h * s))),
                     interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
    local = extract_local(big, n_features)
    to_work = np.array([work_size[0] / big.shape[1], work_size[1] / big.shape[0]], np.float32)
    return LocalFeatures((local.xy * to_work).astype(np.float32), local.desc, *work_size)
