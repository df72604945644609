"""The review page in a real browser (headless Chromium via chromedriver).

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run``
installs them); skipped with a reason where they are missing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import _chromium
from _check_data import BROKEN, build_check_case
from _report_data import XSS_NAME, build_collection, textured
from matchkit import dedupe
from matchkit.report.html import Card, ImageEntry, PairEntry, render_html, write_html_report
from matchkit.report.thumbs import make_thumb

pytestmark = pytest.mark.skipif(not _chromium.available(),
                                reason="needs chromium and chromium-driver (apt)")

READY = ('return document.documentElement.getAttribute("data-mk-ready") === "1" '
         '&& document.getElementById("mk-state").textContent')


@pytest.fixture(scope="module")
def browser():
    with _chromium.Chromium(1280, 1600) as b:
        yield b


def test_report_renders_with_thumbnails_and_right_counts(browser, tmp_path):
    folder = build_collection(tmp_path / "photos")
    report = dedupe([folder]).to_dict()
    (tmp_path / "dupes.json").write_text(json.dumps(report))
    info = write_html_report(report, tmp_path / "report" / "review.html")
    browser.get(Path(info.path).as_uri())
    state = json.loads(browser.wait(READY))
    n = len(json.loads((tmp_path / "dupes.json").read_text())["clusters"])
    assert n == 2
    # The count the reader sees equals the JSON's, in the summary and the pager.
    assert browser.run('return document.getElementById("mk-total").textContent') == str(n)
    assert browser.run('return document.querySelectorAll("article.card").length') == n
    assert state["total"] == state["shown"] == n
    assert browser.run('return document.getElementById("mk-count").textContent') \
        .startswith(f"1\u2013{n} of {n} clusters")
    # Every thumbnail really loaded (decoded, not a broken image).
    thumbs = browser.run('return [].map.call(document.querySelectorAll(".tb img"), '
                         'function(i){return [i.complete, i.naturalWidth, i.alt]})')
    assert len(thumbs) == sum(len(c["members"]) for c in report["clusters"]) == 7
    assert all(done and width > 0 for done, width, _ in thumbs), thumbs
    assert state["loaded"] == 7 and state["failed"] == 0
    assert browser.run('return document.querySelectorAll("figure.keep .badge").length') == n
    # The keypoint picture of the local-feature pair loads when its pairs are opened.
    pics = _open_keypoint_pictures(browser)
    assert len(pics) == 1 and pics[0] > 300
    # A file name made of markup is shown as text and runs nothing.
    assert browser.run("return window.__xss === undefined")
    assert browser.run('return document.querySelectorAll("img[src=x]").length') == 0
    assert XSS_NAME in browser.run('return [].map.call(document.querySelectorAll(".nm"), '
                                   'function(s){return s.textContent})')
    skipped = browser.run('return document.getElementById("mk-skipped").textContent')
    assert "Skipped files (1)" in skipped and "broken.jpg" in skipped and "not an image" in skipped
    shot = browser.screenshot(tmp_path / "report.png")
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ten_thousand_clusters_open_filter_and_paginate(browser, tmp_path):
    assets = tmp_path / "big_files"
    assets.mkdir()
    pool = [make_thumb(_save(textured(i, (320, 240)), tmp_path / f"src{i}.jpg"), assets)
            for i in range(12)]
    cards, images = [], {}
    for i in range(10_000):
        members = [f"/big/{i % 97}/c{i}_{j}.jpg" for j in range(2 + i % 4)]
        for j, m in enumerate(members):
            t = pool[(i + j) % len(pool)]
            images[m] = ImageEntry(m, f"big_files/{t.name}", t.width, t.height, 1000 + j)
        cards.append(Card(members, members[0], [
            PairEntry(members[0], m, round(0.6 + ((i * 7 + j) % 400) / 1000, 4), "near", "phash")
            for j, m in enumerate(members[1:])], title=f"Cluster {i + 1}"))
    page = tmp_path / "big.html"
    page.write_text(render_html(cards, images, summary=[("clusters", len(cards))]))
    browser.get(page.as_uri())
    state = json.loads(browser.wait(READY))
    assert state["total"] == 10_000 and state["pages"] == 200 and state["shown"] == 50
    assert state["loaded"] == state["eager_images"] > 0 and state["failed"] == 0
    ready_ms = browser.run('return performance.getEntriesByName("mk-ready")[0].startTime')
    assert ready_ms < 15_000  # generous here; benchmarks/bench_report.py measures it
    assert browser.run('return document.getElementById("mk-total").textContent') == "10,000"
    count = 'return document.getElementById("mk-count").textContent'
    browser.run('document.getElementById("mk-next").click()')
    assert browser.run(count).startswith("51\u2013100 of 10000")
    # Largest clusters first (ties in report order): page 2 starts with the 51st of that order.
    order = sorted(range(len(cards)), key=lambda i: (-len(cards[i].members), i))
    assert browser.run('return document.querySelector("article.card h2").firstChild.textContent') \
        == f"Cluster {order[50] + 1}"
    # Filter: clusters of 5 images whose weakest score is at most 0.65.
    browser.run('var s=document.getElementById("mk-size");s.value="5";'
                's.dispatchEvent(new Event("input"));'
                'var m=document.getElementById("mk-max");m.value="0.65";'
                'm.dispatchEvent(new Event("input"))')
    want = sum(1 for c in cards if len(c.members) >= 5 and min(p.score for p in c.pairs) <= 0.65)
    assert 0 < want < 10_000
    assert browser.run(count) == f"1\u201350 of {want} clusters \u00b7 page 1/{-(-want // 50)}"
    sizes = browser.run('return [].map.call(document.querySelectorAll("article.card"), '
                        'function(a){return a.querySelectorAll("figure").length})')
    assert sizes and all(s >= 5 for s in sizes)
    # Sort by weakest match: the first card holds the lowest score of the filtered set.
    browser.run('var o=document.getElementById("mk-sort");o.value="weak";'
                'o.dispatchEvent(new Event("change"))')
    first = browser.run('return Number(document.querySelector("article.card").getAttribute('
                        '"data-card"))')
    lowest = min(min(p.score for p in c.pairs) for c in cards
                 if len(c.members) >= 5 and min(p.score for p in c.pairs) <= 0.65)
    assert min(p.score for p in cards[first].pairs) == lowest
    browser.screenshot(tmp_path / "big.png")


def test_check_page_renders_thumbnails_counts_and_keypoints(browser, tmp_path):
    from matchkit.jobs.check import check
    from matchkit.report.pages import write_check_html

    gallery, incoming = build_check_case(tmp_path / "case")
    report = check(gallery, sorted(incoming.iterdir()), include_all=True, k=2)
    (tmp_path / "check.json").write_text(report.to_json())
    info = write_check_html(report, tmp_path / "out" / "check.html")
    browser.get(Path(info.path).as_uri())
    state = json.loads(browser.wait(READY))
    data = json.loads((tmp_path / "check.json").read_text())
    n = len(data["results"])
    assert n == 5 and state["total"] == state["shown"] == n
    assert browser.run('return document.getElementById("mk-total").textContent') == str(n)
    assert browser.run('return document.querySelectorAll("article.card").length') == n
    assert browser.run('return document.getElementById("mk-count").textContent') \
        .startswith(f"1\u2013{n} of {n} queries")
    # Every thumbnail loaded: each query and its k listed gallery images.
    thumbs = browser.run('return [].map.call(document.querySelectorAll(".tb img"), '
                         'function(i){return [i.complete, i.naturalWidth]})')
    assert len(thumbs) == sum(1 + len(r["matches"]) for r in data["results"]) == 15
    assert all(done and width > 0 for done, width in thumbs), thumbs
    assert state["failed"] == 0
    badges = browser.run('return [].map.call(document.querySelectorAll("figure.keep .badge"), '
                         'function(b){return b.textContent})')
    assert badges == ["query"] * n
    # Filter by kind: only the matched queries have an "exact" or "near" match.
    browser.run('var k=document.getElementById("mk-kind");k.value="no match";'
                'k.dispatchEvent(new Event("change"))')
    assert browser.run('return document.querySelectorAll("article.card").length') == n
    browser.run('var k=document.getElementById("mk-kind");k.value="exact";'
                'k.dispatchEvent(new Event("change"))')
    assert browser.run('return [].map.call(document.querySelectorAll("article.card h2"), '
                       'function(h){return h.firstChild.textContent})') == ["same.jpg"]
    browser.run('var k=document.getElementById("mk-kind");k.value="";'
                'k.dispatchEvent(new Event("change"))')
    # The crop's keypoint picture loads when its pairs are opened.
    pics = _open_keypoint_pictures(browser)
    assert len(pics) == 1 and pics[0] > 300
    skipped = browser.run('return document.getElementById("mk-skipped").textContent')
    assert "Skipped files (1)" in skipped and BROKEN in skipped
    shot = browser.screenshot(tmp_path / "check.png")
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _open_keypoint_pictures(browser) -> list[int]:
    """Open every card's pairs, load their keypoint pictures; their decoded widths."""
    browser.run('document.querySelectorAll("details.pairs").forEach(function(d){d.open=true});'
                'document.querySelectorAll(".pic img").forEach(function(i){i.loading="eager"})')
    return browser.wait('var p=[].slice.call(document.querySelectorAll(".pic img"));'
                        'return p.length && p.every(function(i){return i.complete}) && '
                        'p.map(function(i){return i.naturalWidth})')


def _save(img, path: Path) -> Path:
    img.save(path, quality=90)
    return path


def test_relation_is_shown_and_filters_clusters(browser, tmp_path):
    """Each pair's relation is on the page; the Relation select keeps only the
    clusters with a pair of that relation."""
    assets = tmp_path / "rel_files"
    assets.mkdir()
    t = make_thumb(_save(textured(1, (320, 240)), tmp_path / "src.jpg"), assets)
    relations = ["resized", "crop", "edited", "crop", "exact"]
    cards, images = [], {}
    for i, rel in enumerate(relations):
        members = [f"/r/{i}_a.jpg", f"/r/{i}_b.jpg"]
        for m in members:
            images[m] = ImageEntry(m, f"rel_files/{t.name}", t.width, t.height, 1000)
        cards.append(Card(members, members[0], [PairEntry(members[0], members[1], 0.9, "near",
                                                          "local", relation=rel)]))
    page = tmp_path / "rel.html"
    page.write_text(render_html(cards, images, summary=[("clusters", len(cards))]))
    browser.get(page.as_uri())
    json.loads(browser.wait(READY))
    options = browser.run('return [].map.call(document.getElementById("mk-rel").options, '
                          'function(o){return o.value})')
    assert options == ["", "exact", "resized", "crop", "edited"]  # closest first
    browser.run('var r=document.getElementById("mk-rel");r.value="crop";'
                'r.dispatchEvent(new Event("change"))')
    cards_shown = browser.run('return [].map.call(document.querySelectorAll("article.card"), '
                              'function(a){return Number(a.getAttribute("data-card"))})')
    assert cards_shown == [1, 3]
    captions = browser.run('return [].map.call(document.querySelectorAll("figcaption .sc"), '
                           'function(s){return s.textContent})')
    assert captions and all(c.endswith("\u00b7 crop") for c in captions), captions


#: The figure of the image named arguments[0] (a script prefix: "return" it or use it).
FIGURE = ('var n=arguments[0];return [].filter.call(document.querySelectorAll("figure.m"), '
          'function(f){return f.querySelector(".nm").textContent === n})[0]')


def test_review_changes_keeper_unticks_saves_and_apply_moves_exactly_that(photo_dir, tmp_path):
    """The dedupe page as a review: make another member the keeper, untick one,
    "Save review" downloads the file, and `matchkit apply` moves what it says."""
    from click.testing import CliRunner

    from matchkit.cli.commands import cli

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    info = write_html_report(dedupe([photo_dir]).to_dict(), tmp_path / "page" / "review.html")
    count = 'return document.getElementById("mk-review-count").textContent'
    with _chromium.Chromium(1280, 1600, downloads=downloads) as b:
        b.get(Path(info.path).as_uri())
        b.wait(READY)
        assert b.run(count).startswith("5 files to move (")  # a: 4 besides its keeper; b: 1
        b.run(FIGURE.replace("return ", "var f=", 1) + ';f.querySelector("button.mk-keep")'
              '.click()', "a_flip.jpg")
        b.run(FIGURE.replace("return ", "var f=", 1) + ';f.querySelector("input.mv").click()',
              "a_small.jpg")
        text = b.run(count)
        assert text.startswith("4 files to move (") and text.endswith(
            ", 1 keeper changed, 1 unticked"), text
        # "untick all" leaves a whole cluster alone; "tick all" brings it back.
        all_b = FIGURE.replace("return ", "var f=", 1) + \
            ';f.closest("article").querySelector("button.mk-all").click()'
        b.run(all_b, "b.jpg")
        assert b.run(count).startswith("3 files to move (")
        b.run(all_b, "b.jpg")
        assert b.run(count).startswith("4 files to move (")
        keepers = b.run('return [].map.call(document.querySelectorAll("figure.keep .nm"), '
                        'function(s){return s.textContent})')
        assert "a_flip.jpg" in keepers and "a.jpg" not in keepers
        assert "your keeper" in b.run(FIGURE + ".textContent", "a_flip.jpg")
        # A reload of the page keeps the decisions (saved below from the restored state).
        b.get(Path(info.path).as_uri())
        b.wait(READY)
        assert b.run(count) == text
        assert "Keeper chosen by you; suggested was a.jpg" in b.run(
            'return document.querySelector("article.card.changed").textContent')
        b.run('document.getElementById("mk-save").click()')
        saved = downloads / "matchkit-review.json"
        for _ in range(200):
            if saved.exists() and not list(downloads.glob("*.crdownload")):
                break
            time.sleep(0.05)
        b.screenshot(tmp_path / "review.png")
        b.run('document.getElementById("mk-reset").click()')
        assert b.run(count).startswith("5 files to move (")
        assert not b.run('return document.querySelector("article.card.changed")')
    data = json.loads(saved.read_text())
    assert data["matchkit_review"] == 1 and data["report"]["roots"] == [str(photo_dir)]
    r = CliRunner().invoke(cli, ["apply", str(saved), "--to", str(tmp_path / "dupes")])
    assert r.exit_code == 0, r.output
    left = {str(p.relative_to(photo_dir)) for p in photo_dir.rglob("*") if p.is_file()}
    b_cluster = next(c for c in data["clusters"] if Path(c["keep"]).name.startswith("b"))
    assert left == {"a_flip.jpg", "a_small.jpg", Path(b_cluster["keep"]).name, "c.jpg", "d.jpg"}
