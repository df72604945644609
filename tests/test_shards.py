"""Sharded galleries (shards.py): hashing, manifest, same result as one gallery."""

import hashlib
import json

import pytest

from matchkit.jobs.dedupe import dedupe
from matchkit.store.gallery import Gallery, GalleryError
from matchkit.store.shards import (MANIFEST_NAME, ShardedGallery, open_gallery, shard_names,
                                   shard_of)

from conftest import make_photo


def _digests(n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]


def test_adding_a_shard_moves_about_one_in_n_plus_one_and_nothing_else():
    digests = _digests(6000)
    three, four = shard_names(3), shard_names(4)
    before = [shard_of(d, three) for d in digests]
    after = [shard_of(d, four) for d in digests]
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert all(a == 3 for _, a in moved)  # only into the new shard, never between old ones
    assert abs(len(moved) / len(digests) - 1 / 4) < 0.03
    # Even shares: each shard holds about a third.
    assert all(abs(before.count(s) / len(digests) - 1 / 3) < 0.03 for s in range(3))
    assert [shard_of(d, three) for d in digests[:50]] == before[:50]  # stable


def _key(report):
    return sorted((c.keep, tuple(c.members), tuple((p.a, p.b, p.relation) for p in c.pairs))
                  for c in report.clusters)


@pytest.fixture
def dup_dir(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        img = make_photo(300 + i)
        img.save(folder / f"p{i}.jpg", quality=92)
        img.resize((200, 150)).save(folder / f"p{i}_small.jpg", quality=80)
        if i % 2:
            img.transpose(0).save(folder / f"p{i}_flip.png")
    (folder / "p0_copy.jpg").write_bytes((folder / "p0.jpg").read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


def test_sharded_gallery_gives_the_one_gallery_result(dup_dir, tmp_path):
    single = dedupe([dup_dir])
    with ShardedGallery(tmp_path / "g", shards=3) as g:
        sharded = dedupe([dup_dir], gallery=g)
        sizes = [len(p) for p in g.parts]
        ids = g.ids()
        shapes = g.thumb_shapes([*ids, 999])  # (an id no shard holds: left out)
        assert shapes == {i: g.thumbnail(i).shape for i in ids}
    assert _key(sharded) == _key(single) and single.clusters
    assert [s.path for s in sharded.skipped] == [s.path for s in single.skipped]
    assert sum(sizes) == 16 and sum(1 for n in sizes if n) >= 2
    assert ids == list(range(1, 17))  # unique across shards, in path order
    # Each shard is an ordinary gallery, usable alone.
    with Gallery(tmp_path / "g" / "shard-000", create=False) as alone:
        assert len(alone) == sizes[0]


def test_sharded_add_again_is_unchanged_and_a_changed_file_may_move(dup_dir, tmp_path):
    files = sorted(str(p) for p in dup_dir.iterdir())
    with open_gallery(tmp_path / "g", shards=2) as g:
        assert isinstance(g, ShardedGallery)
        first = g.add(files)
        again = g.add(files)
        assert (again.added, again.updated, again.unchanged) == (0, 0, 16)
        assert sorted(again.ids) == sorted(first.ids)
        assert len(again.skipped) == 1  # the broken file, remembered
        target = dup_dir / "p2.jpg"
        old = g.find(target)
        make_photo(999).save(target, quality=70)
        third = g.add(files)
        assert (third.added, third.updated) == (0, 1)
        new = g.find(target)
        assert new.id == old.id and new.sha256 != old.sha256
        assert len(g) == 16  # wherever it lives now, it lives once
        assert [p.find(target) is not None for p in g.parts].count(True) == 1
        assert g.owner(new.id) == shard_of(new.sha256, g.names)


def test_manifest_errors_are_gallery_errors(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST_NAME).write_text(json.dumps({"shards": ["../x"]}))
    with pytest.raises(GalleryError):
        open_gallery(tmp_path / "bad")
    with Gallery(tmp_path / "plain"):
        pass
    with pytest.raises(GalleryError):
        ShardedGallery(tmp_path / "plain", shards=2)  # not a new folder
    with pytest.raises(GalleryError):
        ShardedGallery(tmp_path / "none", create=False)


def test_cli_index_shards_then_dedupe_and_check(dup_dir, tmp_path):
    from click.testing import CliRunner

    from matchkit.cli.commands import cli

    run = CliRunner().invoke
    g = str(tmp_path / "g")
    out = run(cli, ["index", str(dup_dir), "--gallery", g, "--shards", "3", "-q"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["added"] == 16
    assert (tmp_path / "g" / MANIFEST_NAME).is_file()
    out = run(cli, ["index", str(dup_dir), "--gallery", g, "-q"])  # found sharded again
    assert json.loads(out.output)["unchanged"] == 16
    out = run(cli, ["check", "--gallery", g, str(dup_dir / "p1.jpg"), "-q"])
    assert out.exit_code == 0 and json.loads(out.output)["results"][0]["matched"]
    out = run(cli, ["dedupe", str(dup_dir), "--gallery", g, "--json", "-", "-q"])
    assert out.exit_code == 0
    assert _key_json(json.loads(out.output)) == _key_json(dedupe([dup_dir]).to_dict())
    # Usage errors: one line, exit 2.
    for args in (["dedupe", str(dup_dir), "--shards", "2"],
                 ["index", str(dup_dir), "--gallery", g, "--shards", "2", "-q"],
                 ["index", str(dup_dir), "--gallery", g, "--model", "x", "-q"]):
        out = run(cli, args)
        assert out.exit_code == 2 and len(out.output.strip().splitlines()) == 1, out.output


def _key_json(data):
    return sorted((c["keep"], c["members"], [(p["a"], p["b"], p["relation"]) for p in c["pairs"]])
                  for c in data["clusters"])


def test_sharded_gallery_keeps_matching_state_across_shards(dup_dir, tmp_path):
    """A re-run with nothing new reuses every stored decision, also those of
    pairs whose images live in different shards; a changed file is measured
    again (its stored pairs in other shards forgotten), as on one gallery."""
    single = dedupe([dup_dir])
    first = dedupe([dup_dir], gallery=tmp_path / "g", shards=3)
    assert _key(first) == _key(single) and first.stats["pairs_verified"] > 0
    with ShardedGallery(tmp_path / "g", create=False) as g:
        owner = {i: g.owner(i) for i in g.ids()}
        assert any(owner[a] != owner[b] for a, b, _ in g.match_pairs(_state_key(g)))
    again = dedupe([dup_dir], gallery=tmp_path / "g")
    assert _key(again) == _key(single)
    assert again.stats["images_searched"] == 0 and again.stats["pairs_verified"] == 0
    assert again.stats["pairs_reused"] > 0
    make_photo(999).save(dup_dir / "p2.jpg", quality=70)  # a photo no longer like its copies
    third = dedupe([dup_dir], gallery=tmp_path / "g")
    assert third.stats["updated"] == 1 and third.stats["images_searched"] >= 1
    assert _key(third) == _key(dedupe([dup_dir]))
    assert _key(third) != _key(single)


def _state_key(g) -> str:
    from matchkit.config import Settings
    from matchkit.match.incremental import settings_key

    return settings_key(Settings())


def test_shard_answers_shipped_compactly_lose_nothing():
    """A shard actor's answer (``distributed._compact``): int32 keys and uint8
    distances where they fit, the wider types where not; the driver gets the
    index's own arrays back (``_expand``), -1 keys at distance nbits + 1."""
    import numpy as np

    from matchkit.distributed.ray_jobs import _compact, _expand

    keys = np.array([[5, 7, -1], [2 ** 20, 3, -1]], np.int64)
    dists = np.array([[0, 200, 257], [12, 254, 257]], np.int64)
    small_k, small_d = _compact(keys, dists)
    assert small_k.dtype == np.int32 and small_d.dtype == np.uint8
    for k, d in ((keys, dists), (keys * 2 ** 12, dists), (keys, np.where(dists == 254, 256, dists))):
        ck, cd = _compact(k, d)
        assert (cd.dtype == np.uint16) == bool(((d > 255) & (k >= 0)).any())
        assert (ck.dtype == np.int64) == bool(k.max() >= 2 ** 31)
        back_k, back_d = _expand(ck, cd, 256)
        assert np.array_equal(back_k, k) and np.array_equal(back_d, d)
    empty = _expand(*_compact(np.zeros((0, 4), np.int64), np.zeros((0, 4), np.int64)), 64)
    assert empty[0].shape == (0, 4) and empty[0].dtype == np.int64


def _near_codes(rng, n, bases, flips):
    """Codes a few bits from a few shared bases: many near, many tied."""
    import numpy as np

    bits = np.unpackbits(bases[rng.integers(0, len(bases), n)], axis=1)
    return np.packbits(bits ^ (rng.random(bits.shape) < flips / bits.shape[1]), axis=1)


def test_a_search_within_a_distance_over_shards_is_the_full_search_cut():
    """``MergedIndex.search(..., max_distance=d)`` (each part cut at d before
    the merge) gives the merged full search cut at d (``index.within``),
    which is the one-index search cut at d (near enough that ties at the
    k-th are fewer than ``index.TIE_MARGIN``): full rows, rows with a few near
    neighbours, empty rows, and ties at equal distance across the parts
    (duplicate codes under several keys)."""
    import numpy as np

    from matchkit.index.hamming import HammingIndex, within
    from matchkit.store.shards import MergedIndex

    rng = np.random.default_rng(7)
    bases = rng.integers(0, 256, (6, 32), dtype=np.uint8)
    codes = _near_codes(rng, 600, bases, flips=24)
    codes[300:420] = codes[:120]  # (the same codes under other keys: ties)
    keys = np.arange(600) * 7 + 3
    whole = HammingIndex(256)
    whole.add(keys, codes)
    parts = [HammingIndex(256) for _ in range(3)]
    owner = (keys * 2654435761) % 3
    for n, part in enumerate(parts):
        part.add(keys[owner == n], codes[owner == n])
    merged = MergedIndex(parts)
    queries = np.concatenate([_near_codes(rng, 60, bases, flips=24),
                              rng.integers(0, 256, (20, 32), dtype=np.uint8)])  # (far: empty)
    seen = set()
    for k in (1, 4, 64):
        for d in (0, 30, 40, 56, 256):
            got = merged.search(queries, k, max_distance=d)
            want = within(*merged.search(queries, k), d, 256)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
            if d <= 56:  # (far off, ties at the k-th outnumber ``index.TIE_MARGIN``)
                one = within(*whole.search(queries, k), d, 256)
                assert np.array_equal(got[0], one[0]) and np.array_equal(got[1], one[1])
            near = (got[0] >= 0).sum(1)
            seen.update({"empty" if x == 0 else "full" if x == k else "some"
                         for x in near.tolist()})
    assert seen == {"empty", "some", "full"}
    _, d = merged.search(queries, 64, max_distance=56)
    assert ((np.diff(d, axis=1) == 0) & (d[:, 1:] <= 56)).sum() > 100  # (ties were there)


def test_within_puts_the_near_neighbours_first_in_their_order():
    import numpy as np

    from matchkit.index.hamming import within

    keys = np.array([[4, 9, 2, -1], [1, 2, 3, 5], [8, 6, -1, -1]], np.int64)
    dists = np.array([[60, 10, 12, 257], [1, 2, 3, 4], [57, 70, 257, 257]], np.int64)
    k, d = within(keys, dists, 56, 256)
    assert k.tolist() == [[9, 2, -1, -1], [1, 2, 3, 5], [-1] * 4]
    assert d.tolist() == [[10, 12, 257, 257], [1, 2, 3, 4], [257] * 4]


def test_votes_and_holders_asked_within_the_vote_distance_are_unchanged():
    """The descriptor votes (``candidates.vote_candidates``) and the
    burstiness check's holders (``burst.holders``) ask shards only for the
    neighbours within the vote distance: the same votes, hits and holders
    as from the full search, and lists with the same near neighbours."""
    import numpy as np

    from matchkit.match.burst import holders
    from matchkit.match.candidates import VoteDetail, vote_candidates
    from matchkit.index.hamming import HammingIndex, within
    from matchkit.store.shards import MergedIndex

    class Full:
        """The merged index, always searched in full (as before the cut)."""

        def __init__(self, index):
            self.index = index

        def __len__(self):
            return len(self.index)

        def search(self, codes, k, max_distance=None):
            return self.index.search(codes, k)

    rng = np.random.default_rng(11)
    stride, images, per_image = 1000, 40, 30
    bases = rng.integers(0, 256, (8, 32), dtype=np.uint8)
    codes = _near_codes(rng, images * per_image, bases, flips=40)
    keys = np.repeat(np.arange(images), per_image) * stride + np.tile(np.arange(per_image),
                                                                      images)
    parts = [HammingIndex(256) for _ in range(3)]
    for n, part in enumerate(parts):
        mine = (keys // stride) % 3 == n
        part.add(keys[mine], codes[mine])
    merged = MergedIndex(parts)
    queries = {i: codes[i * per_image:(i + 1) * per_image] for i in range(0, images, 3)}
    for neighbours in (4, 16):
        cut, full = VoteDetail(), VoteDetail()
        kw = dict(key_stride=stride, neighbours=neighbours, max_distance=56, per_query=4)
        votes = vote_candidates(merged, queries, detail=cut, **kw)
        assert votes and votes == vote_candidates(Full(merged), queries, detail=full, **kw)
        assert cut.by_owner == full.by_owner
        assert ({q: h.tolist() for q, h in cut.hits.items()}
                == {q: h.tolist() for q, h in full.hits.items()})
        for i in queries:
            near = within(*full.lists[i], 56, 254)  # (none: 255 in the lists)
            assert np.array_equal(cut.lists[i][0], near[0].astype(np.int32))
            assert np.array_equal(cut.lists[i][1], near[1].astype(np.uint8))
        lists = np.concatenate([full.lists[i][1] for i in queries])
        assert 0.1 < (lists <= 56).mean() < 0.9  # (near and far neighbours both)
        desc = np.concatenate(list(queries.values()))
        assert np.array_equal(holders(*merged.search(desc, 64, max_distance=56), 56, stride),
                              holders(*merged.search(desc, 64), 56, stride))


def test_near_answers_shipped_ragged_round_trip():
    """A shard's answer within a distance (``distributed._compact_within``):
    per-row counts, then the near neighbours' keys and distances alone,
    narrowed where they fit; ``_expand_within`` gives ``index.within``'s
    (n, k) arrays back, empty rows included."""
    import numpy as np

    from matchkit.distributed.ray_jobs import _compact_within, _expand_within
    from matchkit.index.hamming import within

    rng = np.random.default_rng(5)
    keys = rng.integers(0, 5000, (50, 64)).astype(np.int64)
    dists = np.sort(rng.integers(0, 120, (50, 64)), axis=1).astype(np.int64)
    keys[45:] = -1  # (no neighbours at all)
    dists[45:] = 257
    for big_keys, limit, k in ((False, 56, 64), (True, 56, 64), (False, 256, 64),
                               (False, 0, 64), (False, 56, 300)):
        kk = keys * 2 ** 32 if big_keys else keys
        dd = dists
        if k == 300:  # (wider than a uint8 count)
            kk = np.concatenate([kk] * 5, 1)[:, :k]
            dd = np.sort(np.concatenate([dd] * 5, 1)[:, :k], axis=1)
        if limit == 256:
            dd = np.where(dd == 119, 256, dd)
        kk = np.where(kk < 0, -1, kk)
        want = within(kk, dd, limit, 256)
        counts, ck, cd = _compact_within(*want)
        assert counts.dtype == (np.uint16 if k > 255 else np.uint8)
        assert ck.dtype == (np.int64 if big_keys else np.int32)
        assert cd.dtype == (np.uint16 if limit == 256 else np.uint8)
        assert len(ck) == len(cd) == int((want[0] >= 0).sum()) == int(counts.sum())
        back = _expand_within(counts, ck, cd, k, 256)
        assert back[0].dtype == back[1].dtype == np.int64
        assert np.array_equal(back[0], want[0]) and np.array_equal(back[1], want[1])
    empty = _expand_within(*_compact_within(np.zeros((0, 4), np.int64),
                                            np.zeros((0, 4), np.int64)), 4, 64)
    assert empty[0].shape == empty[1].shape == (0, 4)


def test_files_are_keyed_by_their_resolved_path_links_and_loops_included(tmp_path):
    """``stat_files`` resolves each folder once and follows links to files by
    hand; every key equals the full resolution (``gallery._key``), and a loop
    of links is a skipped file, not an error that ends the run."""
    import os

    from matchkit.store.gallery import Skipped, _key
    from matchkit.store.shards import stat_files

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "sub" / "a.jpg").write_bytes(b"x" * 10)
    (tmp_path / "lnk").symlink_to("real/sub")
    (tmp_path / "alink.jpg").symlink_to("real/sub/a.jpg")
    (tmp_path / "chain.jpg").symlink_to(tmp_path / "alink.jpg")
    (tmp_path / "real" / "rel.jpg").symlink_to("sub/a.jpg")
    (tmp_path / "dangling.jpg").symlink_to("nowhere.jpg")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    target = str(tmp_path / "real" / "sub" / "a.jpg")
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        paths = ["lnk/a.jpg", "alink.jpg", "chain.jpg", "real/rel.jpg", "lnk/../sub/a.jpg",
                 "real/./sub//a.jpg", str(tmp_path / "lnk" / "a.jpg"), b"real/sub/a.jpg"]
        for p in paths:
            (key, info), = stat_files([p])
            assert key == _key(p) == target, p
            assert info == (10, os.stat(target).st_mtime_ns)
        assert [k for k, _ in stat_files(paths)] == [target]  # one file, listed once
        (key, info), = stat_files(["dangling.jpg"])  # (named as the user has it)
        assert key == str(tmp_path / "dangling.jpg") and isinstance(info, Skipped)
        assert "broken link" in info.reason and "nowhere.jpg" in info.reason
        (key, info), = stat_files(["loop1"])
        assert isinstance(info, Skipped) and key.endswith("loop1")
    finally:
        os.chdir(here)
