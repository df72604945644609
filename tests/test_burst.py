"""The burstiness check (matchkit/match/burst.py): a local match whose inliers gather
on a part many other pictures of the run carry is refused; copies of the
pair's pictures, images outside the run and far descriptors do not count,
nor a part the inliers cover the overlap of."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from matchkit.match import burst
from matchkit.config import Settings
from matchkit.jobs.dedupe import dedupe
from matchkit.match.incremental import settings_key
from matchkit.index.hamming import within
from matchkit.signals.local import LocalFeatures, Overlap, Verification
from matchkit.match.pairs import PairEvidence

STRIDE = 1000


def test_inlier_rows_find_the_stored_keypoint_or_none():
    xy = np.array([[10, 10], [50, 20], [30.5, 40]], np.float32)
    rows = burst.inlier_rows(xy, np.array([[50, 20], [30, 40], [90, 90]], np.float32))
    assert rows.tolist() == [1, 2, -1]
    assert burst.inlier_rows(xy[:0], np.array([[1, 1]])).tolist() == [-1]


def test_holders_are_distinct_near_images_per_row():
    keys = np.array([[5 * STRIDE + 1, 5 * STRIDE + 2, 6 * STRIDE, 7 * STRIDE, -1]])
    dists = np.array([[10, 12, 20, 80, 257]])
    # two keypoints of image 5 count once; 7 is too far; -1 is no neighbour
    img = burst.holders(keys, dists, 56, STRIDE)
    assert sorted(img[img >= 0].tolist()) == [5, 6]


def test_carriers_hold_a_share_of_the_inliers_and_a_least_number():
    # 40 inliers: a carrier holds at least 8 (20%); 10 inliers: at least 6.
    part = burst.Part(40, np.array([1, 2, 3]), np.array([40, 8, 7]))
    assert part.need == 8 and part.carriers() == 2
    assert burst.Part(10, np.array([3, 4]), np.array([6, 5])).carriers() == 1


def test_refuses_reads_the_setting_the_spread_and_zero_turns_it_off():
    s = Settings(burst_pictures=30)
    assert burst.refuses(30, 0.2, s) and not burst.refuses(29, 0.2, s)
    assert not burst.refuses(100, burst.SPREAD, s)  # inliers cover the overlap
    assert burst.refuses(100, None, s)
    assert not burst.refuses(100, 0.1, Settings(burst_pictures=0))


def test_a_part_fewer_pictures_carry_is_refused_only_where_few_descriptors_voted():
    s = Settings(burst_pictures=30, burst_weak_pictures=8, burst_weak_votes=2.0)
    assert burst.refuses(8, 0.2, s, votes=1.99) and burst.refuses(29, 0.2, s, votes=0.0)
    assert not burst.refuses(8, 0.2, s, votes=2.0)  # enough of the picture voted
    assert not burst.refuses(7, 0.2, s, votes=1.0)  # too few carriers
    assert not burst.refuses(8, burst.SPREAD, s, votes=1.0)  # inliers cover the overlap
    assert not burst.refuses(8, 0.2, s)  # votes not known: only the count decides
    assert burst.refuses(30, 0.2, s, votes=50.0)
    assert not burst.refuses(100, 0.1, s.with_(burst_pictures=0), votes=0.0)  # all off
    assert not burst.refuses(8, 0.2, s.with_(burst_weak_pictures=0), votes=0.0)


def test_burst_settings_do_not_touch_stored_decisions():
    # Measured afresh each run: changing it must not invalidate stored state.
    assert settings_key(Settings(burst_pictures=7)) == settings_key(Settings(burst_pictures=0))
    assert settings_key(Settings(burst_weak_pictures=3, burst_weak_votes=1.5)) == settings_key(
        Settings(burst_weak_pictures=0, burst_weak_votes=0.0))


# -- the matcher wrapper, around a fake matcher and index ----------------------

class _Index:
    """Every query descriptor has the same neighbours: ``holders`` images at
    ``dist`` (those within ``max_distance`` when asked, as an index cuts them)."""

    def __init__(self, holders, dist=20):
        self.holders, self.dist = list(holders), dist

    def search(self, desc, k, max_distance=None):
        n = len(desc)
        keys = np.full((n, k), -1, np.int64)
        dists = np.full((n, k), 257, np.int64)
        row = [h * STRIDE for h in self.holders][:k]
        keys[:, :len(row)] = row
        dists[:, :len(row)] = self.dist
        return (keys, dists) if max_distance is None else within(keys, dists, max_distance, 256)


class _Gallery:
    def __init__(self, index):
        self.orb_index = index


class _Cache:
    def __init__(self, feats):
        self.feats = feats

    def get(self, i):
        return (self.feats[i], None) if i in self.feats else None


def _hash(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, 32), dtype=np.uint8)


class _Matcher:
    """Pairs (1, 2) verified as a local match with 20 inliers on stored keypoints."""

    def __init__(self, ids, plain=None):
        rng = np.random.default_rng(0)
        xy = rng.uniform(0, 300, (40, 2)).astype(np.float32)
        desc = rng.integers(0, 256, (40, 32), dtype=np.uint8)
        feats = {i: LocalFeatures(xy, desc, 320, 320) for i in (1, 2)}
        self.cache = _Cache(feats)
        self.paths = {i: f"/x/{i}.jpg" for i in ids}
        self.plain = plain or {i: _hash(i) for i in ids}
        pts = np.hstack([xy[:20], xy[:20]]).tolist()
        self.overlap = Overlap(correlation=0.9, agreement=0.9, spread=0.2)
        self.evidence = []
        self.verified = PairEvidence(1, 2, 200, 0.5, pending=True,
                                     verification=Verification(40, 20, [[1, 0, 0], [0, 1, 0]],
                                                               points=pts))

    def verify(self, todo):
        for ev in todo:
            ev.pending, ev.rule = False, "local"
            ev.extra["relation"] = "edited"
            ev.overlap = self.overlap


def _checked(holders, *, ids=None, plain=None, dist=20, spread=0.2, votes=5.0, **settings):
    ids = ids if ids is not None else [1, 2, *holders]
    m = _Matcher(ids, plain)
    m.overlap = replace(m.overlap, spread=spread)
    m.verified.votes = votes
    s = Settings(**{"burst_pictures": 20, **settings})
    wrapped = burst.bursting(m, _Gallery(_Index(holders, dist)), s, STRIDE)
    assert isinstance(wrapped, burst.BurstMatcher)
    ev = m.verified
    wrapped.verify([ev])
    return ev


def test_a_match_on_a_part_many_pictures_carry_is_refused():
    ev = _checked(range(10, 41))  # 31 other pictures hold every inlier's descriptor
    assert ev.rule == "" and ev.extra["relation"] is None
    assert ev.extra["carried_by"] == 31 and ev.extra["veto"].startswith("a part 31 other")
    assert ev.to_evidence()["rule"] == ""


def test_a_match_on_a_part_few_pictures_carry_is_kept():
    ev = _checked(range(10, 25))  # 15 other images: under 20
    assert ev.rule == "local" and ev.extra["carried_by"] == 15
    assert ev.to_evidence()["part_carried_by"] == 15


def test_a_match_few_descriptors_voted_for_is_refused_on_a_part_fewer_pictures_carry():
    ev = _checked(range(10, 25), votes=1.5)  # 15 carriers: at least 12, under 2 votes
    assert ev.rule == "" and ev.extra["veto"].endswith("1.50 votes")
    assert _checked(range(10, 21), votes=1.5).rule == "local"  # 11 carriers
    assert _checked(range(10, 25), votes=1.5, burst_weak_pictures=0).rule == "local"


def test_inliers_that_cover_the_overlap_are_kept():
    # A picture under many captions: many images carry it, all of it.
    assert _checked(range(10, 41), spread=0.8).rule == "local"


def test_copies_of_the_pair_outside_the_run_and_far_descriptors_do_not_count():
    holders = list(range(10, 41))
    # Copies (pHash within the match distance of image 1) hold its descriptors.
    plain = {i: _hash(1) for i in [1, *holders]} | {2: _hash(2)}
    assert _checked(holders, plain=plain).rule == "local"
    # Images not in the run.
    assert _checked(holders, ids=[1, 2, 10]).rule == "local"
    # Descriptors farther than the vote distance.
    assert _checked(holders, dist=60).rule == "local"


def test_off_by_setting_returns_the_matcher_itself():
    m = _Matcher([1, 2])
    assert burst.bursting(m, _Gallery(_Index([])), Settings(burst_pictures=0), STRIDE) is m
    assert burst.bursting(m, _Gallery(_Index([])),
                          Settings(burst_pictures=3, local_features=False), STRIDE) is m


@pytest.mark.parametrize("need,kept", [(32, True), (31, False)])
def test_the_count_is_inclusive(need, kept):
    ev = _checked(range(10, 41), burst_pictures=need)  # 31 carriers
    assert (ev.rule == "local") is kept


# -- in the pipeline -----------------------------------------------------------

def _crop_set(tmp_path):
    from conftest import textured

    d = tmp_path / "imgs"
    d.mkdir()
    p = textured(1)
    p.save(d / "a_orig.jpg", quality=92)
    p.crop((96, 72, 384, 288)).save(d / "a_crop.jpg", quality=90)  # a local match only
    for seed in range(2, 6):
        textured(seed).save(d / f"other{seed}.jpg", quality=90)
    return d


def _pairs(report):
    return {(os.path.basename(p.a), os.path.basename(p.b)): p for c in report.clusters
            for p in c.pairs}


def test_dedupe_measures_local_matches_and_never_stores_a_refusal(tmp_path, monkeypatch):
    d = _crop_set(tmp_path)
    settings = Settings(workers=1)
    assert settings.burst_pictures > 0  # on by default
    first = dedupe([d], gallery=tmp_path / "g", settings=settings)
    pair = next(iter(_pairs(first).values()))
    # A crop's inliers cover the overlap: the check cannot refuse it, so it
    # is not measured ...
    assert pair.evidence["rule"] == "local" and pair.evidence["spread"] >= burst.SPREAD
    assert "part_carried_by" not in pair.evidence
    # ... unless any spread may be refused.
    monkeypatch.setattr(burst, "SPREAD", 1.01)
    first = dedupe([d], gallery=tmp_path / "g", settings=settings)
    pair = next(iter(_pairs(first).values()))
    assert 0 <= pair.evidence["part_carried_by"] < settings.burst_pictures  # measured, kept
    # Refused in one run (every match refused) ...
    monkeypatch.setattr(burst, "refuses", lambda *a: True)
    assert dedupe([d], gallery=tmp_path / "g", settings=settings).clusters == []
    monkeypatch.undo()
    monkeypatch.setattr(burst, "SPREAD", 1.01)
    # ... the stored verification still holds the match: measured afresh, kept.
    again = dedupe([d], gallery=tmp_path / "g", settings=settings)
    assert [c.members for c in again.clusters] == [c.members for c in first.clusters]


def test_check_applies_the_same_check(tmp_path, monkeypatch):
    from matchkit.store.gallery import Gallery
    from matchkit.match.query import query

    d = _crop_set(tmp_path)
    crop = tmp_path / "crop.jpg"
    (d / "a_crop.jpg").rename(crop)
    g = Gallery(tmp_path / "g", settings=Settings(workers=1))
    g.add(sorted(d.iterdir()))
    monkeypatch.setattr(burst, "SPREAD", 1.01)  # (a crop: measured only so)
    found = query(g, [crop])[0].neighbours
    assert found and found[0].matched and found[0].evidence.extra["carried_by"] is not None
    monkeypatch.setattr(burst, "refuses", lambda *a: True)
    assert not any(nb.matched for nb in query(g, [crop])[0].neighbours)


# -- a re-run on the same images keeps the measurements --------------------------

def _ev(a=1, b=2, shift=0.0):
    pts = [[10 + shift, 20, 11, 21], [30, 40, 31, 41]]
    return PairEvidence(a, b, 200, 0.5, rule="local",
                        verification=Verification(40, 20, [[1, 0, 0], [0, 1, 0]], points=pts))


def test_the_memo_reads_back_only_under_its_key(tmp_path):
    path = tmp_path / burst.MEMO_FILE
    memo = burst.BurstMemo(path, "k1")
    memo.put(_ev(), burst.Carried(20, 33))
    memo.put(_ev(3, 4), None)
    memo.save()
    again = burst.BurstMemo(path, "k1")
    assert again.get(_ev()) == (True, burst.Carried(20, 33))
    assert again.get(_ev(3, 4)) == (True, None)
    # Other inliers, the other direction, another run: not found.
    assert again.get(_ev(shift=0.5)) == (False, None)
    assert again.get(_ev(2, 1)) == (False, None)
    assert burst.BurstMemo(path, "k2").stored == {}
    # A torn file is as none.
    path.write_bytes(path.read_bytes()[:50])
    assert burst.BurstMemo(path, "k1").stored == {}


def test_the_run_key_follows_the_images_and_the_base():
    assert burst.run_key("s:1", [3, 1, 2]) == burst.run_key("s:1", {1: "", 2: "", 3: ""})
    assert burst.run_key("s:1", [1, 2, 3]) != burst.run_key("s:1", [1, 2])
    assert burst.run_key("s:1", [1, 2]) != burst.run_key("s:2", [1, 2])


def _lookups(monkeypatch):
    """Count the check's look-ups (calls of ``burst.measure`` that search)."""
    calls = []
    real = burst.measure

    def counted(evidence, *a, **kw):
        got = real(evidence, *a, **kw)
        calls.append(len(got))
        return got
    monkeypatch.setattr(burst, "measure", counted)
    return calls


def test_a_rerun_with_nothing_new_reuses_the_measurements(tmp_path, monkeypatch):
    d = _crop_set(tmp_path)
    settings = Settings(workers=1)
    monkeypatch.setattr(burst, "SPREAD", 1.01)  # (the crop pair is measured only so)
    first = dedupe([d], gallery=tmp_path / "g", settings=settings)
    assert (tmp_path / "g" / burst.MEMO_FILE).exists()
    calls = _lookups(monkeypatch)
    again = dedupe([d], gallery=tmp_path / "g", settings=settings)
    assert sum(calls) == 0  # nothing looked up ...
    assert _pairs(again).keys() == _pairs(first).keys()  # ... and the same measurement
    assert ([p.evidence["part_carried_by"] for p in _pairs(again).values()]
            == [p.evidence["part_carried_by"] for p in _pairs(first).values()])
    # How many carriers refuse a match is not part of the key: decided afresh.
    dedupe([d], gallery=tmp_path / "g", settings=Settings(workers=1, burst_pictures=50))
    assert sum(calls) == 0


def test_a_memo_of_another_run_is_not_used(tmp_path, monkeypatch):
    d = _crop_set(tmp_path)
    settings = Settings(workers=1)
    monkeypatch.setattr(burst, "SPREAD", 1.01)
    first = dedupe([d], gallery=tmp_path / "g", settings=settings)
    kept = sorted(c.members for c in first.clusters)
    # Make the kept measurement say "carried by 100 pictures": a run on the
    # same images believes it (the memo is a cache of its own run) ...
    path = tmp_path / "g" / burst.MEMO_FILE
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data["count"] = np.full_like(data["count"], 100)
    np.savez(path, **data)
    assert dedupe([d], gallery=tmp_path / "g", settings=settings).clusters == []
    # ... a run on other images (one more) measures afresh.
    textured_extra = d / "other9.jpg"
    from conftest import textured
    textured(9).save(textured_extra, quality=90)
    calls = _lookups(monkeypatch)
    after = dedupe([d], gallery=tmp_path / "g", settings=settings)
    assert sum(calls) > 0
    assert sorted(c.members for c in after.clusters if "other9" not in str(c.members)) == kept
