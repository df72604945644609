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

import hashlib
import os

import numpy as np
from PIL import Image

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

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pixel_digest(image: Image.Image) -> str:
    """SHA-256 of the decoded RGB pixels and the size, hex.

    Equal for the same picture in any lossless container, whatever its
    metadata. Callers pass the full-resolution, orientation-corrected image.
    """
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


#: JPEG markers whose segments are metadata (APP0-APP13, APP15, COM): they
#: do not change the decoded pixels. APP14 (Adobe: the colour transform) does.
_JPEG_METADATA = {*range(0xE0, 0xEE), 0xEF, 0xFE}


#: Prefix of :func:`jpeg_stream_digest` values.
JPEG_STREAM_PREFIX = "jpeg:"


def jpeg_stream_digest(data: bytes, orientation: int = 1) -> str | None:
    """SHA-256 of a JPEG's coded picture (tables, frame header and scans,
    without metadata segments) and its EXIF orientation, hex, prefixed
    ``jpeg:`` so it never equals a :func:`pixel_digest`; None if ``data`` is
    not a JPEG this parser follows.

    Two files with equal stream digests decode to the same pixels (a copy
    with its metadata stripped or edited), without decoding either at full
    size. Pixel-identical files coded differently (Huffman tables optimised
    again) are not found this way: a conservative answer.
    """
    if data[:2] != b"\xff\xd8":
        return None
    h = hashlib.sha256(f"orientation:{orientation}:".encode())
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            i += 2
            continue
        if marker == 0xDA:  # start of scan: the rest is picture data
            h.update(data[i:])
            return JPEG_STREAM_PREFIX + h.hexdigest()
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker not in _JPEG_METADATA:
            h.update(data[i:end])
        i = end
    return None


def phash_coefficients(image: Image.Image, hash_size: int = PHASH_SIZE) -> np.ndarray:
    """The low-frequency DCT block that imagehash's pHash thresholds."""
    size = hash_size * _HIGHFREQ_FACTOR
    grey = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    import scipy.fftpack  # (0.4 s to import: only runs that hash an image pay it)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    return dct[:hash_size, :hash_size]


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
    med = np.median(flat, axis=1, keepdims=True)
    return np.packbits(flat > med, axis=1)


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
