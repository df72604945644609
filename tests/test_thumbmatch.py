"""Icons drawn at two sizes match on aligned thumbnails; their look-alikes do not.

Made-up icons stand in for an icon theme: a folder-like body with a corner
ribbon, drawn at 256 px and again at 48 px (each rendered from its own
supersampled drawing, as a theme renders each size). The look-alikes are
the same body with the ribbon in another colour (a folder colour) and with
an added part (papers sticking out: "full" against "empty").
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from matchkit import dedupe
from matchkit.signals.thumbmatch import (IconDecider, compare, icon_candidates, icon_view,
                                         icon_views)

BLUE, RED, TAN = (40, 90, 200), (210, 40, 40), (230, 190, 120)


def _icon(side: int, ribbon=BLUE, body=TAN, part: bool = False) -> Image.Image:
    """The made-up icon at ``side`` px on transparency (drawn 4x, then reduced)."""
    s = side * 4
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((s * .08, s * .12, s * .45, s * .3), radius=s * .04, fill=(*body, 255))
    d.rounded_rectangle((s * .08, s * .22, s * .92, s * .88), radius=s * .06,
                        fill=(*body, 255), outline=(90, 70, 40, 255), width=max(1, s // 64))
    d.polygon([(s * .92, s * .6), (s * .92, s * .88), (s * .64, s * .88)], fill=(*ribbon, 255))
    d.rectangle((s * .3, s * .45, s * .7, s * .55), fill=(60, 60, 60, 255))  # an emblem
    if part:  # papers sticking out of the top: another state of the icon
        d.rectangle((s * .25, s * .02, s * .75, s * .4), fill=(250, 250, 250, 255),
                    outline=(60, 60, 60, 255), width=max(1, s // 48))
    return img.resize((side, side), Image.Resampling.LANCZOS)


def _view(tmp_path: Path, name: str, img: Image.Image):
    path = tmp_path / name
    img.save(path)
    return icon_view(str(path))


def test_one_drawing_at_256_and_48_px_matches(tmp_path):
    big, small = _view(tmp_path, "a256.png", _icon(256)), _view(tmp_path, "a48.png", _icon(48))
    c = compare(big, small)
    assert c.passes(), c
    assert c.alpha_iou > 0.9 and c.correlation > 0.9
    decider = IconDecider({1: big, 2: small}, [(1, 2)])
    assert decider.decide(1, 2)[0] is True


def _hinted(side: int = 48) -> Image.Image:
    """The icon as a theme hand-hints its small size: a 3 px dark outline
    round the body and a bigger, bolder emblem (GNOME's 48 px icons)."""
    img = _icon(side)
    d = ImageDraw.Draw(img)
    s = side
    d.rounded_rectangle((s * .08, s * .22, s * .92, s * .88), radius=s * .06,
                        outline=(70, 55, 30, 255), width=3)
    d.rectangle((s * .26, s * .42, s * .74, s * .58), fill=(60, 60, 60, 255))
    d.polygon([(s * .92 - 1, s * .6), (s * .92 - 1, s * .88 - 1), (s * .64, s * .88 - 1)],
              fill=(*BLUE, 255))
    return img


def test_hand_hinted_small_size_matches_and_a_changed_part_still_does_not(tmp_path):
    """Hinting changes a third of the small icon's pixels and a block round
    the emblem (over the first, tighter limits of 0.3 and 0.15); the other
    state (papers sticking out) changes a bigger block and loses."""
    views = {1: _view(tmp_path, "a256.png", _icon(256)),
             2: _view(tmp_path, "a48.png", _hinted()),
             3: _view(tmp_path, "full48.png", _icon(48, part=True))}
    hinted = compare(views[1], views[2])
    assert hinted.changed > 0.3 and hinted.changed_blob > 0.15
    assert hinted.passes(), hinted
    assert not compare(views[1], views[3]).passes()
    decider = IconDecider(views, [(1, 2), (1, 3), (2, 3)])
    assert decider.decide(1, 2)[0] is True and decider.decide(1, 3)[0] is False


def test_recoloured_ribbon_does_not_match(tmp_path):
    big = _view(tmp_path, "blue256.png", _icon(256, BLUE))
    red = _view(tmp_path, "red48.png", _icon(48, RED))
    c = compare(big, red)
    assert c.alpha_iou > 0.9  # the same silhouette ...
    assert not c.passes(), c  # ... but a corner recoloured from blue to red
    assert c.recoloured > 0.025
    assert [f.split()[0] for f in c.failures()] == ["recoloured"]  # (bench_real --misses)


def test_changed_part_does_not_match(tmp_path):
    empty = _view(tmp_path, "empty256.png", _icon(256))
    full = _view(tmp_path, "full48.png", _icon(48, part=True))
    assert not compare(empty, full).passes()


def test_closest_rendering_wins_among_look_alikes(tmp_path):
    """With both 48 px renderings present, the 256 px icon pairs with its own
    (a theme draws each picture once per size); a slightly different shade
    of the ribbon, too close for the recolour test, loses to it."""
    shade = (60, 100, 190)
    views = {1: _view(tmp_path, "blue256.png", _icon(256, BLUE)),
             2: _view(tmp_path, "blue48.png", _icon(48, BLUE)),
             3: _view(tmp_path, "shade48.png", _icon(48, shade))}
    assert compare(views[1], views[3]).passes()  # alone, the shade would pass
    decider = IconDecider(views, [(1, 2), (1, 3), (2, 3)])
    assert decider.decide(1, 2)[0] is True
    assert decider.decide(1, 3)[0] is False


def test_same_size_icons_with_a_drawn_difference_are_not_copies(tmp_path):
    views = {1: _view(tmp_path, "blue.png", _icon(128, BLUE)),
             2: _view(tmp_path, "red.png", _icon(128, RED)),
             3: _view(tmp_path, "blue_again.png", _icon(128, BLUE))}
    decider = IconDecider(views, [(1, 2), (1, 3)])
    assert decider.decide(1, 2)[0] is False
    assert decider.decide(1, 3)[0] is None  # no difference: left to the other rules


def test_only_small_images_on_transparency_are_icons(tmp_path):
    _icon(256).convert("RGB").save(tmp_path / "opaque.png")
    _icon(256).resize((512, 512)).save(tmp_path / "large.png")
    _icon(16).save(tmp_path / "tiny.png")  # a few pixels per glyph: left to other rules
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    for name in ("opaque.png", "large.png", "tiny.png", "broken.png"):
        assert icon_view(str(tmp_path / name)) is None
    assert icon_view(str(tmp_path / "missing.png")) is None


def test_candidates_pair_icons_of_different_sizes(tmp_path):
    paths, sizes = {}, {}
    for i, (name, img) in enumerate([("a256.png", _icon(256)), ("a48.png", _icon(48)),
                                      ("b256.png", _icon(256, RED, part=True))]):
        img.save(tmp_path / name)
        paths[i], sizes[i] = str(tmp_path / name), img.size
    pairs = icon_candidates(icon_views(paths, sizes))
    assert (0, 1) in pairs
    assert (0, 2) not in pairs  # one size: not a pair of renderings


def _clusters(folder: Path) -> list[set[str]]:
    return [{Path(m).name for m in c.members} for c in dedupe([folder]).clusters]


@pytest.mark.parametrize("other", ["red", "full"])
def test_dedupe_groups_the_two_sizes_and_not_the_look_alike(tmp_path, other):
    _icon(256).save(tmp_path / "icon256.png")
    _icon(48).save(tmp_path / "icon48.png")
    look = _icon(48, RED) if other == "red" else _icon(48, part=True)
    look.save(tmp_path / f"{other}48.png")
    result = dedupe([tmp_path])
    assert [{Path(m).name for m in c.members} for c in result.clusters] == [
        {"icon256.png", "icon48.png"}]
    relations = {p.relation for c in result.clusters for p in c.pairs}
    assert relations == {"resized"}


_HOUSE = [(.5, .36), (.72, .54), (.66, .54), (.66, .78), (.34, .78), (.34, .54), (.28, .54)]


def _folder(side: int, emblem: bool, small: bool) -> Image.Image:
    """A GNOME-like folder, with or without a house engraved on it: the big
    drawing engraves the house as a faint darker fill inside a thin outline;
    the small one is redrawn with a heavier outline and the house as dark
    lines (GNOME's 48 px user-home against its 256 px file)."""
    s = side * 4
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((s * .08, s * .12, s * .45, s * .3), radius=s * .04,
                        fill=(170, 135, 80, 255))
    d.rounded_rectangle((s * .08, s * .22, s * .92, s * .88), radius=s * .06, fill=(*TAN, 255),
                        outline=(150, 120, 70, 255), width=6 if small else 16)
    if emblem:
        house = [(x * s, y * s) for x, y in _HOUSE]
        if small:
            d.polygon(house, fill=(*TAN, 255), outline=(110, 85, 45, 255), width=6)
        else:
            d.polygon(house, fill=(185, 145, 85, 255))
    return img.resize((side, side), Image.Resampling.LANCZOS)


def test_closest_view_is_judged_on_the_coarse_layout(tmp_path):
    """The redraw (heavier outline, the emblem as lines) costs the own 48 px
    file more pixel by pixel than the missing emblem costs the plain folder,
    so on the full grid the plain folder is the closer view and the pair was
    refused; on the coarse layout the redraw averages out and the emblem's
    cells decide. The plain folder's own 256 px file is absent (an orphan):
    it must still not pair with the emblem folder."""
    views = {1: _view(tmp_path, "home256.png", _folder(256, True, False)),
             2: _view(tmp_path, "home48.png", _folder(48, True, True)),
             3: _view(tmp_path, "folder48.png", _folder(48, False, True))}
    own, plain = compare(views[1], views[2]), compare(views[1], views[3])
    assert own.passes() and plain.passes()
    assert plain.distance < own.distance  # the full grid prefers the look-alike ...
    assert own.closeness < plain.closeness  # ... the coarse layout the own rendering
    decider = IconDecider(views, [(1, 2), (1, 3), (2, 3)])
    assert decider.decide(1, 2)[0] is True
    assert decider.decide(1, 3)[0] is False


def test_cached_views_give_the_same_comparisons(tmp_path):
    """``ViewCache`` keeps each icon's resampled view between comparisons; the
    measures must be exactly those made from scratch, the cache must stay
    within its bound, and what it shares must not be writable."""
    from matchkit.signals.thumbmatch import ViewCache
    views = [_view(tmp_path, f"v{i}.png", img) for i, img in enumerate([
        _icon(256), _icon(48), _hinted(), _icon(64, ribbon=RED), _icon(48, part=True),
        _icon(32), _icon(128).crop((0, 0, 128, 100))])]
    pairs = [(a, b) for a in range(len(views)) for b in range(len(views)) if a != b]
    cache = ViewCache()
    for a, b in pairs + pairs:  # the second round reads everything from the cache
        assert compare(views[a], views[b], cache) == compare(views[a], views[b])
    assert 0 < cache.bytes <= cache.max_bytes
    x = next(iter(cache._entries.values()))[1][0]
    with pytest.raises(ValueError):
        x[0, 0, 0] = 1.0
    small = ViewCache(max_bytes=1)  # holds one entry at a time: still the same answers
    for a, b in pairs:
        assert compare(views[a], views[b], small) == compare(views[a], views[b])
    assert len(small._entries) == 1
    from matchkit.signals.thumbmatch import LATER_VIEWS_BYTES
    decider = IconDecider(dict(enumerate(views)), pairs)
    assert decider._cache.bytes <= decider._cache.max_bytes == LATER_VIEWS_BYTES
    cache.trim(0)
    assert cache.bytes == 0 and not cache._entries


def test_icon_blob_keeps_a_png_as_it_is_unless_it_is_bloated(tmp_path):
    """A gallery stores an icon's PNG file itself (no second encode), a GIF
    or a PNG bigger than its raw pixels as a new PNG; the view is the same."""
    import numpy as np
    from PIL import PngImagePlugin
    from matchkit.signals.thumbmatch import icon_blob
    icon = _icon(48)
    plain = tmp_path / "plain.png"
    icon.save(plain)
    info = PngImagePlugin.PngInfo()
    info.add_text("padding", "x" * 50_000)  # metadata far bigger than the pixels
    bloated = tmp_path / "bloated.png"
    icon.save(bloated, pnginfo=info)
    gif = tmp_path / "icon.gif"
    icon.save(gif, transparency=0)
    assert icon_blob(plain) == plain.read_bytes()
    for path in (plain, bloated, gif):
        blob = icon_blob(path)
        assert blob[:8] == b"\x89PNG\r\n\x1a\n"
        a, b = icon_view(str(path)), icon_view(blob)
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.alpha, b.alpha)
    assert len(icon_blob(bloated)) < 48 * 48 * 4 < bloated.stat().st_size
    assert icon_blob(tmp_path / "missing.png") is None
    (tmp_path / "opaque.png").write_bytes(b"")
    assert icon_blob(tmp_path / "opaque.png") is None
