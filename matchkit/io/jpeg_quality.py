"""JPEG quality from a file's quantisation tables.

A re-encode of a picture at a lower quality has coarser quantisation
tables; reading them tells a quality-30 copy from its quality-90 source
without looking at a single pixel. The estimate is computed once, when the
gallery decodes the file, and stored with the image.
"""

from __future__ import annotations

import functools

import numpy as np

#: IJG (libjpeg) base quantisation tables, natural order: quality q scales them.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)
_IJG_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, np.float64)


def _ijg_tables() -> np.ndarray:
    """(100, 2, 64): the luminance and chrominance tables libjpeg writes at q = 1..100."""
    q = np.arange(1, 101, dtype=np.float64)
    scale = np.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)[:, None, None]
    base = np.stack([_IJG_LUMA, _IJG_CHROMA])[None]
    return np.clip(np.floor((base * scale + 50.0) / 100.0), 1, 255)


_IJG = _ijg_tables()


def jpeg_quality(quantization: dict | None) -> int | None:
    """Estimated JPEG quality (1-100) from a file's quantisation tables
    (Pillow's ``img.quantization``, natural order); None without tables.

    The estimate is the libjpeg quality whose tables are closest (relative
    error over all coefficients). libjpeg-based encoders (Pillow, GIMP, most
    web tools) give back exactly the quality they were asked for; cameras
    and other encoders get the libjpeg quality closest to their tables, which
    still orders re-encodes of one picture correctly."""
    if not quantization:
        return None
    try:
        key = tuple(tuple(int(v) for v in quantization[k]) for k in sorted(quantization)[:2])
    except (TypeError, ValueError):
        return None
    return _quality_of(key)


@functools.lru_cache(maxsize=256)
def _quality_of(key: tuple[tuple[int, ...], ...]) -> int | None:
    """``jpeg_quality`` of tables as tuples: most files of a collection share
    a few encoders' tables, so each set is matched against libjpeg's once."""
    tables = [np.asarray(t, np.float64) for t in key]
    if not tables or any(t.shape != (64,) for t in tables):
        return None
    err = np.zeros(len(_IJG))
    for n, t in enumerate(tables):
        ref = _IJG[:, min(n, 1)]
        err += np.abs(np.log(ref) - np.log(np.maximum(t, 1.0))[None]).sum(axis=1)
    best = np.flatnonzero(err <= err.min() + 1e-9)
    return int(best.max()) + 1
