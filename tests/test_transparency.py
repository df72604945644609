"""Transparent images are compared as a viewer sees them; blank ones only match exactly.

Icons whose picture lives only in the alpha channel (their colour is all
black or all white) were flattened onto white: the white ones became blank
pages and every such icon "matched" every other.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from matchkit import dedupe
from matchkit.features import is_blank
from matchkit.io.load import load_image

SIDE = 256


def _shape(name: str, side: int = SIDE) -> Image.Image:
    """An alpha mask (L) with one shape drawn in it."""
    m = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(m)
    s = side
    # Off-centre, like the glyphs of real icons (a perfectly centred disc,
    # ring and cross leave most pHash coefficients at zero: see README).
    if name == "disc":
        d.ellipse((s * .1, s * .3, s * .55, s * .75), fill=255)
    elif name == "square":
        d.rectangle((s * .15, s * .15, s * .6, s * .5), fill=255)
    elif name == "triangle":
        d.polygon([(s * .6, s * .1), (s * .9, s * .85), (s * .1, s * .7)], fill=255)
    elif name == "ring":
        d.ellipse((s * .35, s * .1, s * .95, s * .7), fill=255)
        d.ellipse((s * .5, s * .25, s * .8, s * .55), fill=0)
    elif name == "arrow":
        d.polygon([(s * .1, s * .4), (s * .6, s * .4), (s * .6, s * .2), (s * .95, s * .55),
                   (s * .6, s * .9), (s * .6, s * .7), (s * .1, s * .7)], fill=255)
    elif name == "bars":
        for k in range(4):
            d.rectangle((s * (.1 + .2 * k), s * .2, s * (.18 + .2 * k), s * (.4 + .12 * k)),
                        fill=255)
    else:
        raise ValueError(name)
    return m


def _alpha_icon(shape: str, colour: int, side: int = SIDE) -> Image.Image:
    """RGB all ``colour`` (0 or 255), the picture only in alpha."""
    rgb = Image.new("RGB", (side, side), (colour,) * 3)
    rgb.putalpha(_shape(shape, side))
    return rgb


SHAPES = ["disc", "square", "triangle", "ring", "arrow", "bars"]


def _clusters(folder: Path) -> list[set[str]]:
    return [{Path(m).name for m in c.members} for c in dedupe([folder]).clusters]


@pytest.mark.parametrize("colour", [0, 255])
def test_different_alpha_icons_do_not_match(tmp_path, colour):
    """Failed before: flattened onto white, all six were one cluster (white
    icons: six blank pages; black ones matched through the shared border)."""
    for name in SHAPES:
        _alpha_icon(name, colour).save(tmp_path / f"{name}.png")
    assert _clusters(tmp_path) == []


def test_same_alpha_icon_resized_matches(tmp_path):
    for name in SHAPES[:3]:
        _alpha_icon(name, 255).save(tmp_path / f"{name}.png")
    _alpha_icon("ring", 255).save(tmp_path / "ring_256.png")
    _alpha_icon("ring", 255).resize((128, 128), Image.Resampling.LANCZOS).save(
        tmp_path / "ring_128.png")
    assert _clusters(tmp_path) == [{"ring_256.png", "ring_128.png"}]


def test_alpha_icon_is_visible_over_the_background(tmp_path):
    for colour in (0, 255):
        p = tmp_path / f"disc{colour}.png"
        _alpha_icon("disc", colour).save(p)
        img = np.asarray(load_image(p).image)
        assert img[SIDE // 2, SIDE // 2, 0] == colour  # the shape
        assert img[2, 2, 0] == 128  # the transparent corner shows the grey background
        assert not is_blank(load_image(p).image)


def test_fully_transparent_images_match_only_exact_copies(tmp_path):
    empty = Image.new("RGBA", (200, 150), (255, 0, 0, 0))
    empty.save(tmp_path / "empty.png")
    shutil.copyfile(tmp_path / "empty.png", tmp_path / "empty_copy.png")
    Image.new("RGBA", (100, 75), (0, 0, 0, 0)).save(tmp_path / "empty_small.png")
    Image.new("LA", (200, 150), (0, 0)).save(tmp_path / "empty_la.png")  # same pixels, other file
    Image.new("RGBA", (64, 64), (0, 0, 255, 0)).save(tmp_path / "empty_64.png")
    # a real picture with transparency, and a resize of it
    _alpha_icon("triangle", 0).save(tmp_path / "tri.png")
    _alpha_icon("triangle", 0, 128).save(tmp_path / "tri_small.png")
    report = dedupe([tmp_path])
    clusters = sorted(sorted(Path(m).name for m in c.members) for c in report.clusters)
    assert clusters == [["empty.png", "empty_copy.png", "empty_la.png"],
                        ["tri.png", "tri_small.png"]]
    blank = {Path(p).name for p in report.blank}
    assert blank == {"empty.png", "empty_copy.png", "empty_small.png", "empty_la.png",
                     "empty_64.png"}
    assert report.stats["blank"] == 5
    assert json.loads(report.to_json())["blank"] == report.blank
    kinds = {p.kind for c in report.clusters for p in c.pairs
             if Path(p.a).name.startswith("empty")}
    assert kinds == {"exact"}


def test_solid_colour_images_are_blank_and_never_near_duplicates(tmp_path):
    Image.new("RGB", (300, 200), (250, 250, 250)).save(tmp_path / "white.jpg", quality=90)
    Image.new("RGB", (150, 100), (250, 250, 250)).save(tmp_path / "white_small.jpg", quality=60)
    Image.new("RGB", (300, 200), (20, 40, 200)).save(tmp_path / "blue.png")
    report = dedupe([tmp_path])
    assert report.clusters == []
    assert len(report.blank) == 3


def test_partly_transparent_photo_matches_its_copy(tmp_path, photo):
    img = photo(5).convert("RGBA")
    alpha = Image.new("L", img.size, 255)
    ImageDraw.Draw(alpha).ellipse((0, 0, 80, 80), fill=0)
    img.putalpha(alpha)
    img.save(tmp_path / "logo.png")
    img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS).save(
        tmp_path / "logo_half.png")
    assert _clusters(tmp_path) == [{"logo.png", "logo_half.png"}]


def test_check_matches_a_blank_query_only_to_its_byte_copy(tmp_path):
    from matchkit import Gallery
    from matchkit.jobs.check import check

    gal, q = tmp_path / "gal", tmp_path / "q"
    gal.mkdir()
    q.mkdir()
    Image.new("RGBA", (200, 150), (0, 0, 0, 0)).save(gal / "empty.png")
    Image.new("RGBA", (100, 80), (9, 9, 9, 0)).save(gal / "empty_other.png")
    Image.new("RGB", (200, 150), (128, 128, 128)).save(gal / "grey.jpg", quality=90)
    _alpha_icon("disc", 255).save(gal / "disc.png")
    shutil.copyfile(gal / "empty.png", q / "empty_copy.png")
    Image.new("RGBA", (120, 90), (0, 0, 0, 0)).save(q / "empty_new.png")
    _alpha_icon("disc", 255, 128).save(q / "disc_small.png")
    with Gallery(tmp_path / "g") as g:
        g.add(sorted(gal.iterdir()))
        g.save()
    report = check(tmp_path / "g", [q])
    got = {Path(r.path).name: sorted(Path(m.path).name for m in r.matches)
           for r in report.results}
    assert got == {"empty_copy.png": ["empty.png"], "empty_new.png": [],
                   "disc_small.png": ["disc.png"]}
