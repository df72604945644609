"""The real dev set's ground-truth rules and the scoring in bench_real."""

import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_real  # noqa: E402
import build_realdev as R  # noqa: E402


def _save(arr, path, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def test_every_package_is_pinned_to_a_version():
    """The dev set rebuilds from an allow-list of exact package versions."""
    assert R.PACKAGES
    for name, version in R.PACKAGES.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name), name
        assert re.fullmatch(r"(\d+:)?[0-9][A-Za-z0-9.+~-]*", version), (name, version)


def test_relation_of_two_files(tmp_path):
    rng = np.random.default_rng(0)
    pic = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    a = _save(pic, tmp_path / "a.png")
    b = tmp_path / "b.png"
    b.write_bytes(a.read_bytes())
    c = _save(pic, tmp_path / "c.png", compress_level=1)  # same pixels, other bytes
    half = np.asarray(Image.fromarray(pic).resize((80, 60)))
    d = _save(half, tmp_path / "d.png")
    e = _save(pic[:, :100], tmp_path / "e.png")
    thumb = np.asarray(Image.fromarray(pic).resize((29, 21)))  # 160x120 -> 29x21.75: 3.6 % off
    f = _save(thumb, tmp_path / "f.png")
    assert R.relation(a, b, False) == "exact"
    assert R.relation(a, c, False) == "same-pixels"
    assert R.relation(a, d, False) == "resized"
    assert R.relation(a, e, False) == "crop"
    assert R.relation(a, f, False) == "resized"
    assert R.relation(a, e, True) == "edited"


def test_alpha_only_pictures_are_detected(tmp_path):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[16:48, 16:48, 3] = 255  # black square drawn only in alpha
    assert R.alpha_only(_save(rgba, tmp_path / "a.png"))
    rgba[..., :3] = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert not R.alpha_only(_save(rgba, tmp_path / "b.png"))
    assert not R.alpha_only(_save(rgba[..., :3].copy(), tmp_path / "c.png"))


def test_identical_pixels_join_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "ROOT", tmp_path)
    (tmp_path / "images").mkdir()
    pic = np.random.default_rng(2).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    for name, arr in (("x.png", pic), ("y.png", pic), ("z.png", 255 - pic)):
        _save(arr, tmp_path / "images" / name)
    items = [R.Item(tmp_path / n, n, g) for n, g in (("x.png", "gx"), ("y.png", "gy"),
                                                      ("z.png", "gz"))]
    R.refine_groups(items, log=lambda *_: None)
    assert items[0].group == items[1].group != items[2].group


def test_mate_split_and_generic_drawing_join(tmp_path, monkeypatch):
    """A MATE 256 px icon whose own 48 px file is another drawing leaves that
    file's group and joins the 48 px name that ships its (generic) drawing."""
    monkeypatch.setattr(R, "ROOT", tmp_path)
    rng = np.random.default_rng(3)
    base = "mate-icon-theme/icons/mate"
    items = []
    for size, stem, group in ((256, "application-x-java", "java"),
                              (48, "application-x-java", "java"),
                              (48, "text-x-generic", "generic")):
        dest = f"{base}/{size}x{size}/mimetypes/{stem}.png"
        (tmp_path / "images" / dest).parent.mkdir(parents=True, exist_ok=True)
        _save(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), tmp_path / "images" / dest)
        items.append(R.Item(tmp_path / "images" / dest, dest, group))
    R.refine_groups(items, log=lambda *_: None)
    big, own_small, generic = (it.group for it in items)
    assert big == generic != own_small


def test_evaluate_counts_pairs_lookalikes_and_relations(tmp_path):
    images = tmp_path / "images"
    truth = {"images": ["a", "b", "c", "d", "e"],
             "pairs": [{"a": "a", "b": "b", "relation": "resized"},
                       {"a": "c", "b": "d", "relation": "crop"}],
             "lookalikes": [{"a": "a", "b": "c", "relation": "variant", "why": "colour"}],
             "unscored": [{"a": "d", "b": "e"}]}
    report = {"clusters": [
        {"members": [str(images / "a"), str(images / "b"), str(images / "c")],
         "pairs": [{"a": str(images / "a"), "b": str(images / "b"), "relation": "resized"},
                   {"a": str(images / "a"), "b": str(images / "c"), "relation": "crop"}]},
        {"members": [str(images / "d"), str(images / "e")], "pairs": []}]}
    ev = bench_real.evaluate(report, truth, images)
    # Found: a-b (true), a-c (look-alike), b-c (false); d-e is unscored; c-d missed.
    assert ev["scores"]["tp"] == 1 and ev["scores"]["pairs_found"] == 3
    assert ev["scores"]["recall"] == 0.5
    assert ev["lookalike_merged"] == 1
    assert {r["relation"]: r["recall"] for r in ev["per_kind"]} == {"resized": 1.0, "crop": 0.0}
    assert ev["confusion"] == Counter({("resized", "resized"): 1, ("variant", "crop"): 1})
    assert ev["misses"] == [("c", "d")]
    out = bench_real.write_errors(ev, tmp_path / "errors.txt").read_text()
    assert "a\tc\tlook-alike: colour (variant)" in out and "b\tc\tunrelated" in out


def test_relation_summary_counts_listed_and_unlisted_true_pairs():
    ev = {"true_rel": {1: "resized", 2: "crop"},
          "confusion": Counter({("resized", "resized"): 8, ("resized", "edited"): 2,
                                ("crop", "(same cluster, no pair)"): 10,
                                ("variant", "resized"): 3})}
    text = bench_real.relation_summary(ev)
    assert "right on 8 of 10 listed true pairs (80.0%)" in text
    assert "10 more found true pairs" in text and "(40.0% of all 20" in text


def test_explain_misses_names_sizes_clusters_and_icon_reasons(tmp_path):
    """--misses: one line per missed pair; a file that cannot be read gets "?"
    for its size, never a crash; two icons at two sizes get thumbmatch's reason."""
    from PIL import Image, ImageDraw

    images = tmp_path / "images"
    images.mkdir()
    for name, side, colour in (("big.png", 256, (40, 90, 200)), ("small.png", 48, (210, 40, 40))):
        img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        ImageDraw.Draw(img).ellipse((side * .1, side * .1, side * .9, side * .9),
                                    fill=(*colour, 255))
        img.save(images / name)
    truth = {"images": ["big.png", "small.png", "c", "d"],
             "pairs": [{"a": "big.png", "b": "small.png", "relation": "resized"},
                       {"a": "c", "b": "d", "relation": "crop"}],
             "lookalikes": [], "unscored": []}
    report = {"clusters": [{"members": [str(images / "c"), str(images / "big.png")],
                            "pairs": []}]}
    ev = bench_real.evaluate(report, truth, images)
    text = bench_real.explain_misses(ev, report, truth, images)
    assert "resized, 256x256 vs 48x48; cluster 0 (2 files) / alone; icon: " in text
    assert "fails recoloured 0.9" in text  # a blue disc against a red one
    assert "crop, ? vs ?; cluster 0 (2 files) / alone" in text
