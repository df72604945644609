"""Local features: each hard edit kind on generated images, templates, no chaining."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from matchkit import Settings
from matchkit import dedupe
from matchkit.io.load import shrink
from matchkit.signals.local import extract_local, overlap_correlation, verify, working_grey

from conftest import textured


EDITS = {
    "crop50": lambda im: im.crop((60, 40, 60 + 340, 40 + 255)),
    "rot17": lambda im: im.rotate(17, expand=True, fillcolor=(0, 0, 0)),
    "text": lambda im: _draw(im, lambda d: [d.text((20, 40 + 30 * i), "COPYRIGHT 2024 matchkit",
                                                   fill=(255, 255, 0)) for i in range(4)]),
    "emoji": lambda im: _draw(im, lambda d: d.ellipse((150, 100, 290, 240), fill=(255, 220, 0))),
    "thumb25": lambda im: im.resize((im.width // 4, im.height // 4), Image.Resampling.LANCZOS),
    "blurjpeg": lambda im: _jpeg(im.filter(ImageFilter.GaussianBlur(1.5)), 15),
    "padgray": lambda im: _pad(im, 80, (40, 160, 90)).convert("L"),
    "jitter_rot10": lambda im: Image.eval(im, lambda v: min(255, int(v * 1.2) + 10)).rotate(10),
}


def _draw(im, fn):
    im = im.copy()
    fn(ImageDraw.Draw(im))
    return im


def _jpeg(im, q):
    import io
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _pad(im, p, colour):
    out = Image.new("RGB", (im.width + 2 * p, im.height + 2 * p), colour)
    out.paste(im, (p, p))
    return out


def _features(img):
    g = working_grey(img, 512)
    return extract_local(g), np.asarray(shrink(img, 128).convert("L")), (g.shape[1], g.shape[0])


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_each_edit_verifies_against_original(edit):
    orig = textured(1)
    (fa, ta, sa), (fb, tb, sb) = _features(orig), _features(EDITS[edit](orig).convert("RGB"))
    v = verify(fa, fb)
    assert v.inliers >= 15, (edit, v.matches, v.inliers)
    assert overlap_correlation(ta, tb, v.transform, sa, sb) > 0.5


def test_unrelated_images_do_not_verify():
    for seed in range(2, 6):
        v = verify(_features(textured(1))[0], _features(textured(seed + 10))[0])
        assert v.inliers < 12


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_dedupe_clusters_each_edit_with_its_original(tmp_path, edit):
    orig = textured(3)
    orig.save(tmp_path / "orig.png")
    EDITS[edit](orig).save(tmp_path / f"{edit}.jpg", quality=90)
    for i in range(4):  # unrelated images must stay out
        textured(100 + i).save(tmp_path / f"other{i}.jpg", quality=90)
    report = dedupe([tmp_path])
    assert len(report.clusters) == 1, [c.members for c in report.clusters]
    assert {Path(m).name for m in report.clusters[0].members} == {"orig.png", f"{edit}.jpg"}


def _frame(size=(900, 600)) -> Image.Image:
    """A fake app screenshot frame: toolbar, sidebar, text lines; a slot for a photo."""
    rng = np.random.default_rng(7)
    img = Image.new("RGB", size, (245, 245, 248))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, size[0], 50), fill=(40, 60, 120))
    for i in range(30):
        y = 70 + 17 * i
        d.text((10, y), f"Menu item {i} :: {int(rng.integers(1000, 9999))}", fill=(20, 20, 20))
        d.rectangle((680, y, 680 + int(rng.integers(40, 200)), y + 8), fill=(90, 90, 90))
    return img


def test_screenshot_frame_does_not_match_other_screenshots(tmp_path):
    """Ten photos pasted into one app frame: each screenshot matches only its photo."""
    frame = _frame()
    for i in range(10):
        photo = textured(200 + i)
        shot = frame.copy()
        shot.paste(photo.resize((400, 300)), (230, 120))
        shot.save(tmp_path / f"shot{i}.png")
        if i < 3:
            photo.save(tmp_path / f"photo{i}.jpg", quality=92)
    report = dedupe([tmp_path])
    groups = sorted(sorted(Path(m).name for m in c.members) for c in report.clusters)
    for g in groups:
        assert sum(n.startswith("shot") for n in g) <= 1, groups  # no frame-only matches
    assert groups == [[f"photo{i}.jpg", f"shot{i}.png"] for i in range(3)]


def test_no_chaining_across_local_matches(tmp_path):
    """Left part ~ middle ~ right part: the two ends must not share a cluster."""
    wide = textured(9, (1200, 360))
    wide.save(tmp_path / "wide.png")  # highest resolution: the keeper
    wide.crop((0, 0, 520, 360)).save(tmp_path / "left.png")
    wide.crop((680, 0, 1200, 360)).save(tmp_path / "right.png")
    report = dedupe([tmp_path])
    for c in report.clusters:
        names = {Path(m).name for m in c.members}
        assert not {"left.png", "right.png"} <= names or Path(c.keep).name == "wide.png"
        keeper_pairs = {Path(p.b).name for p in c.pairs if p.a == c.keep}
        assert keeper_pairs == names - {Path(c.keep).name}


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_smooth_photo_and_its_crop_are_judged_by_their_texture(seed):
    """A small textured object on a nearly flat backdrop, and a crop around it:
    most of either picture is flat, so measured against its whole area the
    overlap was "too small to judge" (correlation -1, the pair refused);
    against the picture's texture it is judged, and agrees."""
    from matchkit.signals.local import compare_overlap

    yy, xx = np.mgrid[0:360, 0:480]
    backdrop = np.stack([180 + xx / 24, 190 + yy / 24, 200 + 0 * xx], -1)
    photo = Image.fromarray(backdrop.clip(0, 255).astype(np.uint8))
    photo.paste(textured(seed + 20, (80, 56)), (280, 180))
    crop = photo.crop((200, 120, 440, 300))
    (fa, ta, sa), (fb, tb, sb) = _features(crop), _features(photo)
    v = verify(fa, fb)
    assert v.inliers >= 30
    overlap = compare_overlap(ta, tb, v.transform, sa, sb, points=v.points)
    assert overlap.correlation > 0.9 and overlap.agreement > 0.8


def test_a_shared_sticker_on_two_textured_pictures_is_not_a_copy():
    """The texture rule still asks most of the picture's texture to overlap:
    one sticker on two different busy photos aligns a corner only."""
    from matchkit.signals.local import compare_overlap

    sticker = textured(77, (120, 90))
    a, b = textured(41), textured(42)
    a.paste(sticker, (20, 20))
    b.paste(sticker, (20, 20))
    (fa, ta, sa), (fb, tb, sb) = _features(a), _features(b)
    v = verify(fa, fb)
    assert v.transform is not None and v.inliers >= 12
    assert compare_overlap(ta, tb, v.transform, sa, sb, points=v.points).correlation < 0.5


def test_a_corner_that_holds_all_the_texture_is_still_a_corner():
    """Two flat pictures whose only texture is one patch, aligned patch on
    patch: the overlap is a corner of each (a fifth of its area) though it
    holds all their texture. Not judged (a shared sticker on two smooth
    pictures, scale set at 10,000 images), however well the patch agrees."""
    from matchkit.signals.local import compare_overlap

    rng = np.random.default_rng(3)
    patch = (rng.random((24, 32)) * 255).astype(np.uint8)
    a = np.full((96, 128), 120, np.uint8)
    b = np.full((96, 128), 140, np.uint8)
    a[66:90, 90:122] = patch  # bottom right of a
    b[6:30, 6:38] = patch     # top left of b
    work = (512, 384)  # 4 working pixels per thumbnail pixel
    shift = [[1.0, 0.0, -84.0 * 4], [0.0, 1.0, -60.0 * 4]]  # a's patch onto b's
    overlap = compare_overlap(a, b, shift, work, work)
    assert overlap.coverage_a < 0.3 and overlap.correlation == -1.0
    whole = compare_overlap(a, a.copy(), [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], work, work)
    assert whole.correlation > 0.99  # the same flat picture, whole: judged


def test_the_edge_of_the_warped_picture_is_not_texture():
    """Where the warped picture ends, its 5x5 deviation sees the black
    outside the warp: that ring is no texture of the picture. Two flat
    pictures (gentle gradients), one shown at half size inside the other,
    have nothing to testify, so the overlap is not judged; counting the ring,
    it was judged on the ring's pixels alone."""
    from matchkit.signals.local import compare_overlap

    yy, xx = np.mgrid[0:96, 0:128]
    a = (100 + xx / 4 + yy / 8).astype(np.uint8)
    b = (150 - yy / 3).astype(np.uint8)
    work = (512, 384)
    half = [[0.5, 0.0, 128.0], [0.0, 0.5, 96.0]]  # a at half size in b's middle
    overlap = compare_overlap(a, b, half, work, work)
    assert overlap.coverage_a > 0.9 and overlap.correlation == -1.0


def test_spread_is_measured_in_the_frame_the_overlap_is_compared_in():
    """The inliers' hull is taken from the image whose frame the overlap is
    compared in. ``a`` shown at half size in the middle of ``b``, inliers on
    one quarter of ``a``: they span about a quarter of the overlap, whichever
    image is passed first. (Earlier, the other image's points were used: here
    a hull four times too large, spread 1.0.)"""
    from matchkit.signals.local import compare_overlap

    rng = np.random.default_rng(5)
    a = (rng.random((96, 128)) * 255).astype(np.uint8)
    b = (rng.random((96, 128)) * 255).astype(np.uint8)
    work = (512, 384)  # 4 working pixels per thumbnail pixel
    half = [[0.5, 0.0, 128.0], [0.0, 0.5, 96.0]]  # a at half size in b's middle
    quarter = [(0, 0), (256, 0), (256, 192), (0, 192), (128, 96)]
    points = [[x, y, 0.5 * x + 128, 0.5 * y + 96] for x, y in quarter]
    forward = compare_overlap(a, b, half, work, work, points=points)
    double = [[2.0, 0.0, -256.0], [0.0, 2.0, -192.0]]  # its inverse: b onto a
    backward = compare_overlap(b, a, double, work, work,
                               points=[[p[2], p[3], p[0], p[1]] for p in points])
    for overlap in (forward, backward):
        assert 0.2 < overlap.spread < 0.35
