"""The scale-benchmark collection: deterministic per slot, 5% copies, resumable."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import scale_set  # noqa: E402
import synth  # noqa: E402


def test_render_is_a_function_of_seed_and_index():
    a, b = synth.render(0, 5), synth.render(0, 5)
    assert a.tobytes() == b.tobytes()
    assert synth.render(0, 6).tobytes() != a.tobytes()
    assert synth.render(1, 5).tobytes() != a.tobytes()
    assert a.size in synth.SIZES or a.size[::-1] in synth.SIZES
    # A photo-like picture, not a flat one: plenty of grey-level variation.
    assert np.asarray(a.convert("L"), np.float32).std() > 10


def test_plan_has_five_percent_copies_of_earlier_pictures():
    n = 2000
    slots = [scale_set.slot(0, i) for i in range(n)]
    copies = [s for s in slots if s.source >= 0]
    assert len(copies) == n // 20
    assert all(0 <= s.source < s.index and s.source % 20 != 19 and s.edit for s in copies)
    assert any(s.source // 20 < s.index // 20 for s in copies)  # some copy earlier blocks


def test_truth_of_a_prefix_is_part_of_the_larger_truth():
    small = {tuple(g) for g in scale_set.truth(0, 400)}
    large = scale_set.truth(0, 800)
    names = {n for g in large for n in g}
    assert small and all(set(g) <= names for g in small)
    assert sum(len(g) - 1 for g in large) == 800 // 20


def test_build_writes_missing_files_only(tmp_path):
    r = scale_set.build(0, tmp_path, 20, workers=1, progress=False)
    assert r["made"] == 20 and r["failed"] == 0
    files = sorted((tmp_path / "img").rglob("*.jpg"))
    assert len(files) == 20
    copy = tmp_path / "img" / scale_set.Slot(19).name
    with Image.open(copy) as im:
        assert im.format == "JPEG"
    files[0].unlink()
    assert scale_set.missing(tmp_path / "img", 0, 20) == [0]
    assert scale_set.build(0, tmp_path, 20, workers=1, progress=False)["made"] == 1
    assert (tmp_path / "truth-20.json").exists()


def test_an_emoji_on_two_pictures_is_no_recapture(tmp_path):
    """Slots 2879 (a copy of 1685 with an emoji pasted on) and 6439 (a copy
    of another picture, 1831, with another emoji): 30 of 66 matches agree on the two emojis,
    under a perspective fit whose inliers span 3% of either image; projected
    over 38% / 23% of the pictures, the overlap correlated 0.63, and the pair
    was taken for a recapture (the 10,000-image scale run's only false link).
    A perspective fit that explains fewer than half the matches, from a patch
    under ``picture.PICTURE_SHARE`` of an image, is a shared part only."""
    from matchkit.jobs.dedupe import dedupe

    paths = {i: scale_set.make(0, i, tmp_path / "img") for i in (1685, 2879, 6439)}
    assert scale_set.slot(0, 2879).source == 1685 and scale_set.slot(0, 6439).source == 1831
    report = dedupe([str(tmp_path / "img")])
    together = [{Path(m).name for m in c.members} for c in report.clusters]
    assert {paths[1685].name, paths[2879].name} in together  # the planted copy
    assert not any(paths[6439].name in c for c in together)


def test_one_emoji_or_font_on_two_pictures_links_no_copies(tmp_path):
    """The 50,000-image scale run's three false links (slots 16499-17999 and
    44939-14379: emojis of two sizes and colours; 13605-34714: letters of
    one font): inliers gathered in part of an overlap that covers under a
    fifth of one image, correlating 0.53-0.75. Each picture must stay with
    its planted copy only (before, each false link also pulled the pictures
    away from their own copies)."""
    from matchkit.jobs.dedupe import dedupe

    planted = [(16485, 16499), (14128, 17999), (27720, 44939), (14360, 14379),
               (34714, 34719)]
    slots = {i for pair in planted for i in pair} | {13605}
    paths = {i: scale_set.make(0, i, tmp_path / "img") for i in slots}
    for a, b in planted:
        assert scale_set.slot(0, b).source == a
    report = dedupe([str(tmp_path / "img")])
    together = sorted(sorted(Path(m).name for m in c.members) for c in report.clusters)
    assert together == sorted(sorted((paths[a].name, paths[b].name)) for a, b in planted)


def test_shared_part_needs_all_three_signs():
    """A small, gathered, poorly correlating overlap is a shared part; a
    small crop whose matches spread over it, or whose pixels agree, is not."""
    from matchkit.signals.local import Overlap
    from matchkit.match.pairs import shared_part

    emoji = Overlap(correlation=0.53, coverage_a=0.17, coverage_b=0.43, spread=0.17)
    assert shared_part(emoji)
    assert not shared_part(Overlap(correlation=0.53, coverage_a=0.17, coverage_b=1.0,
                                   spread=0.6))
    assert not shared_part(Overlap(correlation=0.85, coverage_a=0.17, coverage_b=0.43,
                                   spread=0.17))
    assert not shared_part(Overlap(correlation=0.53, coverage_a=0.3, coverage_b=0.43,
                                   spread=0.17))
