"""Recaptures (issue 13): a picture re-photographed off a monitor or a print
matches its original and its other photos; different pictures shown on one
monitor setup (same bezel, desk and light) do not match through the frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from matchkit import dedupe
from matchkit.match.edits import Edit, apply_edit
from matchkit.match.picture import frame_quad, framed_sides, hull_mask, inner_share, rephotograph

from conftest import textured


def _recapture(pic, name: str, **kw):
    edit = Edit(name, ({"op": "recapture", "blur": 1.0, "noise": 5, **kw},))
    return apply_edit(pic, edit, name)[0]


def _names(report) -> list[list[str]]:
    return sorted(sorted(Path(m).name for m in c.members) for c in report.clusters)


def test_different_pictures_on_one_monitor_setup_do_not_match(tmp_path):
    for i in range(4):
        _recapture(textured(800 + i), f"p{i}.jpg", kind="monitor", setup=2, degrees=20
                   ).save(tmp_path / f"p{i}_on_monitor.jpg", quality=88)
    assert _names(dedupe([tmp_path])) == []


def test_keystoned_rephotographs_match_the_original_and_each_other(tmp_path):
    pic = textured(820)
    pic.save(tmp_path / "original.png")
    _recapture(pic, "screen.jpg", kind="monitor", degrees=35).save(
        tmp_path / "screen.jpg", quality=88)
    _recapture(pic, "print.jpg", kind="print", degrees=30).save(
        tmp_path / "print.jpg", quality=88)
    for i in range(2):
        _recapture(textured(830 + i), f"o{i}.jpg", kind="print", degrees=30).save(
            tmp_path / f"other{i}.jpg", quality=88)
    report = dedupe([tmp_path])
    assert _names(report) == [["original.png", "print.jpg", "screen.jpg"]]
    kinds = {p.relation for c in report.clusters for p in c.pairs}
    assert "recapture" in kinds


def test_inner_share_tells_a_rim_from_a_spread():
    rng = np.random.default_rng(0)
    spread = rng.uniform(0, 100, (200, 2))
    t = rng.uniform(0, 4, 200)
    # Points on the border of a 100 x 100 square (a frame around a picture).
    side = t.astype(int)
    u = (t - side) * 100
    rim = np.stack([np.choose(side, [u, 100 + 0 * u, 100 - u, 0 * u]),
                    np.choose(side, [0 * u, u, 100 + 0 * u, 100 - u])], axis=1)
    assert inner_share(spread) > 0.25
    assert inner_share(rim) == 0.0


def test_hull_mask_scales_working_pixels_to_the_thumbnail():
    pts = np.array([[0, 0], [256, 0], [256, 256], [0, 256]], np.float32)
    mask = hull_mask(pts, (512, 512), (128, 128))
    assert abs(mask.mean() - 0.25) < 0.03 and mask[10, 10] and not mask[100, 100]


def _grey(img) -> np.ndarray:
    return np.asarray(img.convert("L").resize((128, 96)), np.uint8)


def test_a_picture_inside_a_smooth_border_is_framed_and_a_crop_is_not():
    pic = np.asarray(textured(840).convert("L"), np.float64)  # 480 x 360
    # The picture shown at (200..840, 140..620) of a 1024 x 768 frame on a
    # smooth grey gradient (a monitor's bezel, a print's border, a desk).
    frame = np.tile(np.linspace(60, 110, 1024), (768, 1))
    from PIL import Image
    shown = np.asarray(Image.fromarray(pic.astype(np.uint8)).resize((640, 480)), np.float64)
    frame[140:620, 200:840] = shown
    thumb = _grey(Image.fromarray(frame.astype(np.uint8)))
    # picture (working 512 x 384) -> frame (working 512 x 384): scale 1.25 / 2 and shift.
    to_frame = np.array([[0.625, 0, 100], [0, 0.625, 70], [0, 0, 1]])
    assert rephotograph(_grey(textured(840)), thumb, to_frame, (512, 384), (512, 384),
                        0.95, 0.39) == "b"
    # The same geometry inside a bigger picture (a crop of it): no frame.
    big = np.asarray(textured(841, size=(1024, 768)).convert("L"), np.uint8)
    crop = big[140:620, 200:840]
    from PIL import Image as I
    sides = framed_sides(_grey(I.fromarray(big)),
                         frame_quad(to_frame, (512, 384), (512, 384), (96, 128)))
    assert sides[0] == 0 and sides[1] >= 3
    assert rephotograph(_grey(I.fromarray(crop)), _grey(I.fromarray(big)), to_frame,
                        (512, 384), (512, 384), 0.95, 0.39) is None
    # Coverage that does not nest says nothing.
    assert rephotograph(_grey(textured(840)), thumb, to_frame, (512, 384), (512, 384),
                        0.8, 0.8) is None


def test_the_original_is_kept_over_its_rephotographs(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    pic = textured(850)
    pic.save(pics / "original.jpg", quality=92)
    for name, kind, deg in (("monitor", "monitor", 25), ("screen", "monitor", 15)):
        _recapture(pic, f"{name}.jpg", kind=kind, degrees=deg).save(
            pics / f"{name}.jpg", quality=92)
    # From scratch, then twice with a gallery (the second run reuses the
    # stored pair decisions, which must still say which is the photo).
    for gallery in (None, tmp_path / "g", tmp_path / "g"):
        report = dedupe([pics], gallery=gallery)
        assert _names(report) == [["monitor.jpg", "original.jpg", "screen.jpg"]]
        (cluster,) = report.clusters
        # The photos have 4.5 times the pixels, but their picture is the original's.
        assert Path(cluster.keep).name == "original.jpg"
        assert "re-photograph" in cluster.keep_reason


# ------------------------------------------------------------ framed pictures as keys

def _grey_thumb(img, side: int = 128) -> np.ndarray:
    from matchkit.io.load import shrink

    return np.asarray(shrink(img.convert("RGB"), side).convert("L"))


def _distance(hashes: np.ndarray, code: np.ndarray) -> int:
    x = np.bitwise_xor(hashes.reshape(-1, hashes.shape[-1]), code[None])
    return int(np.unpackbits(x, axis=1).sum(axis=1).min())


def test_the_picture_inside_a_frame_hashes_like_the_original():
    from matchkit.match.framed import MAX_DISTANCE, frame_quads, picture_hashes
    from matchkit.signals.hashing import dihedral_phashes
    from matchkit.io.load import shrink

    pic = textured(840)
    plain = dihedral_phashes(shrink(pic, 64))[0]
    for kind, degrees in (("print", 30), ("monitor", 35)):
        photo = _recapture(pic, f"{kind}.jpg", kind=kind, degrees=degrees)
        thumb = _grey_thumb(photo)
        assert frame_quads(thumb)
        whole = dihedral_phashes(shrink(photo, 64))
        assert _distance(whole, plain) > MAX_DISTANCE  # the whole photo does not
        assert _distance(picture_hashes(thumb), plain) <= MAX_DISTANCE
    # A photo with no frame in it gives no extra keys.
    assert len(picture_hashes(_grey_thumb(Image.new("RGB", (160, 120), (90, 90, 90))))) == 0


def test_framed_pairs_pair_a_recapture_with_its_original_only():
    from matchkit.match.framed import framed_pairs, pairs_of, picture_hashes
    from matchkit.signals.hashing import dihedral_phashes
    from matchkit.index.hamming import HammingIndex
    from matchkit.io.load import shrink

    pics = [textured(850 + i) for i in range(4)]
    plain = {i: dihedral_phashes(shrink(p, 64)) for i, p in enumerate(pics)}
    index = HammingIndex(256, threads=1)
    index.add(np.arange(4), np.stack([plain[i][0] for i in range(4)]))
    photo = picture_hashes(_grey_thumb(_recapture(pics[2], "print.jpg", kind="print",
                                                  degrees=25)))
    found = framed_pairs(index, {9: photo}, {}, [9], allowed={0, 1, 2, 3, 9})
    assert pairs_of(found) == {(2, 9): found[9][2]}
    # Images outside the run are never proposed.
    assert framed_pairs(index, {9: photo}, {}, [9], allowed={0, 1, 3, 9}) == {}
    # The original finds the recapture too, from its own hash (an image that
    # enters a gallery after its recapture).
    assert set(framed_pairs(HammingIndex(256, threads=1), {9: photo}, plain, [2])[2]) == {9}
    # A second photo of the same picture pairs with the first through the pictures.
    other = picture_hashes(_grey_thumb(_recapture(pics[2], "screen.jpg", kind="monitor",
                                                  degrees=30)))
    found = framed_pairs(HammingIndex(256, threads=1), {9: photo, 10: other}, {}, [10])
    assert set(found[10]) == {9}



def test_framed_pairs_searched_in_parts_find_what_one_search_finds(monkeypatch):
    """``framed_pairs`` searches its query rows in parts (to bound the memory
    of the answers): the pairs and their distances are one search's."""
    from matchkit.match import framed
    from matchkit.index.hamming import HammingIndex

    rng = np.random.default_rng(3)
    centre = rng.random(256) < 0.5

    def near(shape, flip):
        return np.packbits(centre ^ (rng.random((*shape, 256)) < flip), axis=-1)

    n = 80
    plain = {i: near((8,), 0.12 if i % 3 else 0.3) for i in range(n)}
    pictures = {i: near((2, 8), 0.12) for i in range(0, n, 2)}
    index = HammingIndex(256, threads=1)
    index.add(np.arange(n), np.stack([plain[i][0] for i in range(n)]))
    allowed = set(range(n)) - {5}
    whole = framed.framed_pairs(index, pictures, plain, list(range(n)), allowed)
    monkeypatch.setattr(framed, "SEARCH_ROWS", 7)
    parts = framed.framed_pairs(index, pictures, plain, list(range(n)), allowed)
    assert sum(len(v) for v in whole.values()) > n
    assert parts == whole and list(parts) == list(whole)


def test_a_dense_agreeing_picture_of_any_size_backs_a_join_but_proves_no_copy():
    from matchkit.signals.local import Overlap
    from matchkit.match.picture import DENSE_INLIERS, dense_picture, picture_proves_copy

    # Two photos of one print: the keypoints crowd on its one textured part,
    # 3% of each frame, whose pixels agree (a shared sticker looks the same).
    small = Overlap(correlation=0.98, agreement=1.0, coverage_a=0.03, coverage_b=0.03)
    assert not picture_proves_copy(small, 200)
    assert dense_picture(small, 200)
    # Few inliers (a shared monitor frame's corner) or pixels that differ: no.
    assert not dense_picture(small, DENSE_INLIERS - 1)
    assert not dense_picture(Overlap(correlation=0.5, agreement=0.6, coverage_a=0.03,
                                     coverage_b=0.03), 200)
    assert not dense_picture(None, 200)
    # A large enough picture proves the copy by itself, as before.
    assert picture_proves_copy(Overlap(correlation=0.98, agreement=1.0, coverage_a=0.3,
                                       coverage_b=0.3), 30)
