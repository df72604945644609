"""Global (pHash) matches must be borne out by the stored thumbnails: near-blank
pictures carry no pHash evidence of their own (issue 13, real dev set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from matchkit import dedupe
from matchkit.signals.thumbcheck import (NEAR_BLANK, PROOF_CORRELATION, equal_share, frame_overlap,
                                         frames_prove_copy, marks, structure_agreement,
                                         thumbnails_refute)

from conftest import textured


def sheet(lines: list[tuple[int, int, int, int]], size=(420, 594)) -> Image.Image:
    """A near-blank page: white, a thin frame and a few faint lines."""
    im = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, size[0] - 1, size[1] - 1), outline=(0, 0, 0), width=2)
    for box in lines:
        d.line(box, fill=(150, 150, 150), width=2)
    return im


def grey(im: Image.Image, side: int = 128) -> np.ndarray:
    """A grey thumbnail like the stored ones (longest side ``side``)."""
    im = im.convert("L")
    scale = side / max(im.size)
    return np.asarray(im.resize((round(im.width * scale), round(im.height * scale)),
                                Image.Resampling.LANCZOS))


FAINT_A = [(140, 40, 140, 550)]
#: The same sheet with one more faint line: the two hash alike (a strong
#: pHash match, 24 bits of 256) because the frame dominates both.
FAINT_B = [(140, 40, 140, 550), (280, 40, 280, 550)]


def test_near_blank_sheets_with_different_faint_lines_are_refuted():
    a, b = grey(sheet(FAINT_A)), grey(sheet(FAINT_B))
    assert marks(a)[0] < NEAR_BLANK and marks(b)[0] < NEAR_BLANK
    assert structure_agreement(a, b) < 0.9
    assert thumbnails_refute(a, b)
    # A blank sheet and a sheet of labels, too.
    labels = sheet([(40, y, 380, y) for y in range(100, 560, 60)])
    assert thumbnails_refute(grey(sheet([])), grey(labels))


def test_blank_page_and_its_thumbnail_agree():
    page = sheet(FAINT_A)
    small = page.resize((61, 86), Image.Resampling.LANCZOS)
    assert structure_agreement(grey(page), grey(small)) >= 0.95
    assert not thumbnails_refute(grey(page), grey(small))


def test_blank_page_and_a_grid_are_refuted():
    grid = Image.new("RGB", (600, 300), (128, 128, 128))
    d = ImageDraw.Draw(grid)
    for x in range(0, 600, 30):
        d.line((x, 0, x, 299), fill=(0, 0, 0), width=2)
    for y in range(0, 300, 30):
        d.line((0, y, 599, y), fill=(0, 0, 0), width=2)
    assert thumbnails_refute(grey(sheet([])), grey(grid))


def test_photo_copies_are_not_refuted():
    pic = textured(1300)
    blurred = pic.filter(ImageFilter.GaussianBlur(2)).resize((240, 180))
    assert not thumbnails_refute(grey(pic), grey(blurred))
    # Mirrored (a dihedral pHash match): compared in every orientation.
    mirrored = pic.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert not thumbnails_refute(grey(pic), grey(mirrored), turned=True)
    assert thumbnails_refute(grey(pic), grey(textured(1301)))


def _names(report) -> list[list[str]]:
    return sorted(sorted(Path(m).name for m in c.members) for c in report.clusters)


def test_dedupe_keeps_blank_page_thumbnails_but_not_other_sheets(tmp_path):
    sheet(FAINT_A).save(tmp_path / "labels.png")
    sheet(FAINT_A).resize((61, 86), Image.Resampling.LANCZOS).save(tmp_path / "labelstn.png")
    sheet(FAINT_B).save(tmp_path / "cards.png")
    assert _names(dedupe([tmp_path])) == [["labels.png", "labelstn.png"]]


def smooth_wallpaper(seed: int, size=(800, 500)) -> Image.Image:
    """A wallpaper of soft gradients and a few soft wave lines, like LXQt's
    waves: little energy in the pHash's frequencies."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    f = x / w * rng.uniform(0.5, 1.5) + y / h * rng.uniform(0.5, 1.5)
    f += 0.5 * np.sin(x / w * 3.14 * rng.uniform(0.5, 1.5) + rng.uniform(0, 6))
    for k in range(3):
        yy = h * (0.3 + 0.2 * k) + 60 * np.sin(x / w * 6.28 * (1 + k * 0.3) + seed)
        f += 0.25 * np.exp(-((y - yy) / (3 + 2 * k)) ** 2)
    f = (f - f.min()) / (f.max() - f.min())
    rgb = np.stack([10 + 100 * f, 30 + 150 * f, 60 + 190 * f], -1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def with_logo(im: Image.Image) -> Image.Image:
    out = im.copy()
    ImageDraw.Draw(out).polygon([(300, 150), (348, 162), (330, 192), (312, 180), (294, 204)],
                                fill=(150, 210, 250))
    return out


def test_frames_prove_a_logo_copy_of_a_smooth_wallpaper_but_not_another_gradient():
    wall = smooth_wallpaper(5)
    a, b = grey(wall), grey(with_logo(wall))
    assert frames_prove_copy(a, b)
    # Two different smooth gradients correlate frame to frame as well as the
    # copy does; their pixels are not equal.
    for seed in (11, 12, 13):
        other = grey(smooth_wallpaper(seed))
        if frame_overlap(a, other).correlation >= PROOF_CORRELATION:
            assert equal_share(a, other) < 0.5
        assert not frames_prove_copy(a, other)


def test_dedupe_finds_a_logo_on_a_smooth_wallpaper_that_the_phash_misses(tmp_path):
    wall = smooth_wallpaper(5)
    wall.save(tmp_path / "waves.png")
    with_logo(wall).save(tmp_path / "waves-logo.png")
    for seed in (11, 12, 13):
        smooth_wallpaper(seed).save(tmp_path / f"other{seed}.png")
    report = dedupe([tmp_path])
    assert [sorted(Path(m).name for m in c.members) for c in report.clusters] == [
        ["waves-logo.png", "waves.png"]]
    pair = report.clusters[0].pairs[0]
    assert pair.evidence["rule"] == "frames" and pair.evidence["phash_distance"] > 90
    assert pair.relation == "edited"
