"""Exact digests: of a file's bytes, of decoded pixels, and of a JPEG's coded
picture without its metadata. Two images with equal digests are the same
picture; the decoder computes them while it has the bytes and pixels at hand,
and the pHash signal (``signals.hashing``) re-exports them."""

from __future__ import annotations

import hashlib
import os

from PIL import Image


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
