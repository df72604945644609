"""The IVF descriptor index: exact merge over shards, determinism, add/remove,
files (bytes, memory-mapped), bad and empty input."""

from __future__ import annotations

import json
import numpy as np
import pytest

from matchkit.index import compiled, ivf
from matchkit.index.ivf import IVFIndex, Vocabulary, default_vocabulary
from matchkit.store.shards import MergedIndex


@pytest.fixture(autouse=True, params=["compiled", "gathered", "by word"])
def search_way(request, monkeypatch):
    """Every test runs with the three ways of searching (``IVFIndex._search_chunk``:
    compiled when Numba loads, else one of two NumPy ways picked by the work
    per probed word; they must give the same result)."""
    monkeypatch.setattr(compiled, "AVAILABLE", request.param == "compiled")
    monkeypatch.setattr(ivf, "BY_WORD_FROM", 10**12 if request.param == "gathered" else 0)
    return request.param


def _vocab(rng, top=4, leaves=4, sig=32):
    return Vocabulary(rng.integers(0, 256, (top, 32), dtype=np.uint8),
                      rng.integers(0, 256, (top, leaves, 32), dtype=np.uint8),
                      np.sort(rng.choice(256, sig, replace=False)))


def _codes(rng, n, base=None, flips=20):
    """Codes near a few shared bases, so words and distances repeat a lot."""
    if base is None:
        base = rng.integers(0, 256, (5, 32), dtype=np.uint8)
    bits = np.unpackbits(base[rng.integers(0, len(base), n)], axis=1)
    flip = rng.random(bits.shape) < flips / 256
    return np.packbits(bits ^ flip, axis=1)


def _brute(vocab, probes, keys, codes, queries, k, nodes=2):
    """Reference: every entry in a probed word, sorted by (distance, key)."""
    ew = vocab.assign(codes, 1)[:, 0]
    qw = vocab.assign(queries, probes, nodes)
    es, qs = vocab.signatures(codes), vocab.signatures(queries)
    out_k = np.full((len(queries), k), -1, np.int64)
    out_d = np.full((len(queries), k), 257, np.int64)
    for r in range(len(queries)):
        hits = sorted((int(np.bitwise_count(qs[r] ^ es[j]).sum()) * (256 // vocab.nbits),
                       int(keys[j]))
                      for j in range(len(keys)) if ew[j] in set(qw[r].tolist()))[:k]
        for c, (d, key) in enumerate(hits):
            out_k[r, c], out_d[r, c] = key, d
    return out_k, out_d


@pytest.mark.parametrize("probes", [1, 2, 3])
def test_search_equals_brute_force(probes):
    rng = np.random.default_rng(1)
    vocab = _vocab(rng)
    codes = _codes(rng, 300)
    keys = rng.permutation(10_000)[:300]
    idx = IVFIndex(vocab, probes=probes)
    idx.add(keys, codes)
    queries = _codes(rng, 40)
    got = idx.search(queries, 7)
    want = _brute(vocab, probes, keys, codes, queries, 7)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@pytest.mark.parametrize("bits,nodes", [(64, 3), (128, 2), (256, 4)])
def test_wide_signatures_and_more_nodes_equal_brute_force(bits, nodes, tmp_path):
    rng = np.random.default_rng(11)
    vocab = _vocab(rng, top=6, leaves=8, sig=64).with_signature_bits(bits)
    assert vocab.nbits == bits and len(set(vocab.sig_bits.tolist())) == bits
    codes = _codes(rng, 300)
    keys = rng.permutation(10_000)[:300]
    idx = IVFIndex(vocab, probes=5, nodes=nodes)
    idx.add(keys, codes)
    queries = _codes(rng, 40)
    got = idx.search(queries, 7)
    want = _brute(vocab, 5, keys, codes, queries, 7, nodes)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    if bits == 256:  # the whole descriptor: distances are exact
        found = got[0][:, 0] >= 0
        exact = np.bitwise_count(queries[found][:, None, :] ^ codes[None]).sum(-1)
        pos = {int(k): i for i, k in enumerate(keys)}
        rows = exact[np.arange(found.sum()), [pos[int(k)] for k in got[0][found, 0]]]
        assert np.array_equal(rows, got[1][found, 0])
    path = tmp_path / "w.ivf"
    idx.save(path)
    for again in (IVFIndex.load(path, vocabulary=vocab, probes=5, nodes=nodes),
                  IVFIndex.load(path, vocabulary=vocab, probes=5, nodes=nodes, mmap=True)):
        back = again.search(queries, 7)
        assert np.array_equal(back[0], got[0]) and np.array_equal(back[1], got[1])
    narrow = _vocab(np.random.default_rng(11), top=6, leaves=8, sig=64)
    assert (narrow.digest == vocab.digest) == (bits == 64)
    if bits != 64:  # another signature is another vocabulary
        with pytest.raises(ValueError):
            IVFIndex.load(path, vocabulary=narrow)
    with pytest.raises(ValueError):
        IVFIndex(vocab, nodes=7)


def _whole_and_shards(rng, vocab, n=900, shards=3):
    """One index of ``n`` codes near a few bases, and the same codes split
    over ``shards`` indexes by key."""
    codes = _codes(rng, n, flips=6)
    keys = np.arange(n) * 3 + 1
    whole = IVFIndex(vocab, probes=2)
    whole.add(keys, codes)
    parts = [IVFIndex(vocab, probes=2) for _ in range(shards)]
    owner = (keys * 2654435761) % shards
    for s, part in enumerate(parts):
        part.add(keys[owner == s], codes[owner == s])
    return whole, parts


def test_merge_of_shards_equals_one_index_with_many_ties():
    rng = np.random.default_rng(2)
    vocab = _vocab(rng, sig=8)  # 8 signature bits: distances tie all the time
    whole, parts = _whole_and_shards(rng, vocab)
    queries = _codes(rng, 60, flips=6)
    for k in (1, 5, 40, 2000):
        a = whole.search(queries, k)
        b = MergedIndex(parts).search(queries, k)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    _, d = whole.search(queries, 40)
    assert (np.diff(d, axis=1) == 0).mean() > 0.5  # (the ties were really there)


def test_a_search_within_a_distance_is_the_search_cut_there_over_shards_too():
    """``search(..., max_distance=d)``: the neighbours within d of the full
    search, first in each row (``index.within``), one index or shards merged
    (each cut before the merge), with many ties."""
    from matchkit.index.hamming import within

    rng = np.random.default_rng(4)
    whole, parts = _whole_and_shards(rng, _vocab(rng, sig=32))
    queries = np.concatenate([_codes(rng, 60, flips=6),
                              rng.integers(0, 256, (10, 32), dtype=np.uint8)])
    counts = set()
    for k in (1, 8, 64):
        full = whole.search(queries, k)
        for d in (0, 24, 56, 256):
            want = within(*full, d, whole.nbits)
            for got in (whole.search(queries, k, max_distance=d),
                        MergedIndex(parts).search(queries, k, max_distance=d)):
                assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
            counts.update(np.unique((want[0] >= 0).sum(1) * 3 // k).tolist())
    assert counts == {0, 1, 2, 3}  # (empty, partly and fully near rows)


def test_insertion_order_and_batches_do_not_matter():
    rng = np.random.default_rng(3)
    vocab = _vocab(rng)
    codes, keys = _codes(rng, 500), np.arange(500)
    a = IVFIndex(vocab, probes=2)
    a.add(keys, codes)
    b = IVFIndex(vocab, probes=2)
    order = rng.permutation(500)
    for chunk in np.array_split(order, 7):
        b.add(keys[chunk], codes[chunk])
    q = _codes(rng, 50)
    assert all(np.array_equal(x, y) for x, y in zip(a.search(q, 10), b.search(q, 10)))
    assert np.array_equal(a.keys(), b.keys())
    assert a.to_bytes() == b.to_bytes()


def test_add_replace_and_remove():
    rng = np.random.default_rng(4)
    vocab = _vocab(rng)
    codes = _codes(rng, 200)
    idx = IVFIndex(vocab)
    idx.add(np.arange(200), codes)
    assert len(idx) == 200 and 7 in idx and 200 not in idx
    idx.add([7], codes[8:9])  # replaced, not duplicated
    assert len(idx) == 200
    k, d = idx.search(codes[8:9], 3)
    assert set(k[0, :2].tolist()) == {7, 8} and d[0, 0] == d[0, 1] == 0
    idx.remove([7, 8, 12345])
    assert len(idx) == 198 and 7 not in idx
    assert not np.isin([7, 8], idx.search(codes[8:9], 200)[0]).any()
    fresh = IVFIndex(vocab)
    keep = np.setdiff1d(np.arange(200), [7, 8])
    fresh.add(keep, codes[keep])
    assert fresh.to_bytes() == idx.to_bytes()


def test_save_load_bytes_and_mmap(tmp_path):
    rng = np.random.default_rng(5)
    vocab = _vocab(rng)
    codes = _codes(rng, 300)
    idx = IVFIndex(vocab, probes=2)
    idx.add(np.arange(300) + 2**33, codes)  # 64-bit keys
    small = IVFIndex(vocab, probes=2)
    small.add(np.arange(300), codes)        # 32-bit keys on disk
    q = _codes(rng, 30)
    for index in (idx, small):
        path = tmp_path / "orb.ivf"
        stamp = index.save(path)
        assert stamp["size"] == path.stat().st_size
        want = index.search(q, 9)
        for other in (IVFIndex.load(path, vocabulary=vocab, probes=2),
                      IVFIndex.load(path, vocabulary=vocab, probes=2, mmap=True),
                      IVFIndex.load(path.read_bytes(), vocabulary=vocab, probes=2)):
            assert len(other) == 300
            got = other.search(q, 9)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        mapped = IVFIndex.load(path, vocabulary=vocab, probes=2, mmap=True)
        mapped.add([5_000_000_000], codes[:1])  # a mapped index still changes (in memory)
        mapped.remove([int(index.keys()[0])])
        assert len(mapped) == 300


def test_bad_files_and_other_vocabulary(tmp_path):
    rng = np.random.default_rng(6)
    vocab = _vocab(rng)
    idx = IVFIndex(vocab)
    idx.add(np.arange(50), _codes(rng, 50))
    data = idx.to_bytes()
    with pytest.raises(ValueError):
        IVFIndex.load(data, vocabulary=_vocab(np.random.default_rng(7)))
    for bad in (b"", b"junk", data[:40], data[:-8], b"MKIVF1\n\xff\xff\xff\x7f{"):
        with pytest.raises(ValueError):
            IVFIndex.load(bad, vocabulary=vocab)


def test_bad_and_empty_input():
    rng = np.random.default_rng(8)
    idx = IVFIndex(_vocab(rng))
    k, d = idx.search(np.zeros((3, 32), np.uint8), 4)
    assert (k == -1).all() and (d == 257).all()
    k, d = idx.search(np.zeros((0, 32), np.uint8), 4)
    assert k.shape == (0, 4)
    idx.add(np.zeros(0, np.int64), np.zeros((0, 32), np.uint8))
    idx.remove([])
    assert len(idx) == 0 and idx.keys().shape == (0,)
    with pytest.raises(ValueError):
        idx.add([-1], np.zeros((1, 32), np.uint8))
    with pytest.raises(ValueError):
        idx.add([1, 1], np.zeros((2, 32), np.uint8))
    with pytest.raises(ValueError):
        idx.add([1], np.zeros((1, 16), np.uint8))
    with pytest.raises(ValueError):
        IVFIndex(_vocab(rng), probes=0)


def test_named_vocabularies():
    from matchkit import Settings
    from matchkit.config import CHOICES
    from matchkit.index.vocabulary import VOCABULARIES, named_vocabulary

    assert CHOICES["ivf_vocabulary"] == tuple(VOCABULARIES)
    for name in VOCABULARIES:  # (every shipped name is a valid setting)
        assert Settings(vote_index="ivf", ivf_vocabulary=name).ivf_vocabulary == name
    assert named_vocabulary("orb-4k") is default_vocabulary()
    assert named_vocabulary("orb-16k").words == 16384
    big = named_vocabulary("orb-64k")
    assert big.words == 65536 and big.nbits == 256
    codes = np.random.default_rng(2).integers(0, 256, (50, 32), dtype=np.uint8)
    idx = IVFIndex(big, probes=16, nodes=8)
    idx.add(np.arange(50), codes)
    keys, dist = idx.search(codes, 1)
    assert np.array_equal(keys[:, 0], np.arange(50)) and not dist.any()


def test_shipped_vocabulary():
    vocab = default_vocabulary()
    assert vocab.words >= 4096 and 256 % vocab.nbits == 0
    rng = np.random.default_rng(9)
    codes = rng.integers(0, 256, (100, 32), dtype=np.uint8)
    one = vocab.assign(codes, 1)[:, 0]
    three = vocab.assign(codes, 3)
    assert np.array_equal(three[:, 0], one)  # (a query looks first where an entry is filed)
    assert (np.diff(np.sort(three, 1), axis=1) != 0).all()



def _words_by_definition(vocab, code, probes, nodes):
    """One code's words as ``Vocabulary.assign`` defines them, by plain
    sorting: the ``nodes`` nearest first-level centroids (ties by number);
    first the best leaf of the best node, then the ``probes - 1`` nearest
    other leaves of those nodes, ties by word number."""
    def dist(a, b):
        return int(np.bitwise_count(np.bitwise_xor(a, b)).sum())
    k1, k2 = vocab.leaves.shape[:2]
    nodes = 1 if probes == 1 else min(nodes, k1)
    best = sorted(range(k1), key=lambda i: (dist(code, vocab.top[i]), i))[:nodes]
    leaves = [(dist(code, vocab.leaves[i, j]), i * k2 + j) for i in best for j in range(k2)]
    first = min(leaves[:k2])
    rest = sorted(x for x in leaves if x != first)[:probes - 1]
    return [first[1]] + [w for _, w in rest]


@pytest.mark.parametrize("cells", [None, 1, 700])
@pytest.mark.parametrize("top,leaves,probes,nodes", [(4, 4, 1, 2), (5, 7, 3, 2), (6, 8, 9, 4),
                                                      (3, 2, 6, 3), (16, 16, 16, 8)])
def test_words_are_chosen_as_defined(top, leaves, probes, nodes, cells, monkeypatch):
    """Words are chosen node by node (``_leaf_distances`` groups the queries
    by the nodes they chose), in chunks of queries (``ASSIGN_CELLS``: one
    query at a time, a few, all at once); the choice must stay the plain
    definition, ties included (codes near a few bases tie often)."""
    from matchkit.index import vocabulary

    if cells is not None:
        monkeypatch.setattr(vocabulary, "ASSIGN_CELLS", cells)
    rng = np.random.default_rng(top * 100 + probes)
    vocab = _vocab(rng, top, leaves)
    codes = _codes(rng, 300, base=vocab.top[:2], flips=6)
    got = vocab.assign(codes, probes, nodes)
    want = np.array([_words_by_definition(vocab, c, probes, nodes) for c in codes])
    assert np.array_equal(got, want)


def test_an_index_filed_by_an_older_build_is_not_loaded(monkeypatch):
    """Entries filed with word ties broken another way would not be found
    where queries now look: such a file must be refused (and so rebuilt)."""
    rng = np.random.default_rng(3)
    vocab = _vocab(rng)
    idx = IVFIndex(vocab)
    idx.add(np.arange(50), _codes(rng, 50))
    assert len(IVFIndex.load(idx.to_bytes(), vocabulary=vocab)) == 50
    filing = ivf.FILING
    monkeypatch.setattr(ivf, "FILING", 1)
    old = idx.to_bytes()
    monkeypatch.setattr(ivf, "FILING", filing)
    with pytest.raises(ValueError, match="filed"):
        IVFIndex.load(old, vocabulary=vocab)

# -- in a gallery ------------------------------------------------------------

@pytest.mark.parametrize("words", ["orb-4k", "orb-64k"])
def test_incremental_with_ivf_matches_a_run_from_scratch(tmp_path, words):
    import shutil

    from matchkit import Settings
    from matchkit.jobs.dedupe import dedupe
    from test_determinism import _content
    from test_incremental import _make

    s = Settings(workers=1, vote_index="ivf", ivf_vocabulary=words,
                 **({"ivf_probes": 16, "ivf_nodes": 8} if words == "orb-64k" else {}))
    old, new = _make(tmp_path / "old", range(5)), _make(tmp_path / "new", range(5, 7))
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    first = dedupe([folder], gallery=tmp_path / "g", settings=s)
    assert _content(first) == _content(dedupe([folder], settings=s))
    assert (tmp_path / "g" / "orb.ivf").exists() and not (tmp_path / "g" / "orb.usearch").exists()
    for f in new.iterdir():
        shutil.copy(f, folder / f.name)
    grown = dedupe([folder], gallery=tmp_path / "g", settings=s)
    assert _content(grown) == _content(dedupe([folder], settings=s))
    assert grown.stats["pairs_reused"] > 0


def test_gallery_keeps_one_file_per_kind(tmp_path):
    from matchkit import Settings
    from matchkit.store.gallery import Gallery
    from test_incremental import _make

    photo_dir = _make(tmp_path / "photos", range(2))

    ivf, hnsw = Settings(workers=1, vote_index="ivf"), Settings(workers=1, vote_index="hnsw")
    with Gallery(tmp_path / "g", ivf) as g:
        g.add(sorted(photo_dir.iterdir()))
        n = len(g.orb_index)
        assert isinstance(g.orb_index, IVFIndex) and n > 0
        g.save()
    with Gallery(tmp_path / "g", hnsw) as g:  # the other kind: rebuilt, saved alongside
        assert len(g.orb_index) == n and not isinstance(g.orb_index, IVFIndex)
        g.save()
    with Gallery(tmp_path / "g", ivf) as g:   # the IVF file is still current: loaded
        assert g.index_files_current()
        assert g.load_indexes(only_current=True)
        assert isinstance(g.orb_index, IVFIndex) and len(g.orb_index) == n
        report = g.verify()
        assert not report.differences and not report.stale
    (tmp_path / "g" / "orb.ivf").write_bytes(b"MKIVF1\n garbage")
    with Gallery(tmp_path / "g", ivf) as g:   # damaged: rebuilt from the database
        assert g.verify().stale and len(g.orb_index) == n


def test_a_reader_not_told_searches_the_vocabulary_written(tmp_path):
    """A gallery written with the 4k vocabulary is opened without settings
    (as ``check`` and ``search`` open it): its file is loaded as it is, with
    the writer's vocabulary, probes and nodes, not rebuilt over the default
    64k one."""
    from matchkit import Settings
    from matchkit.store.gallery import Gallery
    from matchkit.store.gallery_indexes import _FILE_KEY
    from test_incremental import _make

    photo_dir = _make(tmp_path / "photos", range(2))
    small = Settings(workers=1, vote_index="ivf", ivf_vocabulary="orb-4k", ivf_probes=2,
                     ivf_nodes=2)
    with Gallery(tmp_path / "g", small) as g:
        g.add(sorted(photo_dir.iterdir()))
        n = len(g.orb_index)
        g.save()
    with Gallery(tmp_path / "g") as g:
        s = g.settings
        assert (s.vote_index, s.ivf_vocabulary, s.ivf_probes, s.ivf_nodes) == \
            ("ivf", "orb-4k", 2, 2)
        assert g.load_indexes(only_current=True) and g.orb_index.vocab.words == 4096
        assert len(g.orb_index) == n
        # A damaged record still names the kind; the rest falls back to defaults.
        record = json.loads(g._meta(_FILE_KEY + "orb-ivf"))
        record["ivf"]["ivf_nodes"] = 10**6
        g._set_meta(_FILE_KEY + "orb-ivf", json.dumps(record))
    with Gallery(tmp_path / "g") as g:
        assert g.settings.vote_index == "ivf" and g.settings.ivf_vocabulary == "orb-64k"


def test_sharded_ivf_search_equals_one_gallery(tmp_path):
    from matchkit import Settings
    from matchkit.store.gallery import Gallery
    from matchkit.store.shards import ShardedGallery
    from test_incremental import _make

    photo_dir = _make(tmp_path / "photos", range(3))

    s = Settings(workers=1, vote_index="ivf")
    with Gallery(tmp_path / "one", s) as one, \
            ShardedGallery(tmp_path / "many", s, shards=3) as many:
        one.add(sorted(photo_dir.iterdir()))
        many.add(sorted(photo_dir.iterdir()))
        # (ids differ between the two layouts: compare by image path)
        q = np.concatenate([one.local_features(i)[0].desc[:50] for i in one.ids()])
        for k in (4, 30):
            a_keys, a_d = one.orb_index.search(q, k)
            b_keys, b_d = many.orb_index.search(q, k)
            assert np.array_equal(a_d, b_d)


def test_settings_key_unchanged_for_hnsw_and_bad_setting():
    from matchkit import Settings
    from matchkit.config import SettingsError
    from matchkit.match.incremental import settings_key

    hnsw = Settings(vote_index="hnsw")
    assert settings_key(hnsw) == settings_key(hnsw.with_(ivf_probes=5))
    assert settings_key(Settings(vote_index="ivf")) != settings_key(hnsw)
    assert (settings_key(Settings(vote_index="ivf", ivf_probes=3))
            != settings_key(Settings(vote_index="ivf")))
    assert settings_key(hnsw) == settings_key(hnsw.with_(ivf_nodes=4, ivf_vocabulary="orb-4k"))
    for change in ({"ivf_nodes": 4}, {"ivf_vocabulary": "orb-4k"}):
        assert (settings_key(Settings(vote_index="ivf", **change))
                != settings_key(Settings(vote_index="ivf")))
    with pytest.raises(SettingsError):
        Settings(vote_index="ivf", ivf_vocabulary="orb-1m")
    with pytest.raises(SettingsError):
        Settings(vote_index="faiss")
    with pytest.raises(SettingsError):
        Settings(ivf_probes=0)


def test_encoded_queries_search_as_the_codes():
    """``IVFIndex.encode``: the probed words and signatures are all a search
    reads of a query, so searching them gives the codes' result, on any
    index of the same encoding; another encoding is refused."""
    from matchkit.index.ivf import IVFIndex

    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    queries = codes[:200] ^ (rng.random((200, 32)) < 0.03).astype(np.uint8)
    for bits in (64, 256):
        vocab = IVFIndex().vocab if bits == 64 else IVFIndex().vocab.with_signature_bits(256)
        a, b = IVFIndex(vocab, probes=3), IVFIndex(vocab, probes=3)
        a.add(np.arange(1500), codes[:1500])
        b.add(np.arange(1500, 3000), codes[1500:])
        enc = a.encode(queries)
        assert len(enc) == 200 and enc.words.dtype == np.uint16
        for idx in (a, b):
            for limit in (None, 56):
                want = idx.search(queries, 8, max_distance=limit)
                got = idx.search(enc, 8, max_distance=limit)
                assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert (a.search(enc, 8)[0] >= 0).any()
        with pytest.raises(ValueError):
            IVFIndex(vocab, probes=2).search(enc, 8)


def test_queries_travel_encoded_only_when_smaller():
    """The Ray driver encodes queries for the shards only when the encoding
    is smaller than the 32-byte code: 12 bytes with 4,096 words, 2 probes
    and 64-bit signatures; 64 with 16 probes and whole descriptors, which go
    as codes (``actors._encoder``)."""
    from matchkit.config import Settings, vote_index_settings
    from matchkit.distributed.actors import _encoder
    from matchkit.index.ivf import ivf_index

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (5, 32), dtype=np.uint8)
    sizes = {}
    for name in ("ivf", "ivf-4k", "ivf-16k", "ivf-64k"):
        s = Settings().with_(**vote_index_settings(name))
        idx = ivf_index(s)
        enc = idx.encode(codes)
        assert enc.nbytes == len(codes) * idx.encoded_bytes
        sizes[name] = idx.encoded_bytes
        chosen = _encoder({idx.encoding}, s)
        assert (chosen is not None) == (idx.encoded_bytes < 32)
        assert _encoder({idx.encoding, None}, s) is None
    assert sizes == {"ivf": 64, "ivf-4k": 12, "ivf-16k": 64, "ivf-64k": 64}
