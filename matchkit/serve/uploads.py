"""Uploaded bytes on disk, named by their content and never by the client.

An image added through the API is kept in ``G/serve/uploads/ab/<sha256>.<ext>``
(``ext`` from the decoded format), written durably (fsync of the file and its
folder) before the gallery commits it, so an upload acknowledged with 2xx
survives a killed server. The client's file name is only ever echoed back
as text. Query images (search, check, label) go to a private temporary
folder and are deleted after the answer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from fastapi import UploadFile

from matchkit.util.fs import atomic_write_bytes, fsync_dir
from matchkit.serve.errors import ApiError
from matchkit.serve.keys import SERVE_DIR
from matchkit.serve.limits import check_image

UPLOADS_DIR = "uploads"
_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
        "TIFF": "tif", "PPM": "ppm", "ICO": "ico", "TGA": "tga", "JPEG2000": "jp2",
        "AVIF": "avif", "HEIF": "heic"}
_CHUNK = 1 << 20


async def read_upload(file: UploadFile | None, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of an uploaded part, refusing empty or oversized ones."""
    if file is None:
        raise ApiError(422, f"{what}: an image file is required")
    data = bytearray()
    while True:
        chunk = await file.read(_CHUNK)
        if not chunk:
            break
        data += chunk
        if len(data) > max_bytes:
            raise ApiError(413, f"{what} is over the limit of {max_bytes} bytes")
    if not data:
        raise ApiError(422, f"{what} is empty")
    return bytes(data)


def stage(data: bytes, max_pixels: int) -> tuple[Path, str]:
    """A checked private copy of an upload: (path named by its content, sha256).
    Blocking (it decodes the image): call it off the event loop; remove the
    copy with :func:`discard`."""
    sha = hashlib.sha256(data).hexdigest()
    folder = Path(tempfile.mkdtemp(prefix="matchkit-serve-"))
    try:
        tmp = folder / f"{sha}.img"
        tmp.write_bytes(data)
        _, _, fmt = check_image(tmp, max_pixels)
        final = tmp.with_suffix("." + _EXT.get(fmt.upper(), "img"))
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return final, sha


def discard(staged_path: Path) -> None:
    shutil.rmtree(staged_path.parent, ignore_errors=True)


def store(gallery: str | os.PathLike, staged_path: Path, sha: str) -> Path:
    """Put a staged upload in the gallery's upload folder (durably; kept if there)."""
    target = Path(gallery) / SERVE_DIR / UPLOADS_DIR / sha[:2] / f"{sha}{staged_path.suffix}"
    if not target.exists():
        if not target.parent.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(target.parent.parent)  # the new folder's entry, too
        atomic_write_bytes(target, staged_path.read_bytes())
    return target


def is_upload(gallery: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file the server stored (safe for it to delete)."""
    root = (Path(gallery) / SERVE_DIR / UPLOADS_DIR).resolve()
    try:
        return Path(path).resolve().is_relative_to(root)
    except OSError:
        return False
