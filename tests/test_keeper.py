"""Keeper choice: the plain colour copy of the picture, not a canvas, padding or grey copy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matchkit import dedupe
from matchkit.signals.colour import colour_histogram
from matchkit.store.gallery import StoredImage
from matchkit.match.keeper import GREY_MASS, grey_share, grey_shares, keeper_priority, picture_score

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


def test_grey_shares_equal_grey_share_row_by_row():
    """The batch form a clustering reads gives each histogram's own share."""
    rows = [colour_histogram(textured(5)), colour_histogram(textured(6).convert("L")),
            np.zeros(512, np.uint32)]
    rows += list(np.random.default_rng(0).integers(0, 40, (5, 512)).astype(np.uint32))
    got = grey_shares(np.stack(rows))
    assert got.tolist() == [grey_share(h) for h in rows]
    assert got[1] >= GREY_MASS > got[0] and got[2] == 1.0


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
    from matchkit.store.gallery import Gallery
    from matchkit.match.pairs import PairMatcher
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
    from matchkit.jobs.dedupe import _mirrored
    from matchkit.match.pairs import PairEvidence

    ev = PairEvidence(1, 2, 110, 0.5)
    ev.extra["reflect"] = True  # the best-aligning variant of far-apart hashes: chance
    assert _mirrored(ev) is None
    ev.rule = "phash"
    assert _mirrored(ev) is True


# ---------------------------------------------------------------- quality and source

def _cluster(folder, **kw):
    report = dedupe([folder], **kw)
    assert len(report.clusters) == 1, [c.members for c in report.clusters]
    return report.clusters[0]


def test_jpeg_quality_is_read_from_quantisation_tables(tmp_path):
    import io as _io
    from matchkit.io.jpeg_quality import jpeg_quality
    from matchkit.io.load import load_image

    img = textured(3)
    for q in (5, 30, 50, 75, 90, 95, 100):
        buf = _io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        buf.seek(0)
        assert jpeg_quality(Image.open(buf).quantization) == q
    img.save(tmp_path / "a.jpg", quality=42)
    img.save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.jpg").jpeg_quality == 42
    assert load_image(tmp_path / "a.png").jpeg_quality is None
    assert jpeg_quality(None) is None and jpeg_quality({0: [1, 2]}) is None


def test_low_quality_reencode_of_same_size_is_never_kept(tmp_path):
    photo = textured(21)
    photo.save(tmp_path / "original.jpg", quality=90)
    with Image.open(tmp_path / "original.jpg") as im:
        im.save(tmp_path / "reencoded_q30.jpg", quality=30)
    os.utime(tmp_path / "reencoded_q30.jpg", ns=(1, 1))  # even when it looks older
    c = _cluster(tmp_path)
    assert Path(c.keep).name == "original.jpg"
    assert c.keep_reason == "highest JPEG quality (90 vs 30)"


def _star_field(seed: int, size=(480, 420)) -> Image.Image:
    """A deep-field-like picture: mostly black sky with faint noise and stars."""
    rng = np.random.default_rng(seed)
    w, h = size
    sky = rng.normal(3, 1.5, (h, w, 3))
    yy, xx = np.ogrid[:h, :w]
    for _ in range(300):
        x, y, r = rng.integers(0, w), rng.integers(0, h), rng.uniform(0.6, 4)
        sky += rng.uniform(60, 255, 3) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * r * r))[..., None]
    return Image.fromarray(sky.clip(0, 255).astype(np.uint8))


def test_dark_sky_is_picture_not_fill(tmp_path):
    """The demo's Hubble deep field: its q30 copy had less 'fill' than the
    original (smoothed sky noise) and so was kept. Failed before the fix."""
    sky = _star_field(5)
    sky.save(tmp_path / "deep_field.jpg", quality=90)
    with Image.open(tmp_path / "deep_field.jpg") as im:
        im.save(tmp_path / "deep_field_q30.jpg", quality=30)
    c = _cluster(tmp_path)
    assert Path(c.keep).name == "deep_field.jpg"


def test_same_pixels_png_resave_never_beats_its_jpeg(tmp_path):
    textured(22).save(tmp_path / "photo.jpg", quality=85)
    with Image.open(tmp_path / "photo.jpg") as im:
        im.convert("RGB").save(tmp_path / "photo_resave.png")
    os.utime(tmp_path / "photo_resave.png", ns=(1, 1))  # older and far bigger
    c = _cluster(tmp_path)
    assert Path(c.keep).name == "photo.jpg"
    assert c.keep_reason == "original JPEG; the PNG has the same pixels"
    assert [p.kind for p in c.pairs] == ["exact"]


def test_demo_keepers_are_the_originals():
    """examples/images: the q30 re-encodes and the PNG re-saves are never kept."""
    demo = Path(__file__).resolve().parent.parent / "examples" / "images"
    report = dedupe([demo])
    keeps = sorted(Path(c.keep).name for c in report.clusters)
    assert keeps == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "hubble_deep_field.jpg",
                     "rocket.jpg"]
    assert all(c.keep_reason for c in report.clusters)


def test_lossless_source_beats_its_jpeg_export(tmp_path):
    photo = textured(23)
    photo.save(tmp_path / "master.png")
    photo.save(tmp_path / "export.jpg", quality=95)
    c = _cluster(tmp_path)
    assert Path(c.keep).name == "master.png"
    assert c.keep_reason == "lossless PNG over JPEG quality 95"


# ---------------------------------------------------------------- user policy

def _three_copies(folder: Path) -> None:
    """Same picture, same size: a q80 JPEG (oldest), a q90 JPEG and a PNG (newest)."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = textured(24)
    photo.save(folder / "a_q80.jpg", quality=80)
    photo.save(folder / "b_q90.jpg", quality=90)
    photo.save(folder / "c.png")
    for n, name in enumerate(["a_q80.jpg", "b_q90.jpg", "c.png"]):
        os.utime(folder / name, ns=(10**18 + n * 10**9, 10**18 + n * 10**9))


@pytest.mark.parametrize("prefer,keep", [
    ([], "c.png"),                          # built-in: lossless first
    (["oldest"], "a_q80.jpg"),
    (["newest"], "c.png"),
    (["smallest"], "a_q80.jpg"),
    (["largest"], "c.png"),
    (["format:jpg"], "b_q90.jpg"),          # then the built-in rule among JPEGs
    (["format:png"], "c.png"),
    (["path:*/a_*"], "a_q80.jpg"),
    (["format:jpeg", "oldest"], "a_q80.jpg"),  # in order
    (["path:*/nothing*", "smallest"], "a_q80.jpg"),
])
def test_prefer_rules_apply_in_order(tmp_path, prefer, keep):
    _three_copies(tmp_path / "p")
    c = _cluster(tmp_path / "p", prefer=prefer)
    assert Path(c.keep).name == keep
    assert c.keep_reason  # against the runner-up, e.g. another JPEG for format:jpg


def test_prefer_reason_names_the_rule(tmp_path):
    _three_copies(tmp_path / "p")
    assert _cluster(tmp_path / "p", prefer=["oldest"]).keep_reason == "preferred: oldest"
    assert _cluster(tmp_path / "p", prefer=["format:png"]).keep_reason == "preferred: format:PNG"
    # The rule that beat the PNG, then why the other JPEG (the runner-up) lost.
    assert _cluster(tmp_path / "p", prefer=["format:jpg"]).keep_reason == (
        "preferred: format:JPEG; highest JPEG quality (90 vs 80)")
    assert _cluster(tmp_path / "p", prefer=["path:*/a_*"]).keep_reason == "preferred: path:*/a_*"


@pytest.mark.parametrize("bad", ["biggest", "format:", "path:", "oldest:1", ""])
def test_bad_prefer_is_refused_before_any_work(tmp_path, bad):
    from matchkit.match.keeper import parse_preference

    with pytest.raises(ValueError, match="--prefer"):
        parse_preference(bad)
    with pytest.raises(ValueError):
        dedupe([tmp_path], prefer=[bad])


def test_reference_folder_files_are_kept_and_never_moved(tmp_path):
    from matchkit.io.moves import plan_moves

    photo = textured(25)
    inbox, ref = tmp_path / "inbox", tmp_path / "archive"
    inbox.mkdir()
    ref.mkdir()
    photo.save(inbox / "best.jpg", quality=95)
    photo.resize((240, 180)).save(ref / "small.jpg", quality=60)
    photo.resize((200, 150)).save(ref / "smaller.jpg", quality=50)
    photo.save(inbox / "other.jpg", quality=70)
    # The reference folder is scanned although only the inbox is named.
    c = _cluster(inbox, keep_in=[ref])
    names = {Path(m).name for m in c.members}
    assert names == {"best.jpg", "small.jpg", "smaller.jpg", "other.jpg"}
    assert Path(c.keep).name == "small.jpg"
    assert c.keep_reason == (f"in reference folder {ref.resolve()}; "
                             "most picture pixels (240x180 vs 200x150)")
    assert {Path(r).name for r in c.references} == {"small.jpg", "smaller.jpg"}
    report = dedupe([inbox], keep_in=[ref])
    moves = plan_moves(report, tmp_path / "dupes", roots=[inbox])
    assert {Path(m.src).name for m in moves} == {"best.jpg", "other.jpg"}
    # The same from the JSON a script would read.
    moves = plan_moves(json.loads(report.to_json()), tmp_path / "dupes", roots=[inbox])
    assert {Path(m.src).name for m in moves} == {"best.jpg", "other.jpg"}


def test_missing_reference_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        dedupe([tmp_path], keep_in=[tmp_path / "nope"])


def test_keep_reason_in_csv_and_html(tmp_path):
    import csv as _csv

    from matchkit.report.html import write_html_report

    _three_copies(tmp_path / "p")
    report = dedupe([tmp_path / "p"], keep_in=[tmp_path / "p"])
    rows = list(_csv.DictReader(report.to_csv().splitlines()))
    keeper_rows = [r for r in rows if r["keep"] == "1"]
    assert len(keeper_rows) == 1 and keeper_rows[0]["keep_reason"] == report.clusters[0].keep_reason
    assert all(r["reference"] == "1" for r in rows)
    page = write_html_report(report, tmp_path / "review.html")
    html = Path(page.path).read_text()
    assert json.dumps(report.clusters[0].keep_reason)[1:-1] in html
    assert '"refs"' in html


def test_policy_accepts_one_string_and_gif_is_not_lossless(tmp_path):
    from matchkit.match.keeper import KeeperPolicy, quality_rank

    policy = KeeperPolicy.make(keep_in=str(tmp_path), prefer="oldest")
    assert policy.keep_in == (str(tmp_path.resolve()),) and str(policy.prefer[0]) == "oldest"
    gif = StoredImage(0, "a.gif", 1, 0, "", None, 8, 8, "GIF")
    png = StoredImage(0, "a.png", 1, 0, "", None, 8, 8, "PNG")
    jpg = StoredImage(0, "a.jpg", 1, 0, "", None, 8, 8, "JPEG", jpeg_quality=75)
    assert quality_rank(png) > quality_rank(jpg) > quality_rank(gif)


def test_hull_share_equals_the_hull_of_every_mask_pixel():
    """hull_share hulls only each row's end pixels; the share must be that of
    the hull of all mask pixels (holes inside count as picture)."""
    import cv2

    from matchkit.match.keeper import hull_share

    def every_pixel(mask):
        hull = cv2.convexHull(cv2.findNonZero(mask.astype(np.uint8)))
        out = np.zeros(mask.shape, np.uint8)
        cv2.fillConvexPoly(out, hull, 1)
        return float(out.mean())

    rng = np.random.default_rng(3)
    for _ in range(60):
        h, w = rng.integers(4, 120, 2)
        mask = rng.random((h, w)) < rng.uniform(0.001, 0.2)
        mask[rng.integers(0, h), rng.integers(0, w)] = True
        assert hull_share(mask) == every_pixel(mask)
    ring = np.zeros((50, 80), bool)
    ring[5:45, 10:70] = True
    ring[15:35, 20:60] = False  # a dark sky inside the picture is picture
    assert hull_share(ring) == every_pixel(ring) == 40 * 60 / (50 * 80)
