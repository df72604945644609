"""Images a gallery holds whose files are gone from the folders it indexes.

Why: a gallery remembers every file it was given. When files are deleted or
moved away (by hand, or by ``dedupe --move-duplicates-to``), their images
stay: out of every later run, but in the indexes and on disk, and a gallery
checked for copies answers with them. ``matchkit index FOLDERS
--forget-missing`` forgets the images under those folders whose files are no
longer there; only the gallery changes, never a file. Images outside the
folders are left alone (another drive may just not be mounted).
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def missing_images(gallery, folders: Iterable[str | os.PathLike]) -> dict[int, str]:
    """Images of ``gallery`` stored under one of ``folders`` whose file no
    longer exists: id -> path."""
    roots = [os.path.join(os.path.abspath(f), "") for f in folders if os.path.isdir(f)]
    if not roots:
        return {}
    return {i: p for i, p in gallery.paths().items()
            if any(os.path.abspath(p).startswith(r) for r in roots) and not os.path.lexists(p)}


def forget_missing(gallery, folders: Iterable[str | os.PathLike]) -> list[str]:
    """Remove from ``gallery`` the images ``missing_images`` finds (the
    gallery's rows, index entries and matching state; no file is touched);
    returns their paths, sorted."""
    missing = missing_images(gallery, folders)
    if missing:
        gallery.remove(sorted(missing))
    return sorted(missing.values())
