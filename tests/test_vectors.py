"""VectorIndex: cosine search, filters (including very selective ones), updates, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import matchkit.index.vectors_search as search_mod
from matchkit.index.vectors import ModelMismatch, VectorIndex, VectorIndexError, sidecar_path

DIM = 24
N = 6000


def unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(queries, gallery, ids, k):
    """Exact top-k ids and cosine scores among ``ids`` (rows of ``gallery``)."""
    sims = queries @ gallery[ids].T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(sims, order, axis=1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    gallery = unit(rng, N)
    # Ids are not 0..N-1: gaps and a large id, as SQLite rowids can be.
    ids = np.arange(N, dtype=np.int64) * 3 + 11
    queries = unit(rng, 25)
    return gallery, ids, queries


@pytest.fixture(scope="module")
def built(data):
    gallery, ids, _ = data
    idx = VectorIndex("test-model", DIM, threads=1)
    idx.add(ids, gallery)
    return idx


def check_exact(idx, data, allowed_rows, k):
    gallery, ids, queries = data
    allowed = ids[allowed_rows]
    got_ids, got_scores = idx.search(queries, k, allowed=allowed)
    want_ids, want_scores = brute(queries, _by_id(gallery, ids), allowed, k)
    assert got_ids.shape == (len(queries), k)
    assert (got_ids >= 0).all(), "a selective filter must still give k results"
    assert np.isin(got_ids, allowed).all()
    # Same neighbours as brute force (f16 storage can swap near-ties, so compare scores).
    np.testing.assert_allclose(got_scores, want_scores, atol=2e-3)
    agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(got_ids, want_ids)])
    assert agree >= 0.97
    return got_ids


def _by_id(gallery, ids):
    table = np.zeros((ids.max() + 1, gallery.shape[1]), np.float32)
    table[ids] = gallery
    return table


def test_unfiltered_search_matches_brute_force_and_scores_are_cosines(built, data):
    gallery, ids, queries = data
    got_ids, got_scores = built.search(queries, 10)
    want_ids, want_scores = brute(queries, _by_id(gallery, ids), ids, 10)
    assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32
    np.testing.assert_allclose(got_scores, want_scores, atol=2e-3)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_ids, want_ids)]) >= 0.97
    assert (np.diff(got_scores, axis=1) <= 1e-6).all(), "best first"
    # A stored vector finds itself with similarity ~1.
    self_ids, self_scores = built.search(gallery[:5], 1)
    assert self_ids[:, 0].tolist() == ids[:5].tolist()
    np.testing.assert_allclose(self_scores[:, 0], 1.0, atol=2e-3)


def test_filter_keeping_a_tenth_of_a_percent_gives_exactly_k_correct(built, data):
    rng = np.random.default_rng(1)
    rows = rng.choice(N, size=N // 1000 * 2, replace=False)  # 12 of 6000 = 0.2%
    rows6 = rows[:6]                                           # 0.1%
    check_exact(built, data, rows, 10)
    got = check_exact(built, data, rows6, 5)
    assert got.shape[1] == 5


def test_selective_filter_through_the_graph_path_is_still_exact(built, data, monkeypatch):
    # Force the HNSW branch (no exhaustive shortcut) so the oversample-and-grow
    # logic and its fallback are what produce the answer.
    monkeypatch.setattr(search_mod, "EXACT_ALLOWED_MAX", 0)
    monkeypatch.setattr(search_mod, "EXACT_ALLOWED_FRACTION", 0.0)
    monkeypatch.setattr(search_mod, "EXACT_SEARCH_BELOW", 0)
    scans = []
    real_scan = VectorIndex._subset_search
    monkeypatch.setattr(VectorIndex, "_subset_search",
                        lambda self, *a, **k: scans.append(1) or real_scan(self, *a, **k))
    rng = np.random.default_rng(2)
    check_exact(built, data, rng.choice(N, size=6, replace=False), 5)      # 0.1%
    check_exact(built, data, rng.choice(N, size=60, replace=False), 10)    # 1%
    scans.clear()
    check_exact(built, data, rng.choice(N, size=2400, replace=False), 10)  # 40%
    assert not scans, "a loose filter is answered from the graph alone"


def test_filter_larger_than_k_but_smaller_than_index_and_odd_inputs(built, data):
    gallery, ids, queries = data
    # Fewer allowed ids than k: all of them, then padding.
    got_ids, got_scores = built.search(queries[:3], 8, allowed=ids[:3])
    assert (np.sort(got_ids[:, :3], axis=1) == np.sort(ids[:3])).all()
    assert (got_ids[:, 3:] == -1).all() and np.isneginf(got_scores[:, 3:]).all()
    # Unknown ids in the filter are ignored; an empty filter gives nothing.
    got_ids, _ = built.search(queries[:2], 3, allowed=np.array([10**9, ids[5]]))
    assert got_ids[:, 0].tolist() == [ids[5]] * 2 and (got_ids[:, 1:] == -1).all()
    got_ids, _ = built.search(queries[:2], 3, allowed=np.array([ids[7], ids[5], ids[7]]))
    assert sorted(got_ids[0, :2].tolist()) == sorted([ids[5], ids[7]]) and got_ids[0, 2] == -1
    got_ids, _ = built.search(queries[:2], 3, allowed=np.array([], dtype=np.int64))
    assert (got_ids == -1).all()
    # A single 1-d query works; a wrong-sized one is refused.
    assert built.search(queries[0], 4)[0].shape == (1, 4)
    with pytest.raises(ValueError):
        built.search(np.ones(DIM + 1, np.float32), 4)


def test_remove_and_replace():
    rng = np.random.default_rng(3)
    idx = VectorIndex("m", 16)
    vecs = unit(rng, 200, 16)
    idx.add(np.arange(200), vecs)
    assert len(idx) == 200
    assert idx.remove([5, 6, 999]) == 2
    assert len(idx) == 198 and 5 not in idx and 7 in idx
    got, _ = idx.search(vecs[5:7], 3)
    assert not np.isin(got, [5, 6]).any()
    got, _ = idx.search(vecs[:10], 3, allowed=np.array([5, 6, 7]))
    assert not np.isin(got, [5, 6]).any() and (got[:, 0] == 7).all()

    # Replacing id 10 with another vector: the old one no longer finds it.
    new = unit(rng, 1, 16)[0]
    idx.add([10], new[None, :])
    assert len(idx) == 198
    np.testing.assert_allclose(idx.get([10])[0], new, atol=2e-3)
    got, scores = idx.search(new, 1)
    assert got[0, 0] == 10 and scores[0, 0] > 0.999
    got, _ = idx.search(vecs[10], 1)
    assert got[0, 0] != 10
    # A repeated id in one call keeps the last vector.
    idx.add([20, 20], np.stack([vecs[0], vecs[1]]))
    np.testing.assert_allclose(idx.get([20])[0], vecs[1], atol=2e-3)
    with pytest.raises(KeyError):
        idx.get([5])
    with pytest.raises(ValueError):
        idx.add([1, 2], vecs[:1])
    with pytest.raises(ValueError):
        idx.add([-1], vecs[:1])


def test_save_load_round_trip(built, data, tmp_path):
    _, _, queries = data
    path = tmp_path / "vectors.usearch"
    built.save(path)
    record = json.loads(sidecar_path(path).read_text())
    assert record["model"] == "test-model" and record["dim"] == DIM and record["count"] == N
    for view in (False, True):
        again = VectorIndex.load(path, expect_model="test-model", view=view)
        assert (again.model, again.dim, len(again)) == ("test-model", DIM, N)
        a_ids, a_scores = again.search(queries, 10)
        b_ids, b_scores = built.search(queries, 10)
        assert (a_ids == b_ids).all()
        np.testing.assert_allclose(a_scores, b_scores, atol=1e-6)
    assert not list(tmp_path.glob(".*tmp*")), "no temp files left behind"


def test_load_refuses_another_model(built, tmp_path):
    path = tmp_path / "v.usearch"
    built.save(path)
    with pytest.raises(ModelMismatch) as err:
        VectorIndex.load(path, expect_model="clip-vit-b32")
    msg = str(err.value)
    assert "test-model" in msg and f"dim {DIM}" in msg and "clip-vit-b32" in msg
    with pytest.raises(ModelMismatch):
        VectorIndex.load(path, expect_dim=DIM * 2)


def test_load_refuses_missing_or_inconsistent_record(tmp_path):
    rng = np.random.default_rng(4)
    a, b = VectorIndex("a", 8), VectorIndex("b", 12)
    a.add(np.arange(5), unit(rng, 5, 8))
    b.add(np.arange(5), unit(rng, 5, 12))
    a.save(tmp_path / "a.usearch")
    b.save(tmp_path / "b.usearch")
    # Record of b beside the graph of a (what an interrupted save could leave).
    sidecar_path(tmp_path / "a.usearch").write_bytes(sidecar_path(tmp_path / "b.usearch").read_bytes())
    with pytest.raises(VectorIndexError, match="out of step"):
        VectorIndex.load(tmp_path / "a.usearch")
    sidecar_path(tmp_path / "b.usearch").unlink()
    with pytest.raises(VectorIndexError, match="missing"):
        VectorIndex.load(tmp_path / "b.usearch")
    with pytest.raises(VectorIndexError, match="does not exist"):
        VectorIndex.load(tmp_path / "nothing.usearch")


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    idx = VectorIndex("m", 8)
    idx.add(np.arange(10), unit(rng, 10, 8))
    path = tmp_path / "v.usearch"
    idx.save(path)
    before = path.read_bytes()
    idx.add(np.arange(10, 20), unit(rng, 10, 8))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(idx._index, "save", boom)
    with pytest.raises(OSError):
        idx.save(path)
    assert path.read_bytes() == before
    assert len(VectorIndex.load(path, expect_model="m")) == 10
    assert not list(tmp_path.glob(".*tmp*"))


def test_row_copy_used_for_large_scans_follows_updates(monkeypatch):
    """Scans of big allowed sets read a row copy of the vectors; it must track
    adds, replacements and removals made after it was built."""
    monkeypatch.setattr(search_mod, "DIRECT_GET_MAX", 0)
    rng = np.random.default_rng(6)
    vecs = unit(rng, 3000, 16)
    idx = VectorIndex("m", 16)
    idx.add(np.arange(3000), vecs)
    table = vecs.copy()
    queries = unit(rng, 8, 16)

    def check(allowed):
        got, scores = idx.search(queries, 5, allowed=allowed)
        want, want_s = brute(queries, table, allowed, 5)
        assert np.isin(got, allowed).all()
        np.testing.assert_allclose(scores, want_s, atol=2e-3)

    check(np.arange(0, 3000, 7))
    assert idx._rows is not None
    idx.remove(np.arange(0, 1500))          # enough to trigger compaction
    new = unit(rng, 200, 16)
    idx.add(np.arange(1600, 1800), new)     # replacements
    table[1600:1800] = new
    extra = unit(rng, 100, 16)
    idx.add(np.arange(3000, 3100), extra)   # additions
    table = np.concatenate([table, extra])
    allowed = np.arange(1500, 3100, 3)
    check(allowed)
    got, _ = idx.search(queries, 5, allowed=np.arange(0, 3100, 2))
    assert not np.isin(got, np.arange(0, 1500)).any()
