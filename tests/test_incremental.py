"""Incremental matching: a gallery run that reuses stored decisions reports
exactly what a run from scratch on the same files reports."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from conftest import textured
from matchkit import Settings
from matchkit.jobs.dedupe import dedupe
from matchkit.store.gallery import Gallery
from matchkit.match.incremental_state import join_record
from test_determinism import _content, _edits


def _make(folder, seeds):
    folder.mkdir(exist_ok=True)
    for seed in seeds:
        for name, im in _edits(textured(100 + seed), seed).items():
            im.save(folder / f"p{seed:02d}_{name}.jpg", quality=88)
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """An old set of 8 pictures with edited copies, and 2 more pictures."""
    root = tmp_path_factory.mktemp("incremental")
    old = _make(root / "old", range(8))
    new = _make(root / "new", range(8, 10))
    return old, new


#: Settings of the tests of HNSW's background graph add (``HammingIndex``).
HNSW = Settings(workers=1, vote_index="hnsw")


def _fresh(files, settings=Settings(workers=1), **kw):
    return dedupe(files, settings=settings, **kw)


def test_adding_images_matches_a_run_from_scratch(sets, tmp_path):
    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    g = tmp_path / "g"
    first = dedupe([folder], gallery=g, settings=Settings(workers=1))
    assert first.stats["pairs_verified"] > 0 and first.stats["pairs_reused"] == 0
    assert _content(first) == _content(_fresh([folder]))

    again = dedupe([folder], gallery=g, settings=Settings(workers=1))
    assert _content(again) == _content(first)
    assert again.stats["images_searched"] == 0 and again.stats["pairs_verified"] == 0
    assert again.stats["pairs_reused"] > 0

    for f in new.iterdir():
        shutil.copy(f, folder / f.name)
    grown = dedupe([folder], gallery=g, settings=Settings(workers=1))
    assert _content(grown) == _content(_fresh([folder]))
    # The new images are searched; the stored searches of the others are
    # brought up to date (new neighbours merged in), not redone.
    assert 12 <= grown.stats["images_searched"] < len(list(folder.iterdir())) // 2
    assert grown.stats["pairs_reused"] > 0


def test_an_add_patching_stored_votes_in_parts_stores_the_same_records(sets, tmp_path,
                                                                        monkeypatch):
    """``_patch_votes`` merges and counts the stored images in parts of
    ``PATCH_IMAGES``: parts of 3 images store what one part stores."""
    from matchkit.match import incremental, incremental_votes
    
    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    dedupe([folder], gallery=tmp_path / "g", settings=Settings(workers=1))
    shutil.copytree(tmp_path / "g", tmp_path / "g3")
    for f in new.iterdir():
        shutil.copy(f, folder / f.name)
    stored, parts = {}, []
    patch = incremental.IncrementalMatcher._patch_part

    def counting(self, part, *a, **kw):
        parts.append(len(part))
        return patch(self, part, *a, **kw)

    monkeypatch.setattr(incremental.IncrementalMatcher, "_patch_part", counting)
    for name, size in (("g", 4096), ("g3", 3)):
        monkeypatch.setattr(incremental_votes, "PATCH_IMAGES", size)
        parts.clear()
        report = dedupe([folder], gallery=tmp_path / name, settings=Settings(workers=1))
        with Gallery(tmp_path / name) as gal:
            key = json.loads(gal._meta("match_keys"))[0]
            stored[name] = (gal.match_records(key), _content(report))
        assert max(parts) <= size and (size > 3 or len(parts) > 3)
    assert stored["g3"] == stored["g"]


def test_the_state_saved_in_parts_is_the_state_saved_at_once(sets, tmp_path, monkeypatch):
    """``save_match_state`` deflates and writes the records a part at a time
    (``SAVE_PART``; pairs 8 parts' worth): parts of 2 store what one does."""
    from matchkit.store import gallery_matches

    old, _ = sets
    stored = {}
    for name, size in (("g", 2048), ("g2", 2)):
        monkeypatch.setattr(gallery_matches, "SAVE_PART", size)
        report = dedupe([old], gallery=tmp_path / name, settings=Settings(workers=1))
        with Gallery(tmp_path / name) as gal:
            key = json.loads(gal._meta("match_keys"))[0]
            stored[name] = (gal.match_records(key), gal.match_pairs(key),
                            gal.match_record_ids(key), _content(report))
        assert len(stored[name][0]) > 2 * 2 and len(stored[name][1]) > 8 * 2
    assert stored["g2"] == stored["g"]


def test_an_add_reads_the_stored_records_and_pairs_one_at_a_time(sets, tmp_path, monkeypatch):
    """An add parses each stored record and pair row as it is read: it never
    asks for all their texts at once (``match_records``, ``match_pairs``;
    at 100,000 images those were 606 and 584 MB of its peak), and stores and
    reports what an add that did would."""
    from matchkit.store.gallery_matches import _MatchStateMixin

    old, new = sets
    contents = []
    for n in range(2):
        folder = tmp_path / f"photos{n}"
        shutil.copytree(old, folder)
        g = tmp_path / f"g{n}"
        dedupe([folder], gallery=g, settings=Settings(workers=1))
        for f in new.iterdir():
            shutil.copy2(f, folder / f.name)  # (the same stamps in both reports)
        if n:
            def refuse(self, key):
                raise AssertionError("all stored texts read at once")
            monkeypatch.setattr(_MatchStateMixin, "match_records", refuse)
            monkeypatch.setattr(_MatchStateMixin, "match_pairs", refuse)
        report = dedupe([folder], gallery=g, settings=Settings(workers=1))
        assert report.stats["pairs_reused"] > 0 and report.stats["images_searched"] > 0
        monkeypatch.undo()
        with Gallery(g) as gal:
            key = gal.match_keys()[0]
            records = gal.match_records(key)
            assert gal.match_record_digests(key) == {i: d for i, (d, _, _) in records.items()}
            contents.append((json.dumps(_content(report)).replace(str(folder), "F"), records,
                             gal.match_pairs(key)))
    assert contents[1] == contents[0]


def _touching(gal, image_id) -> int:
    rows = [k for key in json.loads(gal._meta("match_keys")) for k in gal.match_pairs(key)]
    recs = [i for key in json.loads(gal._meta("match_keys")) for i in gal.match_records(key)]
    return sum(image_id in (a, b) for a, b, _ in rows) + recs.count(image_id)


def test_removed_and_changed_images_drop_their_decisions(sets, tmp_path):
    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    g = tmp_path / "g"
    dedupe([folder], gallery=g, settings=Settings(workers=1))
    gone, changed = folder / "p03_crop.jpg", folder / "p05_over.jpg"
    with Gallery(g) as gal:
        gone_id, changed_id = gal.find(gone).id, gal.find(changed).id
        assert _touching(gal, gone_id) > 1 and _touching(gal, changed_id) > 1
        gone.unlink()
        gal.remove([gone])
        shutil.copy(new / "p08_orig.jpg", changed)  # other content, same path and id
        gal.add([changed])
        assert gal.find(changed).id == changed_id
        # Dropped in the transactions that removed and changed them.
        assert _touching(gal, gone_id) == 0 and _touching(gal, changed_id) == 0
    after = dedupe([folder], gallery=g, settings=Settings(workers=1))
    assert _content(after) == _content(_fresh([folder]))
    assert after.stats["images_searched"] >= 1


def test_changing_a_threshold_verifies_again_and_rematch_forces_it(sets, tmp_path):
    old, _ = sets
    g = tmp_path / "g"
    base = dedupe([old], gallery=g, settings=Settings(workers=1))
    strict = Settings(workers=1, min_inliers=40)
    changed = dedupe([old], gallery=g, settings=strict)
    assert changed.stats["pairs_reused"] == 0 and changed.stats["pairs_verified"] > 0
    assert changed.stats["images_searched"] == len(list(old.iterdir()))
    assert _content(changed) == _content(_fresh([old], strict))
    # Each key keeps its own decisions: back to the default reuses them all.
    back = dedupe([old], gallery=g, settings=Settings(workers=1))
    assert back.stats["pairs_verified"] == 0 and _content(back) == _content(base)
    # More workers is not another key.
    two = dedupe([old], gallery=g, settings=Settings(workers=2))
    assert two.stats["pairs_verified"] == 0
    forced = dedupe([old], gallery=g, settings=Settings(workers=1), rematch=True)
    assert forced.stats["pairs_reused"] == 0
    assert forced.stats["pairs_verified"] == base.stats["pairs_verified"]
    assert _content(forced) == _content(base)


def test_a_run_without_gallery_reports_no_reuse(sets):
    old, _ = sets
    report = dedupe([old], settings=Settings(workers=1))
    assert "pairs_reused" not in report.stats


def test_cli_rematch_and_summary(sets, tmp_path):
    from click.testing import CliRunner

    from matchkit.cli.commands import cli

    old, _ = sets
    runner = CliRunner()
    r = runner.invoke(cli, ["dedupe", str(old), "--rematch"])
    assert r.exit_code == 2 and "--rematch needs --gallery" in r.output
    args = ["dedupe", str(old), "--gallery", str(tmp_path / "g"), "--workers", "1",
            "--json", str(tmp_path / "out.json")]
    assert runner.invoke(cli, args).exit_code == 0
    r = runner.invoke(cli, args)
    assert r.exit_code == 0 and "0 pairs verified" in r.output
    stats = json.loads((tmp_path / "out.json").read_text())["stats"]
    assert stats["pairs_verified"] == 0 and stats["pairs_reused"] > 0
    r = runner.invoke(cli, args + ["--rematch"])
    stats = json.loads((tmp_path / "out.json").read_text())["stats"]
    assert r.exit_code == 0 and stats["pairs_reused"] == 0 and stats["rematch"] is True


def test_icons_added_later_match_as_in_a_run_from_scratch(sets, tmp_path):
    """Icons are judged against each other's closest views in the run
    (``thumbmatch``): their pairs are measured again every run."""
    from test_thumbmatch import RED, _icon

    old, _ = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    _icon(256).save(folder / "folder-256.png")
    _icon(48, ribbon=RED).save(folder / "folder-red-48.png")
    g = tmp_path / "g"
    dedupe([folder], gallery=g, settings=Settings(workers=1))
    # The closer one at 48 px (named to sort last: a fresh gallery numbers the
    # files in path order, and ids break ties, as in an incremental add).
    _icon(48).save(folder / "z-folder-48.png")
    grown = dedupe([folder], gallery=g, settings=Settings(workers=1))
    fresh = _fresh([folder])
    assert _content(grown) == _content(fresh)
    assert any({"folder-256.png", "z-folder-48.png"} <= {m.rsplit("/", 1)[-1] for m in c.members}
               for c in fresh.clusters)


def test_stored_evidence_round_trips_every_extra():
    """Whatever verification leaves in ``extra`` (the picture comparison of a
    recapture, an icon comparison, grey flags) is stored and read back as the
    same objects, so a reused decision is judged on the same evidence."""
    from matchkit.match.incremental import evidence_from_json, evidence_json
    from matchkit.signals.local import Overlap, Verification
    from matchkit.match.pairs import PairEvidence, relation_of

    ev = PairEvidence(1, 2, 30, 0.8, votes=5.0)
    ev.verification = Verification(matches=60, inliers=50,
                                   transform=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    ev.overlap = Overlap(correlation=0.3, agreement=0.4, spread=0.5, coverage_a=0.3,
                         coverage_b=0.9)
    ev.extra.update(picture=Overlap(correlation=0.9, agreement=0.95, coverage_a=0.3,
                                    coverage_b=0.9), grey=(False, True), inner=0.3)
    back = evidence_from_json(evidence_json(ev))
    assert isinstance(back.extra["picture"], Overlap)
    assert back.extra["picture"] == ev.extra["picture"] and back.overlap == ev.overlap
    assert evidence_json(back) == evidence_json(ev)
    assert relation_of(back) == relation_of(ev)


def test_an_add_measures_again_only_the_pairs_it_can_change(sets, tmp_path, monkeypatch):
    """Images whose hash search gained only new pairs (or whose nearest few
    changed) keep the stored evidence of their other pairs; so do images
    whose crowd distance alone moved (new images among their 16 nearest),
    but for the pairs whose hash rule, verifiability or mirrored look the
    move changes. Every candidate pair's stored evidence, and every stored
    verification, is still what a --rematch run makes."""
    from matchkit.match.incremental import CANDIDATE, IncrementalMatcher, settings_key

    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    g = tmp_path / "g"
    settings = Settings(workers=1)
    dedupe([folder], gallery=g, settings=settings)
    for f in new.iterdir():
        shutil.copy(f, folder / f.name)
    seen = {}
    real = IncrementalMatcher._evidence

    def spying(self, ids, same):
        out = real(self, ids, same)
        seen.update(partners=dict(self.partners), changed=set(self.changed),
                    old_crowd=dict(self.old_crowd))
        return out
    monkeypatch.setattr(IncrementalMatcher, "_evidence", spying)
    grown = dedupe([folder], gallery=g, settings=settings)
    monkeypatch.undo()
    assert seen["partners"]  # some images changed for a few pairs only
    assert set(seen["partners"]) - seen["changed"]
    assert set(seen["old_crowd"]) - seen["changed"]  # crowds moved, images not measured again
    shutil.copytree(g, tmp_path / "g2")
    forced = dedupe([folder], gallery=tmp_path / "g2", settings=settings, rematch=True)
    assert _content(forced) == _content(grown)
    key = settings_key(settings)
    with Gallery(g, settings) as a, Gallery(tmp_path / "g2", settings) as b:
        kept, fresh = a.match_pairs(key), b.match_pairs(key)
    candidates = [k for k in fresh if k[2] == CANDIDATE]
    assert len(candidates) > 50
    for k in candidates:
        assert json.loads(kept[k][0]) == json.loads(fresh[k][0]), k
        if kept[k][1] is not None and fresh[k][1] is not None:
            assert json.loads(kept[k][1]) == json.loads(fresh[k][1]), k


def test_merging_every_list_at_once_equals_merging_each_image_alone():
    """``_merge_all`` (all images' neighbour lists in one merge, hits farther
    than a list's last dropped first) gives each image's ``_merge_rows``."""
    import numpy as np

    from matchkit.store.gallery import ORB_KEY_STRIDE
    from matchkit.match.incremental import _merge_all, _merge_rows

    rng = np.random.default_rng(0)
    for _ in range(300):
        lists = {}
        for j in range(int(rng.integers(1, 8))):
            n = int(rng.integers(0, 6))
            lists[3 * j] = (rng.integers(-1, 50, (n, 4)).astype(np.int32),
                            np.sort(rng.integers(0, 60, (n, 4)), 1).astype(np.uint8))
        images = list(lists)
        hits = np.array([[images[rng.integers(len(images))], rng.integers(0, 7),
                          rng.integers(0, 60),
                          rng.integers(100, 110) * ORB_KEY_STRIDE + rng.integers(0, 5)]
                         for _ in range(int(rng.integers(0, 30)))], np.int64).reshape(-1, 4)
        each, touched = {j: (a.copy(), d.copy()) for j, (a, d) in lists.items()}, []
        for j in sorted(set(hits[:, 0].tolist())):
            part = hits[(hits[:, 0] == j) & (hits[:, 1] < len(lists[j][0]))][:, 1:]
            if len(part):
                merged = _merge_rows(*each[j], part)
                if not all(np.array_equal(x, y) for x, y in zip(merged, each[j])):
                    each[j] = merged
                    touched.append(j)
        together = {j: (a.copy(), d.copy()) for j, (a, d) in lists.items()}
        assert _merge_all(together, hits) == touched
        for j in lists:
            assert all(np.array_equal(x, y) and x.dtype == y.dtype
                       for x, y in zip(each[j], together[j]))


def test_stale_records_are_those_naming_an_image_gone_or_out_of_the_run():
    """``_stale`` (every record's names checked at once) picks the records a
    check of each name alone picks, by what is done again: the hash search
    where a hash neighbour has no record or a hash pair is out of the run;
    the votes where a vote or hit is out of the run or a near descriptor's
    image (within the vote distance) has no record; everything where a framed
    picture is out of the run."""
    from types import SimpleNamespace

    import numpy as np

    from matchkit.match.incremental import IncrementalMatcher, _hits, _lists, _pack_ids, _pack_lists

    settings = Settings()
    limit = settings.vote_max_distance

    def one_by_one(records, searched, allowed):
        full, hashes, votes = set(), set(), set()
        for i in searched:
            r = records[i]
            if any(j not in allowed for j, _ in r.get("fr", ())):
                full.add(i)
                continue
            if (any(j not in records for j, _ in r["near"])
                    or any(j not in allowed for j, _ in r["ph"])):
                hashes.add(i)
            if (any(j not in allowed for j, _ in r["vo"])
                    or any(j not in allowed for j in _hits(r).tolist())):
                votes.add(i)
            elif "nb" in r:
                ids, dists = _lists(r)
                if any(j not in records for j in set(ids[dists <= limit].tolist())):
                    votes.add(i)
        return full, hashes, votes

    rng = np.random.default_rng(3)
    picked = mixed = 0
    kinds = [0, 0, 0]
    for _ in range(200):
        ids = sorted(set(rng.integers(0, 40, 25).tolist()))
        allowed = {i for i in ids if rng.random() < 0.97}

        def name() -> int:  # (40, 41: images gone since)
            return int(rng.choice([40, 41]) if rng.random() < 0.02 else rng.choice(ids))

        def some(n, value=lambda: int(rng.integers(0, 120))):
            return [[name(), value()] for _ in range(int(rng.integers(0, n)))]
        records = {}
        for i in ids:
            r = {"near": some(4), "ph": some(3), "vo": some(3, lambda: float(rng.random() * 4)),
                 "hits": sorted(name() for _ in range(int(rng.integers(0, 3))))}
            if rng.random() < 0.5:  # (packed, as stored now; a list, as earlier builds did)
                r["hits"] = _pack_ids(r["hits"])
            if rng.random() < 0.3:
                r["fr"] = some(2)
            if rng.random() < 0.6:
                rows = int(rng.integers(0, 5))
                nb = [[-1 if rng.random() < 0.1 else name() for _ in range(4)] for _ in range(rows)]
                r["nb"] = _pack_lists(np.array(nb, np.int32).reshape(rows, 4),
                                      rng.integers(limit - 3, limit + 4, (rows, 4)).astype(np.uint8))
            records[i] = r
        matcher = SimpleNamespace(records=records, settings=settings)
        searched = [i for i in ids if rng.random() < 0.9]
        want = one_by_one(records, searched, allowed)
        got = IncrementalMatcher._stale(matcher, searched, allowed)
        assert (got.full, got.hash, got.votes) == want
        every = set().union(*want)
        assert got.every() == every and bool(got) == bool(every)
        picked += len(every)
        mixed += 0 < len(every) < len(searched)
        kinds = [k + bool(w) for k, w in zip(kinds, want)]
    assert picked > 100 and mixed > 100
    assert min(kinds) > 20  # (each kind found in many of the 200 galleries)


def test_an_original_added_after_its_recaptures_is_paired_by_their_framed_pictures(tmp_path):
    """``framed``: the pictures inside a print's border or a monitor's bezel
    are extra hash keys; an original that enters later finds the recaptures
    searched before from its side (the records keep their pictures' hashes)."""
    from matchkit.match.edits import Edit, apply_edit
    from matchkit.match.incremental import settings_key

    def recapture(pic, name, **kw):
        edit = Edit(name, ({"op": "recapture", "blur": 1.0, "noise": 5, **kw},))
        return apply_edit(pic, edit, name)[0]

    folder = tmp_path / "photos"
    folder.mkdir()
    pic = textured(870)
    recapture(pic, "print.jpg", kind="print", degrees=30).save(folder / "print.jpg", quality=88)
    for i in range(2):
        recapture(textured(871 + i), f"o{i}.jpg", kind="monitor", degrees=25).save(
            folder / f"other{i}.jpg", quality=88)
    g = tmp_path / "g"
    settings = Settings(workers=1)
    dedupe([folder], gallery=g, settings=settings)
    # (Named to sort last: a fresh gallery numbers the files in path order.)
    pic.save(folder / "z-original.png")
    grown = dedupe([folder], gallery=g, settings=settings)
    assert _content(grown) == _content(_fresh([folder]))
    with Gallery(g, settings) as gallery:
        ids = {p.rsplit("/", 1)[-1]: i for i, p in gallery.paths().items()}
        records = {i: json.loads(r) for i, (_, r, _) in
                   gallery.match_records(settings_key(settings)).items()}
    assert records[ids["print.jpg"]]["fh"]  # the print's picture, kept
    assert ids["print.jpg"] in {j for j, _ in records[ids["z-original.png"]]["fr"]}


def test_indexes_say_whether_they_rank_ties_by_key(monkeypatch):
    """Exact searches (per index, or per shard) and IVF rank equal distances
    by key; a graph search does not; merged shards do (by distance, then
    key), whatever their total size."""
    import numpy as np

    from matchkit.index import hamming as index
    from matchkit.index.hamming import HammingIndex
    from matchkit.index.ivf import IVFIndex
    from matchkit.store.shards import MergedIndex

    rng = np.random.default_rng(1)
    parts = []
    for p in range(3):
        part = HammingIndex(256)
        part.add(np.arange(p * 40, p * 40 + 40), rng.integers(0, 256, (40, 32), dtype=np.uint8))
        parts.append(part)
    monkeypatch.setattr(index, "EXACT_SEARCH_BELOW", 100)  # each part below, all three above
    assert all(p.ranks_ties_by_key for p in parts)
    assert MergedIndex(parts).ranks_ties_by_key
    monkeypatch.setattr(index, "EXACT_SEARCH_BELOW", 30)  # graph searches now
    assert not parts[0].ranks_ties_by_key and not MergedIndex(parts[:1]).ranks_ties_by_key
    assert MergedIndex(parts).ranks_ties_by_key
    assert IVFIndex().ranks_ties_by_key


def test_a_sharded_add_matches_a_sharded_run_from_scratch(sets, tmp_path, monkeypatch):
    """Shards each searched exactly while together they pass the exact-search
    size: the add merges new neighbours by key, as the shards rank them."""
    from matchkit.match import incremental_hash, incremental_votes
    from matchkit.index import hamming as index
    from matchkit.store.shards import ShardedGallery

    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    for f in new.iterdir():
        shutil.copy(f, folder / f.name)
    with ShardedGallery(tmp_path / "probe", shards=2) as g:
        dedupe([folder], gallery=g, settings=Settings(workers=1))
        sizes = [len(p.orb_index) for p in g.parts]
    for module in (index, incremental_hash):  # (wherever the size is read)
        monkeypatch.setattr(module, "EXACT_SEARCH_BELOW", max(sizes) + 1, raising=False)
    assert sum(sizes) >= index.EXACT_SEARCH_BELOW  # the whole would be a graph search

    for f in new.iterdir():
        (folder / f.name).unlink()
    dedupe([folder], gallery=tmp_path / "g", shards=2, settings=Settings(workers=1))
    for f in new.iterdir():
        shutil.copy(f, folder / f.name)
    merge, asked = incremental_votes._merge_all, []
    monkeypatch.setattr(incremental_votes, "_merge_all",
                        lambda *a, by_key=False: asked.append(by_key) or merge(*a, by_key=by_key))
    grown = dedupe([folder], gallery=tmp_path / "g", shards=2, settings=Settings(workers=1))
    assert asked and all(asked)  # merged as the shards' exact searches rank
    fresh = dedupe([folder], gallery=tmp_path / "fresh", shards=2, settings=Settings(workers=1))
    assert grown.stats["pairs_reused"] > 0
    assert _content(grown) == _content(fresh)


def test_a_stored_verification_brings_the_evidence_to_what_verifying_left(sets, tmp_path):
    """Only what verification changed is stored ("after"); applied to the
    evidence it was made from, it gives the verified evidence exactly."""
    from matchkit.match.incremental import (apply_verification, evidence_from_json, evidence_json,
                                            verification_json)
    from matchkit.match.pairs import PairMatcher

    old, _ = sets
    settings = Settings(workers=1)
    with Gallery(tmp_path / "g", settings) as g:
        g.add(sorted(old.glob("*.jpg")))
        ids = g.ids()
        matcher = PairMatcher(g, ids, settings)
        pending = [ev for ev in matcher.evidence if ev.pending]
        before = [evidence_json(ev) for ev in pending]
        matcher.verify(pending)
    changed_extra = 0
    for text, ev in zip(before, pending):
        stored = verification_json(text, ev)
        assert '"v"' not in stored  # (votes stay the pair's own)
        again = evidence_from_json(text)
        apply_verification(again, stored)
        assert evidence_json(again) == evidence_json(ev)
        changed_extra += "x+" in stored or "x-" in stored
    assert len(pending) > 20 and changed_extra  # verification did change the extra entries


def test_bringing_the_stored_state_up_to_date_is_told_step_by_step(sets, tmp_path):
    """A gallery run tells phase "stored" from 0 to every step done, around
    the search of the new images (phase "match")."""
    from matchkit.match.incremental import UPDATE_STEPS

    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    dedupe([folder], gallery=tmp_path / "g", settings=Settings(workers=1))
    for p in sorted(new.iterdir())[:3]:
        shutil.copy(p, folder / p.name)
    told = []
    dedupe([folder], gallery=tmp_path / "g", settings=Settings(workers=1),
           on_progress=lambda phase, done, total: told.append((phase, done, total)))
    stored = [(done, total) for phase, done, total in told if phase == "stored"]
    assert stored[0] == (0, UPDATE_STEPS) and stored[-1] == (UPDATE_STEPS, UPDATE_STEPS)
    assert [d for d, _ in stored] == sorted(d for d, _ in stored)
    phases = [phase for phase, _, _ in told if phase != "verify"]
    first_stored, last_stored = phases.index("stored"), len(phases) - phases[::-1].index("stored")
    assert "match" in phases[first_stored:last_stored]  # the 3 new images searched inside it
    assert phases.index("add") < first_stored and phases.index("cluster") >= last_stored


@pytest.mark.parametrize("workers", [1, 2])
def test_pairs_verified_ahead_are_what_clustering_would_have_verified(sets, tmp_path,
                                                                      monkeypatch, workers):
    """An add verifies its changed pairs up front, in one batch or in the
    background (``_verify_ahead``); clustering then sees the same results, in the same
    order, as when it verified each pair on asking."""
    from matchkit.match.incremental import IncrementalMatcher, settings_key

    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    settings = Settings(workers=workers)
    dedupe([folder], gallery=tmp_path / "g", settings=settings)
    for f in new.iterdir():
        shutil.copy(f, folder / f.name)
    shutil.copytree(tmp_path / "g", tmp_path / "lazy")
    ahead = []
    real = IncrementalMatcher._verify_ahead

    def counting(self):
        real(self)
        ahead.append(len(self._ahead) + len(self._running))  # (done, or in the background)
    monkeypatch.setattr(IncrementalMatcher, "_verify_ahead", counting)
    # (whatever the history)
    monkeypatch.setattr("matchkit.match.incremental_pairs.AHEAD_MAX_UNASKED", 1.0)
    grown = dedupe([folder], gallery=tmp_path / "g", settings=settings)
    monkeypatch.setattr(IncrementalMatcher, "_verify_ahead", lambda self: None)
    lazy = dedupe([folder], gallery=tmp_path / "lazy", settings=settings)
    monkeypatch.undo()
    assert ahead and ahead[0] > 10
    assert _content(grown) == _content(lazy) == _content(_fresh([folder]))
    # Pairs verified ahead count as verified, never also as reused.
    assert grown.stats["pairs_verified"] >= lazy.stats["pairs_verified"]
    assert grown.stats["pairs_reused"] == lazy.stats["pairs_reused"]
    key = settings_key(settings)
    with Gallery(tmp_path / "g", settings) as a, Gallery(tmp_path / "lazy", settings) as b:
        mine, theirs = a.match_pairs(key), b.match_pairs(key)
    both = [k for k in theirs if theirs[k][1] is not None]
    assert len(both) > 50
    for k in both:
        assert mine[k][:2] == theirs[k][:2], k  # same evidence, same verification


def test_a_shared_stored_verification_is_never_shared_between_pairs():
    """Pairs whose stored verifications are the same text each get their
    own lists and dicts (one pair's evidence changed leaves the other's)."""
    from matchkit.match.incremental import apply_verification
    from matchkit.match.pairs import PairEvidence

    text = json.dumps({"p": False, "ver": {"homography": [[1.0, 0.0], [0.0, 1.0]],
                                           "inliers": 9, "matches": 12, "mirrored": False,
                                           "points": [[1.0, 2.0]], "transform": []},
                       "x+": {"grey": [False, True]}}, sort_keys=True)
    one, two = PairEvidence(1, 2, 10, 0.5), PairEvidence(3, 4, 10, 0.5)
    apply_verification(one, text)
    apply_verification(two, text)
    assert one.verification == two.verification and one.verification.inliers == 9
    one.verification.points.append([5.0, 6.0])
    one.verification.homography[0][0] = 7.0
    one.extra["grey"][0] = True
    assert two.verification.points == [[1.0, 2.0]]
    assert two.verification.homography[0][0] == 1.0 and two.extra["grey"] == [False, True]
    assert one.pending is False and two.pending is False


def test_stored_json_reads_back_as_the_standard_library_reads_it():
    """``_json.loads`` (orjson where installed) gives ``json.loads``'s values,
    NaN and infinities included (orjson refuses those: the fallback)."""
    from matchkit.util.jsonfmt import loads

    doc = {"a": 1, "c": 0.24034792877906977, "x": {"grey": [False, True], "s": "é\u2603"},
           "n": None, "big": 2 ** 62, "neg": -1e-300}
    text = json.dumps(doc, sort_keys=True)
    assert loads(text) == json.loads(text) == doc
    odd = json.dumps({"nan": float("nan"), "inf": float("inf"), "ninf": -float("inf")})
    got = loads(odd)
    assert got["nan"] != got["nan"] and got["inf"] == float("inf") and got["ninf"] < 0



def test_indented_reports_read_back_as_the_standard_library_writes_them():
    """``json_text(indent=2)`` (orjson where it can) writes the same values and
    layout as ``json.dumps(indent=2)``; where orjson would change a value
    (NaN, infinities, tuples, text keys made of numbers, surrogate-escaped
    names) the standard library writes it, exactly as before."""
    from matchkit.util.jsonfmt import dumps_indented
    from matchkit.util.fspath import json_text

    doc = {"clusters": [{"keep": "/a/é.jpg", "pairs": [{"score": 1e-05, "n": None,
                                                         "ok": True, "xy": [1, 2.5]}]}],
           "skipped": [], "stats": {"images": 3, "big": 2 ** 62, "tiny": -5.49e-06}}
    fast = json_text(doc, indent=2)
    assert dumps_indented(doc) == fast
    assert json.loads(fast) == doc
    slow = json.dumps(doc, ensure_ascii=False, indent=2)
    assert [ln.split(":")[0] for ln in fast.splitlines()] == \
        [ln.split(":")[0] for ln in slow.splitlines()]  # same keys on the same lines
    for odd in ({"x": float("nan")}, {"x": [float("inf")]}, {"x": (1, 2)}, {1: "a"},
                {"p": os.fsdecode(b"/x/caf\xe9.jpg")}, {"n": 2 ** 70}):
        assert dumps_indented(odd) is None
        assert json_text(odd, indent=2) == json_text(odd, indent=2, sort_keys=False)
    nan_text = json_text({"x": float("nan"), "y": float("inf")}, indent=2)
    assert "NaN" in nan_text and "Infinity" in nan_text  # as json.dumps writes them


def test_stored_records_are_written_compact_and_read_back_as_the_same_values():
    """Match records are written by orjson with sorted keys where the text
    reads back as the same values, else by ``json.dumps(sort_keys=True)``."""
    from matchkit.util.jsonfmt import dumps_sorted, loads

    rec = {"q": 1, "near": [[3, 40], [9, 41]], "crowd": 88, "memo": {"light": 0.30000001192092896,
           "share": 1e-05}, "nb": [4, "AAAA", "BB=="], "reach": None, "tmpl": 0}
    text = dumps_sorted(rec)
    assert loads(text) == rec and json.loads(text) == rec
    assert list(json.loads(text)) == sorted(rec)  # keys sorted
    assert " " not in text  # compact
    for odd in ({"x": float("nan")}, {"x": (1, 2)}, {1: "a"}, {"n": 2 ** 70}):
        assert dumps_sorted(odd) == json.dumps(odd, sort_keys=True)


def test_pairs_are_verified_ahead_only_where_earlier_runs_asked_for_nearly_all(
        sets, tmp_path, monkeypatch):
    """No verification ahead in a first run (no history), nor where earlier
    runs left more than ``AHEAD_MAX_UNASKED`` of their pending pairs unasked;
    only this run's new or changed pairs otherwise."""
    from matchkit.match import incremental_pairs
    from matchkit.match.incremental import IncrementalMatcher

    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    seen = []
    real = IncrementalMatcher._verify_ahead

    def spying(self):
        real(self)
        seen.append((set(self._ahead), tuple(self._unasked), set(self._changed_rows)))
    monkeypatch.setattr(IncrementalMatcher, "_verify_ahead", spying)
    first = dedupe([folder], gallery=tmp_path / "g", settings=Settings(workers=1))
    assert not seen[-1][0] and seen[-1][1] == (0, 0)  # a first run: lazy
    for f in new.iterdir():
        shutil.copy(f, folder / f.name)
    shutil.copytree(tmp_path / "g", tmp_path / "g2")
    monkeypatch.setattr(incremental_pairs, "AHEAD_MAX_UNASKED", 1.0)
    dedupe([folder], gallery=tmp_path / "g", settings=Settings(workers=1))
    done, (unasked, pending), changed = seen[-1]
    assert pending > 0 and done and done <= changed  # this run's pairs only
    monkeypatch.setattr(incremental_pairs, "AHEAD_MAX_UNASKED", (unasked - 0.5) / pending)
    dedupe([folder], gallery=tmp_path / "g2", settings=Settings(workers=1))
    assert not seen[-1][0] and seen[-1][1] == (unasked, pending)
    assert first.stats["pairs_verified"] > 0


def test_verifying_ahead_in_the_background_leaves_what_batches_leave(sets, tmp_path,
                                                                      monkeypatch):
    """With workers, an add's pairs verified ahead run in the background while
    clustering starts; the report, the counts and every stored pair row are
    those of verifying them in batches first. A run stopped meanwhile stores
    nothing, and the next run is the same again."""
    from matchkit.match import incremental_pairs
    from matchkit.match.incremental import IncrementalMatcher, settings_key

    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    settings = Settings(workers=2)
    dedupe([folder], gallery=tmp_path / "g", settings=settings)
    for f in new.iterdir():
        shutil.copy(f, folder / f.name)
    for copy in ("g2", "g3"):
        shutil.copytree(tmp_path / "g", tmp_path / copy)
    monkeypatch.setattr(incremental_pairs, "AHEAD_MAX_UNASKED", 1.0)
    started = []
    real = IncrementalMatcher._verify_in_background
    monkeypatch.setattr(IncrementalMatcher, "_verify_in_background",
                        lambda self, rows: started.append(len(rows)) or real(self, rows))
    background = dedupe([folder], gallery=tmp_path / "g", settings=settings)
    assert started and started[0] > 0
    monkeypatch.setattr(incremental_pairs, "AHEAD_IN_BACKGROUND", 0)
    batches = dedupe([folder], gallery=tmp_path / "g2", settings=settings)
    assert len(started) == 1  # (this run verified ahead in batches)

    class Stop(Exception):
        pass

    def stop(phase, done, total):
        if phase == "cluster" and done:
            raise Stop
    monkeypatch.setattr(incremental_pairs, "AHEAD_IN_BACKGROUND", 4096)
    with pytest.raises(Stop):
        dedupe([folder], gallery=tmp_path / "g3", settings=settings, on_progress=stop)
    assert len(started) == 2
    again = dedupe([folder], gallery=tmp_path / "g3", settings=settings)

    def outline(report):
        return ([(c.keep, c.members, [(p.a, p.b, p.kind, p.relation) for p in c.pairs])
                 for c in report.clusters],
                {k: report.stats[k] for k in ("images_searched", "pairs_verified",
                                              "pairs_reused", "clusters", "duplicates",
                                              "exact_pairs", "near_pairs")})
    assert outline(background) == outline(batches) == outline(again)
    assert background.stats["pairs_verified"] > 0
    key = settings_key(settings)
    rows = []
    for g in ("g", "g2", "g3"):
        with Gallery(tmp_path / g) as gallery:
            rows.append(gallery.match_pairs(key))
    assert rows[0] == rows[1] == rows[2]
    assert sum(r[1] is not None for r in rows[0].values()) > 0  # verifications stored


def test_a_large_add_searches_every_image_again(sets, tmp_path, monkeypatch):
    """More than ``SEARCH_ALL_ABOVE`` of the images new: every stored search is
    made again instead of patched (no radius search of the new descriptors),
    and the result is a fresh run's."""
    from matchkit.match.incremental import SEARCH_ALL_ABOVE, IncrementalMatcher

    patched = []
    original = IncrementalMatcher._new_descriptors
    monkeypatch.setattr(IncrementalMatcher, "_new_descriptors",
                        lambda self, fresh: patched.append(len(fresh)) or original(self, fresh))

    old, new = sets
    folder = tmp_path / "photos"
    folder.mkdir()
    # 2 pictures and their copies first, then 8 more (ids in name order, as
    # a fresh run gives them: equal distances rank by id)
    files = sorted([*old.iterdir(), *new.iterdir()], key=lambda f: f.name)
    for f in files:
        if f.name[:3] in ("p00", "p01"):
            shutil.copy(f, folder / f.name)
    g = tmp_path / "g"
    first = dedupe([folder], gallery=g, settings=Settings(workers=1))
    n_first = len(list(folder.iterdir()))
    for f in files:
        shutil.copy(f, folder / f.name)
    n_all = len(list(folder.iterdir()))
    assert n_all - n_first > SEARCH_ALL_ABOVE * n_all
    grown = dedupe([folder], gallery=g, settings=Settings(workers=1))
    assert _content(grown) == _content(_fresh([folder]))
    assert grown.stats["images_searched"] == n_all
    assert first.stats["pairs_verified"] > 0 and patched == []
    # (a small add still patches: the stored searches are brought up to date)
    for f in sets[1].iterdir():
        f2 = folder / ("z" + f.name)
        shutil.copy(f, f2)
        break
    dedupe([folder], gallery=g, settings=Settings(workers=1))
    assert patched == [1]


def test_a_hash_search_in_parts_finds_what_one_search_finds(monkeypatch):
    """``phash_candidates`` searches a few thousand images at a time (to bound
    the memory of the answer); every field it returns, per-owner ones
    included, is what one search of all images gives, also where one part
    has rows searched again with more neighbours (a crowd of near copies)."""
    from matchkit.match import candidates
    from matchkit.index.hamming import HammingIndex

    rng = np.random.default_rng(5)
    centre = rng.random(256) < 0.5
    n = 240
    bits = centre ^ (rng.random((n * 8, 256)) < 0.3)
    bits[:40 * 8] = centre ^ (rng.random((40 * 8, 256)) < 0.05)  # a crowd: more neighbours
    variants = np.packbits(bits, axis=1).reshape(n, 8, 32)
    index = HammingIndex(256)
    index.add(np.arange(n), variants[:, 0])
    allowed = set(range(n)) - {7}

    def search():
        return candidates.phash_candidates(index, list(range(n)), variants, max_distance=90,
                                           collect_distance=110, neighbours=16,
                                           allowed=allowed, per_owner=True)

    whole = search()
    monkeypatch.setattr(candidates, "PHASH_SEARCH_IMAGES", 37)
    parts = search()
    assert len(whole.pairs) > n and max(len(v) for v in whole.by_owner.values()) > 16
    for name in ("pairs", "crowd", "nearest", "by_owner", "reach", "loose_reach", "tails",
                 "loose_kept"):
        assert getattr(parts, name) == getattr(whole, name), name


def _merged_hash_searches(seed: int, flip: float) -> tuple[int, int, int]:
    """(records ``merge_hash_search`` merged, records that changed, records) of
    a random hash collection that grows by 12 images, each merged record
    checked against a search of the grown index."""
    from matchkit.match.candidates import phash_candidates
    from matchkit.match.incremental import _phash_fields, merge_hash_search
    from matchkit.index.hamming import HammingIndex

    rng = np.random.default_rng(seed)
    centre = rng.random(256) < 0.5
    n, m = 300, 12
    # Hash variants scattered around one code, so that distances fall on
    # both sides of the pair (90) and collect (110) distances.
    bits = centre ^ (rng.random(((n + m) * 8, 256)) < flip)
    variants = np.packbits(bits, axis=1).reshape(n + m, 8, 32)
    allowed = set(range(n + m)) - {n + 3}  # (one entering image is not in the run)
    limits = dict(max_distance=90, collect_distance=110)

    def searched(count):
        index = HammingIndex(256)
        index.add(np.arange(count), variants[:count, 0])
        return phash_candidates(index, list(range(n)), variants[:n], neighbours=16,
                                allowed=allowed, per_owner=True, **limits)

    before, after = searched(n), searched(n + m)
    unpacked = np.unpackbits(variants, axis=2)
    merged = 0
    for i in range(n):
        dists = (unpacked[i][None] != unpacked[n:, 0][:, None]).sum(2)
        out = merge_hash_search(_phash_fields(before, i), list(range(n, n + m)), dists,
                                allowed, ties_after=True, **limits)
        if out is None:
            continue
        merged += 1
        want = _phash_fields(after, i)
        assert {k: v for k, v in out.items() if k != "rt"} == \
            {k: v for k, v in want.items() if k != "rt"}, i
        # (the tail is the end of the searched one: it may have lost entries)
        assert all(t == w[len(w) - len(t):] for t, w in zip(out["rt"], want["rt"]))
    changed = sum(_phash_fields(before, i) != _phash_fields(after, i) for i in range(n))
    return merged, changed, n


@pytest.mark.parametrize("seed,flip", [(0, 0.3), (1, 0.33), (2, 0.36), (3, 0.3)])
def test_merging_entering_images_into_a_hash_search_equals_searching_again(seed, flip):
    """``merge_hash_search`` (an add's stored hash searches brought up to
    date without searching) gives what a search of the grown index gives,
    for every record it can merge; and it can merge most of them."""
    merged, changed, n = _merged_hash_searches(seed, flip)
    assert changed > n // 2 and merged > n // 3


def test_longer_kept_tails_merge_more_hash_searches(monkeypatch):
    """Each entering image nearer than a variant's farthest neighbour uses up
    one distance of that variant's kept tail (``candidates.REACH_TAIL``); a
    record whose tail runs out is searched again. With 4, a 1% add to 100,000
    images searched 8,596 records again for that (RESULTS.md "incremental:
    crowd distances that moved")."""
    from matchkit.match import candidates

    counts = {}
    for tail in (4, candidates.REACH_TAIL):
        monkeypatch.setattr(candidates, "REACH_TAIL", tail)
        counts[tail] = _merged_hash_searches(0, 0.3)[0]
    assert candidates.REACH_TAIL > 4 and counts[candidates.REACH_TAIL] > counts[4]


def test_an_add_merging_hash_searches_stores_what_searching_again_stores(tmp_path, monkeypatch):
    """A small add merges the new images into the stored hash searches
    (``_merge_phash``) instead of searching again: the records it stores
    (but for the reach tails, which may be shorter) and the report equal
    those of the same add that searches again."""
    from matchkit.match.incremental import IncrementalMatcher, settings_key

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    for seed in range(40):
        textured(500 + seed).save(old / f"p{seed:02d}.jpg", quality=90)
    for seed in range(40, 44):
        textured(500 + seed).save(new / f"p{seed:02d}.jpg", quality=90)
    textured(510).transpose(0).save(new / "p10_flip.jpg", quality=85)  # (a copy of an old one)
    settings = Settings(workers=1)
    dedupe([old], gallery=tmp_path / "g", settings=settings)
    merged: list[int] = []
    plain = IncrementalMatcher._merge_phash

    def spy(self, todo, entering, allowed):
        left, templated = plain(self, todo, entering, allowed)
        merged.append(len(todo) - len(left))
        return left, templated

    def stored(gallery):
        with Gallery(gallery) as g:
            recs = {i: join_record(json.loads(r), x) for i, (_, r, x) in
                    g.match_records(settings_key(settings)).items()}
        for r in recs.values():
            r.pop("rt", None)
        return recs

    out = {}
    for mode in ("merge", "search"):
        g = tmp_path / f"g-{mode}"
        shutil.copytree(tmp_path / "g", g)
        monkeypatch.setattr(IncrementalMatcher, "_merge_phash",
                            spy if mode == "merge" else lambda self, todo, e, a: (todo, set()))
        out[mode] = (_content(dedupe([old, new], gallery=g, settings=settings)), stored(g))
    assert merged and merged[0] >= 10
    assert out["merge"] == out["search"]


@pytest.mark.parametrize("n_codes", [0, 1, 37, 300])
def test_nearest_distances_of_stored_variants_to_new_codes_are_exact(n_codes, monkeypatch):
    """``_nearest_distance`` (OpenCV's batchDistance, in parts) gives every
    query's distance to its nearest code, as an exhaustive numpy count does;
    none: one more than the bits."""
    from matchkit.match import incremental_hash
    
    monkeypatch.setattr(incremental_hash, "NEAREST_ROWS", 64)  # (several parts)
    rng = np.random.default_rng(n_codes)
    queries = rng.integers(0, 256, (500, 32), dtype=np.uint8)
    codes = rng.integers(0, 256, (n_codes, 32), dtype=np.uint8)
    codes[: n_codes // 2] = queries[: n_codes // 2]
    codes[: n_codes // 2, 0] ^= 1  # (some at distance 1)
    got = incremental_hash._nearest_distance(queries, codes, 256)
    if n_codes == 0:
        assert (got == 257).all()
        return
    want = np.unpackbits(queries[:, None, :] ^ codes[None], axis=-1).sum(-1).min(1)
    assert np.array_equal(got, want) and (got.min() == 1 or n_codes < 2)


def test_the_radius_search_of_new_descriptors_stops_at_its_cap():
    """``_within`` finds every indexed code within the limit, or the
    ``max_k`` nearest of them; the add caps it only in an approximate
    index (an exact one keeps every record what a search now would give)."""
    from matchkit.match.incremental import _within
    from matchkit.index.hamming import HammingIndex

    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    index = HammingIndex(256)
    index.add(np.arange(300), codes)
    every = _within(index, codes[:3], 256)
    assert np.bincount(every[:, 0]).tolist() == [300, 300, 300]
    capped = _within(index, codes[:3], 256, max_k=64)
    assert np.bincount(capped[:, 0]).tolist() == [64, 64, 64]
    assert set(map(tuple, capped.tolist())) <= set(map(tuple, every.tolist()))


def test_the_radius_search_asks_the_index_in_parts_with_the_same_result(monkeypatch):
    """``_within`` bounds each index search to ``WITHIN_SEARCH_SLOTS``
    neighbour slots (query rows x k); the parts give what one search gives."""
    from matchkit.match import incremental_votes
    from matchkit.index.hamming import HammingIndex

    rng = np.random.default_rng(6)
    codes = rng.integers(0, 256, (400, 32), dtype=np.uint8)
    index = HammingIndex(256)
    index.add(np.arange(400), codes)
    queries = codes[:50]
    whole = incremental_votes._within(index, queries, 120)
    asked = []
    search = index.search

    def counting(q, k):
        asked.append(len(q) * k)
        return search(q, k)

    monkeypatch.setattr(index, "search", counting)
    monkeypatch.setattr(incremental_votes, "WITHIN_SEARCH_SLOTS", 256)
    parts = incremental_votes._within(index, queries, 120)
    assert max(asked) <= 256 and len(asked) > 3
    assert sorted(map(tuple, parts.tolist())) == sorted(map(tuple, whole.tolist()))
    assert len(whole) > len(queries)  # (beyond each query's own code)


def test_an_add_with_a_changed_image_searches_the_hash_searches_naming_it(tmp_path, monkeypatch):
    """A changed file keeps its image id and loses its own record; the stored
    searches that name it cannot take it in as a new image: the add then
    searches again (no merge), and reports what a run from scratch reports."""
    from matchkit.match.incremental import IncrementalMatcher

    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(30):
        textured(700 + seed).save(folder / f"p{seed:02d}.jpg", quality=90)
    settings = Settings(workers=1)
    g = tmp_path / "g"
    dedupe([folder], gallery=g, settings=settings)
    textured(800).save(folder / "p05.jpg", quality=90)  # (changed in place)
    textured(801).save(folder / "new.jpg", quality=90)
    merged = []
    plain = IncrementalMatcher._merge_phash
    monkeypatch.setattr(IncrementalMatcher, "_merge_phash", lambda self, *a: merged.append(1)
                        or plain(self, *a))
    grown = dedupe([folder], gallery=g, settings=settings)
    assert not merged
    assert _content(grown) == _content(_fresh([folder], settings))


def test_the_template_check_runs_again_only_where_its_same_shape_lookalikes_changed():
    """``_template_moved``: an image's template check is redone by an add
    only when the close hash neighbours of its own thumbnail shape (what
    ``content_masks`` looks at) are another set; a newcomer of another
    shape, a distance that moved, or an image without a thumbnail is not
    a reason."""
    from types import SimpleNamespace

    from matchkit.match.incremental import IncrementalMatcher

    crowd = Settings().template_crowd_distance
    shapes = {1: (60, 80), 2: (60, 80), 3: (80, 60), 4: (60, 80), 5: (80, 60), 9: (60, 80)}
    records = {1: {"near": [[2, 3], [3, 4]]}, 5: {"near": [[3, 2]]},
               6: {"near": [[2, 1]]}, 9: {"near": [[2, 1], [4, crowd + 1]]}}
    fake = SimpleNamespace(settings=Settings(), records=records,
                           cache=SimpleNamespace(thumb_shapes=lambda ids: {
                               i: shapes[i] for i in ids if i in shapes}))
    near = {1: [[2, 1], [3, 2], [5, 3]],       # 5 is new, but tall: not a reason
            5: [[3, 2], [1, 5]],               # 1 is wide: not a reason either
            6: [[2, 1], [4, 1]],               # no thumbnail: never templated
            9: [[2, 1], [4, crowd]]}           # 4 came close, same shape: a reason
    assert IncrementalMatcher._template_moved(fake, near) == [9]
    near[1] = [[2, 1], [4, crowd]]             # a close newcomer of its own shape
    assert IncrementalMatcher._template_moved(fake, near) == [1, 9]


def test_an_add_that_makes_screenshots_templated_matches_a_run_from_scratch(tmp_path):
    """Screenshots of one frame with too few look-alikes to show a template,
    then enough of them added (with pictures of another shape): the add
    finds the template where a run from scratch does, and reports the same."""
    frame = textured(40, (480, 360))
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    for i in range(11):  # one frame, a different picture in its slot
        shot = frame.copy()
        shot.paste(textured(100 + i, (200, 150)), (140, 100))
        shot.save((old if i < 6 else new) / f"shot{i:02d}.png")
    for i in range(20):  # (the add stays small: hash searches are merged, not redone)
        textured(300 + i).save(old / f"photo{i}.jpg", quality=90)
    for i in range(3):  # another shape
        textured(200 + i, (360, 480)).save(new / f"tall{i}.png")
    settings = Settings(workers=1)
    dedupe([old], gallery=tmp_path / "g", settings=settings)
    grown = dedupe([old, new], gallery=tmp_path / "g", settings=settings)
    assert _content(grown) == _content(_fresh([old, new]))
    with Gallery(tmp_path / "g") as g:
        from matchkit.match.incremental import settings_key

        paths = g.paths()
        recs = {os.path.basename(paths[i]): json.loads(r) for i, (_, r, _)
                in g.match_records(settings_key(settings)).items()}
    assert any(r.get("tmpl") for n, r in recs.items() if n.startswith("shot"))


def test_a_gallery_run_indexes_new_descriptors_on_a_worker_and_saves_if_stopped(
        sets, tmp_path, monkeypatch):
    """``dedupe`` with a gallery adds the new images' descriptors to the graph
    on a worker thread (``Gallery.index_in_background``) while the matcher
    reads the stored state; a run stopped after the add still leaves index
    files the next open takes as they are, and the next run reports what a
    run from scratch does."""
    import threading

    from matchkit.index.hamming import HammingIndex

    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    g = tmp_path / "g"
    dedupe([folder], gallery=g, settings=HNSW)
    for f in new.iterdir():
        shutil.copy(f, folder / f.name)
    threads, graphs = [], set()
    real_add, real_add_orb = HammingIndex.add, Gallery._add_orb
    monkeypatch.setattr(HammingIndex, "add", lambda self, keys, *a, **kw: threads.append(
        (id(self), threading.current_thread().name)) or real_add(self, keys, *a, **kw))
    monkeypatch.setattr(Gallery, "_add_orb", lambda self, idx, items: graphs.add(id(idx))
                        or real_add_orb(self, idx, items))

    class Stop(Exception):
        pass

    def stop(phase, done, total):
        if phase == "stored" and done == 1:
            raise Stop
    with pytest.raises(Stop):
        dedupe([folder], gallery=g, settings=HNSW, on_progress=stop)
    assert len(graphs) == 1 and [t for i, t in threads if i in graphs] == ["matchkit-index_0"]
    with Gallery(g, create=False) as gal:
        report = gal.verify()
        assert report.differences == [] and report.stale == []
        assert gal.index_in_background is False
    monkeypatch.setattr(HammingIndex, "add", real_add)
    monkeypatch.setattr(Gallery, "_add_orb", real_add_orb)
    grown = dedupe([folder], gallery=g, settings=HNSW)
    assert _content(grown) == _content(_fresh([folder], HNSW))


def test_frames_looked_for_again_in_an_add_match_a_run_from_scratch(sets, tmp_path,
                                                                   monkeypatch):
    """A kept image whose frames were looked for (no copy near it) is looked at
    again when a copy enters near it (``_regate``): in the new images' frame
    search, or, when no image is new, in a search of its own. Both give the
    report of a run from scratch."""
    from matchkit.match import incremental
    
    chosen, alone = [], []  # (``alone``: kept images of frame searches of no new image)
    real_regate, real_search = (incremental.IncrementalMatcher._regate,
                                incremental.IncrementalMatcher._framed_search)

    def regate(self, kept):
        out = real_regate(self, kept)
        chosen.append(out)
        return out

    def framed_search(self, todo, allowed, nearest, again):
        if not todo:
            alone.append(list(again))
        return real_search(self, todo, allowed, nearest, again)

    monkeypatch.setattr(incremental.IncrementalMatcher, "_regate", regate)
    monkeypatch.setattr(incremental.IncrementalMatcher, "_framed_search", framed_search)
    old, _ = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    textured(777).save(folder / "x.jpg", quality=90)
    g = tmp_path / "g"
    dedupe([folder], gallery=g, settings=Settings(workers=1))
    x = _image_id(g, folder / "x.jpg")
    assert _record(g, x)["fx"] == 1  # nothing near it: its frames were looked for

    # A copy of x enters, with another new picture: x's frames are looked for
    # again, in the new images' frame search.
    textured(777).resize((400, 300)).save(folder / "x_small.jpg", quality=85)
    textured(778).save(folder / "y.jpg", quality=90)
    chosen.clear(), alone.clear()
    grown = dedupe([folder], gallery=g, settings=Settings(workers=1))
    assert x in sum(chosen, []) and not any(alone)
    assert _record(g, x)["fx"] == 0
    assert _content(grown) == _content(_fresh([folder]))

    # A copy of x enters the gallery outside the run (indexed, not
    # deduplicated): nothing is searched, and x is looked at again on its own.
    side, run = tmp_path / "side", tmp_path / "run"
    side.mkdir()
    shutil.copytree(old, run)
    shutil.copy(folder / "x.jpg", run / "x.jpg")
    shutil.copy(folder / "x_small.jpg", side / "x_small.jpg")
    g2, g3 = tmp_path / "g2", tmp_path / "g3"
    dedupe([run], gallery=g2, settings=Settings(workers=1))
    x = _image_id(g2, run / "x.jpg")
    assert _record(g2, x)["fx"] == 1
    with Gallery(g2) as opened:
        opened.add([side / "x_small.jpg"])
    shutil.copytree(g2, g3)  # (the same ids: ties rank by them)
    chosen.clear(), alone.clear()
    back = dedupe([run], gallery=g2, settings=Settings(workers=1))
    assert [x] in alone
    assert _record(g2, x)["fx"] == 0
    scratch = dedupe([run], gallery=g3, settings=Settings(workers=1), rematch=True)
    assert _content(back) == _content(scratch)


def _image_id(gallery, path) -> int:
    with Gallery(gallery) as g:
        return next(i for i, p in g.paths().items() if os.path.samefile(p, path))


def _record(gallery, image_id) -> dict:
    from matchkit.match.incremental import settings_key

    with Gallery(gallery) as g:
        _, text, lists = g.match_records(settings_key(Settings(workers=1)))[image_id]
        return join_record(json.loads(text), lists)


def test_stale_records_are_looked_for_only_where_an_image_can_have_left(sets, tmp_path,
                                                                        monkeypatch):
    """An add to a gallery whose stored records are all there, unchanged and
    in the run skips the look for records naming a gone image
    (``IncrementalMatcher._none_left``); a run after an image left the run,
    or lost its record outside a run, looks, and matches as a run that
    matches every image again on the same gallery."""
    from matchkit.match.incremental_records import StoredRecords

    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    g = tmp_path / "g"
    dedupe([folder], gallery=g, settings=Settings(workers=1))
    looked = []
    real = StoredRecords._stale
    monkeypatch.setattr(StoredRecords, "_stale",
                        lambda self, *a: looked.append(1) or real(self, *a))

    def again() -> dict:
        shutil.rmtree(tmp_path / "g2", ignore_errors=True)
        shutil.copytree(g, tmp_path / "g2")
        report = dedupe([folder], gallery=g, settings=Settings(workers=1))
        n = len(looked)
        assert _content(report) == _content(dedupe([folder], gallery=tmp_path / "g2",
                                                   settings=Settings(workers=1), rematch=True))
        del looked[n:]  # (the rematch's own look)
        return report

    for f in sorted(new.iterdir())[:3]:
        shutil.copy(f, folder / f.name)
    again()
    assert looked == []
    (folder / "p03_crop.jpg").unlink()  # out of the run (still in the gallery)
    again()
    assert looked == [1]
    with Gallery(g) as gal:  # a record dropped outside a run (the file stays)
        gal.remove([folder / "p05_over.jpg"])
    again()
    assert looked == [1, 1]
    again()
    assert looked == [1, 1, 1]  # (p03_crop is still in the gallery, out of the run)
    shutil.copy(folder / "p05_over.jpg", folder / "p03_crop.jpg")
    again()  # (back in the run, changed)
    assert looked == [1, 1, 1, 1]
    again()  # (every record there, unchanged, in the run)
    assert looked == [1, 1, 1, 1]


@pytest.mark.parametrize("grow", [False, True])
def test_removing_images_counts_votes_again_instead_of_searching_again(sets, tmp_path,
                                                                       monkeypatch, grow):
    """Images removed from a gallery leave the records naming them stale; a
    run then counts those records' votes again (``_repair_votes``: gone
    entries dropped from their neighbour lists, a full list's query
    descriptor searched again) and makes their hash searches again, instead
    of searching them from scratch, and reports what a run that matches
    every image again reports; also when images are added and one changed
    in the same run (``grow``: new descriptors merged into lists repaired)."""
    from matchkit.match import incremental_votes
    from matchkit.match.incremental_votes import StoredVotes

    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    if not grow:
        for f in sorted(new.iterdir()):
            shutil.copy(f, folder / f.name)
    g = tmp_path / "g"
    dedupe([folder], gallery=g, settings=Settings(workers=1))
    repaired, searched_rows = [], []
    real_repair, real_search = StoredVotes._repair_votes, incremental_votes.search_in_chunks
    monkeypatch.setattr(StoredVotes, "_repair_votes",
                        lambda self, todo, allowed: repaired.extend(todo)
                        or real_repair(self, todo, allowed))
    monkeypatch.setattr(incremental_votes, "search_in_chunks",
                        lambda index, desc, *a, **kw: searched_rows.append(len(desc))
                        or real_search(index, desc, *a, **kw))
    gone = [folder / f"p{seed:02d}_{name}.jpg" for seed, name in
            ((1, "orig"), (1, "crop"), (4, "over"), (6, "rot"), (7, "orig"))]
    with Gallery(g) as gal:
        gal.remove(gone)
    for f in gone:
        f.unlink()
    if grow:
        for f in sorted(new.iterdir()):
            shutil.copy(f, folder / f.name)
        shutil.copy(new / "p08_crop.jpg", folder / "p05_small.jpg")  # (same path, changed)
    shutil.copytree(g, tmp_path / "g2")
    after = dedupe([folder], gallery=g, settings=Settings(workers=1))
    scratch = dedupe([folder], gallery=tmp_path / "g2", settings=Settings(workers=1),
                     rematch=True)
    assert _content(after) == _content(scratch)
    assert len(repaired) >= 10 and sum(searched_rows) >= 1
    # (searched: the 12 new and the changed image, and a few of those repaired)
    assert after.stats["images_searched"] - (13 if grow else 0) < len(repaired) // 2


def test_removing_images_from_a_sharded_gallery_matches_a_rematch(sets, tmp_path, monkeypatch):
    """Images removed from a sharded gallery: the votes counted again
    (``_repair_votes``, its full lists searched again over every shard) and
    hash searches made again give what a rematch of the same gallery gives."""
    from matchkit.match.incremental_votes import StoredVotes
    from matchkit.store.shards import ShardedGallery

    old, new = sets
    folder = tmp_path / "photos"
    shutil.copytree(old, folder)
    for f in sorted(new.iterdir()):
        shutil.copy(f, folder / f.name)
    dedupe([folder], gallery=tmp_path / "g", shards=2, settings=Settings(workers=1))
    gone = [folder / f"p{seed:02d}_{name}.jpg" for seed, name in
            ((2, "orig"), (2, "rot"), (5, "crop"), (9, "small"))]
    with ShardedGallery(tmp_path / "g") as g:
        assert g.remove(gone) == len(gone)
    for f in gone:
        f.unlink()
    shutil.copytree(tmp_path / "g", tmp_path / "g2")
    repaired = []
    real = StoredVotes._repair_votes
    monkeypatch.setattr(StoredVotes, "_repair_votes",
                        lambda self, todo, allowed: repaired.extend(todo)
                        or real(self, todo, allowed))
    after = dedupe([folder], gallery=tmp_path / "g", shards=2, settings=Settings(workers=1))
    scratch = dedupe([folder], gallery=tmp_path / "g2", shards=2,
                     settings=Settings(workers=1), rematch=True)
    assert len(repaired) >= 10
    assert after.stats["images_searched"] < len(repaired) // 2
    assert _content(after) == _content(scratch)
