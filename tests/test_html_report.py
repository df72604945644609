"""The HTML review page: self-contained, faithful to the JSON, safe with any file name."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from _report_data import XSS_NAME, build_collection
from matchkit import Settings
from matchkit import dedupe
from matchkit.cli.commands import cli
from matchkit.report.evidence import _FeatureCache, match_points
from matchkit.report.html import (Card, ImageEntry, PairEntry, histogram_svg, render_html,
                                  score_markers, write_html_report)
from matchkit.report.thumbs import DEFAULT_SIDE, make_thumb, make_thumbs


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    folder = build_collection(tmp_path_factory.mktemp("coll") / "photos")
    return folder, dedupe([folder]).to_dict()


def page_json(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="mk-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_page_is_self_contained_and_matches_the_json(collection, tmp_path):
    folder, report = collection
    info = write_html_report(report, tmp_path / "out" / "review.html")
    page = Path(info.path).read_text()
    data = page_json(page)
    assert info.cards == len(report["clusters"]) == len(data["cards"]) == 2
    assert re.search(r'id=mk-total>2</span><span class="l">clusters', page)
    # Keeper first, members in the report's order, pair scores carried over.
    for card, cluster in zip(data["cards"], report["clusters"]):
        assert [data["images"][i]["p"] for i in card["m"]] == cluster["members"]
        assert data["images"][card["k"]]["p"] == cluster["keep"]
        assert [p["s"] for p in card["pairs"]] == [p["score"] for p in cluster["pairs"]]
    # Every thumbnail the page names exists beside it; nothing is fetched from a network.
    thumbs = [im["t"] for im in data["images"]]
    assert all(thumbs) and all((tmp_path / "out" / t).is_file() for t in thumbs)
    assert info.thumbnails == 7 and info.thumbnail_errors == 0
    urls = re.findall(r'(?:src|href)\s*=\s*["\']?([^"\' >]+)', page)
    assert not [u for u in urls if re.match(r"(?i)(https?:)?//", u)]
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<link" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    # Skipped files with their reasons are in the page data.
    assert data["skipped"] == report["skipped"] and "broken.jpg" in data["skipped"][0]["path"]
    assert info.bytes == Path(info.path).stat().st_size + sum(
        f.stat().st_size for f in Path(info.assets).iterdir())


def test_file_names_never_become_markup(collection, tmp_path):
    folder, report = collection
    info = write_html_report(report, tmp_path / "r.html", evidence_limit=0)
    page = Path(info.path).read_text()
    assert XSS_NAME not in page and "onerror=" not in page.replace("onerror=\\", "")
    assert "<img" not in page  # the page builds its images with DOM calls only
    names = [im["n"] for im in page_json(page)["images"]]
    assert XSS_NAME in names  # ... yet the name itself is shown, as text
    # Script-breaking text anywhere in the data stays inside its JSON block.
    evil = "/x/</script><script>window.__xss=2</script>.jpg"
    html = render_html([Card([evil, "/x/b.jpg"], evil, [PairEntry(evil, "/x/b.jpg", 0.9, "near")])],
                       {}, title="<b>title</b> %DATA% %NONCE%",
                       summary=[("clusters", "<i>1</i>")], skipped=[{"path": evil, "reason": "<r>"}])
    assert html.count("<script") == 2 and html.count("</script>") == 2
    assert "<b>title</b>" not in html and "&lt;b&gt;title&lt;/b&gt; %DATA% %NONCE%" in html
    assert "<i>1</i>" not in html
    assert page_json(html)["cards"][0]["k"] == 0 and page_json(html)["images"][0]["p"] == evil


def test_thumbnails_are_bounded_and_shared_by_identical_files(collection, tmp_path):
    folder, _ = collection
    paths = [folder / "p1.jpg", folder / "sub" / "p1_copy.jpg", folder / "sub" / XSS_NAME,
             folder / "p2.jpg", folder / "broken.jpg", folder / "gone.jpg"]
    thumbs = make_thumbs(paths, tmp_path / "t")
    names = [thumbs[str(p)].name for p in paths]
    assert names[0] == names[1] == names[2] and names[3] != names[0]
    assert names[4] is None and "not an image" in thumbs[str(paths[4])].error
    assert names[5] is None and "cannot read file" in thumbs[str(paths[5])].error
    assert len(list((tmp_path / "t").iterdir())) == 2  # one per distinct content, no temp files
    for n in set(names[:4]):
        with Image.open(tmp_path / "t" / n) as im:
            assert im.format == "JPEG" and max(im.size) == DEFAULT_SIDE
    t = thumbs[str(paths[0])]
    assert (t.width, t.height) == (480, 360) and t.file_size == paths[0].stat().st_size
    small = make_thumb(folder / "p2_half.jpg", tmp_path / "t", side=64)
    with Image.open(tmp_path / "t" / small.name) as im:
        assert max(im.size) == 64


def test_keypoint_pictures_only_for_local_pairs_and_capped(collection, tmp_path):
    folder, report = collection
    info = write_html_report(report, tmp_path / "a.html")
    data = page_json(Path(info.path).read_text())
    pics = {(data["images"][p["a"]]["n"], data["images"][p["b"]]["n"]): p["pic"]
            for c in data["cards"] for p in c["pairs"]}
    assert info.local_pairs == 1 and info.pictures == 1
    assert pics.pop(("p1.jpg", "p1_crop.jpg")) is not None
    assert not any(pics.values())  # exact and pHash pairs get no picture
    pic = tmp_path / data["cards"][0]["pairs"][2]["pic"]
    with Image.open(pic) as im:
        assert im.format == "JPEG" and im.width > 1.5 * im.height  # two pictures side by side
    capped = write_html_report(report, tmp_path / "b.html", evidence_limit=0)
    assert capped.pictures == 0
    assert "drawn for the 0 weakest of 1 local-feature pairs" in Path(capped.path).read_text()


def test_matched_points_are_geometrically_right(collection):
    folder, _ = collection
    cache = _FeatureCache(Settings())
    pts, matches, mirrored = match_points(str(folder / "p1.jpg"), str(folder / "sub" / "p1_crop.jpg"),
                                          cache)
    assert len(pts) >= 12 and not mirrored and matches >= len(pts)
    # Working images are 512 px wide: back to file pixels, the crop is offset by (60, 40).
    a = pts[:, :2] * 480 / 512
    b = pts[:, 2:] * 300 / 512
    assert np.median(np.abs(a - b - [60, 40]), axis=0).max() < 2.0
    pts, _, mirrored = match_points(str(folder / "p2.jpg"), str(folder / "p2_flip.jpg"), cache)
    assert mirrored and len(pts) >= 12
    xa, xb = pts[:, 0] * 480 / 512, pts[:, 2] * 480 / 512
    assert np.median(np.abs(xa - (479 - xb))) < 2.0  # drawn where they are, not mirrored


def test_missing_file_gets_a_reason_not_a_crash(collection, tmp_path):
    folder, report = collection
    copy = tmp_path / "photos"
    shutil.copytree(folder, copy)
    text = json.dumps(report).replace(str(folder), str(copy))
    moved = json.loads(text)
    (copy / "p2_half.jpg").unlink()
    (copy / "sub" / "p1_crop.jpg").write_bytes(b"not a jpeg any more")
    info = write_html_report(moved, tmp_path / "r.html")
    images = {im["n"]: im for im in page_json(Path(info.path).read_text())["images"]}
    assert images["p2_half.jpg"]["t"] is None and "cannot read file" in images["p2_half.jpg"]["e"]
    assert images["p1_crop.jpg"]["t"] is None and "not an image" in images["p1_crop.jpg"]["e"]
    assert images["p1.jpg"]["t"] and info.thumbnail_errors == 2
    assert info.pictures == 0  # the local pair's second image is unreadable


def test_histogram_counts_and_threshold_marker():
    scores = [0.7, 0.8, 0.8, 0.95, 1.0]
    svg = histogram_svg(scores, rejected=[0.5, 0.55], markers=[(0.648, "pHash <limit>")], bins=20)
    counts = [int(n) for n in re.findall(r"<title>[0-9.]+-[0-9.]+: (\d+)</title>", svg)]
    assert sum(counts) == len(scores) + 2
    assert 'class="marker"' in svg and "pHash &lt;limit&gt; (0.648)" in svg
    assert "matched pairs (5)" in svg and "rejected candidates (2)" in svg
    x = float(re.search(r'class="marker" x1="([0-9.]+)"', svg).group(1))
    lo_x = 44  # left margin: the axis starts at the lowest value shown
    assert lo_x < x < 44 + (640 - 56) * 0.5  # 0.648 sits in the left part of [0.45, 1]
    assert score_markers({"phash_max_distance": 90}) == [(1 - 90 / 256, "pHash limit, 90 bits")]
    assert score_markers({"score_threshold": 0.8, "phash_max_distance": 90})[0][0] == 0.8


def test_generic_cards_for_other_results():
    """A labeling or gallery-check run shows a query with its neighbours the same way."""
    cards = [Card(["/q/query.jpg", "/g/n1.jpg", "/g/n2.jpg"], None,
                  [PairEntry("/q/query.jpg", "/g/n1.jpg", 0.93, "label: cat"),
                   PairEntry("/q/query.jpg", "/g/n2.jpg", float("nan"), "label: dog")],
                  title="query.jpg")]
    images = {"/g/n1.jpg": ImageEntry("/g/n1.jpg", thumb="t/1.jpg", width=10, height=5)}
    data = page_json(render_html(cards, images, title="labels"))
    assert data["cards"][0]["k"] is None and data["cards"][0]["t"] == "query.jpg"
    assert [p["s"] for p in data["cards"][0]["pairs"]] == [0.93, None]  # NaN is not JSON
    assert data["images"][1]["t"] == "t/1.jpg" and data["images"][1]["d"] == "g"
    assert "review" not in data  # only a dedupe page saves a review


def test_dedupe_page_carries_what_a_saved_review_needs(collection, tmp_path):
    """Exact paths and each member's stamp (mtime_ns as text: JavaScript numbers
    cannot hold it), and the scanned folders, for `matchkit apply`."""
    folder, report = collection
    data = page_json(Path(write_html_report(report, tmp_path / "r.html").path).read_text())
    rv = data["review"]
    assert rv["report"]["roots"] == report["roots"] == [str(folder)]
    assert rv["report"]["page"] == "r.html" and rv["report"]["stats"]["clusters"] == 2
    stamps = {p: st for c in report["clusters"] for p, st in c["stamps"].items()}
    assert set(rv["paths"]) == set(stamps)
    for path, st in zip(rv["paths"], rv["stamps"]):
        assert st == {**stamps[path], "mtime_ns": str(stamps[path]["mtime_ns"])}
    # The key that keeps decisions over a reload: same page, same key; other
    # file stamps (a file changed), another key.
    again = page_json(Path(write_html_report(report, tmp_path / "r.html").path).read_text())
    assert again["review"]["key"] == rv["key"] and len(rv["key"]) == 32
    changed = json.loads(json.dumps(report))
    first = changed["clusters"][0]
    first["stamps"][first["keep"]]["size"] += 1
    other = page_json(Path(write_html_report(changed, tmp_path / "r.html").path).read_text())
    assert other["review"]["key"] != rv["key"]


def test_rerun_reuses_and_prunes_only_its_own_files(collection, tmp_path):
    folder, report = collection
    write_html_report(report, tmp_path / "r.html")
    assets = tmp_path / "r_files"
    stale = assets / ("0" * 32 + "-200.jpg")
    stale.write_bytes(b"old")
    (assets / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in assets.iterdir()}
    write_html_report(report, tmp_path / "r.html")
    after = {p.name: p.stat().st_mtime_ns for p in assets.iterdir()}
    assert stale.name not in after and "notes.txt" in after
    thumbs = [n for n in after if not n.startswith("pair-") and n.endswith(".jpg")]
    assert thumbs and all(after[n] == before[n] for n in thumbs)  # reused, not rewritten


def test_ten_thousand_clusters_build_quickly():
    cards = [Card([f"/c/{i}/k.jpg", f"/c/{i}/d1.jpg", f"/c/{i}/d2.jpg"], f"/c/{i}/k.jpg",
                  [PairEntry(f"/c/{i}/k.jpg", f"/c/{i}/d{j}.jpg", 0.6 + (i % 40) / 100, "near",
                             "phash", {"phash_distance": i % 90}) for j in (1, 2)])
             for i in range(10_000)]
    t = time.perf_counter()
    page = render_html(cards, {}, summary=[("clusters", len(cards))])
    assert time.perf_counter() - t < 10
    assert len(page_json(page)["cards"]) == 10_000 and len(page) < 12 * 2**20


def test_cli_writes_the_page(collection, tmp_path):
    folder, _ = collection
    runner = CliRunner()
    out = tmp_path / "page.html"
    r = runner.invoke(cli, ["dedupe", str(folder), "--html", str(out), "--json", "-", "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["html"]["path"] == str(out) and data["html"]["cards"] == len(data["clusters"])
    assert out.is_file() and (tmp_path / "page_files").is_dir()
    r = runner.invoke(cli, ["dedupe", str(folder), "--html", str(tmp_path)])
    assert r.exit_code == 2 and r.stderr.startswith("matchkit: error:")
