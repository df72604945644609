"""Tests for matchkit.signals.hashing: pHash, its eight dihedral variants and digests."""

from __future__ import annotations

import hashlib
import shutil

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw

from matchkit.signals.hashing import (
                                      DIHEDRAL,
                                      PHASH_BYTES,
                                      dihedral_distance,
                                      dihedral_phashes,
                                      file_digest,
                                      hamming,
                                      phash,
                                      pixel_digest,
                                      )
from matchkit.io.load import load_image

T = Image.Transpose

#: PIL transpose operation for each name in DIHEDRAL (rot90 is counter-clockwise).
PIL_OPS = {
    "identity": None,
    "flip_h": T.FLIP_LEFT_RIGHT,
    "flip_v": T.FLIP_TOP_BOTTOM,
    "rot180": T.ROTATE_180,
    "transpose": T.TRANSPOSE,
    "rot90": T.ROTATE_90,
    "rot270": T.ROTATE_270,
    "transverse": T.TRANSVERSE,
}

MIRRORS = ("identity", "flip_h", "flip_v", "rot180")


# --------------------------------------------------------------------------
# helpers: small synthetic images, fixed seeds, no external data
# --------------------------------------------------------------------------

def texture(width: int, height: int, seed: int = 0, cells: int = 16) -> Image.Image:
    """Random colour cells, bicubic upscaled: detail at the scale pHash looks at."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(a).resize((width, height), Image.Resampling.BICUBIC)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def gradient(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    a = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x * y) % 256], -1)
    return Image.fromarray(a.astype(np.uint8))


def shapes(size: int = 128, seed: int = 0) -> Image.Image:
    """A few filled rectangles and ellipses on a coloured background (asymmetric)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = (int(v) for v in rng.integers(0, size - 16, 2))
        w, h = (int(v) for v in rng.integers(8, size // 2, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (x0, y0, min(size - 1, x0 + w), min(size - 1, y0 + h))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    return img


def apply(img: Image.Image, name: str) -> Image.Image:
    op = PIL_OPS[name]
    return img.copy() if op is None else img.transpose(op)


def imagehash_bytes(img: Image.Image, hash_size: int) -> bytes:
    return np.packbits(imagehash.phash(img, hash_size).hash.flatten()).tobytes()


SAMPLE_IMAGES = {
    "texture128": lambda: texture(128, 128, seed=0),
    "texture_wide": lambda: texture(150, 100, seed=1),
    "texture_tall": lambda: texture(90, 170, seed=2),
    "gradient": lambda: gradient(120, 80),
    "shapes": lambda: shapes(128, seed=3),
    "noise": lambda: noise(64, 48, seed=4),
    "grey": lambda: texture(100, 100, seed=5).convert("L"),
    # many DCT coefficients tie with the median: checks ">" (not ">=") thresholding
    "flat": lambda: Image.new("RGB", (100, 100), (120, 130, 140)),
    "checker": lambda: Image.fromarray(
        np.kron(np.indices((8, 8)).sum(0) % 2 * 255, np.ones((16, 16))).astype(np.uint8)),
}

#: Square images used for the dihedral checks (transposes are exact on squares).
SQUARE_IMAGES = {
    "texture128_a": lambda: texture(128, 128, seed=10),
    "texture128_b": lambda: texture(128, 128, seed=11),
    "texture192": lambda: texture(192, 192, seed=12),
    "shapes128": lambda: shapes(128, seed=13),
    "texture64_no_resize": lambda: texture(64, 64, seed=14),
}


# --------------------------------------------------------------------------
# pHash equals imagehash
# --------------------------------------------------------------------------

@pytest.mark.parametrize("hash_size", [8, 16])
@pytest.mark.parametrize("name", list(SAMPLE_IMAGES))
def test_phash_matches_imagehash(name, hash_size):
    img = SAMPLE_IMAGES[name]()
    h = phash(img, hash_size)
    assert isinstance(h, bytes)
    assert len(h) == hash_size * hash_size // 8
    assert h == imagehash_bytes(img, hash_size)


def test_phash_default_size_is_256_bits():
    img = texture(100, 100, seed=20)
    assert len(phash(img)) == PHASH_BYTES == 32
    assert phash(img) == imagehash_bytes(img, 16)


def test_phash_of_flat_image_sets_only_the_dc_bit():
    h = phash(Image.new("RGB", (80, 80), (90, 90, 90)))
    assert h == b"\x80" + b"\x00" * (PHASH_BYTES - 1)


def test_phash_differs_between_images():
    a, b = texture(128, 128, seed=21), texture(128, 128, seed=22)
    assert hamming(phash(a), phash(b)) > 60


# --------------------------------------------------------------------------
# dihedral variants
# --------------------------------------------------------------------------

def test_dihedral_names_and_order():
    assert DIHEDRAL == ("identity", "flip_h", "flip_v", "rot180",
                        "transpose", "rot90", "rot270", "transverse")


@pytest.mark.parametrize("hash_size", [8, 16])
def test_dihedral_phashes_shape_and_row0(hash_size):
    img = texture(128, 128, seed=23)
    v = dihedral_phashes(img, hash_size)
    assert isinstance(v, np.ndarray)
    assert v.dtype == np.uint8
    assert v.shape == (8, hash_size * hash_size // 8)
    assert v[0].tobytes() == phash(img, hash_size)
    # the eight variants of an asymmetric picture are all different
    assert len({row.tobytes() for row in v}) == 8


@pytest.mark.parametrize("transform", DIHEDRAL)
@pytest.mark.parametrize("name", list(SQUARE_IMAGES))
def test_dihedral_row_matches_hash_of_transformed_image(name, transform):
    img = SQUARE_IMAGES[name]()
    i = DIHEDRAL.index(transform)
    variants = dihedral_phashes(img)
    direct = phash(apply(img, transform))
    d = hamming(variants[i], direct)
    if transform in MIRRORS or name == "texture64_no_resize":
        # mirrors commute exactly with the resize; a 64x64 image is not resized
        assert d == 0, (transform, d)
    else:
        assert d <= 3, (transform, d)
    # and it is that row, not merely some row: the other variants are far away
    others = [hamming(variants[j], direct) for j in range(8) if j != i]
    assert min(others) > 40


@pytest.mark.parametrize("hash_size", [8, 16])
def test_dihedral_flips_exact_for_other_hash_size(hash_size):
    img = texture(160, 160, seed=24)
    v = dihedral_phashes(img, hash_size)
    for transform in MIRRORS:
        assert v[DIHEDRAL.index(transform)].tobytes() == phash(apply(img, transform), hash_size)


def test_rot90_is_counter_clockwise():
    # rot90 must follow PIL's ROTATE_90 (counter-clockwise), not the clockwise one
    img = texture(128, 128, seed=25)
    v = dihedral_phashes(img)
    ccw = phash(img.transpose(T.ROTATE_90))
    cw = phash(img.transpose(T.ROTATE_270))
    assert hamming(v[DIHEDRAL.index("rot90")], ccw) <= 3
    assert hamming(v[DIHEDRAL.index("rot90")], cw) > 40
    assert hamming(v[DIHEDRAL.index("rot270")], cw) <= 3


# --------------------------------------------------------------------------
# hamming and dihedral_distance
# --------------------------------------------------------------------------

def test_hamming_basics():
    assert hamming(b"\x00\x00", b"\x00\x00") == 0
    assert hamming(b"\x00\xff", b"\x00\x00") == 8
    assert hamming(b"\x0f\x01", b"\xf0\x00") == 9
    a = np.array([0b10101010, 0xFF], dtype=np.uint8)
    b = np.array([0b01010101, 0x00], dtype=np.uint8)
    assert hamming(a, b) == 16
    assert hamming(a, b.tobytes()) == hamming(b, a) == 16


def test_hamming_of_hashes_is_symmetric_and_bounded():
    a, b = phash(texture(96, 96, seed=26)), phash(texture(96, 96, seed=27))
    assert hamming(a, b) == hamming(b, a)
    assert 0 < hamming(a, b) <= 256
    assert hamming(a, a) == 0
    assert hamming(a, bytes(x ^ 0xFF for x in a)) == 256


@pytest.mark.parametrize("transform", DIHEDRAL)
def test_dihedral_distance_small_for_flipped_or_rotated_copy(transform):
    img = texture(128, 128, seed=28)
    variants = dihedral_phashes(img)
    copy_hash = phash(apply(img, transform))
    assert dihedral_distance(variants, copy_hash) <= 3
    # a plain pHash comparison would not see the copy (except the identity)
    if transform != "identity":
        assert hamming(variants[0], copy_hash) > 40


def test_dihedral_distance_zero_for_same_image():
    img = shapes(128, seed=29)
    assert dihedral_distance(dihedral_phashes(img), phash(img)) == 0


@pytest.mark.parametrize("seed", [30, 31, 32])
def test_dihedral_distance_large_for_unrelated_image(seed):
    img = texture(128, 128, seed=seed)
    other = texture(128, 128, seed=seed + 100)
    d = dihedral_distance(dihedral_phashes(img), phash(other))
    assert d > 60


def test_dihedral_distance_is_minimum_over_rows():
    rng = np.random.default_rng(33)
    variants = rng.integers(0, 256, (8, 32), dtype=np.uint8)
    b = rng.integers(0, 256, 32, dtype=np.uint8)
    expected = min(hamming(row, b) for row in variants)
    assert dihedral_distance(variants, b) == expected
    assert dihedral_distance(variants, b.tobytes()) == expected
    variants[5] = b
    assert dihedral_distance(variants, b) == 0


# --------------------------------------------------------------------------
# file_digest
# --------------------------------------------------------------------------

def test_file_digest_copy_and_one_byte_change(tmp_path):
    src = tmp_path / "a.png"
    texture(64, 64, seed=34).save(src)
    copy = tmp_path / "copy_of_a.png"
    shutil.copyfile(src, copy)
    data = src.read_bytes()

    d = file_digest(src)
    assert d == file_digest(copy)
    assert d == hashlib.sha256(data).hexdigest()
    assert len(d) == 64 and all(c in "0123456789abcdef" for c in d)

    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x01
    edited = tmp_path / "edited.png"
    edited.write_bytes(bytes(changed))
    assert file_digest(edited) != d


def test_file_digest_independent_of_chunk_size(tmp_path):
    p = tmp_path / "blob.bin"
    p.write_bytes(np.random.default_rng(35).bytes(10_000))
    expected = hashlib.sha256(p.read_bytes()).hexdigest()
    assert file_digest(p) == expected
    assert file_digest(p, chunk=7) == expected
    assert file_digest(p, chunk=10_000) == expected


def test_file_digest_of_empty_file(tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    assert file_digest(p) == hashlib.sha256(b"").hexdigest()


# --------------------------------------------------------------------------
# pixel_digest
# --------------------------------------------------------------------------

def test_pixel_digest_same_pixels_png_and_bmp(tmp_path):
    img = noise(40, 30, seed=36)
    png, bmp = tmp_path / "a.png", tmp_path / "a.bmp"
    img.save(png)
    img.save(bmp)
    assert png.read_bytes() != bmp.read_bytes()
    from_png = load_image(png).image
    from_bmp = load_image(bmp).image
    assert pixel_digest(from_png) == pixel_digest(from_bmp)
    assert pixel_digest(from_png) == pixel_digest(img)


def test_pixel_digest_ignores_metadata(tmp_path):
    img = noise(20, 20, seed=37)
    plain, tagged = tmp_path / "plain.png", tmp_path / "tagged.png"
    img.save(plain)
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "same pixels, different bytes")
    img.save(tagged, pnginfo=info)
    assert file_digest(plain) != file_digest(tagged)
    assert pixel_digest(load_image(plain).image) == pixel_digest(load_image(tagged).image)


def test_pixel_digest_changes_with_one_pixel(tmp_path):
    img = noise(40, 30, seed=38)
    p = tmp_path / "a.png"
    img.save(p)
    edited = img.copy()
    r, g, b = edited.getpixel((17, 11))
    edited.putpixel((17, 11), (r ^ 1, g, b))
    q = tmp_path / "b.png"
    edited.save(q)
    assert pixel_digest(load_image(p).image) != pixel_digest(load_image(q).image)


def test_pixel_digest_includes_size():
    data = np.random.default_rng(39).integers(0, 256, (4 * 6 * 3,), dtype=np.uint8)
    a = Image.fromarray(data.reshape(4, 6, 3))
    b = Image.fromarray(data.reshape(6, 4, 3))
    assert a.tobytes() == b.tobytes()
    assert pixel_digest(a) != pixel_digest(b)
