"""Extraction of the embedding signal (``features.embedding``): decoded in
batches, every image that cannot give a usable vector skipped with a reason,
the rest embedded; ``Gallery.embed`` stores what it yields.

The model here is a test double with the ``Embedder`` interface (it reads
the mean colour): it checks the bookkeeping, not any embedding's quality.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from matchkit.features.embedding import VectorShapeError, embed_images
from matchkit.store.gallery import Gallery, GalleryError

from conftest import make_photo


@dataclass
class MeanColour:
    name: str = "mean-colour"
    dim: int = 3
    batch_size: int = 2
    fail_on: tuple = ()        # mean red values it raises on
    nan_on: tuple = ()         # ... or returns NaN for
    width: int | None = None   # vectors of another width than ``dim``

    def embed_images(self, images):
        out = []
        for im in images:
            v = np.asarray(im.convert("RGB"), np.float32).reshape(-1, 3).mean(0) + 1.0
            red = int(v[0])
            if red in self.fail_on:
                raise RuntimeError("boom")
            if red in self.nan_on:
                v[:] = np.nan
            out.append(v if self.width is None else np.resize(v, self.width))
        return np.stack(out)


@dataclass
class Row:
    id: int
    path: str
    size: int
    mtime_ns: int


def _rows(tmp_path, n=5):
    rows = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 30), (10 * i, 100, 50)).save(p)
        st = p.stat()
        rows.append(Row(i, str(p), st.st_size, st.st_mtime_ns))
    return rows


def test_every_image_is_embedded_or_skipped_with_a_reason(tmp_path):
    rows = _rows(tmp_path, 6)
    os.utime(rows[1].path, ns=(rows[1].mtime_ns + 10**9, rows[1].mtime_ns + 10**9))
    os.remove(rows[2].path)
    model = MeanColour(fail_on=(31,), nan_on=(41,))  # images 3 and 4 (red 30 and 40, +1)
    batches = list(embed_images(model, rows, batch_size=2, workers=2))
    assert [b.done for b in batches] == [2, 2, 2]
    ids = [i for b in batches for i in b.ids]
    assert ids == [0, 5]
    why = dict(s for b in batches for s in b.skipped)
    assert why[rows[1].path] == "file changed since it was added; add it again first"
    assert why[rows[2].path].startswith("cannot read file")
    assert "failed on this image" in why[rows[3].path]
    assert "invalid vector" in why[rows[4].path]
    vecs = np.concatenate([b.vectors for b in batches])
    assert vecs.shape == (2, 3) and np.isfinite(vecs).all()
    assert vecs[1][0] == pytest.approx(51.0)  # image 5's own vector, in its place


def test_a_model_of_the_wrong_width_stops_the_run(tmp_path):
    with pytest.raises(VectorShapeError, match="shape"):
        list(embed_images(MeanColour(width=4), _rows(tmp_path), batch_size=2, workers=1))


def test_the_gallery_stores_what_extraction_gives(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        make_photo(30 + i).save(d / f"{i}.jpg")
    with Gallery(tmp_path / "g") as g:
        g.add(sorted(d.iterdir()))
        os.remove(d / "1.jpg")
        report = g.embed(MeanColour())
        assert report.embedded == 2 and [s.path for s in report.skipped] == [str(d / "1.jpg")]
        assert len(g.embedded_ids("mean-colour")) == 2
        assert g.embed(MeanColour()).unchanged == 2
        with pytest.raises(GalleryError, match="shape"):
            g.embed(MeanColour(name="wide", width=4))
