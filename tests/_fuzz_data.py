"""Mutated image files for fuzzing: valid JPEG/PNG/GIF/WebP/TIFF files with
flipped bits, cut tails, edited headers and spliced bytes, plus valid files
of extreme sizes (1xN, Nx1, 2x2, 8000x3).

Deterministic: the same ``seed`` and ``n`` give the same bytes, so a file
that breaks something can be made again. Used by ``tests/test_fuzz.py``
(500 files) and ``benchmarks/bench_fuzz.py`` (10,000 files).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF")
EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "TIFF": "tif"}
#: Valid images of extreme shape (width, height), each stored in every format.
EXTREME_SIZES = ((1, 1), (2, 2), (1, 700), (700, 1), (3, 8000), (8000, 3), (2, 3000),
                 (31, 31), (32, 1200))


def _picture(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A small busy picture (shapes over noise), so every pipeline stage has work."""
    w, h = size
    base = rng.normal(128, 50, (max(1, h // 8), max(1, w // 8), 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, max(1, w - 4))), int(rng.integers(0, max(1, h - 4)))
        x1, y1 = x0 + int(rng.integers(3, max(4, w // 3))), y0 + int(rng.integers(3, max(4, h // 3)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=fill)
    return img


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, fmt, quality=85)
    elif fmt == "GIF":
        img.quantize(64, method=Image.Quantize.FASTOCTREE).save(buf, fmt)
    elif fmt == "WEBP":
        img.save(buf, fmt, quality=80)
    elif fmt == "TIFF":
        img.save(buf, fmt, compression="tiff_deflate")
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def base_files(seed: int = 0, n_pictures: int = 12) -> list[tuple[str, bytes]]:
    """Valid seed files: ``n_pictures`` pictures in every format, and the
    extreme sizes in every format. Returns (label, bytes)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_pictures):
        size = (int(rng.integers(48, 260)), int(rng.integers(48, 260)))
        img = _picture(rng, size)
        out += [(f"p{i}.{EXT[f]}", encode(img, f)) for f in FORMATS]
    for w, h in EXTREME_SIZES:
        img = _picture(rng, (w, h))
        out += [(f"x{w}x{h}.{EXT[f]}", encode(img, f)) for f in FORMATS]
    return out


# -- mutations: each takes (bytes, rng) and returns new bytes ------------------

def bit_flips(data: bytes, rng) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 33))):
        i = int(rng.integers(0, len(b)))
        b[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def truncate(data: bytes, rng) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def header_bytes(data: bytes, rng) -> bytes:
    """Random values written over a few bytes of the first 64 (magic, sizes, flags)."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        i = int(rng.integers(0, min(64, len(b))))
        b[i] = int(rng.integers(0, 256))
    return bytes(b)


def _size_value(rng) -> int:
    return int(rng.choice([0, 1, 2, 3, 255, 4096, 30000, 65535]))


def header_size(data: bytes, rng) -> bytes:
    """The format's width/height fields set to odd values (0, 1, 65535...)."""
    b = bytearray(data)
    w, h = _size_value(rng), _size_value(rng)
    if b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) >= 24:
        b[16:24] = struct.pack(">II", w, h)
    elif b[:3] == b"GIF" and len(b) >= 10:
        b[6:10] = struct.pack("<HH", w, h)
    elif b[:2] == b"\xff\xd8":
        i = b.find(b"\xff\xc0")
        if i < 0:
            i = b.find(b"\xff\xc2")
        if i >= 0 and len(b) >= i + 9:
            b[i + 5:i + 9] = struct.pack(">HH", h, w)
    elif b[:4] == b"RIFF" and b[12:16] == b"VP8 " and len(b) >= 30:
        b[26:30] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
    elif b[:4] == b"RIFF" and b[12:16] == b"VP8L" and len(b) >= 25:
        bits = ((w - 1) & 0x3FFF) | (((h - 1) & 0x3FFF) << 14)
        top = int.from_bytes(b[21:25], "little") & 0xF0000000  # alpha flag, version
        b[21:25] = struct.pack("<I", top | bits)
    elif b[:2] in (b"II", b"MM"):
        return header_bytes(data, rng)
    return bytes(b)


def splice(data: bytes, rng) -> bytes:
    """A block of random bytes inserted, or a block zeroed, somewhere in the file."""
    i = int(rng.integers(0, len(data) + 1))
    n = int(rng.integers(1, 256))
    if rng.random() < 0.5:
        return data[:i] + rng.integers(0, 256, n, dtype=np.uint8).tobytes() + data[i:]
    return data[:i] + bytes(min(n, len(data) - i)) + data[i + n:]


def unchanged(data: bytes, rng) -> bytes:
    return data


MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "bit_flips": bit_flips, "truncate": truncate, "header_bytes": header_bytes,
    "header_size": header_size, "splice": splice, "unchanged": unchanged,
}
#: How often each mutation is drawn (valid files keep the matching stages busy).
WEIGHTS = {"bit_flips": 0.25, "truncate": 0.2, "header_bytes": 0.15, "header_size": 0.15,
           "splice": 0.15, "unchanged": 0.1}


def make_fuzz_set(folder: str | Path, n: int, seed: int = 0) -> list[dict]:
    """Write ``n`` mutated files into ``folder``; returns one record per file
    (name, base, mutation). Names keep the base's extension, so folder walks
    pick them up as images."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bases = base_files(seed)
    rng = np.random.default_rng(seed + 1)
    names = list(MUTATIONS)
    p = np.array([WEIGHTS[k] for k in names])
    out = []
    for i in range(n):
        label, data = bases[int(rng.integers(0, len(bases)))]
        kind = names[int(rng.choice(len(names), p=p / p.sum()))]
        name = f"f{i:05d}-{kind}-{label}"
        (folder / name).write_bytes(MUTATIONS[kind](data, rng))
        out.append({"name": name, "base": label, "mutation": kind})
    return out
