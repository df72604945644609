"""Colour histograms: a cheap second opinion that ignores geometry.

A joint RGB histogram does not change under flips, rotations or mild crops,
yet differs between unrelated photos whose perceptual hashes happen to agree
(two photos rotated onto black canvases share most of their pHash bits, not
their colours). Stored as raw counts over an 8x8x8 RGB grid.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

LEVELS = 8
BINS = LEVELS ** 3


def colour_histogram(image: Image.Image) -> np.ndarray:
    """Counts of pixels per RGB cell, shape (512,) uint32; pass a small thumbnail."""
    a = np.asarray(image.convert("RGB"), dtype=np.uint16) // (256 // LEVELS)
    cells = (a[..., 0] * LEVELS + a[..., 1]) * LEVELS + a[..., 2]
    return np.bincount(cells.ravel(), minlength=BINS).astype(np.uint32)


def histogram_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Histogram intersection of the normalised histograms, in [0, 1]."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    sa, sb = a.sum(), b.sum()
    if sa == 0 or sb == 0:
        return 0.0
    return float(np.minimum(a / sa, b / sb).sum())


def histogram_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`histogram_similarity` of each row pair of ``a`` and ``b`` (n, BINS)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    sa, sb = a.sum(axis=1, keepdims=True), b.sum(axis=1, keepdims=True)
    ok = (sa[:, 0] > 0) & (sb[:, 0] > 0)
    out = np.minimum(a / np.where(sa > 0, sa, 1), b / np.where(sb > 0, sb, 1)).sum(axis=1)
    return np.where(ok, out, 0.0)
