"""The built-in signals through the signal interface (``matchkit.signals``).

Exact digests, the image's size, pHash, colour, local features, embeddings
and icons are registered signals: each names the ``ImageRecord`` fields it
extracts, where a gallery keeps it, the named features it adds to the
calibrated decision and the evidence it reports. These tests hold each
declaration to what the pipeline does.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import sqlite3

import numpy as np
import pytest

from matchkit import signals
from matchkit.config import Settings, SettingsError
from matchkit.features.record import ImageRecord, extract
from matchkit.match.calibrate import PairCalibrator
from matchkit.match.evidence import PairEvidence
from matchkit.match.pairfeatures import FEATURES, SIGNAL_OF, pair_features
from matchkit.signals.local import Verification
from matchkit.store import gallery_indexes, gallery_vectors
from matchkit.store.gallery import Gallery

from conftest import make_photo

BUILTIN = ["image", "exact", "phash", "colour", "local", "embedding", "icon"]


def test_builtin_signals_are_registered_apart_from_the_extra_ones():
    assert signals.builtin_names() == BUILTIN
    assert [s.name for s in signals.builtin()] == BUILTIN
    assert not set(BUILTIN) & set(signals.available())
    assert "ocr" in signals.available()


def test_a_builtin_signal_cannot_be_asked_for_as_an_extra_one():
    with pytest.raises(signals.UnknownSignal, match="built in"):
        signals.check_names(["phash"])
    with pytest.raises(SettingsError):
        Settings(signals=("local",))
    with pytest.raises(ValueError, match="built-in"):
        signals.register("phash", "somewhere:Else")


def test_features_are_the_union_of_the_builtin_signals_features_in_order():
    union = [f for s in signals.builtin() for f in s.features]
    assert list(FEATURES) == union
    assert len(set(FEATURES)) == len(FEATURES)
    assert {SIGNAL_OF[f] for f in FEATURES} == {"image", "phash", "colour", "local", "embedding"}


def _pair(verified: bool, cosine: float | None) -> PairEvidence:
    ev = PairEvidence(a=1, b=2, phash_distance=40, colour_similarity=0.75, cosine=cosine,
                      extra={"reflect": True, "hue_similarity": 0.5})
    if verified:
        ev.verification = Verification(matches=120, inliers=60, transform=[[1, 0, 0], [0, 1, 0]])
        ev.overlap_correlation = 0.9
    return ev


@pytest.mark.parametrize("verified, cosine", [(False, None), (True, 0.8)])
def test_each_signal_gives_one_defined_value_per_named_feature(verified, cosine):
    ev = _pair(verified, cosine)
    context = signals.PairContext({1: 100, 2: 90}, {1: (400, 300), 2: (200, 150)}, {1: 0.6})
    for sig in signals.builtin():
        values = sig.pair_features(ev, context)
        assert len(values) == len(sig.features), sig.name
        assert all(math.isfinite(v) for v in values), sig.name


def test_pair_features_read_by_name():
    row = dict(zip(FEATURES, pair_features(_pair(True, 0.8), {1: 100, 2: 90},
                                           {1: (400, 300), 2: (200, 150)}, {1: 0.6})))
    assert row["phash_distance"] == pytest.approx(40 / 256)
    assert row["phash_zero"] == 0.0
    assert row["crowd_gap"] == pytest.approx((90 - 40) / 256)
    assert row["reflect"] == 1.0
    assert row["colour_similarity"] == 0.75 and row["hue_similarity"] == 0.5
    assert row["verified"] == 1.0 and row["log_inliers"] == pytest.approx(math.log1p(60))
    assert row["inlier_ratio"] == pytest.approx(0.5)
    assert row["overlap_missing"] == 0.0 and row["overlap_correlation"] == pytest.approx(0.9)
    assert row["picture_fraction"] == pytest.approx(0.6)
    assert row["cosine_missing"] == 0.0 and row["cosine"] == pytest.approx(0.8)
    assert row["log_pixel_ratio"] == pytest.approx(math.log(4))
    assert row["aspect_difference"] == pytest.approx(0.0)
    missing = dict(zip(FEATURES, pair_features(_pair(False, None), {}, {})))
    assert missing["verified"] == 0.0 and missing["overlap_missing"] == 1.0
    assert missing["cosine_missing"] == 1.0 and missing["cosine"] == 0.0
    assert missing["hue_similarity"] == 0.5  # measured without verification


def _fitted(model: str) -> PairCalibrator:
    rng = np.random.default_rng(5)
    X = rng.normal(0, 0.05, (3000, len(FEATURES)))
    X[:, 3] = rng.random(3000)
    y = rng.random(3000) < X[:, 3] ** 2
    return PairCalibrator(model=model, target_precision=0.9, n_trees=10).fit(X, y)


def _reordered(d: dict, order: list[int]) -> dict:
    """``d`` (``to_dict``) as if fitted with its features in ``order``."""
    d = dict(d, features=[d["features"][i] for i in order])
    if d["model"] == "logistic":
        for k in ("mean", "scale", "coef"):
            d[k] = [d[k][i] for i in order]
    else:
        new_index = {old: new for new, old in enumerate(order)}
        d["trees"] = dict(d["trees"])
        d["trees"]["feature"] = [[new_index[f] for f in t] for t in d["trees"]["feature"]]
    return d


@pytest.mark.parametrize("model", ["logistic", "boosting"])
def test_a_profile_reads_its_columns_by_name(model):
    """A profile fitted with the features in another order (the order before
    the signals were registered one by one, say) scores the same rows alike."""
    c = _fitted(model)
    order = list(np.random.default_rng(0).permutation(len(FEATURES)))
    moved = PairCalibrator.from_dict(_reordered(c.to_dict(), order))
    assert list(moved.features_) != list(FEATURES)
    X = np.random.default_rng(9).random((200, len(FEATURES)))
    np.testing.assert_allclose(moved.score(X), c.score(X))
    assert moved.predict(X).tolist() == c.predict(X).tolist()
    # ... and reading the rows in the profile's order instead would differ:
    assert not np.allclose(c.score(X[:, order]), c.score(X))


def test_record_fields_are_each_filled_by_one_signal(tmp_path):
    owned = [f for s in signals.builtin() for f in s.record_fields]
    assert len(owned) == len(set(owned))
    fields = {f.name for f in dataclasses.fields(ImageRecord)}
    assert fields - set(owned) == {"path", "size", "mtime_ns", "signals"}
    p = tmp_path / "a.jpg"
    make_photo(1).save(p, quality=90)
    rec = extract(p)
    for name in owned:
        if name not in ("jpeg_quality", "icon", "pixel_sha256"):
            assert getattr(rec, name) is not None, name
    off = extract(p, Settings(local_features=False))
    assert off.local is None and off.thumb is None
    assert np.array_equal(off.phashes, extract(p, Settings(local_features=False)).phashes)


def test_declared_storage_exists_in_a_gallery(tmp_path):
    g = Gallery(tmp_path / "g")
    db = sqlite3.connect(tmp_path / "g" / "gallery.sqlite")
    files = {gallery_indexes.PHASH_INDEX_NAME, gallery_indexes.ORB_INDEX_NAME,
             gallery_indexes.ORB_IVF_INDEX_NAME}
    for sig in signals.builtin():
        for where in sig.stores:
            if where.endswith((".usearch", ".ivf")):
                assert where in files or fnmatch.fnmatch(
                    gallery_vectors.vector_file_name("some/model"), where), (sig.name, where)
                continue
            table, column = where.split(".")
            cols = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            assert column in cols, (sig.name, where)
    db.close()
    g.close()


def test_a_report_entry_is_the_signals_evidence():
    ev = _pair(True, 0.8)
    ev.rule = "local"
    out = ev.to_evidence()
    assert out["rule"] == "local"
    want = {}
    for sig in signals.builtin():
        want.update(sig.evidence(ev))
    assert {k: out[k] for k in want} == want
    assert set(out) == {"rule"} | set(want)
    assert {"phash_distance", "colour_similarity", "cosine", "inliers"} <= set(out)


def test_each_signal_writes_the_images_columns_it_declares(tmp_path):
    p = tmp_path / "in" / "a.png"
    p.parent.mkdir()
    make_photo(2).save(p)
    rec = extract(p)
    for sig in signals.builtin():
        declared = [w.split(".", 1)[1] for w in sig.stores if w.startswith("images.")]
        assert list(sig.to_columns(rec)) == declared, sig.name
    # ... and what the gallery stores reads back as the record it came from.
    with Gallery(tmp_path / "g") as g:
        g.add([p])
        (i,) = g.ids()
        stored = g.images([i])[i]
        assert (stored.width, stored.height, stored.sha256) == (rec.width, rec.height, rec.sha256)
        np.testing.assert_array_equal(g.colours([i])[i], rec.colour)
        np.testing.assert_array_equal(g.phash_variants([i])[0], rec.phashes)


def _two_photos(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    make_photo(3).save(d / "a.jpg", quality=92)
    make_photo(3).resize((240, 180)).save(d / "a_small.jpg", quality=85)
    make_photo(4).save(d / "b.jpg", quality=90)
    return sorted(d.iterdir())


@pytest.mark.parametrize("local", [True, False])
def test_candidate_searches_run_by_signal_in_order(tmp_path, monkeypatch, local):
    from matchkit.match.pairs import PairMatcher
    ran = []
    for name, method in PairMatcher.SEARCHES.items():
        real = getattr(PairMatcher, method)
        monkeypatch.setattr(PairMatcher, method,
                            lambda self, run, real=real, name=name: (ran.append(name),
                                                                     real(self, run))[1])
    settings = Settings(local_features=local)
    with Gallery(tmp_path / "g", settings) as g:
        ids = g.add(_two_photos(tmp_path)).ids
        m = PairMatcher(g, ids, settings)
    # no model configured: no embedding search; no local search without local features
    assert ran == (["phash", "local", "icon"] if local else ["phash", "icon"])
    assert any(ev.a != ev.b for ev in m.evidence)


def _spy_searches(monkeypatch, cls, ran: list) -> None:
    for name, method in cls.SEARCHES.items():
        real = getattr(cls, method)
        monkeypatch.setattr(cls, method,
                            lambda self, run, real=real, name=name: (ran.append(name),
                                                                     real(self, run))[1])


@pytest.mark.parametrize("local", [True, False])
def test_incremental_and_query_searches_run_by_signal_in_order(tmp_path, monkeypatch, local):
    """The incremental matcher (images searched again) and a gallery query
    run their searches through the same loop as a run's
    (``searches.signal_steps``): the signals' order, enabled ones only."""
    from matchkit.match.incremental import IncrementalMatcher
    from matchkit.match.query import QueryMatcher

    stored, asked = [], []
    _spy_searches(monkeypatch, IncrementalMatcher, stored)
    _spy_searches(monkeypatch, QueryMatcher, asked)
    settings = Settings(local_features=local)
    photos = _two_photos(tmp_path)
    with Gallery(tmp_path / "g", settings) as g:
        ids = g.add(photos[:2]).ids
        m = IncrementalMatcher(g, ids, settings)
        assert m.searched == sorted(ids)
        with QueryMatcher(g, settings, zoom=False) as q:
            found = q.match([photos[0]])
    assert stored == asked == (["phash", "local"] if local else ["phash"])
    assert ids[0] in {n.id for n in found[0].neighbours if n.matched}


def test_every_matcher_names_searches_of_builtin_signals():
    from matchkit.match.incremental import IncrementalMatcher
    from matchkit.match.pairs import PairMatcher
    from matchkit.match.query import QueryMatcher
    from matchkit.match.searches import signal_steps

    for cls in (PairMatcher, IncrementalMatcher, QueryMatcher):
        assert set(cls.SEARCHES) <= set(BUILTIN), cls
        assert all(callable(getattr(cls, m)) for m in cls.SEARCHES.values()), cls
    steps = {n: n for n in reversed(BUILTIN)}
    assert signal_steps(steps, Settings()) == [n for n in BUILTIN if n != "embedding"]
    assert "local" not in signal_steps(steps, Settings(local_features=False))
    assert "embedding" in signal_steps(steps, Settings(model="some-model"))


def test_a_signal_search_adds_its_pairs(tmp_path):
    """A search registered for a signal (here: the colour signal, which has
    none) proposes pairs that then get evidence like any other."""
    from matchkit.match.pairs import PairMatcher

    class ColourProposes(PairMatcher):
        SEARCHES = {**PairMatcher.SEARCHES, "colour": "_every_pair"}

        def _every_pair(self, run):
            for a in run.ids:
                for b in run.ids:
                    if a < b:
                        run.pairs.setdefault((a, b), -1)

    settings = Settings(phash_candidate_distance=0, phash_max_distance=0, local_features=False)
    with Gallery(tmp_path / "g", settings) as g:
        ids = g.add(_two_photos(tmp_path)).ids
        plain = {(ev.a, ev.b) for ev in PairMatcher(g, ids, settings).evidence}
        every = {(ev.a, ev.b) for ev in ColourProposes(g, ids, settings).evidence}
    assert every == {(a, b) for a in ids for b in ids if a < b}
    assert plain < every


def test_each_signal_writes_the_rows_of_its_own_tables(tmp_path):
    p = tmp_path / "a.jpg"
    make_photo(5).save(p, quality=90)
    rec = extract(p)
    with Gallery(tmp_path / "g") as g:
        g.add([p])
        (i,) = g.ids()
        db = sqlite3.connect(tmp_path / "g" / "gallery.sqlite")
        for sig in signals.builtin():
            rows = sig.to_rows(rec)
            assert set(rows) <= set(sig.tables), sig.name
            for table, row in rows.items():
                cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
                assert set(row) == set(cols) - {"image_id"}, (sig.name, table)
                stored = db.execute(f"SELECT {', '.join(row)} FROM {table} WHERE image_id=?",
                                    (i,)).fetchone()
                assert stored == tuple(row.values())
        db.close()
        local, thumb = g.local_features(i)
        np.testing.assert_array_equal(local.desc, rec.local.desc)
        assert thumb.shape == rec.thumb.shape
    assert signals.get("local").to_rows(extract(p, Settings(local_features=False))) == {}
