"""Labeler: k-NN labels with a calibrated open-set threshold, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import make_photo
from matchkit import Gallery, GalleryError
from matchkit.jobs.classify import (CALIBRATION_FILE, Labeler, Support, fit_open_set, raw_confidence,
                                    synthetic_edit, EDITS, vote)
from matchkit.cli.commands import cli
from matchkit.jobs.labels import LabelError, UNKNOWN, import_folder

SIZE = (480, 360)
CLASSES = ["apple", "bolt", "cog", "dial", "eel", "fan"]


def _tree(root: Path) -> Path:
    """One photo per class; "cog" has a second, different example."""
    for seed, name in enumerate(CLASSES, 1):
        (root / name).mkdir(parents=True)
        make_photo(seed, SIZE).save(root / name / "a.jpg", quality=92)
    make_photo(7, SIZE).save(root / "cog" / "b.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A labelled gallery folder and query files: edits of gallery photos
    (known) and photos of no gallery class (unknown)."""
    base = tmp_path_factory.mktemp("lab")
    tree = _tree(base / "tree")
    with Gallery(base / "g") as g:
        import_folder(g, tree)
    q = base / "queries"
    q.mkdir()
    make_photo(2, SIZE).crop((50, 30, 400, 330)).save(q / "bolt_crop.jpg", quality=85)
    make_photo(7, SIZE).rotate(10, expand=True).save(q / "cog_rot.jpg", quality=85)
    make_photo(5, SIZE).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(q / "eel_flip.jpg")
    make_photo(1, SIZE).resize((200, 150)).save(q / "apple_small.jpg", quality=75)
    for seed in (50, 51, 52):
        make_photo(seed, SIZE).save(q / f"unknown_{seed}.jpg", quality=90)
    (q / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    return base


@pytest.fixture(scope="module")
def labeler(labelled):
    lab = Labeler(k=3).fit(labelled / "g")
    yield lab
    lab.close()


def _queries(labelled, *names):
    return [labelled / "queries" / n for n in names]


KNOWN = {"bolt_crop.jpg": "bolt", "cog_rot.jpg": "cog", "eel_flip.jpg": "eel",
         "apple_small.jpg": "apple"}
UNKNOWNS = ["unknown_50.jpg", "unknown_51.jpg", "unknown_52.jpg"]


def test_known_queries_get_their_class_and_unknown_ones_are_rejected(labeler, labelled):
    names = list(KNOWN) + UNKNOWNS
    answers = labeler.answers(_queries(labelled, *names))
    assert [a.label for a in answers] == list(KNOWN.values()) + [UNKNOWN] * 3
    for a in answers[:4]:
        assert a.calibrated and a.confidence >= 0.5 and a.best == a.label
        top = a.neighbours[0]
        assert top.kind == "image" and a.label in top.labels
        assert top.evidence["rule"] in ("phash", "phash+colour", "local")
        assert Path(top.path).parent.name == a.label
    for a in answers[4:]:
        assert a.best in CLASSES and a.raw < labeler.threshold_  # the best class is still named
        assert not any(s.evidence.get("rule") for s in a.neighbours)
    assert list(labeler.predict(_queries(labelled, *names))) == [a.label for a in answers]


def test_predict_proba_and_neighbours(labeler, labelled):
    files = _queries(labelled, "bolt_crop.jpg", "unknown_50.jpg")
    proba = labeler.predict_proba(files)
    assert proba.shape == (2, len(CLASSES)) and list(labeler.classes_) == CLASSES
    assert np.all(proba >= 0) and np.all(proba.sum(axis=1) <= 1 + 1e-9)
    assert proba[0].argmax() == CLASSES.index("bolt") and proba[0].max() >= 0.5
    assert proba[1].max() < 0.5
    nbrs = labeler.kneighbors(files, n_neighbors=2)
    assert [len(n) for n in nbrs] == [2, 2]
    assert nbrs[0][0].score >= nbrs[0][1].score
    top = labeler.top_k(files, 2)
    assert top[0][0][0] == "bolt" and len(top[0]) <= 2


def test_unreadable_query_is_unknown_with_reason(labeler, labelled):
    bad, good = labeler.answers(_queries(labelled, "broken.jpg", "bolt_crop.jpg"))
    assert bad.label == UNKNOWN and bad.error and bad.confidence == 0.0
    assert good.label == "bolt"


def test_calibration_is_stored_as_json_with_the_gallery_and_reused(labeler, labelled,
                                                                    monkeypatch):
    store = json.loads((labelled / "g" / CALIBRATION_FILE).read_text())
    (cal,) = store["profiles"].values()
    assert cal["source"] == "synthetic" and cal["threshold"] == labeler.threshold_
    assert cal["known_queries"] == cal["unknown_queries"] > 0
    assert cal["profile"]["k"] == 3
    # A second fit with the same parameters loads it instead of recalibrating.
    monkeypatch.setattr(Labeler, "calibrate_synthetic",
                        lambda self, samples=None: pytest.fail("recalibrated"))
    with Labeler(k=3).fit(labelled / "g") as again:
        assert again.calibration_ == labeler.calibration_
    with Labeler(k=3, calibration="stored", sharpness=2.0).fit(labelled / "g") as other:
        assert other.calibration_ is None  # other parameters: no stored calibration


def test_a_class_with_several_examples_outvotes_a_single_one():
    sup = [Support(["a"], 0.8, "image", id=1), Support(["a"], 0.8, "image", id=2),
           Support(["b"], 0.85, "image", id=3)]
    ranked = vote(sup, sharpness=4.0)
    assert [c for c, _, _ in ranked] == ["a", "b"]
    assert ranked[0][1] == pytest.approx(2 * 0.8 ** 4)
    # A strong rival lowers the raw confidence below the winner's best score.
    assert 0 < raw_confidence(ranked) < 0.8
    # With a sharper vote, one strong example outweighs two weaker ones.
    assert vote(sup, sharpness=20.0)[0][0] == "b"


def test_ties_are_broken_by_name_and_answered_unknown(labelled):
    sup = [Support(["zebra"], 0.9, "image", id=1), Support(["ant"], 0.9, "image", id=2)]
    ranked = vote(sup)
    assert [c for c, _, _ in ranked] == ["ant", "zebra"]
    assert [c for c, _, _ in vote(sup[::-1])] == ["ant", "zebra"]  # whatever the order
    assert raw_confidence(ranked) == 0.0
    with Labeler(k=2, calibration="none").fit(labelled / "g") as lab:
        answer = lab._answer("q", sup)
        assert answer.label == UNKNOWN and answer.best == "ant"
    # Two gallery images with different labels but the same picture: a real tie.
    two = labelled / "tie"
    (two / "x").mkdir(parents=True)
    (two / "y").mkdir()
    make_photo(30, SIZE).save(two / "x" / "p.jpg", quality=92)
    (two / "y" / "p.jpg").write_bytes((two / "x" / "p.jpg").read_bytes())
    make_photo(30, SIZE).crop((0, 0, 400, 300)).save(two / "q.jpg", quality=85)
    with Gallery(two / "g") as g:
        import_folder(g, two)
        with Labeler(k=2, calibration="none").fit(g) as lab:
            a = lab.answers([two / "q.jpg"])[0]
    assert a.label == UNKNOWN and a.best == "x" and a.raw == 0.0
    assert sorted(s.labels[0] for s in a.neighbours) == ["x", "y"]


def test_fit_open_set_threshold_and_certification():
    rng = np.random.default_rng(0)
    raw = np.r_[rng.uniform(0.6, 1.0, 600), rng.uniform(0.0, 0.4, 600), [0.65, 0.7]]
    correct = np.r_[np.ones(600, bool), np.zeros(600, bool), [False, False]]
    cal = fit_open_set(raw, correct, target=0.99)
    assert cal["certified"] and cal["accuracy_lower_bound"] >= 0.99
    accepted = raw >= cal["threshold"]
    assert (correct[accepted]).mean() >= 0.99
    assert 0.4 < cal["threshold"] <= 1.0
    json.dumps(cal)  # plain data
    # Too few queries to certify 99%: the observed-accuracy threshold, flagged.
    small = fit_open_set([0.9, 0.8, 0.2], [True, True, False], target=0.99)
    assert not small["certified"] and 0.2 < small["threshold"] < 0.8
    # Nothing reaches the target: nothing is accepted.
    assert fit_open_set([0.9, 0.1], [False, True])["threshold"] is None
    # A raw confidence of 0 (a tie) is never accepted, even if calibration says so.
    assert fit_open_set([0.0, 0.0], [True, True])["threshold"] is None


def test_vectors_fit_predict_and_calibrate():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(50, 32))
    X = np.repeat(centres, 2, axis=0) + 0.05 * rng.normal(size=(100, 32))
    y = [f"c{i // 2}" for i in range(100)]
    lab = Labeler(k=4).fit(X, y)
    assert lab.calibration_ is None  # vectors: no gallery to calibrate from automatically
    q_known = centres[:20] + 0.05 * rng.normal(size=(20, 32))
    q_unknown = rng.normal(size=(20, 32))
    cal_q = np.r_[centres[20:] + 0.05 * rng.normal(size=(30, 32)), rng.normal(size=(30, 32))]
    cal_y = [f"c{i}" for i in range(20, 50)] + [UNKNOWN] * 30
    lab.calibrate(cal_q, cal_y)
    assert lab.calibration_["source"] == "queries" and lab.threshold_ is not None
    pred = lab.predict(np.r_[q_known, q_unknown])
    assert list(pred[:20]) == [f"c{i}" for i in range(20)]
    assert (pred[20:] == UNKNOWN).mean() >= 0.9
    s = lab.kneighbors(q_known[:1])[0][0]
    assert s.kind == "vector" and s.labels == ["c0"] and s.evidence["cosine"] > 0.9
    with pytest.raises(ValueError, match="dimensions"):
        lab.predict(np.zeros((1, 8), np.float32))


def test_synthetic_edits_are_images():
    import random

    im = make_photo(1, SIZE)
    rng = random.Random(0)
    for kind in EDITS:
        out = synthetic_edit(im, kind, rng)
        assert isinstance(out, Image.Image) and min(out.size) >= 8
    with pytest.raises(ValueError):
        synthetic_edit(im, "nope", rng)


def test_bad_galleries_give_clear_errors(tmp_path):
    with pytest.raises(GalleryError, match="no gallery"):
        Labeler().fit(tmp_path / "missing")
    Gallery(tmp_path / "empty").close()
    with pytest.raises(LabelError, match="empty"):
        Labeler().fit(tmp_path / "empty")
    make_photo(1).save(tmp_path / "a.jpg")
    with Gallery(tmp_path / "nolabels") as g:
        g.add([tmp_path / "a.jpg"])
    with pytest.raises(LabelError, match="no labelled"):
        Labeler().fit(tmp_path / "nolabels")
    with pytest.raises(RuntimeError, match="not fitted"):
        Labeler().predict([tmp_path / "a.jpg"])


# -- CLI -------------------------------------------------------------------------

def test_cli_import_label_and_show(labelled, tmp_path):
    runner = CliRunner()
    g = tmp_path / "g"
    r = runner.invoke(cli, ["labels", "import", str(g), "--folder", str(labelled / "tree")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["classes"] == len(CLASSES)
    r = runner.invoke(cli, ["labels", "show", str(g)])
    assert json.loads(r.stdout)["classes"]["cog"] == 2
    q = labelled / "queries"
    out = tmp_path / "answers.json"
    r = runner.invoke(cli, ["label", "--gallery", str(g), str(q / "bolt_crop.jpg"),
                            str(q / "unknown_50.jpg"), str(q / "broken.jpg"), "-k", "3",
                            "--json", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert [a["label"] for a in data["answers"]] == ["bolt", UNKNOWN, UNKNOWN]
    assert data["answers"][2]["error"]
    assert data["stats"]["unreadable"] == 1 and data["calibration"]["threshold"] > 0
    assert data["answers"][0]["neighbours"][0]["evidence"]["rule"]
    assert "3 queries: 1 labelled" in r.stderr
    # JSON to stdout by default; the stored calibration is reused.
    r = runner.invoke(cli, ["label", "--gallery", str(g), str(q / "cog_rot.jpg"), "-k", "3",
                            "-q"])
    assert r.exit_code == 0 and json.loads(r.stdout)["answers"][0]["label"] == "cog"


def test_cli_csv_import_and_calibrate(labelled, tmp_path):
    runner = CliRunner()
    table = tmp_path / "l.csv"
    table.write_text("".join(f"{labelled / 'tree' / c / 'a.jpg'},{c}\n" for c in CLASSES))
    r = runner.invoke(cli, ["labels", "import", str(tmp_path / "g"), "--csv", str(table)])
    assert r.exit_code == 0 and json.loads(r.stdout)["images"] == len(CLASSES)
    r = runner.invoke(cli, ["labels", "calibrate", str(tmp_path / "g"), "--samples", "4"])
    assert r.exit_code == 0, r.output
    cal = json.loads(r.stdout)
    assert cal["source"] == "synthetic" and cal["known_queries"] == 8
    assert Path(cal["stored"]).name == CALIBRATION_FILE


@pytest.mark.parametrize("case", ["missing", "empty", "nolabels", "corrupt", "no-source",
                                  "missing-query"])
def test_cli_errors_are_one_line_exit_2(tmp_path, labelled, case):
    runner = CliRunner()
    g = tmp_path / "g"
    if case == "empty":
        Gallery(g).close()
    elif case == "nolabels":
        make_photo(1).save(tmp_path / "a.jpg")
        with Gallery(g) as gal:
            gal.add([tmp_path / "a.jpg"])
    elif case == "corrupt":
        g.mkdir()
        (g / "gallery.sqlite").write_bytes(b"this is not a database" * 100)
    if case == "no-source":
        args = ["labels", "import", str(g)]
    elif case == "missing-query":
        args = ["label", "--gallery", str(labelled / "g"), str(tmp_path / "nope.jpg")]
    else:
        args = ["label", "--gallery", str(g), str(labelled / "queries" / "bolt_crop.jpg")]
    r = runner.invoke(cli, args)
    assert r.exit_code == 2, (r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matchkit: error:"), r.stderr


def test_corrupt_gallery_database_is_a_gallery_error(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "gallery.sqlite").write_bytes(b"garbage" * 1000)
    with pytest.raises(GalleryError):
        Labeler().fit(tmp_path / "g")


# -- embeddings (tiny random CLIP: mechanics only, its vectors mean nothing) -------

def test_zero_shot_from_class_names(tiny_clip_dir, labelled):
    names = ["cat", "dog", "red car"]
    with Labeler(k=2, embedder=str(tiny_clip_dir), texts=names, calibration="none").fit() as lab:
        assert list(lab.classes_) == sorted(names) and lab.gallery_ is None
        files = _queries(labelled, "bolt_crop.jpg", "unknown_50.jpg")
        answers = lab.answers(files)
        for a in answers:
            assert a.best in names and len(a.neighbours) == 2
            assert all(s.kind == "text" and -1 <= s.evidence["cosine"] <= 1 for s in a.neighbours)
            assert a.neighbours[0].score >= a.neighbours[1].score
        assert lab.predict_proba(files).shape == (2, 3)
        # The same query always gets the same answer.
        assert [a.to_dict() for a in lab.answers(files)] == [a.to_dict() for a in answers]
        # Leaving a class out (as calibration does) removes its text example.
        _, sups, _ = lab._supports(files[:1], 3, exclude=[{answers[0].best}])
        assert answers[0].best not in {c for s in sups[0] for c in s.labels}


def test_mixed_image_and_text_examples(tiny_clip_dir, labelled, tmp_path):
    import shutil

    g = tmp_path / "g"
    shutil.copytree(labelled / "g", g)
    (g / CALIBRATION_FILE).unlink(missing_ok=True)
    with Labeler(k=4, embedder=str(tiny_clip_dir), texts="labels", calibration="none").fit(g) as lab:
        name = lab.embedder_.name
        assert name in lab.gallery_.models()  # labelled images were embedded and stored
        assert len(lab.gallery_.embedded_ids(name)) == 7
        files = _queries(labelled, "bolt_crop.jpg", "unknown_50.jpg")
        a = lab.answers(files[:1])[0]
        top = a.neighbours[0]  # the verified copy, with its cosine beside the instance evidence
        assert top.labels == ["bolt"] and top.evidence["rule"] and "cosine" in top.evidence
        assert top.instance >= 0.5 and top.cosine is not None
        texts = [s for s in lab.kneighbors(files[1:], 20)[0] if s.kind == "text"]
        assert texts and all(s.labels[0] in CLASSES for s in texts)
        # Calibration learns what a cosine is worth for each kind of example
        # (image-image, image-text) from the synthetic queries' neighbours.
        lab.calibrate_synthetic()
        maps = lab.calibration_["cosine_maps"]
        assert set(maps) <= {"image", "text"}
        for m in maps.values():
            assert m["x"] == sorted(m["x"]) and all(0 <= v <= 1 for v in m["y"])
        a = lab.answers(files[:1])[0]
        cos_scores = [lab._cosine_score(s.cosine, s.kind) for s in a.neighbours if s.cosine is not None]
        assert a.neighbours[0].score == max([top.instance] + cos_scores)


def test_cli_label_with_a_model_and_text_labels(tiny_clip_dir, labelled, tmp_path):
    import shutil

    runner = CliRunner()
    g = tmp_path / "g"
    shutil.copytree(labelled / "g", g)
    q = str(labelled / "queries" / "bolt_crop.jpg")
    r = runner.invoke(cli, ["label", "--gallery", str(g), q, "--text-labels"])
    assert r.exit_code == 2 and "needs a CLIP model" in r.stderr
    r = runner.invoke(cli, ["label", "--gallery", str(g), q, "--model", str(tmp_path / "nope")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(cli, ["label", "--gallery", str(g), q, "--model", str(tiny_clip_dir),
                            "--text-labels", "--calibration", "none", "-k", "20", "-q"])
    assert r.exit_code == 0, r.output
    answer = json.loads(r.stdout)["answers"][0]
    kinds = {n["kind"] for n in answer["neighbours"]}
    assert kinds == {"image", "text"} and answer["best"] in CLASSES
    # The gallery now holds that model's vectors, so later runs use it by default.
    r = runner.invoke(cli, ["label", "--gallery", str(g), q, "--calibration", "none", "-q",
                            "-k", "20"])
    assert {n["kind"] for n in json.loads(r.stdout)["answers"][0]["neighbours"]} >= {"image"}
    assert any("cosine" in n["evidence"] for n in json.loads(r.stdout)["answers"][0]["neighbours"])


def test_threshold_never_accepts_mostly_wrong_answers():
    # Many sure answers make the accepted set's accuracy high enough to
    # absorb a band of mostly wrong ones; the threshold must not go there.
    raw = np.r_[np.full(3000, 0.9), np.linspace(0.2, 0.3, 20), np.linspace(0.0, 0.1, 500)]
    correct = np.r_[np.ones(3000, bool), np.arange(20) % 5 == 0, np.zeros(500, bool)]
    cal = fit_open_set(raw, correct, target=0.99)
    assert cal["certified"] and 0.3 < cal["threshold"] <= 0.9


# -- issue 6 test list: gaps -------------------------------------------------------

def test_label_from_a_csv_gallery(labelled, tmp_path):
    # Labels from a path,label table (no folder structure): the same answers.
    table = tmp_path / "catalogue.csv"
    table.write_text("path,label\n" + "".join(
        f"{labelled / 'tree' / c / 'a.jpg'},sku-{c}\n" for c in CLASSES))
    from matchkit.jobs.labels import import_table

    with Gallery(tmp_path / "g") as g:
        rep = import_table(g, table)
        assert rep.images == len(CLASSES) and not rep.skipped
        with Labeler(k=3).fit(g) as lab:
            assert list(lab.classes_) == [f"sku-{c}" for c in CLASSES]
            pred = lab.predict(_queries(labelled, "bolt_crop.jpg", "apple_small.jpg",
                                        "unknown_50.jpg"))
    assert list(pred) == ["sku-bolt", "sku-apple", UNKNOWN]


def test_a_class_with_several_examples_is_found_through_each_of_them(labeler, labelled, tmp_path):
    # "cog" has two different photos (seeds 3 and 7); an edit of either gets "cog".
    q = tmp_path / "cog_a_crop.jpg"
    make_photo(3, SIZE).crop((40, 20, 420, 320)).save(q, quality=85)
    a, b = labeler.answers([q, labelled / "queries" / "cog_rot.jpg"])
    assert a.label == b.label == "cog"
    assert labeler.n_examples_["cog"] == 2 and labeler.n_examples_["bolt"] == 1
    # The two examples are different gallery images of the same class.
    assert a.neighbours[0].path != b.neighbours[0].path
    assert {Path(a.neighbours[0].path).name, Path(b.neighbours[0].path).name} == {"a.jpg", "b.jpg"}


def test_a_gallery_of_only_unreadable_images_gives_a_clear_error(tmp_path):
    tree = tmp_path / "tree"
    (tree / "x").mkdir(parents=True)
    (tree / "x" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tree / "x" / "empty.png").write_bytes(b"")
    with Gallery(tmp_path / "g") as g:
        rep = import_folder(g, tree)
        assert rep.images == 0 and len(rep.skipped) == 2
    with pytest.raises(LabelError, match="empty|no labelled"):
        Labeler().fit(tmp_path / "g")
    r = CliRunner().invoke(cli, ["label", "--gallery", str(tmp_path / "g"), str(tree / "x" / "bad.jpg")])
    assert r.exit_code == 2 and r.stderr.startswith("matchkit: error:")


def test_labels_under_a_profile_and_calibrations_kept_apart(labelled):
    """A pair profile decides the instance matches; its calibration is stored
    under its own key, next to the hand rules' one."""
    from matchkit.match.profiles import load_profile

    profile = load_profile("default")
    with Labeler(k=3, profile=profile, calibration="none").fit(labelled / "g") as lab:
        answers = {Path(a.path).name: a for a in lab.answers(_queries(
            labelled, "bolt_crop.jpg", "eel_flip.jpg", "unknown_50.jpg"))}
        assert answers["bolt_crop.jpg"].best == "bolt" and answers["eel_flip.jpg"].best == "eel"
        for a in answers.values():
            for n in a.neighbours:
                assert 0.0 <= n.score <= 1.0
        assert lab.profile_["pair_profile"] is not None
    with Labeler(k=3, calibration="none").fit(labelled / "g") as plain:
        assert plain.profile_["pair_profile"] is None


def test_cli_label_records_the_profile(labelled):
    r = CliRunner().invoke(cli, ["label", "--gallery", str(labelled / "g"), "--profile",
                                 "default", "--calibration", "none", "-q",
                                 str(labelled / "queries" / "bolt_crop.jpg")])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.output)["stats"]
    assert stats["profile"] == "default" and stats["target_precision"] == 0.99


def test_level_reaches_the_labeler_and_unknown_levels_are_refused(labelled):
    """Labeler(level=) sets the relations a query may have with an example;
    an unknown level fails at fit with a clear message."""
    with Labeler(k=3, level="variants", calibration="none").fit(labelled / "g") as lab:
        assert lab.settings_.level == "variants"
    with pytest.raises(ValueError, match="unknown level"):
        Labeler(k=3, level="everything", calibration="none").fit(labelled / "g")


def test_synthetic_calibration_reports_progress_and_chunks_change_nothing(labelled,
                                                                           monkeypatch):
    """The first `label` on a gallery calibrates for a minute: each stage reports
    (done, total) from 0 to its end; matching in chunks (for those reports)
    gives the very calibration of one big batch."""
    from matchkit.jobs import classify, classify_calibration
    
    def calibrated(chunk: int):
        monkeypatch.setattr(classify_calibration, "CALIBRATION_CHUNK", chunk)
        seen = []
        with Labeler(k=3, calibration="none",
                     progress=lambda *a: seen.append(a)).fit(labelled / "g") as lab:
            lab.calibrate_synthetic(4)
            cal = {k: v for k, v in lab.calibration_.items() if k != "fitted_at"}
        return seen, cal

    seen, cal = calibrated(3)
    assert list(dict.fromkeys(s for s, _, _ in seen)) == list(classify.CALIBRATION_STAGES)
    for stage in classify.CALIBRATION_STAGES:
        done = [d for s, d, _ in seen if s == stage]
        total = {t for s, _, t in seen if s == stage}
        assert len(total) == 1 and done[0] == 0 and done[-1] == total.pop() > 0
        assert done == sorted(done)
    assert len([s for s, _, _ in seen if s == classify.CALIBRATION_STAGES[2]]) == 1 + 3  # 8 / 3
    assert calibrated(1000)[1] == cal


def test_calibration_verifies_each_pair_once(labelled, monkeypatch):
    """Synthetic calibration asks each record twice in one call (known, and
    with its class left out); the two askings share the pair's evidence, which
    must be verified once, not by two threads at the same time (that raced:
    one thread read the overlap while the other was still computing it)."""
    from collections import Counter

    from matchkit.match import query

    real, calls = query._verify_pair, Counter()

    def counted(ev, *args, **kwargs):
        calls[id(ev)] += 1
        return real(ev, *args, **kwargs)

    monkeypatch.setattr(query, "_verify_pair", counted)
    with Labeler(k=3, calibration="none").fit(labelled / "g") as lab:
        lab.calibrate_synthetic(4)
    assert calls and max(calls.values()) == 1
