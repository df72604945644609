"""Keeper choice: the plain colour copy of the picture, not a canvas, padding or grey copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matchkit import dedupe
from matchkit.colour import colour_histogram
from matchkit.gallery import StoredImage
from matchkit.keeper import GREY_MASS, grey_share, keeper_priority, picture_score

from conftest import textured


def _stored(path: str, w: int, h: int, size: int, mtime: int = 0) -> StoredImage:
    return StoredImage(0, path, size, mtime, "", None, w, h, "JPEG")


def _keeper(folder: Path) -> str:
    report = dedupe([folder])
    assert len(report.clusters) == 1, [c.members for c in report.clusters]
    return Path(report.clusters[0].keep).name


def test_grey_share_tells_grey_from_colour():
    photo = textured(5)
    assert grey_share(colour_histogram(photo)) < GREY_MASS
    assert grey_share(colour_histogram(photo.convert("L"))) >= GREY_MASS
    assert grey_share(np.zeros(512)) == 1.0


def test_score_discounts_fill_and_grey_but_resolution_still_wins():
    plain = picture_score(480 * 360)
    on_canvas = picture_score(640 * 520, picture_share=480 * 360 / (640 * 520))
    assert on_canvas < plain  # same picture pixels, plus fill
    assert picture_score(480 * 360, grey=True) < plain
    assert picture_score(4 * 480 * 360, grey=True) > plain  # a far bigger grey copy wins
    assert picture_score(4 * 480 * 360, picture_share=0.6) > plain  # more picture, with fill


def test_near_equal_scores_tie_so_the_bigger_file_wins():
    a = _stored("a.jpg", 480, 360, size=50_000)
    b = _stored("b.jpg", 480, 360, size=90_000)
    assert keeper_priority(b, 0.93) < keeper_priority(a, 1.0)  # natural flat patches: a tie
    assert keeper_priority(a, 1.0) < keeper_priority(b, 0.5)  # half fill: not a tie


def test_rotated_copy_on_a_canvas_is_not_the_keeper(tmp_path):
    photo = textured(7)
    photo.save(tmp_path / "photo.jpg", quality=80)
    # More pixels and a bigger file, but the extra pixels are black canvas.
    photo.rotate(25, expand=True, fillcolor=(0, 0, 0)).save(tmp_path / "rot25.png")
    assert (tmp_path / "rot25.png").stat().st_size > (tmp_path / "photo.jpg").stat().st_size
    assert _keeper(tmp_path) == "photo.jpg"


def test_padded_grey_copy_is_not_the_keeper(tmp_path):
    photo = textured(8)
    photo.save(tmp_path / "photo.jpg", quality=70)
    padded = Image.new("RGB", (photo.width + 160, photo.height + 160), (128, 128, 128))
    padded.paste(photo, (80, 80))
    padded.convert("L").save(tmp_path / "padded_grey.png")
    assert _keeper(tmp_path) == "photo.jpg"


def test_grey_copy_loses_to_colour_copy_of_the_same_size(tmp_path):
    photo = textured(9)
    photo.save(tmp_path / "colour.jpg", quality=60)
    photo.convert("L").save(tmp_path / "grey.png")  # the bigger file
    assert (tmp_path / "grey.png").stat().st_size > (tmp_path / "colour.jpg").stat().st_size
    assert _keeper(tmp_path) == "colour.jpg"


def test_natural_flat_border_is_not_fill(tmp_path):
    """A photo on a smooth backdrop (sky, studio) keeps its full resolution."""
    from matchkit.gallery import Gallery
    from matchkit.match import PairMatcher
    from matchkit.config import Settings

    w, h = 480, 360
    ramp = np.linspace(200, 230, w)[None, :, None] + np.random.default_rng(0).normal(0, 2, (h, w, 3))
    img = Image.fromarray(ramp.clip(0, 255).astype(np.uint8))
    img.paste(textured(10, (240, 180)), (120, 90))
    img.save(tmp_path / "studio.png")
    img.rotate(25, expand=True, fillcolor=(0, 0, 0)).save(tmp_path / "rot.png")
    g = Gallery(tmp_path / "g")
    g.add([tmp_path / "studio.png", tmp_path / "rot.png"])
    ids = g.ids()
    m = PairMatcher(g, ids, Settings())
    shares = {Path(g.get(i).path).name: m.picture_share(i) for i in ids}
    assert shares["studio.png"] > 0.9
    assert shares["rot.png"] < 0.75


@pytest.mark.parametrize("seed", [12, 13, 16, 18])  # each failed before the fix
def test_rotated_copy_joins_a_mirrored_keeper(tmp_path, seed):
    """Keeper = a flipped copy (the biggest file); the rotated copy relates to
    it through a mirror image, which the second hop must try."""
    photo = textured(seed)
    photo.save(tmp_path / "photo.jpg", quality=75)
    photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(tmp_path / "flipped.png")
    photo.rotate(25, expand=True, fillcolor=(0, 0, 0)).save(tmp_path / "rot25.jpg", quality=75)
    report = dedupe([tmp_path])
    assert len(report.clusters) == 1, [c.members for c in report.clusters]
    assert Path(report.clusters[0].keep).name == "flipped.png"
    assert {Path(m).name for m in report.clusters[0].members} == {
        "photo.jpg", "flipped.png", "rot25.jpg"}


def test_pending_pair_has_no_known_mirror_state():
    from matchkit.dedupe import _mirrored
    from matchkit.match import PairEvidence

    ev = PairEvidence(1, 2, 110, 0.5)
    ev.extra["reflect"] = True  # the best-aligning variant of far-apart hashes: chance
    assert _mirrored(ev) is None
    ev.rule = "phash"
    assert _mirrored(ev) is True
