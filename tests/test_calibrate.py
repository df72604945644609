"""The calibrated pair decision: estimator, edit suites, `matchkit calibrate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from matchkit.match.calibrate import CalibratorError, PairCalibrator
from matchkit.cli.commands import cli
from matchkit.match.edits import EditError, apply_edit, available_suites, load_suite
from matchkit.match.pairfeatures import FEATURES
from matchkit.match.profiles import load_profile

from conftest import make_photo


def _data(n: int, rng):
    """Rows whose first feature says how likely a duplicate is: mixed classes
    up to 0.9, only duplicates above."""
    # Noise columns are drawn for the first 17 features only (zero beyond), so
    # the rows stay the same when a feature is added to FEATURES.
    X = np.zeros((n, len(FEATURES)))
    X[:, :17] = rng.normal(0, 0.05, (n, 17))
    X[:, 0] = rng.random(n)
    y = rng.random(n) < np.clip((X[:, 0] - 0.2) / 0.7, 0, 1) ** 2
    return X, y


def _fitted(seed: int = 0, model: str = "boosting") -> PairCalibrator:
    rng = np.random.default_rng(seed)
    X, y = _data(8000, rng)
    held = np.r_[np.zeros(2000, bool), np.ones(6000, bool)]
    return PairCalibrator(model=model, target_precision=0.99).fit(X, y, held_out=held)


@pytest.mark.parametrize("model", ["boosting", "logistic"])
def test_held_out_threshold_is_not_the_training_optimum(model):
    cal = _fitted(model=model)
    # Looking at the fit part alone, the threshold where its observed
    # precision still reaches the target is optimistic (and bound-free); the
    # held-out choice with a lower confidence bound is stricter.
    assert cal.threshold_ > cal.train_threshold_
    s, y = cal.held_out_
    acc = s >= cal.threshold_
    assert acc.sum() > 100 and y[acc].mean() >= 0.99
    assert cal.stats_["precision_lower_bound"] >= 0.99
    assert cal.stats_["certified"]


@pytest.mark.parametrize("model", ["boosting", "logistic"])
def test_probabilities_are_monotone_and_sane(model):
    cal = _fitted(model=model)
    X = np.zeros((50, len(FEATURES)))
    X[:, 0] = np.linspace(0, 1, 50)
    p = cal.predict_proba(X)
    assert p.shape == (50, 2) and np.allclose(p.sum(axis=1), 1)
    assert (p >= 0).all() and (p <= 1).all()
    order = np.argsort(cal.score(X))
    assert (np.diff(p[order, 1]) >= -1e-12).all()
    assert p[0, 1] < 0.1 and p[-1, 1] > 0.9
    assert cal.predict(X)[-1] and not cal.predict(X)[0]


@pytest.mark.parametrize("model", ["boosting", "logistic"])
def test_dict_round_trip_predicts_the_same(model):
    cal = _fitted(model=model)
    X = np.random.default_rng(1).random((20, len(FEATURES)))
    back = PairCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert np.array_equal(back.score(X), cal.score(X))
    assert np.array_equal(back.predict_proba(X), cal.predict_proba(X))
    assert back.threshold_ == cal.threshold_


def test_stored_trees_reproduce_scikit_learn():
    """The boosted model evaluated from its plain arrays equals scikit-learn's own."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    X, y = _data(1500, rng)
    Xh, yh = _data(1500, rng)
    cal = PairCalibrator(model="boosting").fit(np.vstack([X, Xh]), np.r_[y, yh],
                               held_out=np.r_[np.zeros(1500, bool), np.ones(1500, bool)])
    gb = HistGradientBoostingClassifier(max_iter=cal.n_trees, max_leaf_nodes=cal.max_leaf_nodes,
                                        early_stopping=False, random_state=0).fit(X, y)
    back = PairCalibrator.from_dict(cal.to_dict())
    assert np.allclose(back.raw(Xh), gb.decision_function(Xh), atol=1e-9)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["trees"]["left"][0].__setitem__(0, 0), "child index"),
    (lambda d: d["trees"]["feature"][0].__setitem__(0, 99), "feature index"),
    (lambda d: d["trees"]["value"][0].__setitem__(-1, float("inf")), "NaN or infinity"),
    (lambda d: d["trees"].pop("value"), "exactly"),
])
def test_bad_trees_are_refused(change, message):
    d = _fitted(model="boosting").to_dict()
    change(d)
    with pytest.raises(CalibratorError, match=message):
        PairCalibrator.from_dict(d)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(features=d["features"] + d["features"][:1]), "repeated"),
    (lambda d: d.update(features=d["features"][:-1] + ["secret"]), "differ"),
    (lambda d: d["coef"].__setitem__(0, float("nan")), "NaN"),
    (lambda d: d.update(coef=d["coef"][:3]), "expected"),
    (lambda d: d.update(intercept="1.0"), "must be a number"),
    (lambda d: d.pop("threshold"), "missing"),
    (lambda d: d.update(code="import os"), "unknown keys"),
])
def test_bad_calibrator_data_is_refused(change, message):
    d = _fitted(model="logistic").to_dict()
    change(d)
    with pytest.raises(CalibratorError, match=message):
        PairCalibrator.from_dict(d)


def test_fit_needs_both_classes_in_both_parts():
    X = np.zeros((10, len(FEATURES)))
    y = np.array([True] * 5 + [False] * 5)
    with pytest.raises(ValueError, match="both"):
        PairCalibrator().fit(X, y, held_out=np.array([False] * 5 + [True] * 5))


def test_every_suite_loads_and_applies():
    assert {"exact-ish", "transformed", "copy-detection"} <= set(available_suites())
    img = make_photo(5, (200, 150))
    for name in ("exact-ish", "transformed", "copy-detection"):
        suite = load_suite(name)
        for edit in suite.edits:
            out, save = apply_edit(img, edit, "p.jpg")
            assert isinstance(out, Image.Image) and out.width >= 8 and "format" in save
        # Seeded per photo: the same photo gets the same edit twice.
        a, _ = apply_edit(img, suite.edits[0], "p.jpg")
        b, _ = apply_edit(img, suite.edits[0], "p.jpg")
        assert a.tobytes() == b.tobytes()


def test_unknown_suite_and_op_are_refused(tmp_path):
    with pytest.raises(EditError, match="available: .*copy-detection"):
        load_suite("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[[edit]]\nname = "x"\nops = [{op = "explode"}]\n')
    with pytest.raises(EditError, match="unknown op"):
        load_suite(bad)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A profile calibrated by the CLI on 14 generated photos."""
    root = tmp_path_factory.mktemp("calib")
    photos = root / "photos"
    photos.mkdir()
    for i in range(14):
        make_photo(100 + i, (240, 180)).save(photos / f"p{i:02d}.jpg", quality=90)
    out = root / "configs" / "mine.toml"
    r = CliRunner().invoke(cli, ["calibrate", str(photos), "--out", str(out), "--edits",
                                 "exact-ish", "--target-precision", "0.9", "--workers", "1", "-q"])
    return r, out, photos


def test_calibrate_cli_end_to_end(calibrated):
    r, out, _ = calibrated
    assert r.exit_code == 0, r.output
    assert "threshold" in r.output and "recall" in r.output
    profile = load_profile(out)
    assert profile.name == "mine" and profile.target_precision == 0.9
    assert profile.data["edits"] == "exact-ish" and profile.data["photos"] == 14
    png = out.with_suffix(".png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 100


def test_dedupe_with_profile_records_it(calibrated):
    r, out, photos = calibrated
    assert r.exit_code == 0, r.output
    res = CliRunner().invoke(cli, ["dedupe", str(photos), "--profile", str(out), "--json", "-",
                                   "-q", "--workers", "1"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)["stats"]
    assert stats["profile"] == "mine" and stats["target_precision"] == 0.9
    # The report draws its decision line here (html_report.score_markers).
    from matchkit.report.html import score_markers
    thr = load_profile(out).calibrator.probability_threshold_
    assert stats["score_threshold"] == pytest.approx(thr, abs=1e-4)
    assert score_markers(stats) == [(stats["score_threshold"], "decision threshold")]


def test_halves_in_two_processes_give_the_same_pairs(tmp_path):
    from matchkit.config import Settings
    from matchkit.match.pairsets import build_pairs, split_half

    paths = []
    for i in range(8):
        p = tmp_path / f"q{i}.jpg"
        make_photo(300 + i, (200, 150)).save(p, quality=90)
        paths.append(p)
    assert {split_half(p) for p in paths} == {"fit", "held"}
    suite = load_suite("exact-ish")
    one = build_pairs(paths, suite, Settings(workers=1))
    two = build_pairs(paths, suite, Settings(workers=2))
    assert len(one.y) > 0 and one.y.any() and (~one.y).any()
    # The candidate search is not bit-for-bit deterministic (approximate
    # nearest-neighbour indexes), so a few look-alike negatives may differ;
    # the duplicates, their views and the split do not.
    def positives(ps):
        return {(k, h) for k, t, h in zip(ps.pairs.tolist(), ps.y.tolist(),
                                          ps.held_out.tolist()) if t}
    assert positives(one) == positives(two)
    assert one.photos == two.photos and one.images == two.images


def test_profile_scores_are_calibrated_probabilities(calibrated, photo_dir):
    r, out, _ = calibrated
    assert r.exit_code == 0, r.output
    res = CliRunner().invoke(cli, ["dedupe", str(photo_dir), "--profile", str(out), "--json",
                                   "-", "-q", "--workers", "1"])
    assert res.exit_code == 0, res.output
    near = [p for c in json.loads(res.output)["clusters"] for p in c["pairs"]
            if p["kind"] == "near"]
    assert near, "the edited copies in photo_dir should match"
    for p in near:
        assert p["score"] == p["evidence"]["probability"] and 0.0 <= p["score"] <= 1.0


def test_a_small_collection_without_a_crowd_gets_no_false_matches(tmp_path):
    """Fewer images than the crowd needs: the crowd distance is capped at an
    unrelated pair's, so the profile does not accept unrelated photos."""
    from matchkit import dedupe
    from matchkit.match.pairs import PairEvidence
    from matchkit.match.pairfeatures import FEATURES, UNKNOWN_CROWD, pair_features
    from matchkit.match.profiles import load_profile

    ev = PairEvidence(1, 2, 118, 0.2)
    gap = pair_features(ev, {}, {})[FEATURES.index("crowd_gap")]
    assert gap == pytest.approx((UNKNOWN_CROWD - 118) / 256)
    for i in range(6):
        make_photo(400 + i, (320, 240)).save(tmp_path / f"{i}.jpg", quality=90)
    assert dedupe([tmp_path], profile=load_profile("default")).clusters == []


def test_variant_edits_change_colour_not_structure():
    """The recolour and light/dark ops keep the drawing (same edges) and change
    what a copy must keep: hues, or lightness."""
    from matchkit.match.edits import Edit
    img = make_photo(7, (160, 120))
    grey = np.asarray(img.convert("L"), float)
    recol, _ = apply_edit(img, Edit("r", ({"op": "recolour", "degrees": 180},), "variant"), "p")
    dark, _ = apply_edit(img, Edit("d", ({"op": "lightdark"},), "variant"), "p")
    rgb, rec = np.asarray(img, float), np.asarray(recol, float)
    assert np.abs(rgb - rec).mean() > 20                       # other colours
    inv = np.asarray(dark.convert("L"), float)
    assert np.corrcoef(grey.ravel(), inv.ravel())[0, 1] < -0.8  # lightness inverted


def test_suite_relations_decide_positives_per_level(tmp_path):
    from matchkit.match.edits import same_picture_at
    suite = load_suite("copy-detection")
    relations = {e.name: e.relation for e in suite.edits}
    assert relations["recolour"] == relations["lightdark"] == "variant"
    assert relations["monitor"] == "recapture" and relations["crop50"] == ""
    assert same_picture_at("", "recapture", "copies")
    assert not same_picture_at("", "variant", "copies")
    assert not same_picture_at("recapture", "variant", "copies")
    assert same_picture_at("crop", "variant", "variants")
    assert same_picture_at("variant", "variant", "similar")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[[edit]]\nname = "x"\nrelation = "cousin"\n'
                   'ops = [{op = "grey"}]\n')
    with pytest.raises(EditError, match="unknown relation 'cousin'"):
        load_suite(bad)


def test_variant_edits_are_negatives_at_copies_and_positives_at_variants(tmp_path):
    """A recolour of a photo: not a duplicate for a copies profile, a duplicate
    for a variants one; a plain copy is a duplicate at both."""
    from matchkit.config import Settings
    from matchkit.match.edits import Edit, EditSuite
    from matchkit.match.pairsets import build_pairs

    paths = []
    for i in range(6):
        p = tmp_path / f"v{i}.jpg"
        make_photo(400 + i, (220, 160)).save(p, quality=92)
        paths.append(p)
    suite = EditSuite("t", (Edit("half", ({"op": "resize", "scale": 0.5},)),
                            Edit("recolour", ({"op": "recolour", "degrees": 180},), "variant")))

    def labels(level):
        ps = build_pairs(paths, suite, Settings(workers=1, level=level))
        out = {}
        for key, y in zip(ps.pairs.tolist(), ps.y.tolist()):
            out.setdefault(key, set()).add(y)
        return ps, out

    copies, at_copies = labels("copies")
    _, at_variants = labels("variants")
    assert copies.y.any()
    pos_copies = {k for k, v in at_copies.items() if True in v}
    pos_variants = {k for k, v in at_variants.items() if True in v}
    # The recolour pairs are positives at variants only; levels nest.
    assert pos_copies < pos_variants, "no recolour pair became a positive at variants"
