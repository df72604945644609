"""One image file -> one :class:`ImageRecord`: everything later stages need,
extracted in one decode.

One pass over the file computes its byte digest, decodes a working-size copy
(JPEG draft mode keeps this cheap for camera photos) and derives the
perceptual signals from it. Also here: the pixel digests that extraction
stores, and whether two of them prove identical pixels (``jobs.check``,
``match.pixelchecks``). Running this over many files, in worker processes,
is :mod:`matchkit.features.pool`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from matchkit import signals as _signals
from matchkit.config import Settings
from matchkit.signals.hashing import JPEG_STREAM_PREFIX, file_digest
from matchkit.signals.image import BLANK_SPREAD, is_blank  # noqa: F401  (re-exported)
from matchkit.io.load import ImageLoadError, load_image, shrink
from matchkit.signals.local import LocalFeatures, working_grey
from matchkit.signals import extract_payloads


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
    #: Digest of the pixels (``load.LoadedImage.pixel_sha256``): equal digests
    #: mean equal pixels, whatever the container or metadata.
    pixel_sha256: str | None = None
    #: PNG of an icon drawn on transparency (``thumbmatch_views.icon_blob``), else None.
    icon: bytes | None = None
    #: Payload of each configured extra signal (``matchkit.signals``), None
    #: where it has nothing to say; None when no signal is configured.
    signals: dict[str, bytes | None] | None = None

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
    except Exception as e:  # one file's failure must never end a run
        raise ImageLoadError(path, _failure_reason(e), size=st.st_size,
                             mtime_ns=st.st_mtime_ns) from None


def _failure_reason(e: Exception) -> str:
    """What a user is told about a file whose extraction raised ``e``."""
    if isinstance(e, ImageLoadError):
        return e.reason
    if isinstance(e, OSError):
        return f"cannot read file: {e.strerror or e}"
    if isinstance(e, MemoryError):
        return "out of memory while processing"
    return f"cannot process image: {type(e).__name__}: {e}"


class Views:
    """One decoded file and the views the built-in signals read, each cut
    once, when first asked for (``Signal.extract_fields``).

    ``image`` is the working decode; ``grey_work`` its grey copy at
    ``work_side`` (ORB); ``hash_thumb`` the small RGB view hashes and
    histograms read (``hash_side``); ``grey_thumb`` the grey thumbnail of the
    photometric checks (``thumb_side``). With local features on, both small
    views come from one intermediate reduction of the decode (never from the
    file again), as they always have: the stored values depend on it.
    """

    def __init__(self, path: Path, loaded, sha256: str, settings: Settings):
        self.path, self.loaded, self.sha256, self.settings = path, loaded, sha256, settings
        self.image = loaded.image

    @cached_property
    def grey_work(self) -> np.ndarray:
        return working_grey(self.image, self.settings.work_side)

    @cached_property
    def _small(self):
        s = self.settings
        return shrink(self.image, max(s.thumb_side, s.hash_side)) if s.local_features \
            else self.image

    @cached_property
    def hash_thumb(self):
        return shrink(self._small, self.settings.hash_side)

    @cached_property
    def grey_thumb(self) -> np.ndarray:
        return np.asarray(shrink(self._small, self.settings.thumb_side).convert("L"))


def _extract(path: Path, st: os.stat_result, settings: Settings) -> ImageRecord:
    digest = file_digest(path)
    loaded = load_image(path, max_side=settings.decode_side(), max_pixels=settings.max_pixels,
                        digest=True)
    payloads = extract_payloads(
        loaded.image, str(path), settings,
        load=lambda p, side: load_image(p, max_side=side, max_pixels=settings.max_pixels).image)
    views = Views(path, loaded, digest, settings)
    fields: dict = {}
    for sig in _signals.builtin():  # each fills its ``ImageRecord`` fields
        if sig.enabled(settings):
            fields.update(sig.extract_fields(views, settings))
    return ImageRecord(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns,
                       signals=payloads, **fields)


def stored_pixel_digest(path: str | os.PathLike, settings: Settings = Settings()) -> str | None:
    """The pixel digest extraction stores for ``path`` (``ImageRecord.pixel_sha256``),
    for comparing a file with gallery images. Raises :class:`ImageLoadError`."""
    return load_image(path, max_side=settings.decode_side(), max_pixels=settings.max_pixels,
                      digest=True).pixel_sha256


def full_pixel_digest(path: str | os.PathLike, settings: Settings = Settings()) -> str | None:
    """``hashing.pixel_digest`` of ``path`` decoded at full size (no draft
    mode); None when the file cannot be decoded now (gone, changed, too big)."""
    try:
        return load_image(path, max_pixels=settings.max_pixels, digest=True).pixel_sha256
    except ImageLoadError:
        return None


def both_draft_decoded(da: str | None, db: str | None) -> bool:
    """Whether two stored pixel digests are both JPEG stream digests: both
    files were decoded in draft mode, and when they are of one size, at one
    DCT scale. Two such files with identical pixels have identical coded
    coefficients (a lossless re-save: metadata, Huffman tables, progressive
    scans), so their draft-mode pixels and hashes are identical too: hashes
    that differ at all prove the pixels differ, with no full-size decode.
    (Files coded from different coefficients that still decode to identical
    full-size pixels are not proven identical: a conservative answer.)"""
    return (da is not None and db is not None
            and da.startswith(JPEG_STREAM_PREFIX) and db.startswith(JPEG_STREAM_PREFIX))


def digests_prove_same_pixels(da: str | None, db: str | None,
                              full_a: Callable[[], str | None],
                              full_b: Callable[[], str | None]) -> bool:
    """Whether two stored pixel digests (``stored_pixel_digest``) mean identical
    pixels. Equal digests do. A JPEG decoded in draft mode has only its coded
    stream's digest (``hashing.JPEG_STREAM_PREFIX``), which says nothing
    against another container of the same pixels (a PNG re-save): only then
    are both decoded at full size (``full_a()``/``full_b()``, called lazily;
    callers ask only for pairs whose hashes already say "same pixels")."""
    if da is None or db is None:
        return False
    if da == db:
        return True
    if not (da.startswith(JPEG_STREAM_PREFIX) or db.startswith(JPEG_STREAM_PREFIX)):
        return False  # both are digests of the full-resolution pixels
    fa = full_a()
    return fa is not None and fa == full_b()
