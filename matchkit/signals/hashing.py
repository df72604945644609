"""Exact and perceptual hashes.

Exact duplicates are found two ways: the bytes of the file (same file copied)
and the decoded pixels (same picture re-saved in another container, e.g. a
PNG made from a JPEG's pixels, or a JPEG with different metadata).

Perceptual hashes follow imagehash's pHash. To make them invariant to flips
and 90-degree rotations without hashing the image eight times, we use a
property of the DCT-II: mirroring the input along an axis multiplies the
coefficient of frequency ``k`` along that axis by ``(-1)**k``, and transposing
the input transposes the coefficients. So the eight dihedral variants of a
pHash are sign flips and a transpose of one 8x8 block of coefficients.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from matchkit.signals import PairContext, Signal

#: 16x16 coefficients = 256 bits: on the calibration half of the transformed
#: benchmark set it separates copies from other photos far better than the
#: classic 64-bit pHash (see benchmarks/RESULTS.md).
PHASH_SIZE = 16
_HIGHFREQ_FACTOR = 4
PHASH_BITS = PHASH_SIZE * PHASH_SIZE
PHASH_BYTES = PHASH_BITS // 8

#: Names of the eight dihedral transforms, in the order ``dihedral_phashes``
#: returns them. ``rot90`` is counter-clockwise, as in ``numpy.rot90``.
DIHEDRAL = ("identity", "flip_h", "flip_v", "rot180",
            "transpose", "rot90", "rot270", "transverse")

# Exact digests live in io (decoding computes them); re-exported here.
from matchkit.io.digest import (JPEG_STREAM_PREFIX, file_digest, jpeg_stream_digest,  # noqa: E402,F401
                                pixel_digest)

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@functools.lru_cache(maxsize=8)
def _dct_rows(hash_size: int, size: int) -> np.ndarray:
    """The first ``hash_size`` rows of the unnormalised DCT-II matrix of
    ``size`` points (scipy.fftpack's ``dct``, type 2): only the low-frequency
    block is ever thresholded, so two small products replace two full
    transforms (and the 0.1-0.4 s import of scipy.fftpack in every run that hashes)."""
    k = np.arange(hash_size, dtype=np.float64)[:, None]
    n = np.arange(size, dtype=np.float64)[None, :]
    rows = 2.0 * np.cos(np.pi * k * (2.0 * n + 1.0) / (2.0 * size))
    rows.setflags(write=False)
    return rows


#: Coefficients smaller than this are rounding noise (pixels are integers up
#: to 255, so a true coefficient this small does not occur): set to 0, so that
#: the exact zeros of a flat or striped image tie at the median as they do in
#: imagehash's FFT-based DCT, instead of taking the sign of the noise.
_DCT_NOISE = 1e-6


def phash_coefficients(image: Image.Image, hash_size: int = PHASH_SIZE) -> np.ndarray:
    """The low-frequency DCT block that imagehash's pHash thresholds."""
    size = hash_size * _HIGHFREQ_FACTOR
    grey = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    rows = _dct_rows(hash_size, size)
    block = rows @ pixels @ rows.T
    block[np.abs(block) < _DCT_NOISE] = 0.0
    return block


def dihedral_blocks(block: np.ndarray) -> np.ndarray:
    """The DCT block of each of the 8 dihedral variants of the image, (8, n, n)."""
    n = block.shape[0]
    sign = (-1.0) ** np.arange(n)
    flip_h = block * sign[None, :]   # mirror left-right: columns are x
    flip_v = block * sign[:, None]   # mirror top-bottom: rows are y
    rot180 = flip_h * sign[:, None]
    # rot90 (ccw) = transpose then flip_v; rot270 = transpose then flip_h.
    t = block.T
    return np.stack([
        block, flip_h, flip_v, rot180,
        t, t * sign[:, None], t * sign[None, :], t * sign[None, :] * sign[:, None],
    ])


def bits_from_blocks(blocks: np.ndarray) -> np.ndarray:
    """Threshold each block at its median, as pHash does; returns packed bytes."""
    flat = blocks.reshape(blocks.shape[0], -1)
    n = flat.shape[1]
    if n == 0:
        return np.packbits(flat > 0, axis=1)
    # np.median's own arithmetic (the middle value, or the mean of the two
    # middle ones) on a partition, without its general-purpose overhead.
    mid = np.partition(flat, [(n - 1) // 2, n // 2], axis=1)
    med = (mid[:, (n - 1) // 2] + mid[:, n // 2]) / 2 if n % 2 == 0 else mid[:, n // 2]
    return np.packbits(flat > med[:, None], axis=1)


def phash(image: Image.Image, hash_size: int = PHASH_SIZE) -> bytes:
    """pHash as packed bytes, bit-identical to ``imagehash.phash(image, hash_size)``."""
    return bits_from_blocks(phash_coefficients(image, hash_size)[None])[0].tobytes()


def dihedral_phashes(image: Image.Image, hash_size: int = PHASH_SIZE) -> np.ndarray:
    """pHashes of the image under all 8 flips/rotations, shape (8, hash_size**2 / 8).

    Row 0 is the plain pHash; row ``i`` is the hash of the image transformed
    by ``DIHEDRAL[i]``.
    """
    return bits_from_blocks(dihedral_blocks(phash_coefficients(image, hash_size)))


def hamming(a: bytes | np.ndarray, b: bytes | np.ndarray) -> int:
    """Number of differing bits between two packed hashes."""
    x = np.frombuffer(bytes(a), np.uint8) ^ np.frombuffer(bytes(b), np.uint8)
    return int(_POPCOUNT[x].sum())


def dihedral_distance(variants_a: np.ndarray, b: bytes | np.ndarray) -> int:
    """Smallest Hamming distance between any variant of A and the plain hash of B."""
    return dihedral_match(variants_a, b)[0]


def dihedral_match(variants_a: np.ndarray, b: bytes | np.ndarray) -> tuple[int, int]:
    """(distance, index into DIHEDRAL) of A's variant closest to the plain hash of B."""
    x = np.asarray(variants_a, np.uint8) ^ np.frombuffer(bytes(b), np.uint8)[None, :]
    d = _POPCOUNT[x].sum(axis=1)
    v = int(d.argmin())
    return int(d[v]), v


def dihedral_match_many(variants_a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dihedral_match` for many pairs: ``variants_a`` (n, 8, nbytes) and
    plain hashes ``b`` (n, nbytes); returns distances and variant indices, (n,) each."""
    x = np.asarray(variants_a, np.uint8) ^ np.asarray(b, np.uint8)[:, None, :]
    d = _POPCOUNT[x].sum(axis=2, dtype=np.int64)
    v = d.argmin(axis=1)
    return d[np.arange(len(d)), v], v


#: Dihedral variants that mirror the image (determinant -1).
REFLECTIONS = frozenset({1, 2, 4, 7})


# -- the pHash signal ----------------------------------------------------------

#: Crowd distance used when a collection is too small to have a crowd (fewer
#: images than ``Settings.neighbours``; the search then reports PHASH_BITS):
#: the distance of two unrelated pictures' hashes. Without the cap a small
#: gallery made every unrelated pair look far closer than its "crowd", and a
#: profile fitted on large collections accepted them.
UNKNOWN_CROWD = PHASH_BITS // 2


def closer_crowd(a: int, b: int, crowd) -> int:
    """The closer crowd distance (pHash distance to the 16th-nearest image,
    ``crowd``: id -> distance, PHASH_BITS when unknown) of images a and b."""
    return min(crowd.get(a, PHASH_BITS), crowd.get(b, PHASH_BITS))


def crowd_distance(pair, crowd) -> int:
    """A pair's ``closer_crowd``, capped at UNKNOWN_CROWD."""
    return min(closer_crowd(pair.a, pair.b, crowd), UNKNOWN_CROWD)




@dataclass(frozen=True)
class PHashSignal(Signal):
    """The dihedral pHash: whole-frame look, invariant to flips and quarter turns."""

    name: str = "phash"
    features: tuple[str, ...] = (
        "phash_distance",  # dihedral-minimum pHash distance / 256
        "phash_zero",      # identical dihedral pHash (1/0)
        "crowd_gap",       # (closer crowd distance of the two images - distance) / 256
        "reflect",         # hashes align best under a mirror image (1/0)
    )
    record_fields: tuple[str, ...] = ("phashes",)
    stores: tuple[str, ...] = ("images.phash", "phash.usearch")
    candidates: str | None = ("nearest images by dihedral pHash distance "
                              "(match.candidates.phash_candidates, index.hamming.HammingIndex)")

    def extract_fields(self, views, settings) -> dict:
        return {"phashes": dihedral_phashes(views.hash_thumb)}

    def to_columns(self, record) -> dict:
        return {"phash": record.phashes.tobytes()}  # the 8 dihedral hashes, 8 x 32 bytes

    def pair_features(self, pair, context: PairContext) -> tuple[float, ...]:
        d = pair.phash_distance
        return (d / PHASH_BITS, 1.0 if d == 0 else 0.0,
                (crowd_distance(pair, context.crowd) - d) / PHASH_BITS,
                1.0 if pair.extra.get("reflect") else 0.0)

    def evidence(self, pair) -> dict:
        return {"phash_distance": pair.phash_distance}
