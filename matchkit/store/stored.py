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

Encoding 2 (this module) against encoding 1 (raw arrays), per 500-keypoint
photo: coordinates as uint16 sixteenths of a working pixel (4,000 -> 2,000
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
from matchkit.signals.local import DESC_BYTES, LocalFeatures, extract_local

#: How ``local_features`` rows are encoded: 1 raw float32 coordinates and raw
#: thumbnail pixels (galleries before this module), 2 this module's.
ENCODING = 2
#: Coordinates are stored in these fractions of a working pixel (uint16, so
#: sides up to 4,095 working pixels: ``config`` allows ``work_side`` <= 4,096).
XY_SCALE = 16


def encode_xy(xy: np.ndarray) -> bytes:
    """Keypoint coordinates (working pixels) as little-endian uint16."""
    q = np.clip(np.round(np.asarray(xy, np.float32) * XY_SCALE), 0, 65535)
    return q.astype("<u2").tobytes()


def decode_xy(data: bytes, encoding: int) -> np.ndarray:
    if encoding == 1:
        return np.frombuffer(data, "<f4").reshape(-1, 2)
    return (np.frombuffer(data, "<u2").astype(np.float32) / XY_SCALE).reshape(-1, 2)


#: JPEG quality of the stored thumbnails. Chosen on the calib halves against
#: lossless PNG (6.8 KB): at 90 (3.7 KB on the hard set) hard R 0.9690 vs
#: 0.9684, transformed R 0.9926 vs 0.9917, precision 1.000 both: the
#: photometric checks compare cells and correlations, which JPEG noise of a
#: few grey levels does not move.
THUMB_QUALITY = 90


def encode_thumb(thumb: np.ndarray) -> bytes:
    """A grey thumbnail as JPEG (``THUMB_QUALITY``)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(thumb, np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    if not ok:
        raise ValueError("cannot encode thumbnail")
    return buf.tobytes()


def decode_thumb(data: bytes, width: int, height: int, encoding: int) -> np.ndarray:
    if encoding == 1:
        return np.frombuffer(data, np.uint8).reshape(height, width)
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None or grey.shape != (height, width):
        raise ValueError("damaged thumbnail blob")
    return grey


def encode_local(local: LocalFeatures, thumb: np.ndarray) -> tuple:
    """The ``local_features`` columns after image_id: (width, height, xy,
    descriptors, thumb, thumb_width, thumb_height, encoding)."""
    return (local.width, local.height, encode_xy(local.xy),
            np.ascontiguousarray(local.desc, np.uint8).tobytes(), encode_thumb(thumb),
            thumb.shape[1], thumb.shape[0], ENCODING)


def stored_features(row: tuple) -> tuple[LocalFeatures, np.ndarray]:
    """(ORB features, grey thumbnail) of one ``local_features`` row laid out as
    ``encode_local`` returns it: the one reader of stored local features."""
    w, h, xy, desc, thumb, tw, th, encoding = row
    local = LocalFeatures(decode_xy(xy, encoding),
                          np.frombuffer(desc, np.uint8).reshape(-1, DESC_BYTES), w, h)
    return local, decode_thumb(thumb, tw, th, encoding)


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
