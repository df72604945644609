"""Gallery checks: the Python API, the `matchkit check` command and its review page."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from _check_data import BROKEN, EXPECTED, build_check_case
from matchkit import Gallery
from matchkit.jobs.check import CheckError, check
from matchkit.cli.commands import cli


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return build_check_case(tmp_path_factory.mktemp("check"))


@pytest.fixture(scope="module")
def report(case):
    gallery, incoming = case
    return check(gallery, [incoming])  # a folder: its images


def page_json(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="mk-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def _by_name(report) -> dict:
    return {Path(r.path).name: r for r in report.results}


def test_edited_copies_are_found_with_evidence_and_unrelated_is_not(report):
    results = _by_name(report)
    assert set(results) == set(EXPECTED)
    for name, original in EXPECTED.items():
        r = results[name]
        if original is None:
            assert not r.matched and r.matches == [], name
            continue
        assert r.matched and [Path(m.path).name for m in r.matches] == [original], name
        m = r.best
        assert m.score >= 0.5 and m.rule in ("phash", "phash+colour", "local")
        assert m.evidence["rule"] == m.rule and isinstance(m.evidence["phash_distance"], int)
        assert m.kind == ("exact" if name == "same.jpg" else "near"), name
    crop = results["crop.jpg"].best.evidence
    assert crop["rule"] == "local" and crop["inliers"] >= 12
    assert crop["overlap_correlation"] > 0.5 and len(crop["transform"]) == 2
    assert results["flip.jpg"].best.evidence.get("mirrored") is True
    assert "mirrored" not in crop  # the crop is not a mirror image


def test_unreadable_query_is_reported_and_the_run_completes(case, tmp_path):
    gallery, incoming = case
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((incoming / "crop.jpg").read_bytes()[:300])
    rep = check(gallery, [incoming / BROKEN, truncated, incoming / "crop.jpg",
                          tmp_path / "gone.jpg"])
    assert [Path(s.path).name for s in rep.skipped] == [BROKEN, "truncated.jpg", "gone.jpg"]
    assert all(s.reason for s in rep.skipped)
    assert [Path(r.path).name for r in rep.results] == ["crop.jpg"] and rep.results[0].matched
    assert rep.stats["queries"] == 4 and rep.stats["skipped"] == 3 and rep.stats["matched"] == 1


def test_all_lists_near_misses_and_k_caps(case):
    gallery, incoming = case
    rep = check(gallery, [incoming / "unrelated.jpg", incoming / "crop.jpg"], include_all=True,
                k=3)
    unrelated, crop = rep.results
    assert not unrelated.matched and len(unrelated.matches) == 3
    assert all(not m.matched and m.kind == "" and m.score < 0.5 for m in unrelated.matches)
    assert crop.matches[0].matched and not any(m.matched for m in crop.matches[1:])
    assert len(check(gallery, [incoming / "crop.jpg"], include_all=True, k=1).results[0]
               .matches) == 1


def test_a_scorer_replaces_the_score_and_is_named(case):
    """The hook a calibrated profile will use: its own score, threshold and name."""
    gallery, incoming = case
    seen = []

    def scorer(ev, settings):
        seen.append(ev.rule)
        return 0.1 + ev.inliers / 1000

    rep = check(gallery, [incoming / "crop.jpg"], scorer=scorer, threshold=0.9,
                score_name="profile:test")
    m = rep.results[0].best
    assert seen == ["local"] and m.score == pytest.approx(0.1 + m.evidence["inliers"] / 1000)
    assert rep.stats["score"] == "profile:test" and rep.stats["score_threshold"] == 0.9


def test_empty_gallery_is_refused(tmp_path):
    with Gallery(tmp_path / "empty") as g:
        g.save()
    with pytest.raises(CheckError, match="holds no images"):
        check(tmp_path / "empty", [])


def test_cli_json_on_stdout_csv_and_summary(case, tmp_path):
    gallery, incoming = case
    out_csv = tmp_path / "c.csv"
    r = CliRunner().invoke(cli, ["check", "--gallery", str(gallery), str(incoming),
                                 "--csv", str(out_csv)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data) == {"gallery", "results", "skipped", "stats"}
    assert data["stats"] | {"seconds": 0} == {
        "queries": 6, "matched": 4, "unmatched": 1, "skipped": 1, "gallery_images": 6, "k": 5,
        "include_all": False, "score": "match_strength", "score_threshold": 0.5,
            "profile": None, "target_precision": None, "level": "copies", "seconds": 0}
    crop = next(x for x in data["results"] if x["path"].endswith("crop.jpg"))
    assert crop["matched"] is True
    assert set(crop["matches"][0]) == {"id", "path", "score", "matched", "kind", "rule",
                                       "evidence", "relation"}
    assert crop["matches"][0]["relation"] == "crop"
    assert data["skipped"][0]["path"].endswith(BROKEN) and data["skipped"][0]["reason"]
    assert "6 queries against 6 gallery images: 4 matched, 1 unmatched, 1 skipped" in r.stderr
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(rows) == 6  # 4 matched (one match each), 1 unmatched, 1 skipped
    status = {Path(row["query"]).name: row for row in rows}
    assert status[BROKEN]["status"] == "skipped" and status[BROKEN]["reason"]
    assert status["unrelated.jpg"]["status"] == "unmatched" and status["unrelated.jpg"][
        "gallery_path"] == ""
    assert status["crop.jpg"]["rule"] == "local" and int(status["crop.jpg"]["inliers"]) >= 12
    assert json.loads(status["crop.jpg"]["transform"]) == crop["matches"][0]["evidence"][
        "transform"]


def test_cli_json_to_file_and_quiet(case, tmp_path):
    gallery, incoming = case
    out = tmp_path / "c.json"
    r = CliRunner().invoke(cli, ["check", "--gallery", str(gallery), str(incoming / "flip.jpg"),
                                 "--json", str(out), "-q"])
    assert r.exit_code == 0 and r.output == ""
    assert json.loads(out.read_text())["stats"]["matched"] == 1
    r = CliRunner().invoke(cli, ["check", "--gallery", str(gallery), str(incoming / "flip.jpg"),
                                 "--all", "-k", "2", "-q"])
    (flip,) = json.loads(r.stdout)["results"]
    assert [m["matched"] for m in flip["matches"]] == [True, False]


def test_cli_wrong_arguments_one_line_exit_2(case, tmp_path):
    gallery, incoming = case
    with Gallery(tmp_path / "empty") as g:
        g.save()
    for args in (["check", "--gallery", str(tmp_path / "nope"), str(incoming)],
                 ["check", "--gallery", str(tmp_path / "empty"), str(incoming)],
                 ["check", "--gallery", str(gallery)],
                 ["check", str(incoming)],
                 ["check", "--gallery", str(gallery), str(tmp_path / "missing.jpg")],
                 ["check", "--gallery", str(gallery), str(incoming), "--html", str(tmp_path)],
                 ["check", "--gallery", str(gallery), str(incoming), "-k", "0"]):
        r = CliRunner().invoke(cli, args)
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2, (args, r.output)
        assert len(lines) == 1 and lines[0].startswith("matchkit: error:"), (args, lines)


def test_cli_html_page_cards_thumbnails_and_keypoints(case, tmp_path):
    gallery, incoming = case
    out = tmp_path / "page" / "check.html"
    r = CliRunner().invoke(cli, ["check", "--gallery", str(gallery), str(incoming),
                                 "--html", str(out), "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    page = out.read_text()
    shown = page_json(page)
    assert data["html"]["cards"] == len(shown["cards"]) == len(data["results"]) == 5
    assert re.search(r'id=mk-total>5</span><span class="l">queries checked', page)
    assert shown["noun"] == "queries" and shown["badge"] == "query"
    for card, res in zip(shown["cards"], data["results"]):
        names = [shown["images"][i]["p"] for i in card["m"]]
        assert names == [res["path"]] + [m["path"] for m in res["matches"]]
        assert shown["images"][card["k"]]["p"] == res["path"]  # the query is the anchor
        assert [p["s"] for p in card["pairs"]] == [m["score"] for m in res["matches"]]
    thumbs = [im["t"] for im in shown["images"]]
    assert all(thumbs) and all((out.parent / t).is_file() for t in thumbs)
    # The local-feature match (the crop) has its keypoint picture beside the page.
    pics = [p["pic"] for c in shown["cards"] for p in c["pairs"] if p["pic"]]
    assert len(pics) == 1 and (out.parent / pics[0]).stat().st_size > 5_000
    assert [Path(s["path"]).name for s in shown["skipped"]] == [BROKEN]
    assert "https://" not in page and "default-src 'none'" in page
    unrelated = next(c for c in shown["cards"] if c["t"] == "unrelated.jpg")
    assert unrelated["meta"] == "no match in the gallery" and unrelated["pairs"] == []


def test_label_html_one_card_per_answer_with_supporting_examples(tmp_path):
    from conftest import make_photo

    tree = tmp_path / "classes"
    for cls, seeds in {"cat": (1, 2), "dog": (3, 4)}.items():
        (tree / cls).mkdir(parents=True)
        for s in seeds:
            make_photo(s, (480, 360)).save(tree / cls / f"{cls}{s}.jpg", quality=92)
    q = tmp_path / "q"
    q.mkdir()
    make_photo(3, (480, 360)).crop((60, 40, 420, 320)).save(q / "crop3.jpg", quality=85)
    make_photo(98, (480, 360)).save(q / "stranger.jpg")
    (q / "bad.jpg").write_bytes(b"nope")
    runner = CliRunner()
    r = runner.invoke(cli, ["labels", "import", str(tmp_path / "g"), "--folder", str(tree)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "labels.html"
    r = runner.invoke(cli, ["label", "--gallery", str(tmp_path / "g"), str(q), "--no-model",
                            "--calibration", "none", "-k", "3", "--html", str(out), "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    answers = {Path(a["path"]).name: a for a in data["answers"]}
    assert answers["crop3.jpg"]["label"] == "dog" and answers["stranger.jpg"]["label"] == "unknown"
    page = out.read_text()
    shown = page_json(page)
    readable = [a for a in data["answers"] if not a.get("error")]
    assert data["html"]["cards"] == len(shown["cards"]) == len(readable) == 2
    assert re.search(r'id=mk-total>2</span><span class="l">answers', page)
    assert [Path(s["path"]).name for s in shown["skipped"]] == ["bad.jpg"]
    by_title = {c["t"]: c for c in shown["cards"]}
    dog = by_title["crop3.jpg \u2192 dog"]
    assert "dog \u00b7 confidence" in dog["meta"] and "(uncalibrated)" in dog["meta"]
    assert shown["images"][dog["k"]]["p"] == answers["crop3.jpg"]["path"]
    support = [n for n in answers["crop3.jpg"]["neighbours"] if n.get("path")]
    assert [shown["images"][i]["p"] for i in dog["m"][1:]] == [n["path"] for n in support]
    assert [p["k"] for p in dog["pairs"]] == ["label: " + ", ".join(n["labels"]) for n in support]
    assert "stranger.jpg \u2192 unknown" in by_title
    assert all((out.parent / im["t"]).is_file() for im in shown["images"])


def test_a_profile_decides_and_scores_are_its_probabilities(case, report):
    """configs/default.toml decides instead of the hand rules; scores are its
    P(duplicate), the line is its probability threshold, the JSON records it."""
    from matchkit.match.profiles import load_profile

    profile = load_profile("default")
    gallery, incoming = case
    rep = check(gallery, [incoming], include_all=True, profile=profile)
    thr = profile.calibrator.probability_threshold_
    assert rep.stats["profile"] == "default" and rep.stats["score"] == "p_duplicate"
    assert rep.stats["score_threshold"] == pytest.approx(thr)
    assert rep.stats["target_precision"] == profile.target_precision
    for r in rep.results:
        for m in r.matches:
            assert 0.0 <= m.score <= 1.0
            assert (m.score >= thr) if m.matched else (m.score <= thr), (r.path, m)
    results = _by_name(rep)
    assert not results["unrelated.jpg"].matched
    for name in ("crop.jpg", "flip.jpg", "same.jpg"):
        assert results[name].matched and Path(results[name].best.path).name == EXPECTED[name]
    # The hand rules' scores are on another scale.
    assert report.stats["profile"] is None and report.stats["score"] == "match_strength"


def test_cli_check_profile_and_a_missing_one(case, tmp_path):
    gallery, incoming = case
    r = CliRunner().invoke(cli, ["check", "--gallery", str(gallery), str(incoming / "crop.jpg"),
                                 "--profile", "default", "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["stats"]["profile"] == "default" and data["results"][0]["matched"]
    r = CliRunner().invoke(cli, ["check", "--gallery", str(gallery), str(incoming / "crop.jpg"),
                                 "--profile", str(tmp_path / "nope.toml")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1


def test_a_png_resave_of_a_large_gallery_jpeg_is_exact(tmp_path):
    """The gallery keeps only the coded-stream digest of a JPEG it decoded in
    draft mode; a query with the same pixels in another container (PNG) is
    still an exact copy, and a re-encode of it is not."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(5)
    small = rng.integers(0, 256, (30, 40, 3), np.uint8)  # smooth: equal pHashes
    Image.fromarray(small).resize((1600, 1200), Image.BICUBIC).save(tmp_path / "x.jpg", quality=90)
    with Image.open(tmp_path / "x.jpg") as im:
        im.save(tmp_path / "x.png")
        im.save(tmp_path / "x_q60.jpg", quality=60)
    with Gallery(tmp_path / "g") as g:
        g.add([tmp_path / "x.jpg"])
        assert g.get(g.ids()[0]).pixel_sha256.startswith("jpeg:")
    kinds = {Path(r.path).name: [m.kind for m in r.matches if m.matched]
             for r in check(tmp_path / "g", [tmp_path / "x.png", tmp_path / "x_q60.jpg"]).results}
    assert kinds["x.png"] == ["exact"]
    assert kinds["x_q60.jpg"] == ["near"]


def _four_photos_and_a_crop(tmp_path):
    """Folder ``src`` of four photos, and ``q.jpg``: a crop of the third."""
    from conftest import make_photo

    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        make_photo(i, (480, 360)).save(src / f"p{i}.jpg", quality=90)
    make_photo(2, (480, 360)).crop((40, 30, 440, 330)).save(tmp_path / "q.jpg", quality=80)
    return src


def test_check_searches_the_vote_index_the_gallery_was_written_with(tmp_path, monkeypatch):
    from matchkit import Settings
    
    src = _four_photos_and_a_crop(tmp_path)
    gdir = tmp_path / "g"
    with Gallery(gdir, Settings(vote_index="ivf")) as g:
        g.add(sorted(src.iterdir()))
    with Gallery(gdir, create=False) as g:
        assert g.saved_vote_index() == "ivf"
    built = []
    real = Gallery._new_index
    monkeypatch.setattr(Gallery, "_new_index", lambda self, name: built.append(
        (name, self.settings.vote_index)) or real(self, name))
    found = check(gdir, [tmp_path / "q.jpg"]).results[0].matches
    assert [Path(m.path).name for m in found if m.matched] == ["p2.jpg"]
    assert built == []  # the saved IVF file was searched; no graph built
    check(gdir, [tmp_path / "q.jpg"], settings=Settings(vote_index="hnsw"))
    assert ("orb", "hnsw") in built
    out = CliRunner().invoke(cli, ["check", str(tmp_path / "q.jpg"), "--gallery", str(gdir),
                                   "--vote-index", "hnsw", "-q"])
    assert out.exit_code == 0 and '"matched": true' in out.output


def test_a_gallery_indexed_with_ivf_64k_is_checked_with_it(tmp_path, monkeypatch):
    """``--vote-index ivf-64k`` stands for the 64k vocabulary with 16 probes
    in 8 nodes; ``check`` without the option searches that file as written
    (no index rebuilt over the default vocabulary) and finds the crop."""
    src = _four_photos_and_a_crop(tmp_path)
    gdir = tmp_path / "g"
    out = CliRunner().invoke(cli, ["index", str(src), "--gallery", str(gdir), "--no-embed",
                                   "--vote-index", "ivf-64k", "-q"])
    assert out.exit_code == 0, out.output
    with Gallery(gdir, create=False) as g:
        s = g.settings
        assert (s.vote_index, s.ivf_vocabulary, s.ivf_probes, s.ivf_nodes) == \
            ("ivf", "orb-64k", 16, 8)
    built = []
    real = Gallery._new_index
    monkeypatch.setattr(Gallery, "_new_index", lambda self, name: built.append(name)
                        or real(self, name))
    out = CliRunner().invoke(cli, ["check", str(tmp_path / "q.jpg"), "--gallery", str(gdir),
                                   "-q"])
    assert out.exit_code == 0 and '"matched": true' in out.output
    assert built == []
    bad = CliRunner().invoke(cli, ["check", str(tmp_path / "q.jpg"), "--gallery", str(gdir),
                                   "--vote-index", "ivf-1m"])
    assert bad.exit_code == 2
    # verify, not told either, checks that file (current) and rebuilds nothing
    out = CliRunner().invoke(cli, ["verify", str(gdir)])
    assert out.exit_code == 0 and json.loads(out.output)["stale"] == [], out.output
    assert built == []
