"""Stored queries' probed words: an incremental add finds which stored query
descriptors new IVF entries reach from them (``index.ivf_probed``), the same
as asking an index of the new entries, and keeps them in the records."""

from __future__ import annotations

import numpy as np
import pytest

from matchkit.index import ivf_probed
from matchkit.index.ivf import IVFIndex
from matchkit.index.ivf_probed import FiledEntries, query_rows, reached
from matchkit.match.incremental_state import _pack_probes, _probes, join_record, split_record
from matchkit.match.incremental_votes import _within

from test_ivf import _codes, _vocab

STRIDE = 1000


def _gallery(rng, vocab, probes, nodes, images=12, per=30):
    """An index of ``images`` images of ``per`` codes each (keys image * STRIDE
    + row), and each image's first 20 codes as its queries, encoded."""
    base = rng.integers(0, 256, (4, 32), dtype=np.uint8)
    index = IVFIndex(vocab, probes=probes, nodes=nodes)
    queries, probed = {}, {}
    for i in range(images):
        codes = _codes(rng, per, base, flips=30)
        index.add(i * STRIDE + np.arange(per), codes)
        queries[i] = codes[:20]
        probed[i] = index.encode(codes[:20]).words
    return index, queries, probed, base


@pytest.mark.parametrize("use_compiled", [True, False], ids=["numba", "numpy"])
@pytest.mark.parametrize("probes,nodes,sig", [(1, 1, 32), (2, 2, 64), (3, 4, 256)])
def test_reached_equals_asking_an_index_of_the_new_entries(probes, nodes, sig, use_compiled,
                                                           monkeypatch):
    monkeypatch.setattr(ivf_probed.compiled, "AVAILABLE", use_compiled)
    rng = np.random.default_rng(probes)
    vocab = _vocab(rng, top=4, leaves=4, sig=sig)
    index, queries, probed, base = _gallery(rng, vocab, probes, nodes)
    new_codes = _codes(rng, 60, base, flips=30)
    new_keys = 50 * STRIDE + np.arange(60)
    small = IVFIndex(vocab, probes=probes, nodes=nodes)
    small.add(new_keys, new_codes)
    owners = np.concatenate([np.full(20, i) for i in sorted(queries)])
    rows = np.concatenate([np.arange(20) for _ in queries])
    limit = 100
    near = _within(small, np.concatenate([queries[i] for i in sorted(queries)]), limit)
    want = np.stack([owners[near[:, 0]], rows[near[:, 0]], near[:, 2], near[:, 1]], 1)
    assert len(want) > 20  # (the test sees hits, and some left out by the limit)
    assert len(want) < len(owners) * 60
    monkeypatch.setattr(ivf_probed, "PAIRS_AT_ONCE", 7)  # (many parts)
    got = reached(index, probed, FiledEntries.of(index, new_keys, new_codes), limit, STRIDE)

    def rows_of(a):
        return sorted(map(tuple, a.tolist()))
    assert rows_of(got) == rows_of(want)
    # Some images only: their hits alone.
    some = {i: probed[i] for i in (3, 7)}
    part = reached(index, some, FiledEntries.of(index, new_keys, new_codes), limit, STRIDE)
    assert rows_of(part) == [r for r in rows_of(want) if r[0] in (3, 7)]


@pytest.mark.parametrize("sig", [64, 256])
def test_compiled_and_numpy_rows_are_the_same_in_the_same_order(sig, monkeypatch):
    rng = np.random.default_rng(sig)
    vocab = _vocab(rng, top=4, leaves=4, sig=sig)
    index, _, probed, base = _gallery(rng, vocab, 3, 4, images=20)
    filed = FiledEntries.of(index, 60 * STRIDE + np.arange(80), _codes(rng, 80, base, flips=30))
    fast = reached(index, probed, filed, 90, STRIDE)
    monkeypatch.setattr(ivf_probed.compiled, "AVAILABLE", False)
    plain = reached(index, probed, filed, 90, STRIDE)
    assert fast.dtype == plain.dtype == np.int64
    assert 50 < len(plain) < 20 * 20 * 80
    np.testing.assert_array_equal(fast, plain)


@pytest.mark.parametrize("use_compiled", [True, False], ids=["numba", "numpy"])
def test_reached_with_cutoffs_leaves_out_the_rows_beyond_each_querys(use_compiled, monkeypatch):
    """A cutoff per query row (its neighbour list's last distance) leaves out
    exactly the rows farther than it, keeping those at it (a tie can enter
    the list by key); the others come back in the same order."""
    monkeypatch.setattr(ivf_probed.compiled, "AVAILABLE", use_compiled)
    rng = np.random.default_rng(11)
    vocab = _vocab(rng, top=4, leaves=4, sig=256)
    index, _, probed, base = _gallery(rng, vocab, 3, 4, images=20)
    filed = FiledEntries.of(index, 60 * STRIDE + np.arange(80), _codes(rng, 80, base, flips=30))
    every = reached(index, probed, filed, 90, STRIDE)
    cutoffs = {i: rng.integers(0, 120, len(probed[i])).astype(np.uint8) for i in probed}
    some = every[:: 7]  # (some rows' cutoffs at a found distance: ties kept)
    for i, r, d, _ in some.tolist():
        cutoffs[i][r] = d
    got = reached(index, probed, filed, 90, STRIDE, cutoffs)
    keep = np.array([d <= cutoffs[i][r] for i, r, d, _ in every.tolist()])
    assert 0 < keep.sum() < len(every) and len(some) > 5
    np.testing.assert_array_equal(got, every[keep])


def test_reached_needs_the_queries_indexed():
    rng = np.random.default_rng(5)
    vocab = _vocab(rng)
    index, _, probed, base = _gallery(rng, vocab, 2, 2)
    filed = FiledEntries.of(index, np.array([99 * STRIDE]), _codes(rng, 1, base))
    index.remove([3 * STRIDE + 4])
    assert reached(index, probed, filed, 256, STRIDE) is None
    assert reached(index, {i: probed[i] for i in probed if i != 3}, filed, 256,
                   STRIDE) is not None
    assert len(reached(index, {}, filed, 256, STRIDE)) == 0


def query_signatures(index, images, sizes, stride):
    """The signatures of the entries ``query_rows`` finds (None as it)."""
    where = query_rows(index, images, sizes, stride)
    return None if where is None else index.postings()[1][where]


def test_query_rows():
    rng = np.random.default_rng(6)
    index, _, _, _ = _gallery(rng, _vocab(rng, sig=256), 2, 2, images=5, per=30)
    keys, sigs = index.postings()
    by_key = {int(k): sigs[j] for j, k in enumerate(keys.tolist())}
    got = query_signatures(index, np.array([1, 3, 4]), np.array([10, 0, 4]), STRIDE)
    want = [by_key[1000 + r] for r in range(10)] + [by_key[4000 + r] for r in range(4)]
    np.testing.assert_array_equal(got, np.stack(want))
    # One entry missing (a row past the image's 30, or a removed one): None.
    assert query_signatures(index, np.array([1]), np.array([31]), STRIDE) is None
    index.remove([3 * STRIDE + 2])
    assert query_signatures(index, np.array([3]), np.array([3]), STRIDE) is None
    assert query_signatures(index, np.array([3]), np.array([2]), STRIDE) is not None
    assert len(query_signatures(index, np.array([], np.int64), np.array([], np.int64),
                                STRIDE)) == 0
    # A large image id (galleries whose rows were deleted and re-added many times).
    far = 10**9
    code = _codes(rng, 2, None)
    index.add(far * STRIDE + np.arange(2), code)
    got = query_signatures(index, np.array([1, far]), np.array([1, 2]), STRIDE)
    np.testing.assert_array_equal(got[1:], index.vocab.signatures(code))


def test_probed_words_are_kept_beside_the_record():
    words = np.array([[1, 70000, 3], [4, 5, 6]])
    rec = {"vo": [], "nb": [2, np.array([1, 2, 3, 4], "<i4").tobytes(), bytes([5, 6, 7, 8])],
           "pw": _pack_probes(words)}
    rest, lists = split_record(rec)
    assert "pw" not in rest
    back = join_record(dict(rest), lists)
    assert (_probes(back) == words).all()
    small = _pack_probes(np.array([[1, 2], [3, 65535]]))
    assert small[1] == 2
    back = join_record(*split_record({"pw": small}))
    assert _probes(back).tolist() == [[1, 2], [3, 65535]]
    with pytest.raises(ValueError, match="damaged"):
        join_record({}, lists[:-1])


def test_an_add_reads_the_probed_words_not_the_queries(tmp_path, monkeypatch):
    """A gallery's add with IVF votes finds the stored queries' hits from
    their probed words (no stored image is asked again), and its report
    equals a run from scratch."""
    import shutil

    from matchkit import Settings
    from matchkit.jobs.dedupe import dedupe
    from matchkit.match import incremental_votes
    from matchkit.store.gallery import Gallery
    from test_determinism import _content
    from test_incremental import _make

    s = Settings(workers=1, vote_index="ivf", ivf_vocabulary="orb-16k", ivf_probes=16,
                 ivf_nodes=8)
    folder = tmp_path / "photos"
    shutil.copytree(_make(tmp_path / "old", range(8)), folder)
    dedupe([folder], gallery=tmp_path / "g", settings=s)
    with Gallery(tmp_path / "g", settings=s) as g:
        key = g.match_keys()[0]
        stored = g.match_records(key)
    with_words = [i for i, (_, _, x) in stored.items() if x is not None and len(x) > 1000]
    assert with_words
    asked, found = [], []
    ask, use = incremental_votes.StoredVotes._query_descriptors, incremental_votes.reached
    monkeypatch.setattr(incremental_votes.StoredVotes, "_query_descriptors",
                        lambda self, ids: asked.extend(ids) or ask(self, ids))
    monkeypatch.setattr(incremental_votes, "reached",
                        lambda *a, **k: found.append(use(*a, **k)) or found[-1])
    for f in _make(tmp_path / "new", range(8, 10)).iterdir():
        shutil.copy(f, folder / f.name)
    grown = dedupe([folder], gallery=tmp_path / "g", settings=s)
    assert found and sum(len(f) for f in found) > 0
    assert not [i for i in asked if i in with_words]
    assert _content(grown) == _content(dedupe([folder], settings=s))


@pytest.mark.parametrize("use_compiled", [True, False], ids=["numba", "numpy"])
def test_reached_in_parts_gives_the_same_rows_in_the_same_order(use_compiled, monkeypatch):
    """Queries compared a few images at a time, and the postings read a few
    at a time to find them, give what all at once gives (with cutoffs)."""
    monkeypatch.setattr(ivf_probed.compiled, "AVAILABLE", use_compiled)
    rng = np.random.default_rng(12)
    vocab = _vocab(rng, top=4, leaves=4, sig=256)
    index, _, probed, base = _gallery(rng, vocab, 3, 4, images=20)
    filed = FiledEntries.of(index, 60 * STRIDE + np.arange(80), _codes(rng, 80, base, flips=30))
    cutoffs = {i: rng.integers(40, 120, len(probed[i])).astype(np.uint8) for i in probed}
    whole = reached(index, probed, filed, 90, STRIDE, cutoffs)
    sigs = query_signatures(index, np.arange(20), np.full(20, 20), STRIDE)
    assert len(whole) > 50
    # (parts smaller than one image's queries, and not dividing them)
    for queries, postings in ((7, 5), (45, 64), (1, 1)):
        monkeypatch.setattr(ivf_probed, "QUERIES_AT_ONCE", queries)
        monkeypatch.setattr(ivf_probed, "POSTINGS_AT_ONCE", postings)
        np.testing.assert_array_equal(reached(index, probed, filed, 90, STRIDE, cutoffs), whole)
        np.testing.assert_array_equal(
            query_signatures(index, np.arange(20), np.full(20, 20), STRIDE), sigs)
