"""Reading a gallery's image rows: by id or path, in bulk, single columns
(pHashes, colour histograms, icons), each image's stored local features and
thumbnail, labels, and ids matching a filter. Every read is one query (or
one per 900 ids) on the gallery's connection; nothing here decodes a file.

:class:`_ReadingMixin` is part of :class:`~matchkit.store.gallery.Gallery`;
the row types are in :mod:`.records`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from matchkit.signals.hashing import PHASH_BITS
from matchkit.signals.local import LocalFeatures
from matchkit.store.adding import Skipped, _key
from matchkit.store.records import StoredImage, _COLUMNS, _chunks, _row_to_image, read_local_features
from matchkit.store.stored import decode_colour, decode_thumb
from matchkit.util.fspath import from_db, to_db


class _ReadingMixin:
    """The reads of a :class:`~matchkit.store.gallery.Gallery`'s image rows."""

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def ids(self) -> list[int]:
        return [r[0] for r in self._db.execute("SELECT id FROM images ORDER BY id")]

    def get(self, image_id: int) -> StoredImage:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE id=?", (image_id,)).fetchone()
        if row is None:
            raise KeyError(image_id)
        return _row_to_image(row)

    def find(self, path: str | os.PathLike) -> StoredImage | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE path=?",
                               (to_db(_key(path)),)).fetchone()
        return _row_to_image(row) if row else None

    def images(self, ids: Iterable[int] | None = None) -> dict[int, StoredImage]:
        """Rows by id (all rows when ``ids`` is None)."""
        if ids is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM images")
            return {r[0]: _row_to_image(r) for r in rows}
        out = {}
        for chunk in _chunks(list(ids), 900):
            q = f"SELECT {_COLUMNS} FROM images WHERE id IN ({','.join('?' * len(chunk))})"
            out.update({r[0]: _row_to_image(r) for r in self._db.execute(q, chunk)})
        return out

    def image_digests(self) -> dict[int, tuple[str, bool]]:
        """Every image's (sha256, blank) by id, in one query."""
        return {i: (d, bool(b)) for i, d, b in
                self._db.execute("SELECT id, sha256, blank FROM images")}

    def _blobs(self, column: str, ids: Sequence[int]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for chunk in _chunks(list(ids), 900):
            q = f"SELECT id, {column} FROM images WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(self._db.execute(q, chunk).fetchall())
        return found

    def phash_variants(self, ids: Sequence[int]) -> np.ndarray:
        """The 8 dihedral pHashes of each id, shape (len(ids), 8, PHASH_BYTES) uint8."""
        found = self._blobs("phash", ids)
        out = np.zeros((len(ids), 8, PHASH_BITS // 8), np.uint8)
        for i, k in enumerate(ids):
            out[i] = np.frombuffer(found[k], np.uint8).reshape(8, -1)
        return out

    def colours(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Colour histograms by id."""
        return {k: decode_colour(v) for k, v in self._blobs("colour", ids).items()}

    def failures(self) -> list[Skipped]:
        return [Skipped(from_db(p), r)
                for p, r in self._db.execute("SELECT path, reason FROM failures")]

    def local_features(self, image_id: int) -> tuple[LocalFeatures, np.ndarray] | None:
        """ORB features and grey thumbnail of one image (None if not extracted)."""
        return read_local_features(self._db, image_id)

    def thumbnail(self, image_id: int) -> np.ndarray | None:
        """One image's stored grey thumbnail alone (None if not extracted):
        a template check reads those of 16 look-alikes per image, at 56 us
        each against 131 us for all the image's local features."""
        row = self._db.execute("SELECT thumb, thumb_width, thumb_height, encoding "
                               "FROM local_features WHERE image_id=?", (image_id,)).fetchone()
        return None if row is None else decode_thumb(*row)

    def thumb_shapes(self, ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """(height, width) of the stored thumbnails of those of ``ids`` that have
        one, without decoding any: a template check needs look-alikes of its
        image's shape only, and most look-alikes of a photo have another."""
        found: dict[int, tuple[int, int]] = {}
        for chunk in _chunks([int(i) for i in ids], 900):
            q = ("SELECT image_id, thumb_height, thumb_width FROM local_features "
                 f"WHERE image_id IN ({','.join('?' * len(chunk))})")
            found.update((i, (h, w)) for i, h, w in self._db.execute(q, chunk))
        return found

    def icons(self, ids: Sequence[int]) -> dict[int, bytes]:
        """Stored icon views (``thumbmatch_views.icon_blob``) of those of ``ids`` that have one."""
        return {k: v for k, v in self._blobs("icon", ids).items() if v is not None}

    def labelled(self) -> dict[int, list]:
        """Labels of every image that has any, by id (one query, for labelers)."""
        rows = self._db.execute("SELECT id, labels FROM images WHERE labels != '[]' ORDER BY id")
        return {i: json.loads(v) for i, v in rows}

    def paths(self) -> dict[int, str]:
        """Every image's path by id."""
        return {i: from_db(p) for i, p in self._db.execute("SELECT id, path FROM images")}

    def ids_where(self, sql: str, params: Sequence = ()) -> np.ndarray:
        """Sorted ids of images matching a WHERE body over the ``images`` table.

        For :mod:`matchkit.jobs.filters`, which builds ``sql`` from constant
        fragments only; every user-supplied value must be in ``params``.
        """
        rows = self._db.execute(f"SELECT id FROM images WHERE {sql} ORDER BY id", list(params))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def last_id(self) -> int:
        """Largest image id in use (0 for an empty gallery); ids above it are
        free, e.g. as temporary keys for query images not in the gallery."""
        row = self._db.execute("SELECT MAX(id) FROM images").fetchone()
        return int(row[0] or 0)

    def pixel_digest(self, image_id: int) -> str | None:
        """Digest of the pixels as extraction made it (``features.PixelDigest``;
        None: not known, e.g. a row written before digests were stored). The
        file is not read: matching needs nothing but stored records."""
        return self.get(image_id).pixel_sha256
