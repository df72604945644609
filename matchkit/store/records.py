"""Rows of a gallery database as Python values.

An image's row of the ``images`` table is a :class:`StoredImage`
(``_COLUMNS`` selects it, ``_row_to_image`` makes it); one image's ORB
features and grey thumbnail come from the ``local_features`` table through
:func:`read_local_features` (also used on a database opened read-only by
verification tasks on other machines). The compact encodings of those
columns are in :mod:`matchkit.store.stored`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

import numpy as np

from matchkit.signals.local import LocalFeatures
from matchkit.store.stored import stored_features
from matchkit.util.fspath import from_db


@dataclass
class StoredImage:
    """One image's row in the gallery."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    pixel_sha256: str | None
    width: int
    height: int
    format: str | None
    meta: dict = field(default_factory=dict)
    labels: list = field(default_factory=list)
    #: Estimated JPEG quality (quantisation tables) at extraction; None otherwise.
    jpeg_quality: int | None = None
    #: One flat colour after compositing transparency: matched only exactly.
    blank: bool = False

    @property
    def pixels(self) -> int:
        return self.width * self.height


_COLUMNS = ("id, path, size, mtime_ns, sha256, pixel_sha256, width, height, format, meta, labels, "
            "jpeg_quality, blank")


def _row_to_image(row) -> StoredImage:
    return StoredImage(row[0], from_db(row[1]), *row[2:9], meta=json.loads(row[9]),
                       labels=json.loads(row[10]), jpeg_quality=row[11], blank=bool(row[12]))


def read_local_features(db: sqlite3.Connection, image_id: int
                        ) -> tuple[LocalFeatures, np.ndarray] | None:
    """One image's stored ORB features and grey thumbnail from a gallery
    database (also opened read-only by verification tasks on other machines)."""
    row = db.execute(
        "SELECT width, height, xy, descriptors, thumb, thumb_width, thumb_height, encoding "
        "FROM local_features WHERE image_id=?", (image_id,)).fetchone()
    return None if row is None else stored_features(row)


def _chunks(items: list, n: int):
    """``items`` in slices of at most ``n`` (an ``IN (...)`` list stays under
    SQLite's limit on a statement's parameters)."""
    for i in range(0, len(items), n):
        yield items[i: i + n]
