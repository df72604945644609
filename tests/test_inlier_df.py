"""benchmarks/inlier_df.py: how common the descriptors under a pair's inliers are."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from matchkit.store.gallery import Gallery

from conftest import textured

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import inlier_df  # noqa: E402


def noise_picture(seed: int, size=(480, 360)) -> Image.Image:
    """Grain at several scales: corners whose descriptors no other picture holds."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = np.zeros((h, w, 3))
    for cell in (4, 12, 36):
        layer = rng.normal(0, 40, (h // cell + 1, w // cell + 1, 3)).astype(np.float32)
        out += np.asarray(Image.fromarray(layer[..., 0]).resize(size, Image.Resampling.BICUBIC)
                          )[..., None] * [1.0, 0.8, 0.6]
    return Image.fromarray((128 + out).clip(0, 255).astype(np.uint8))


def test_a_shared_sticker_rests_on_common_descriptors_a_copy_on_its_own(tmp_path):
    """Six different pictures carry one sticker; a seventh picture has a crop.
    The inliers joining two stickered pictures lie on descriptors that the
    other stickered pictures hold too; those joining the crop to its picture
    lie on descriptors no other image holds."""
    sticker = textured(77, (120, 90))
    paths = []
    for k in range(6):
        img = noise_picture(40 + k)
        img.paste(sticker, (20 + 10 * k, 20 + 5 * k))
        paths.append(tmp_path / f"sticker{k}.png")
        img.save(paths[-1])
    photo = noise_picture(60)
    paths += [tmp_path / "photo.png", tmp_path / "crop.png"]
    photo.save(paths[-2])
    photo.crop((40, 30, 440, 330)).save(paths[-1])
    with Gallery(tmp_path / "g") as g:
        g.add(paths)
        ids = {Path(p).stem: i for i, p in g.paths().items()}
        inliers, shared = inlier_df.inlier_document_frequency(g, ids["sticker0"], ids["sticker1"])
        assert inliers >= 12 and shared is not None
        assert np.median(shared) >= 3  # (4 other pictures carry the sticker)
        inliers, own = inlier_df.inlier_document_frequency(g, ids["photo"], ids["crop"])
        assert inliers >= 12 and own is not None
        assert (own == 0).mean() > 0.9
        assert inlier_df.summary("p", inliers, own)["df<=3"] == int((own <= 3).sum())
