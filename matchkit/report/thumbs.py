"""Small JPEG thumbnails for reports, named by the content they show.

A report of thousands of images must stay light enough to open and to copy
around, so every thumbnail is a bounded JPEG (longer side ``side`` pixels).
Names come from a hash of the source file's bytes: byte-identical copies
share one thumbnail, a rerun reuses what is already there, and a file name
(which may contain anything, even markup) never reaches a URL. Files that
cannot be read become a :class:`Thumb` with an ``error``, never an exception.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from matchkit.util.fs import atomic_write
from matchkit.signals.hashing import file_digest
from matchkit.io.load import DEFAULT_MAX_PIXELS, ImageLoadError, load_image

#: Longer side of a report thumbnail (pixels) and its JPEG quality: about
#: 6-10 KB per photo, so 4,000 thumbnails stay well under 50 MB.
DEFAULT_SIDE = 200
DEFAULT_QUALITY = 75


@dataclass
class Thumb:
    """One source file's thumbnail and the facts a reviewer wants beside it."""

    path: str                    # the source file
    name: str | None = None      # thumbnail file name inside the thumbnail folder
    width: int | None = None     # full-resolution size of the source (after EXIF rotation)
    height: int | None = None
    file_size: int | None = None  # bytes of the source file
    digest: str | None = None     # content hash of the source (thumbnail name stem)
    error: str | None = None      # why there is no thumbnail


def make_thumb(path: str | os.PathLike, folder: str | os.PathLike, *,
               side: int = DEFAULT_SIDE, quality: int = DEFAULT_QUALITY,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Thumb:
    """Write the thumbnail of ``path`` into ``folder`` (reused if present).

    The thumbnail appears under its final name in one ``os.replace``, so a
    reader never sees a half-written file.
    """
    out = Thumb(str(path))
    try:
        out.file_size = os.stat(path).st_size
        out.digest = file_digest(path)[:32]  # names thumbnails: identical files share one
    except OSError as e:
        out.error = f"cannot read file: {e.strerror or e}"
        return out
    name = f"{out.digest}-{side}.jpg"
    target = Path(folder) / name
    try:
        loaded = load_image(path, max_side=side, max_pixels=max_pixels)
    except ImageLoadError as e:
        out.error = e.reason
        return out
    out.width, out.height = loaded.width, loaded.height
    if not target.exists():
        try:
            atomic_write(target, lambda tmp: loaded.image.save(
                tmp, "JPEG", quality=quality, optimize=True, progressive=True), durable=False)
        except OSError as e:
            out.error = f"cannot write thumbnail: {e.strerror or e}"
            return out
    out.name = name
    return out


def make_thumbs(paths: Iterable[str | os.PathLike], folder: str | os.PathLike, *,
                side: int = DEFAULT_SIDE, quality: int = DEFAULT_QUALITY,
                max_pixels: int | None = DEFAULT_MAX_PIXELS, workers: int | None = None,
                progress: Callable[[int], None] | None = None) -> dict[str, Thumb]:
    """Thumbnails of many files, on threads (Pillow decodes without the GIL).

    Returns ``{str(path): Thumb}``; every path gets an entry, failed or not.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys(str(p) for p in paths))
    workers = workers or min(8, os.cpu_count() or 1)

    def one(p: str) -> Thumb:
        try:
            return make_thumb(p, folder, side=side, quality=quality, max_pixels=max_pixels)
        except Exception as e:  # a decoder bug must not end the report
            return Thumb(p, error=f"cannot make thumbnail: {type(e).__name__}: {e}")

    out: dict[str, Thumb] = {}
    if workers <= 1 or len(unique) < 4:
        results = map(one, unique)
        for t in results:
            out[t.path] = t
            if progress:
                progress(1)
        return out
    with ThreadPoolExecutor(workers) as pool:
        for t in pool.map(one, unique):
            out[t.path] = t
            if progress:
                progress(1)
    return out
