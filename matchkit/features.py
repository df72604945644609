"""Per-image features: everything later stages need, extracted in one decode.

One pass over each file computes its byte digest, decodes a working-size copy
(JPEG draft mode keeps this cheap for camera photos) and derives the
perceptual signals from it. Large batches run in worker processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
import itertools
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .colour import colour_histogram
from .config import Settings
from .hashing import dihedral_phashes, file_digest, pixel_digest
from .io import ImageLoadError, load_image, shrink
from .local import LocalFeatures, extract_local, working_grey


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
    #: ORB keypoints on the working image (None when local features are off).
    local: LocalFeatures | None = None
    #: Grey thumbnail (longer side ``thumb_side``) for photometric checks.
    thumb: np.ndarray | None = None
    #: Estimated JPEG quality from the quantisation tables (None: not a JPEG).
    jpeg_quality: int | None = None
    #: Nothing to see: one flat colour once transparency is composited.
    blank: bool = False

    @property
    def pixels(self) -> int:
        return self.width * self.height


def extract(path: str | os.PathLike, settings: Settings = Settings()) -> ImageRecord:
    """Compute an :class:`ImageRecord` for one file.

    Raises :class:`ImageLoadError` for any failure, whatever raised it
    (decoder, OpenCV, numpy), stamped with the size and mtime the file had
    when it was read, so a file that changes afterwards is read again.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise ImageLoadError(path, f"cannot read file: {e.strerror or e}") from None
    try:
        return _extract(path, st, settings)
    except ImageLoadError as e:
        raise ImageLoadError(path, e.reason, size=st.st_size, mtime_ns=st.st_mtime_ns) from None
    except OSError as e:
        raise ImageLoadError(path, f"cannot read file: {e.strerror or e}",
                             size=st.st_size, mtime_ns=st.st_mtime_ns) from None
    except MemoryError:
        raise ImageLoadError(path, "out of memory while processing",
                             size=st.st_size, mtime_ns=st.st_mtime_ns) from None
    except Exception as e:  # one file's failure must never end a run
        raise ImageLoadError(path, f"cannot process image: {type(e).__name__}: {e}",
                             size=st.st_size, mtime_ns=st.st_mtime_ns) from None


def _extract(path: Path, st: os.stat_result, settings: Settings) -> ImageRecord:
    digest = file_digest(path)
    loaded = load_image(path, max_side=settings.decode_side(), max_pixels=settings.max_pixels)
    image = loaded.image
    local = grey_thumb = None
    if settings.local_features:
        grey = working_grey(image, settings.work_side)
        local = extract_local(grey, settings.n_features)
        # Smaller views come from the (already reduced) decode, not the file.
        image = shrink(image, max(settings.thumb_side, settings.hash_side))
        grey_thumb = np.asarray(shrink(image, settings.thumb_side).convert("L"))
    thumb = shrink(image, settings.hash_side)
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
        local=local,
        thumb=grey_thumb,
        jpeg_quality=loaded.jpeg_quality,
        blank=is_blank(thumb),
    )


#: Largest difference (levels, any channel) from the median colour that a
#: blank image's hash thumbnail may have anywhere: JPEG noise on a flat
#: colour stays well under it, a visible shape does not.
BLANK_SPREAD = 6


def is_blank(thumb) -> bool:
    """Whether a (small RGB) image shows nothing: one flat colour. A fully
    transparent image is one, composited over the background; blank images
    are alike by construction and never near-duplicates of each other."""
    a = np.asarray(thumb.convert("RGB"), np.int16).reshape(-1, 3)
    if a.size == 0:
        return True
    return bool(np.abs(a - np.median(a, axis=0)).max() <= BLANK_SPREAD)


def full_pixel_digest(path: str | os.PathLike, settings: Settings = Settings()) -> str:
    """Digest of the full-resolution pixels; only needed for exact-match checks.
    Raises :class:`ImageLoadError` for any failure."""
    image = load_image(path, max_pixels=settings.max_pixels).image
    try:
        return pixel_digest(image)
    except Exception as e:  # e.g. out of memory on a huge image: not an exact match then
        raise ImageLoadError(path, f"cannot digest pixels: {type(e).__name__}: {e}") from None


def _extract_or_reason(path: str, settings: Settings
                       ) -> ImageRecord | tuple[str, str, int | None, int | None]:
    """Process-pool worker: failures travel back as (path, reason, size, mtime_ns)."""
    try:
        return extract(path, settings)
    except ImageLoadError as e:
        return (e.path, e.reason, e.size, e.mtime_ns)


#: Below this many files a process pool costs more to start than it saves.
PROCESS_POOL_MIN_FILES = 200


def _pool_context():
    """Worker processes start from a forkserver (spawn where there is none),
    never by forking this process: a child forked while one of this process's
    native thread pools held a lock waits for it for ever (seen: ``dedupe``
    in a process that had run label and query work before; no Python-level
    check sees those threads). The server imports this module once, so each
    worker still starts in milliseconds."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _one_thread_each() -> None:
    """Worker processes already use every core between them: OpenCV's own
    thread pool in each would only oversubscribe the cores."""
    import cv2

    cv2.setNumThreads(1)


def extract_many(
    paths: Iterable[str | os.PathLike],
    settings: Settings = Settings(),
    on_done: Callable[[], None] | None = None,
) -> Iterator[tuple[str, ImageRecord | ImageLoadError]]:
    """Extract records for many files in parallel, yielding in input order.

    Failures are yielded as :class:`ImageLoadError` values, not raised, so one
    bad file never stops the others. Large batches use worker processes (the
    Python part of decoding and hashing holds the GIL, so threads scale
    poorly); small ones run in this process.
    """
    paths = [str(p) for p in paths]
    n = min(settings.n_workers(), max(1, len(paths)))
    if n <= 1 or len(paths) < PROCESS_POOL_MIN_FILES:
        results: Iterable = (_extract_or_reason(p, settings) for p in paths)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=n, mp_context=_pool_context(),
                                   initializer=_one_thread_each)
        chunk = max(1, min(32, len(paths) // (n * 8)))
        results = pool.map(_extract_or_reason, paths, itertools.repeat(settings), chunksize=chunk)
    try:
        for path, result in zip(paths, results):
            if on_done:
                on_done()
            if isinstance(result, tuple):
                result = ImageLoadError(result[0], result[1], size=result[2], mtime_ns=result[3])
            yield path, result
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
