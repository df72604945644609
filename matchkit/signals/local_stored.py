"""The stored form of the local-features signal: one ``local_features`` row per image.

What verification reads of an image, compact: keypoint coordinates as
uint16 sixteenths of a working pixel, ORB descriptors as they are (random
bits do not compress), and the grey thumbnail of the photometric checks as
JPEG. ``LocalSignal.to_rows`` writes a row with :func:`encode_local`;
:func:`stored_features` is the one reader. Rows of encoding 1 (raw arrays,
galleries before encoding 2) stay readable. Measured sizes and the choice of
``THUMB_QUALITY``: the docstring of ``matchkit/store/stored.py``.
"""

from __future__ import annotations

import cv2
import numpy as np

from matchkit.signals.local import DESC_BYTES, LocalFeatures


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


#: The ``local_features`` columns after image_id, in the order of :func:`encode_local`.
COLUMNS = ("width", "height", "xy", "descriptors", "thumb", "thumb_width", "thumb_height",
           "encoding")


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
