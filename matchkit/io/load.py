"""Finding image files and decoding them without ever crashing a run.

Every failure becomes an :class:`ImageLoadError` with a short human reason, so a
caller can list the file as skipped and carry on with the rest of the
collection. Decoding is defensive: the pixel count is checked before any pixel
is decoded (decompression bombs), EXIF orientation is applied, every mode is
brought to 8-bit RGB and animations contribute their first frame.
"""

from __future__ import annotations

import os
import warnings
from struct import error as struct_error
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from matchkit.io.digest import jpeg_stream_digest, pixel_digest
from matchkit.io.jpeg_quality import jpeg_quality

#: File name endings that are treated as images when walking a folder. A file
#: named explicitly on the command line is always tried, whatever its name.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp",
        ".dib", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".ico",
        ".tga", ".jp2", ".j2k", ".avif", ".heic", ".heif",
    }
)

#: Default pixel limit (width x height) above which a file is not decoded.
DEFAULT_MAX_PIXELS = 100_000_000


class ImageLoadError(Exception):
    """A file that cannot be used as an image; ``reason`` says why in a few words."""

    def __init__(self, path: str | os.PathLike, reason: str, *,
                 size: int | None = None, mtime_ns: int | None = None):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        #: The file's size and mtime when it was read (None if it could not
        #: be stat-ed): a failure is remembered for that state of the file only.
        self.size = size
        self.mtime_ns = mtime_ns

    def __reduce__(self):
        """Pickles whole (an exception pickles only its message by default, and
        this one cannot be rebuilt from it): failures travel between
        processes, e.g. from a Ray task to the actor of a shard."""
        return (type(self), (self.path, self.reason), dict(self.__dict__))


@dataclass
class LoadedImage:
    """A decoded image plus facts about the file it came from.

    ``width``/``height`` are the full-resolution size after EXIF rotation, even
    when ``image`` itself was decoded smaller (JPEG draft mode) to save time.
    """

    image: Image.Image
    width: int
    height: int
    format: str | None
    n_frames: int = 1
    #: Estimated quality of a JPEG from its quantisation tables (None: not a JPEG).
    jpeg_quality: int | None = None
    #: With ``load_image(digest=True)``: ``digest.pixel_digest`` of the
    #: full-resolution pixels when they were decoded, else (a JPEG decoded
    #: in draft mode) ``digest.jpeg_stream_digest``; None if neither is known.
    pixel_sha256: str | None = None


def iter_image_files(
    paths: Iterable[str | os.PathLike], recursive: bool = True
) -> Iterator[Path]:
    """Yield image files under ``paths`` in a stable (sorted) order.

    Folders are walked (hidden entries skipped) and filtered by extension
    (links to files included, broken ones too); files given directly are
    yielded as they are. A missing path raises
    ``FileNotFoundError`` so the CLI can refuse it before any work starts.
    """
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            yield p
        elif p.is_dir():
            # (Paths order by their parts: the same order, sorted three times faster.)
            yield from sorted(_image_entries(p, recursive), key=lambda f: f.parts)
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")


def _image_entries(root: Path, recursive: bool) -> list[Path]:
    """The image files of a folder walk, unsorted: what ``root.rglob("*")``
    (or ``iterdir``) lists, filtered as ``iter_image_files`` says.

    Walked with ``os.scandir``: a plain file is known from its directory
    entry, so it costs no ``stat`` (``Path.is_file`` on every path of an
    ``rglob`` did one each, and built a path for every entry). As ``rglob``,
    links to folders are not followed, and folders that cannot be read are
    left out (and, unlike ``rglob``, one removed during the walk). Hidden
    folders are not entered (nothing in them is listed)."""
    out: list[Path] = []
    todo = [root]
    while todo:
        folder = todo.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            continue  # (unreadable, or gone since its parent was listed)
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if recursive and _is(entry.is_dir) and not entry.is_symlink():
                todo.append(folder / name)
            elif os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and (
                    _is(entry.is_file)
                    # (A broken link, or a loop of links, with an image's name
                    # is listed too: it is then reported as unreadable, with
                    # the reason, not silently left out.)
                    or (entry.is_symlink() and not _is(entry.is_dir))):
                out.append(folder / name)
    return out


def _is(test) -> bool:
    """A ``DirEntry`` test that follows links; False where the link cannot be
    followed (a loop, a vanished target), as ``Path.is_file`` answers."""
    try:
        return test()
    except OSError:
        return False


def load_image(
    path: str | os.PathLike,
    *,
    max_side: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    digest: bool = False,
) -> LoadedImage:
    """Decode ``path`` to an 8-bit RGB :class:`PIL.Image.Image`.

    ``max_side`` asks only for an image whose longer side is about that many
    pixels: JPEGs are then decoded at a reduced DCT scale (draft mode), which
    is several times faster for camera photos, and anything still larger is
    downsampled. ``max_pixels`` (width x height) guards against decompression
    bombs: a larger file is refused before its pixels are decoded.
    ``digest`` also fills ``LoadedImage.pixel_sha256`` (at the cost of
    hashing the decoded pixels, or reading a draft-decoded JPEG's bytes).

    Raises :class:`ImageLoadError` for every kind of bad input.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageLoadError(path, f"cannot read file: {e.strerror or e}") from None
    if path.is_dir():
        raise ImageLoadError(path, "is a folder, not a file")
    if size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies; Pillow's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return _decode(path, img, max_side, max_pixels, digest)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageLoadError(path, f"decompression bomb refused: {e}") from None
    except MemoryError:
        raise ImageLoadError(path, "out of memory while decoding") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
            struct_error, ZeroDivisionError) as e:
        raise ImageLoadError(path, f"truncated or corrupt image: {e}") from None
    except Exception as e:  # a decoder bug must not end the run
        raise ImageLoadError(path, f"cannot decode: {type(e).__name__}: {e}") from None


def _decode(path: Path, img: Image.Image, max_side: int | None,
            max_pixels: int | None, digest: bool = False) -> LoadedImage:
    width, height = coded = img.size
    if width <= 0 or height <= 0:
        raise ImageLoadError(path, f"invalid size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            path,
            f"decompression bomb refused: {width}x{height} = {width * height} pixels "
            f"is over the limit of {max_pixels}",
        )
    fmt = img.format
    quality = jpeg_quality(getattr(img, "quantization", None)) if fmt in ("JPEG", "MPO") else None
    n_frames = getattr(img, "n_frames", 1)
    if n_frames > 1:
        img.seek(0)
    if max_side and fmt == "JPEG":
        # draft() picks the largest DCT scale reduction that still keeps the
        # image at least this big, so quality at max_side is unaffected.
        scale = max(img.size) / max_side
        if scale >= 2:
            img.draft("RGB", (max(1, int(img.size[0] / scale)), max(1, int(img.size[1] / scale))))
    reduced = img.size != coded  # draft mode took effect
    img.load()
    # Read orientation after load(): some plugins (TIFF) rotate while loading
    # and drop the tag, and then their size is already the rotated one.
    orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    out = _to_rgb(img)
    if orientation != 1:
        out = _apply_orientation(out, orientation)
    pixels = None
    if digest:
        try:
            if not reduced:  # the full-resolution pixels: hash them
                pixels = pixel_digest(out)
            elif fmt == "JPEG":
                pixels = jpeg_stream_digest(path.read_bytes(), orientation)
        except (MemoryError, OSError):  # no digest then: never an exact match by pixels
            pixels = None
    if max_side:
        out = shrink(out, max_side)
    return LoadedImage(image=out, width=width, height=height, format=fmt, n_frames=n_frames,
                       jpeg_quality=quality, pixel_sha256=pixels)


def _apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return img.transpose(method) if method is not None else img


def shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Downsample so the longer side is at most ``max_side`` (no-op if already)."""
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    s = max_side / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    # reducing_gap makes Pillow box-reduce first: fast and alias-free.
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


#: What transparent pixels show: a fixed mid-grey. A picture drawn only in
#: the alpha channel (an icon whose colour is all black or all white) stays
#: visible over it either way, where white or black would hide one kind.
TRANSPARENT_BACKGROUND = (128, 128, 128)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Bring any Pillow mode to 8-bit RGB; transparency is composited over
    ``TRANSPARENT_BACKGROUND``, so images are compared as a viewer sees them."""
    mode = img.mode
    if "transparency" in img.info and mode in ("P", "RGB", "L"):
        img = img.convert("RGBA")  # palette or colour-key transparency
        mode = img.mode
    elif mode == "P":
        img = img.convert("RGB")
        return img
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode), "L").convert("RGB")
    return img.convert("RGB")


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit and float greyscale to 0..255 without wrapping.

    16-bit modes are scaled by their full range (a dark 16-bit image stays
    dark); floats in 0..1 are scaled by 255; anything else out of 0..255 is
    stretched from its minimum to its maximum.
    """
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        scaled = a / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        scaled = a * 255.0
    elif lo >= 0 and hi <= 255:
        scaled = a
    else:
        scaled = (a - lo) / (hi - lo or 1.0) * 255.0
    return np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0).clip(0, 255).round().astype(np.uint8)
