"""Colour histograms: a cheap second opinion that ignores geometry.

A joint RGB histogram does not change under flips, rotations or mild crops,
yet differs between unrelated photos whose perceptual hashes happen to agree
(two photos rotated onto black canvases share most of their pHash bits, not
their colours). Stored as raw counts over an 8x8x8 RGB grid.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from matchkit.signals import PairContext, Signal
from matchkit.util.arrays import SparseRows

LEVELS = 8
BINS = LEVELS ** 3


def colour_histogram(image: Image.Image) -> np.ndarray:
    """Counts of pixels per RGB cell, shape (512,) uint32; pass a small thumbnail."""
    a = np.asarray(image.convert("RGB"), dtype=np.uint16) // (256 // LEVELS)
    cells = (a[..., 0] * LEVELS + a[..., 1]) * LEVELS + a[..., 2]
    return np.bincount(cells.ravel(), minlength=BINS).astype(np.uint32)


def encode_colour(histogram: np.ndarray) -> bytes:
    """A colour histogram as stored: 512 little-endian uint32 counts,
    zlib-compressed when that is shorter (mostly empty bins: a few hundred
    bytes instead of 2,048)."""
    raw = np.asarray(histogram).astype("<u4").tobytes()
    packed = zlib.compress(raw, 6)
    return packed if len(packed) < len(raw) else raw


def decode_colour(data: bytes) -> np.ndarray:
    """The histogram ``encode_colour`` stored."""
    return np.frombuffer(data if len(data) == BINS * 4 else zlib.decompress(data), "<u4")


def histogram_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Histogram intersection of the normalised histograms, in [0, 1]."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    sa, sb = a.sum(), b.sum()
    if sa == 0 or sb == 0:
        return 0.0
    return float(np.minimum(a / sa, b / sb).sum())


def histogram_similarities(hists: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray,
                           chunk: int = 512) -> np.ndarray:
    """:func:`histogram_similarity` of ``hists[rows_a[k]]`` and ``hists[rows_b[k]]``
    for every k (``hists``: an array of rows or a ``util.arrays.SparseRows``),
    in bounded memory: parts of ``chunk`` pairs (2 MiB an array), each row
    normalised in place as it is needed. (Parts of 2,048 pairs, with
    three fresh arrays per normalisation, held about 40 MiB at once at the
    Ray driver's peak; normalising every image once, as float64, held 8 KB
    per image of a whole collection. A row's values are the same either way.)"""
    if isinstance(hists, SparseRows):
        take = hists.dense
    else:
        h = np.asarray(hists).reshape(-1, BINS)
        take = h.__getitem__
    rows_a, rows_b = np.asarray(rows_a, np.int64), np.asarray(rows_b, np.int64)
    out = np.empty(len(rows_a))
    for s in range(0, len(rows_a), chunk):
        part = _normalised(take(rows_a[s:s + chunk]))
        np.minimum(part, _normalised(take(rows_b[s:s + chunk])), out=part)
        out[s:s + chunk] = part.sum(axis=1)
    return np.nan_to_num(out, nan=0.0)


def _normalised(rows: np.ndarray) -> np.ndarray:
    """Histogram rows as float64 shares of their total (NaN for an empty
    one, whose similarity is then 0), divided in place: one new array."""
    rows = np.asarray(rows, np.float64)
    total = rows.sum(axis=1, keepdims=True)
    empty = total[:, 0] == 0
    np.divide(rows, np.where(empty[:, None], 1, total), out=rows)
    rows[empty] = np.nan
    return rows


# -- the colour signal ---------------------------------------------------------

@dataclass(frozen=True)
class ColourSignal(Signal):
    """Colour agreement: the RGB histogram of the hash thumbnail, and (in a
    pair) the soft hue histograms ``relation`` compares."""

    name: str = "colour"
    features: tuple[str, ...] = (
        "colour_similarity",  # colour-histogram intersection
        "hue_similarity",     # hue-histogram intersection (1 when either image has too little colour)
    )
    record_fields: tuple[str, ...] = ("colour",)
    stores: tuple[str, ...] = ("images.colour",)

    def extract_fields(self, views, settings) -> dict:
        return {"colour": colour_histogram(views.hash_thumb)}

    def to_columns(self, record) -> dict:
        return {"colour": encode_colour(record.colour)}

    def pair_features(self, pair, context: PairContext) -> tuple[float, ...]:
        hue = pair.extra.get("hue_similarity")
        return float(pair.colour_similarity), 1.0 if hue is None else float(hue)

    def evidence(self, pair) -> dict:
        return {"colour_similarity": round(pair.colour_similarity, 4)}
