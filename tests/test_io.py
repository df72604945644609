"""Tests for matchkit.io.load: decoding every kind of file safely, and finding files."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from matchkit.io.load import ImageLoadError, iter_image_files, load_image

T = Image.Transpose


# --------------------------------------------------------------------------
# helpers: small synthetic images, fixed seeds, no external data
# --------------------------------------------------------------------------

def texture(width: int, height: int, seed: int = 0, cells: int = 8) -> Image.Image:
    """A smooth random colour texture (a few random cells, bicubic upscaled)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(a).resize((width, height), Image.Resampling.BICUBIC)


def gradient(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    r = x * 255 // max(1, width - 1)
    g = y * 255 // max(1, height - 1)
    b = (x + y) * 255 // max(1, width + height - 2)
    return Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8))


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    return float(np.abs(arr(a) - arr(b)).mean())


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG that claims ``width`` x ``height`` but carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_with_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def assert_load_error(path) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    err = info.value
    assert isinstance(err.reason, str) and err.reason.strip()
    assert err.path == str(path)
    return err


# --------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------

FORMATS = [
    # extension, Pillow format name, tolerance on mean |diff| (0 = lossless)
    ("jpg", "JPEG", 12.0),
    ("png", "PNG", 0.0),
    ("webp", "WEBP", 12.0),
    ("gif", "GIF", 8.0),
    ("bmp", "BMP", 0.0),
    ("tiff", "TIFF", 0.0),
]


@pytest.mark.parametrize("ext,fmt,tol", FORMATS, ids=[f[0] for f in FORMATS])
def test_each_format_loads_to_rgb_with_right_size(tmp_path, ext, fmt, tol):
    src = texture(48, 32, seed=1)
    p = tmp_path / f"img.{ext}"
    src.save(p)
    loaded = load_image(p)
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (48, 32)
    assert (loaded.width, loaded.height) == (48, 32)
    assert loaded.format == fmt
    assert loaded.n_frames == 1
    diff = mean_abs_diff(loaded.image, src)
    if tol == 0:
        assert diff == 0
    else:
        assert diff <= tol
        # the tolerance still tells the picture from a mirrored copy of it
        assert mean_abs_diff(loaded.image, src.transpose(T.FLIP_LEFT_RIGHT)) > 3 * tol


def test_uppercase_extension_and_str_path(tmp_path):
    p = tmp_path / "PHOTO.JPG"
    gradient(20, 10).save(p, format="JPEG")
    loaded = load_image(str(p))
    assert loaded.image.size == (20, 10)
    assert loaded.format == "JPEG"


# --------------------------------------------------------------------------
# modes
# --------------------------------------------------------------------------

CMYK_BLOCKS = [
    # CMYK value, expected RGB
    ((0, 255, 255, 0), (255, 0, 0)),
    ((255, 0, 255, 0), (0, 255, 0)),
    ((255, 255, 0, 0), (0, 0, 255)),
    ((0, 0, 0, 255), (0, 0, 0)),
]


@pytest.mark.parametrize("ext", ["jpg", "tiff"])
def test_cmyk_is_converted_to_rgb(tmp_path, ext):
    img = Image.new("CMYK", (64, 16))
    for i, (cmyk, _) in enumerate(CMYK_BLOCKS):
        img.paste(cmyk, (i * 16, 0, (i + 1) * 16, 16))
    p = tmp_path / f"cmyk.{ext}"
    img.save(p, **({"quality": 95} if ext == "jpg" else {}))
    assert Image.open(p).mode == "CMYK"
    out = load_image(p).image
    assert out.mode == "RGB" and out.size == (64, 16)
    tol = 12 if ext == "jpg" else 0
    for i, (_, rgb) in enumerate(CMYK_BLOCKS):
        got = out.getpixel((i * 16 + 8, 8))
        assert all(abs(g - e) <= tol for g, e in zip(got, rgb)), (i, got, rgb)


@pytest.mark.parametrize("ext", ["png", "gif"])
def test_palette_transparency_becomes_grey(tmp_path, ext):
    img = Image.new("P", (20, 20), 0)
    img.putpalette([200, 30, 40, 0, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (10, 0, 20, 20))  # right half uses the (black) transparent index
    p = tmp_path / f"pal.{ext}"
    img.save(p, transparency=1)
    with Image.open(p) as check:
        assert check.mode == "P" and "transparency" in check.info
    out = load_image(p).image
    assert out.mode == "RGB"
    assert out.getpixel((3, 5)) == (200, 30, 40)
    assert out.getpixel((15, 5)) == (128, 128, 128)  # the background, not black


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 10, 120, 250] + [0] * (256 * 3 - 6))
    p = tmp_path / "pal.png"
    img.save(p)
    out = load_image(p).image
    assert out.mode == "RGB" and out.getpixel((4, 4)) == (10, 120, 250)


def test_la_alpha_composited_on_grey(tmp_path):
    grey = Image.new("L", (30, 10), 40)
    alpha = Image.new("L", (30, 10), 255)
    alpha.paste(0, (10, 0, 20, 10))     # fully transparent middle third
    alpha.paste(128, (20, 0, 30, 10))   # half transparent right third
    p = tmp_path / "la.png"
    Image.merge("LA", [grey, alpha]).save(p)
    assert Image.open(p).mode == "LA"
    out = load_image(p).image
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (40, 40, 40)
    assert out.getpixel((15, 5)) == (128, 128, 128)
    expected = round(40 * 128 / 255 + 128 * 127 / 255)  # ~84
    assert all(abs(v - expected) <= 2 for v in out.getpixel((25, 5)))


def test_rgba_alpha_composited_on_grey(tmp_path):
    img = Image.new("RGBA", (30, 10), (0, 0, 255, 255))
    img.paste((255, 0, 0, 0), (10, 0, 20, 10))    # transparent red: must not show
    img.paste((0, 0, 0, 128), (20, 0, 30, 10))    # half transparent black
    p = tmp_path / "rgba.png"
    img.save(p)
    out = load_image(p).image
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (0, 0, 255)
    assert out.getpixel((15, 5)) == (128, 128, 128)
    assert all(abs(v - 64) <= 2 for v in out.getpixel((25, 5)))


def test_rgba_webp_alpha_composited_on_grey(tmp_path):
    img = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    img.paste((0, 200, 0, 255), (0, 0, 8, 16))
    p = tmp_path / "rgba.webp"
    img.save(p, lossless=True)
    out = load_image(p).image
    assert out.getpixel((3, 8)) == (0, 200, 0)
    assert out.getpixel((12, 8)) == (128, 128, 128)


def test_16bit_grey_png_is_scaled_not_wrapped(tmp_path):
    # 32896 (0x8080) and 65535 would survive a plain "& 0xff" wrap, so 1000 and
    # 40000 are the values that tell scaling from wrapping (or from clipping).
    values = np.array([[0, 257, 32896, 40000, 65535, 1000]], dtype=np.uint16)
    p = tmp_path / "grey16.png"
    Image.fromarray(values).save(p)
    assert Image.open(p).mode in ("I;16", "I")  # really a 16-bit file
    out = load_image(p).image
    assert out.mode == "RGB" and out.size == (6, 1)
    got = np.asarray(out)[0]
    assert (got[:, 0] == got[:, 1]).all() and (got[:, 0] == got[:, 2]).all()
    grey = got[:, 0].astype(int)
    assert grey[0] == 0
    assert grey[1] == 1
    assert abs(grey[2] - 128) <= 1
    assert abs(grey[3] - 156) <= 1          # 40000 / 257 = 155.6; wrapped would be 64
    assert grey[4] == 255
    assert abs(grey[5] - 4) <= 1            # 1000 / 257 = 3.9; wrapped 232, clipped 255


def test_16bit_gradient_is_monotonic(tmp_path):
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(1, 256).repeat(4, 0)
    p = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(p)
    grey = np.asarray(load_image(p).image)[0, :, 0].astype(int)
    assert (np.diff(grey) >= 0).all()
    assert grey[0] == 0 and grey[-1] == 255
    assert np.abs(grey - np.arange(256)).max() <= 1


def test_float_tiff_0_to_1_maps_to_0_to_255(tmp_path):
    values = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    p = tmp_path / "float.tiff"
    Image.fromarray(values).save(p)
    assert Image.open(p).mode == "F"
    out = load_image(p).image
    assert out.mode == "RGB" and out.size == (4, 1)
    grey = np.asarray(out)[0, :, 0].astype(int)
    assert grey[0] == 0
    assert abs(grey[1] - 64) <= 1
    assert abs(grey[2] - 128) <= 1
    assert grey[3] == 255


@pytest.mark.parametrize("ext", ["png", "bmp", "tiff"])
def test_mode_1_bilevel(tmp_path, ext):
    stripes = np.tile(np.array([0, 255] * 4, np.uint8), (6, 1))
    p = tmp_path / f"bits.{ext}"
    Image.fromarray(stripes).convert("1").save(p)
    assert Image.open(p).mode == "1"
    out = load_image(p).image
    assert out.mode == "RGB" and out.size == (8, 6)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)


def test_plain_greyscale(tmp_path):
    p = tmp_path / "l.png"
    Image.new("L", (5, 5), 77).save(p)
    out = load_image(p).image
    assert out.mode == "RGB" and out.getpixel((2, 2)) == (77, 77, 77)


# --------------------------------------------------------------------------
# animations
# --------------------------------------------------------------------------

ANIM_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.mark.parametrize("ext,fmt", [("gif", "GIF"), ("webp", "WEBP"), ("png", "PNG")])
def test_animation_returns_first_frame(tmp_path, ext, fmt):
    frames = [Image.new("RGB", (16, 12), c) for c in ANIM_COLOURS]
    p = tmp_path / f"anim.{ext}"
    extra = {"lossless": True} if ext == "webp" else {}
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
    loaded = load_image(p)
    assert loaded.format == fmt
    assert loaded.n_frames == 3
    assert loaded.image.mode == "RGB" and loaded.image.size == (16, 12)
    colours = {c for _, c in loaded.image.getcolors()}
    assert colours == {(255, 0, 0)}


def test_animation_first_frame_is_not_a_later_one(tmp_path):
    # first frame is green, so an implementation that returns the last frame
    # (blue) or the frame the counter stopped on would fail
    frames = [Image.new("RGB", (10, 10), c) for c in [(0, 255, 0), (0, 0, 255)]]
    p = tmp_path / "two.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50)
    loaded = load_image(p)
    assert loaded.n_frames == 2
    assert loaded.image.getpixel((5, 5)) == (0, 255, 0)


# --------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------

ORIENTATION_TRANSPOSE = {
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_270,   # rotate 90 degrees clockwise to display
    7: T.TRANSVERSE,
    8: T.ROTATE_90,    # rotate 90 degrees counter-clockwise to display
}


@pytest.mark.parametrize("orientation", [3, 6, 8, 2, 4, 5, 7])
def test_jpeg_exif_orientation_applied(tmp_path, orientation):
    src = texture(64, 40, seed=3)
    p = tmp_path / f"o{orientation}.jpg"
    src.save(p, exif=exif_with_orientation(orientation), quality=95)
    loaded = load_image(p)
    expected = src.transpose(ORIENTATION_TRANSPOSE[orientation])
    assert loaded.image.size == expected.size
    assert (loaded.width, loaded.height) == expected.size
    if orientation in (5, 6, 7, 8):
        assert (loaded.width, loaded.height) == (40, 64)
    # exactly the stored pixels, transposed (the transpose itself is lossless)
    with Image.open(p) as raw:
        stored = raw.convert("RGB")
    assert np.array_equal(np.asarray(loaded.image),
                          np.asarray(stored.transpose(ORIENTATION_TRANSPOSE[orientation])))
    good = mean_abs_diff(loaded.image, expected)
    assert good < 6.0
    # and clearly not some other orientation of the same size
    for other, method in ORIENTATION_TRANSPOSE.items():
        candidate = src.transpose(method)
        if other != orientation and candidate.size == expected.size:
            assert mean_abs_diff(loaded.image, candidate) > good + 10


def test_png_exif_orientation_6_exact(tmp_path):
    src = texture(30, 20, seed=4)
    p = tmp_path / "o6.png"
    src.save(p, exif=exif_with_orientation(6))
    loaded = load_image(p)
    assert (loaded.width, loaded.height) == (20, 30)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(src.transpose(T.ROTATE_270)))


def test_orientation_1_is_untouched(tmp_path):
    src = texture(30, 20, seed=4)
    p = tmp_path / "o1.png"
    src.save(p, exif=exif_with_orientation(1))
    loaded = load_image(p)
    assert (loaded.width, loaded.height) == (30, 20)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(src))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_tiff_exif_orientation_applied_once(tmp_path, orientation):
    src = texture(30, 20, seed=5)
    p = tmp_path / f"o{orientation}.tiff"
    src.save(p, exif=exif_with_orientation(orientation))
    expected = src.transpose(ORIENTATION_TRANSPOSE[orientation])
    loaded = load_image(p)
    assert (loaded.width, loaded.height) == expected.size
    assert loaded.image.size == expected.size
    assert np.array_equal(np.asarray(loaded.image), np.asarray(expected))


def test_orientation_with_max_side(tmp_path):
    src = texture(640, 480, seed=6)
    p = tmp_path / "o6big.jpg"
    src.save(p, exif=exif_with_orientation(6), quality=90)
    loaded = load_image(p, max_side=64)
    assert (loaded.width, loaded.height) == (480, 640)
    assert loaded.image.size == (48, 64)
    expected = src.transpose(T.ROTATE_270).resize((48, 64), Image.Resampling.BOX)
    assert mean_abs_diff(loaded.image, expected) < 6


# --------------------------------------------------------------------------
# decompression bombs
# --------------------------------------------------------------------------

def test_pixel_limit_refuses_small_limit(tmp_path):
    p = tmp_path / "s.png"
    Image.new("RGB", (20, 20)).save(p)
    with pytest.raises(ImageLoadError) as info:
        load_image(p, max_pixels=399)
    assert "limit" in info.value.reason
    assert "399" in info.value.reason
    # exactly at the limit is fine
    assert load_image(p, max_pixels=400).width == 20


def test_pixel_limit_refuses_before_decoding(tmp_path, monkeypatch):
    # 12000 x 10000 = 120 M pixels: above the default limit of 100 M but below
    # Pillow's own hard limit, so only matchkit's check can refuse it.
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(12000, 10000))
    assert p.stat().st_size < 300

    loads = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self):
        loads.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    with pytest.raises(ImageLoadError) as info:
        load_image(p)
    reason = info.value.reason
    assert "limit" in reason
    assert "100000000" in reason or "100,000,000" in reason
    assert "12000x10000" in reason
    assert loads == []  # nothing was decoded


def test_huge_claimed_size_refused(tmp_path):
    p = tmp_path / "huge.png"
    p.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(ImageLoadError) as info:
        load_image(p)
    assert "limit" in info.value.reason


def test_pixel_limit_applies_to_jpeg(tmp_path):
    p = tmp_path / "a.jpg"
    gradient(100, 50).save(p)
    with pytest.raises(ImageLoadError) as info:
        load_image(p, max_pixels=4999, max_side=10)
    assert "limit" in info.value.reason


# --------------------------------------------------------------------------
# bad input: always ImageLoadError with a reason, never anything else
# --------------------------------------------------------------------------

def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    err = assert_load_error(p)
    assert "empty" in err.reason or "0 bytes" in err.reason


@pytest.mark.parametrize("ext,fmt", [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"),
                                     ("gif", "GIF"), ("bmp", "BMP"), ("tiff", "TIFF")])
def test_truncated_half_file(tmp_path, ext, fmt):
    data = encoded(Image.fromarray(
        np.random.default_rng(7).integers(0, 256, (60, 80, 3), dtype=np.uint8)), fmt)
    p = tmp_path / f"cut.{ext}"
    p.write_bytes(data[: len(data) // 2])
    assert_load_error(p)


def test_truncated_files_at_many_cut_points(tmp_path):
    rng = np.random.default_rng(8)
    img = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    for fmt in ("JPEG", "PNG"):
        data = encoded(img, fmt)
        # leave off at least the last 32 bytes: real pixel data is missing
        for cut in np.linspace(1, len(data) - 32, 25).astype(int):
            p = tmp_path / f"cut{cut}.{fmt.lower()}"
            p.write_bytes(data[:cut])
            assert_load_error(p)


def test_random_bytes_named_jpg(tmp_path):
    p = tmp_path / "noise.jpg"
    p.write_bytes(np.random.default_rng(9).bytes(4096))
    assert_load_error(p)


def test_jpeg_magic_followed_by_garbage(tmp_path):
    p = tmp_path / "garbage.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(10).bytes(4096))
    assert_load_error(p)


def test_corrupted_bytes_inside_valid_files(tmp_path):
    rng = np.random.default_rng(11)
    img = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        data = encoded(img, fmt)
        for k in range(10):
            broken = bytearray(data)
            for pos in rng.integers(8, len(data), 6):
                broken[pos] = int(rng.integers(0, 256))
            p = tmp_path / f"bad{k}.{fmt.lower()}"
            p.write_bytes(bytes(broken))
            try:
                loaded = load_image(p)
            except ImageLoadError as e:
                assert e.reason.strip()
            else:  # some damage is survivable; then the result must be sane
                assert loaded.image.mode == "RGB"
                assert loaded.image.size == (32, 24)


@pytest.mark.parametrize("exc,words", [
    (RuntimeError("decoder bug"), "RuntimeError"),
    (KeyError("tag"), "KeyError"),
    (MemoryError(), "memory"),
    (OSError("broken data stream"), "broken data stream"),
])
def test_unexpected_decoder_exceptions_become_load_errors(tmp_path, monkeypatch, exc, words):
    p = tmp_path / "ok.png"
    gradient(10, 10).save(p)

    def failing_load(self):
        raise exc

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)
    err = assert_load_error(p)
    assert words in err.reason


def test_text_file_named_png(tmp_path):
    p = tmp_path / "readme.png"
    p.write_text("this is not a picture\n" * 20)
    err = assert_load_error(p)
    assert "not an image" in err.reason or "unrecognised" in err.reason


def test_directory_path(tmp_path):
    d = tmp_path / "folder.jpg"
    d.mkdir()
    assert_load_error(d)


def test_missing_path(tmp_path):
    err = assert_load_error(tmp_path / "nope.jpg")
    assert "cannot read" in err.reason or "No such file" in err.reason


def test_error_message_contains_path_and_reason(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageLoadError) as info:
        load_image(p)
    assert str(p) in str(info.value)
    assert info.value.reason in str(info.value)


# --------------------------------------------------------------------------
# max_side
# --------------------------------------------------------------------------

def test_max_side_large_jpeg(tmp_path):
    src = texture(2000, 1500, seed=12)
    p = tmp_path / "big.jpg"
    src.save(p, quality=90)
    loaded = load_image(p, max_side=64)
    assert max(loaded.image.size) == 64
    assert loaded.image.size == (64, 48)
    assert (loaded.width, loaded.height) == (2000, 1500)
    assert loaded.image.mode == "RGB"
    # the content is the whole picture, just smaller
    expected = src.resize((64, 48), Image.Resampling.BOX)
    assert mean_abs_diff(loaded.image, expected) < 6


def test_max_side_jpeg_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    # JPEG draft mode: the decoder itself produces a smaller image (1/8 scale
    # here), still at least max_side on the longer side, before any resize.
    import matchkit.io.load as mio

    p = tmp_path / "big.jpg"
    texture(2000, 1500, seed=12).save(p, quality=90)
    seen = []
    real_shrink = mio.shrink

    def spy_shrink(img, max_side):
        seen.append(img.size)
        return real_shrink(img, max_side)

    monkeypatch.setattr(mio, "shrink", spy_shrink)
    loaded = load_image(p, max_side=64)
    assert loaded.image.size == (64, 48)
    assert len(seen) == 1
    assert 64 <= max(seen[0]) <= 2000 // 4


def test_max_side_portrait_png(tmp_path):
    src = texture(300, 600, seed=13)
    p = tmp_path / "tall.png"
    src.save(p)
    loaded = load_image(p, max_side=50)
    assert loaded.image.size == (25, 50)
    assert (loaded.width, loaded.height) == (300, 600)


def test_max_side_larger_than_image_keeps_size(tmp_path):
    src = texture(120, 80, seed=14)
    p = tmp_path / "small.png"
    src.save(p)
    loaded = load_image(p, max_side=500)
    assert loaded.image.size == (120, 80)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(src))


# --------------------------------------------------------------------------
# iter_image_files
# --------------------------------------------------------------------------

def touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # content does not matter for listing
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "photos"
    # created in non-sorted order on purpose
    for name in ["b.jpg", "sub/deeper/f.tiff", "a.PNG", "sub/d.webp", "c.txt",
                 "notes.json", ".hidden.jpg", ".cache/x.jpg", "sub/.e.gif",
                 "sub/.private/g.png", "noext"]:
        touch_image(root / name)
    (root / "dir.jpg").mkdir()  # a folder with an image-like name is not a file
    return root


def rel(paths, root):
    return [p.relative_to(root).as_posix() for p in paths]


def test_iter_recursive_sorted_and_filtered(tree):
    got = list(iter_image_files([tree]))
    assert rel(got, tree) == ["a.PNG", "b.jpg", "sub/d.webp", "sub/deeper/f.tiff"]
    assert all(isinstance(p, Path) for p in got)


def test_iter_non_recursive(tree):
    got = list(iter_image_files([tree], recursive=False))
    assert rel(got, tree) == ["a.PNG", "b.jpg"]


def test_iter_sorted_order(tmp_path):
    for name in ["2.jpg", "10.jpg", "1.jpg", "b.png", "a.png"]:
        touch_image(tmp_path / name)
    got = [p.name for p in iter_image_files([tmp_path])]
    assert got == ["1.jpg", "10.jpg", "2.jpg", "a.png", "b.png"]


def test_iter_accepts_str_paths(tree):
    got = list(iter_image_files([str(tree)]))
    assert len(got) == 4


def test_iter_explicit_files_always_yielded(tree):
    explicit = [tree / "c.txt", tree / ".hidden.jpg", tree / "noext"]
    got = list(iter_image_files(explicit))
    assert got == explicit


def test_iter_mixed_file_and_folder(tree):
    got = list(iter_image_files([tree / "notes.json", tree / "sub"]))
    assert [p.name for p in got] == ["notes.json", "d.webp", "f.tiff"]


def test_iter_root_below_hidden_folder_still_walked(tmp_path):
    root = tmp_path / ".config" / "album"
    touch_image(root / "p.jpg")
    touch_image(root / ".thumbs" / "t.jpg")
    got = list(iter_image_files([root]))
    assert [p.name for p in got] == ["p.jpg"]


def test_iter_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_image_files([tmp_path / "missing"]))


def test_iter_missing_path_among_good_ones_raises(tree):
    with pytest.raises(FileNotFoundError):
        list(iter_image_files([tree, tree / "missing.jpg"]))


def test_iter_empty_folder(tmp_path):
    assert list(iter_image_files([tmp_path])) == []


def test_dark_16bit_image_stays_dark_and_folder_reason(tmp_path):
    arr = np.full((8, 8), 200, dtype=np.uint16)  # very dark in 16-bit terms
    p = tmp_path / "dark16.png"
    Image.fromarray(arr).save(p)
    out = np.asarray(load_image(p).image)
    assert out.max() <= 1
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path / "folder.jpg")


def test_load_error_survives_pickling():
    """Failures travel between processes (a Ray task sends them to its shard's actor)."""
    import pickle

    e = pickle.loads(pickle.dumps(ImageLoadError("a/b.jpg", "not an image", size=3, mtime_ns=7)))
    assert (e.path, e.reason, e.size, e.mtime_ns, str(e)) == (
        "a/b.jpg", "not an image", 3, 7, "a/b.jpg: not an image")


def test_broken_links_with_image_names_are_listed_and_reported_unreadable(tmp_path):
    """A folder's broken link, or loop of links, named like an image is
    listed, and a run reports it as skipped with the reason, under the name
    the user has for it; links to folders are not followed into."""
    import json

    from matchkit.jobs.dedupe import dedupe

    from conftest import make_photo

    folder = tmp_path / "photos"
    folder.mkdir()
    make_photo(1).save(folder / "x.jpg", quality=90)
    make_photo(1).save(folder / "y.jpg", quality=90)
    (folder / "linked.jpg").symlink_to("x.jpg")
    (folder / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder / "loop1.jpg").symlink_to("loop2.jpg")
    (folder / "loop2.jpg").symlink_to("loop1.jpg")
    (folder / "up.jpg").symlink_to(tmp_path)  # a link to a folder: not an image
    names = [p.name for p in iter_image_files([folder])]
    assert names == ["dangling.jpg", "linked.jpg", "loop1.jpg", "loop2.jpg", "x.jpg", "y.jpg"]
    for gallery in (None, tmp_path / "g"):
        report = json.loads(json.dumps(dedupe([folder], gallery=gallery).to_dict()))
        skipped = {s["path"]: s["reason"] for s in report["skipped"]}
        assert set(skipped) == {str(folder / n) for n in ("dangling.jpg", "loop1.jpg",
                                                           "loop2.jpg")}, skipped
        assert "broken link" in skipped[str(folder / "dangling.jpg")]
        assert report["stats"]["images"] == 2  # x.jpg once (linked.jpg is the same file)


def _rglob_listing(root: Path, recursive: bool = True) -> list[Path]:
    """The listing as ``iter_image_files`` made it before its own walk
    (``rglob`` and ``is_file`` on every path): the reference it must equal."""
    from matchkit.io.load import IMAGE_EXTENSIONS

    walker = sorted(root.rglob("*")) if recursive else sorted(root.iterdir())
    return [f for f in walker
            if not any(part.startswith(".") for part in f.relative_to(root).parts)
            and f.suffix.lower() in IMAGE_EXTENSIONS
            and (f.is_file() or (f.is_symlink() and not f.is_dir()))]


def test_iter_walk_lists_what_rglob_listed(tree, tmp_path):
    """Same files in the same order as the ``rglob`` walk, with links to
    files, to folders (not followed), broken links, loops of links, folders
    with image names, hidden folders and names that sort differently as
    strings than as paths ("a-b" before "a/..." as text, after as paths)."""
    outside = tmp_path / "outside"
    touch_image(outside / "o.jpg")
    touch_image(outside / "deep" / "od.png")
    touch_image(tree / "a" / "z.jpg")
    touch_image(tree / "a-b.jpg")
    touch_image(tree / "a.b" / "y.JPEG")
    (tree / "link-file.jpg").symlink_to(outside / "o.jpg")
    (tree / "link-dir").symlink_to(outside)
    (tree / "link-dir.jpg").symlink_to(outside)
    (tree / "broken.png").symlink_to(tree / "nowhere.png")
    (tree / "loop1.jpg").symlink_to(tree / "loop2.jpg")
    (tree / "loop2.jpg").symlink_to(tree / "loop1.jpg")
    (tree / "sub" / "up").symlink_to(tree)  # a loop through a folder link
    (tree / ".hid").mkdir()
    (tree / ".hid" / "l.jpg").symlink_to(outside / "o.jpg")
    for recursive in (True, False):
        got = list(iter_image_files([tree], recursive=recursive))
        assert got == _rglob_listing(tree, recursive)
    names = rel(iter_image_files([tree]), tree)
    assert {"link-file.jpg", "broken.png", "loop1.jpg", "a/z.jpg", "a-b.jpg"} <= set(names)
    assert not any(n.startswith(("link-dir", "sub/up", ".")) for n in names)
    assert names.index("a/z.jpg") < names.index("a-b.jpg")  # path order, as before


def test_iter_walk_leaves_out_a_folder_removed_while_walking(tree, monkeypatch):
    """A folder that vanishes between its parent's listing and its own is
    left out (the rest is listed), not the end of the run."""
    import matchkit.io.load as mio

    real = os.scandir

    def scandir(path):
        if Path(path).name == "deeper":
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real(path)

    monkeypatch.setattr(mio.os, "scandir", scandir)
    assert rel(iter_image_files([tree]), tree) == ["a.PNG", "b.jpg", "sub/d.webp"]
