"""Per-image features: everything later stages need, extracted in one decode.

One pass over each file computes its byte digest, decodes a working-size copy
(JPEG draft mode keeps this cheap for camera photos) and derives the
perceptual signals from it. Extraction runs on a thread pool: Pillow, OpenCV
and hashlib release the GIL for the heavy parts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .colour import colour_histogram
from .config import Settings
from .hashing import dihedral_phashes, file_digest, pixel_digest
from .io import ImageLoadError, load_image, shrink


@dataclass
class ImageRecord:
    """What the gallery stores about one image file."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    format: str | None
    #: pHash of each of the 8 dihedral variants, (8, 32) uint8; row 0 is the image as is.
    phashes: np.ndarray
    #: Joint RGB histogram of the thumbnail, (512,) counts.
    colour: np.ndarray

    @property
    def pixels(self) -> int:
        return self.width * self.height


def extract(path: str | os.PathLike, settings: Settings = Settings()) -> ImageRecord:
    """Compute an :class:`ImageRecord` for one file; raises ImageLoadError."""
    path = Path(path)
    try:
        st = path.stat()
        digest = file_digest(path)
    except OSError as e:
        raise ImageLoadError(path, f"cannot read file: {e.strerror or e}") from None
    loaded = load_image(path, max_side=settings.decode_side(), max_pixels=settings.max_pixels)
    thumb = shrink(loaded.image, settings.hash_side)
    return ImageRecord(
        path=str(path),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        sha256=digest,
        width=loaded.width,
        height=loaded.height,
        format=loaded.format,
        phashes=dihedral_phashes(thumb),
        colour=colour_histogram(thumb),
    )


def full_pixel_digest(path: str | os.PathLike, settings: Settings = Settings()) -> str:
    """Digest of the full-resolution pixels; only needed for exact-match checks."""
    return pixel_digest(load_image(path, max_pixels=settings.max_pixels).image)


def extract_many(
    paths: Iterable[str | os.PathLike],
    settings: Settings = Settings(),
    on_done: Callable[[], None] | None = None,
) -> Iterator[tuple[str, ImageRecord | ImageLoadError]]:
    """Extract records for many files in parallel, yielding in input order.

    Failures are yielded as :class:`ImageLoadError` values, not raised, so one
    bad file never stops the others.
    """

    def work(p):
        try:
            result = extract(p, settings)
        except ImageLoadError as e:
            result = e
        if on_done:
            on_done()
        return str(p), result

    paths = list(paths)
    n = settings.n_workers()
    if n <= 1 or len(paths) < 4:
        yield from map(work, paths)
        return
    with ThreadPoolExecutor(max_workers=n) as pool:
        yield from pool.map(work, paths, chunksize=1)
