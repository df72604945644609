"""The deflated texts of incremental matching (``matchkit.store.stored_text``)."""

import json
import warnings
import sqlite3

import numpy as np
import pytest
import random

from matchkit.store import stored_text
from test_determinism import _content
from matchkit.store.gallery import Gallery
from matchkit.config import Settings

EVIDENCE = ('{"a": 1, "b": 132, "c": 0.24034792877906977, "cos": null, "d": 92, "oc": null, '
            '"ov": null, "p": true, "r": "", "v": 0.0, "ver": null, "x": {"colour_agree": true, '
            '"dihedral": 2, "grey": [false, false], "hue_similarity": 0.5771272443403591, '
            '"lightness_shift": 15.588359980620154, "reflect": true, "verifiable": true}}')


def test_round_trip_and_size_of_an_evidence_text():
    packed = stored_text.pack(EVIDENCE)
    assert packed[0] == stored_text.TAG
    assert stored_text.unpack(packed) == EVIDENCE
    # the dictionary is what makes a short text small: plain deflate of it is
    # over twice as long
    import zlib
    assert len(packed) < 0.3 * len(EVIDENCE.encode())
    assert len(packed) * 2 < len(zlib.compress(EVIDENCE.encode(), 9))


def test_any_text_comes_back_unchanged():
    rng = random.Random(3)
    alphabet = '{}[]":, .0123456789abcdefnulltrue\u00e9\u4e2d\U0001f600'
    for size in [0, 1, 5, 300, 2047, 2048, 2049, 5000, 40000] + [rng.randrange(9000) for _ in range(100)]:
        text = "".join(rng.choice(alphabet) for _ in range(size))
        assert stored_text.unpack(stored_text.pack(text)) == text


def test_long_text_beyond_the_small_window():
    text = json.dumps({"points": [[i * 1.1, i * 2.3] for i in range(3000)]})
    assert stored_text.unpack(stored_text.pack(text)) == text


def test_text_and_none_are_read_as_they_are():
    assert stored_text.unpack(EVIDENCE) == EVIDENCE
    assert stored_text.unpack(None) is None


@pytest.mark.parametrize("value", [b"", b"\x07abc", stored_text.pack(EVIDENCE)[:-3]])
def test_damaged_values_raise(value):
    with pytest.raises((ValueError, Exception)):
        stored_text.unpack(value)


def test_a_gallery_run_stores_its_match_state_deflated_and_reuses_it(photo_dir, tmp_path):
    from matchkit.jobs.dedupe import dedupe

    g = tmp_path / "g"
    first = dedupe([photo_dir], gallery=g, settings=Settings(workers=1))
    raw = sqlite3.connect(g / "gallery.sqlite")
    rows = raw.execute("SELECT before, after FROM match_pairs").fetchall()
    records = raw.execute("SELECT record FROM match_records").fetchall()
    raw.close()
    assert rows and records
    assert all(isinstance(b, bytes) and b[0] == stored_text.TAG for b, _ in rows)
    assert all(a is None or isinstance(a, bytes) for _, a in rows)
    assert all(isinstance(r, bytes) for r, in records)
    # what is read back is the JSON that was written: a second run reuses
    # every stored pair and gives the same clusters
    with Gallery(g) as gal:
        key = json.loads(gal._meta("match_keys"))[0]
        for before, after, *_ in gal.match_pairs(key).values():
            assert json.loads(before)["a"] >= 1 and (after is None or json.loads(after) is not None)
    again = dedupe([photo_dir], gallery=g, settings=Settings(workers=1))
    assert again.stats["pairs_reused"] > 0
    assert first.clusters and _content(again) == _content(first)


def test_records_stored_whole_by_an_earlier_build_are_reused(photo_dir, tmp_path):
    """Records whose lists are base64 inside their JSON (as builds before
    ``split_record`` stored them) are read and reused: no image is searched
    again, the result is the same, an add gives what it gives on the same
    gallery stored the new way, and records written again get their lists
    beside the JSON."""
    import base64

    from matchkit.jobs.dedupe import dedupe
    from matchkit.match.incremental_state import join_record
    from matchkit.util.jsonfmt import dumps_sorted

    import shutil

    old = Settings(workers=1, vote_index="hnsw")  # (what those builds ran by default)
    g = tmp_path / "g"
    first = dedupe([photo_dir], gallery=g, settings=old)
    shutil.copytree(g, tmp_path / "g-now")
    raw = sqlite3.connect(g / "gallery.sqlite")
    rows = raw.execute("SELECT key, image_id, record FROM match_records").fetchall()
    assert rows and all(r[0] == stored_text.TAG_BESIDE for *_, r in rows)
    for key, i, blob in rows:
        rec = join_record(json.loads(stored_text.unpack_beside(blob)[0]),
                          stored_text.unpack_beside(blob)[1])
        rec["hits"] = base64.b64encode(rec["hits"]).decode()
        if "nb" in rec:
            k, ids, dists = rec["nb"]
            rec["nb"] = [k, base64.b64encode(ids).decode(), base64.b64encode(dists).decode()]
        raw.execute("UPDATE match_records SET record=? WHERE key=? AND image_id=?",
                    (stored_text.pack(dumps_sorted(rec)), key, i))
    raw.commit()
    raw.close()
    again = dedupe([photo_dir], gallery=g, settings=old)
    assert again.stats["images_searched"] == 0 and again.stats["pairs_reused"] > 0
    assert _content(again) == _content(first)
    extra = photo_dir.parent / "more"
    extra.mkdir()
    for n in sorted(photo_dir.iterdir())[:2]:
        (extra / ("copy-" + n.name)).write_bytes(n.read_bytes())
    grown = dedupe([photo_dir, extra], gallery=g, settings=old)
    now = dedupe([photo_dir, extra], gallery=tmp_path / "g-now", settings=old)
    assert grown.stats["images_searched"] == now.stats["images_searched"] > 0
    assert _content(grown) == _content(now)
    raw = sqlite3.connect(g / "gallery.sqlite")
    tags = [r[0] for r, in raw.execute("SELECT record FROM match_records")]
    raw.close()
    assert stored_text.TAG_BESIDE in tags


def test_a_gallery_with_the_earlier_record_table_is_matched_again(photo_dir, tmp_path):
    """A gallery whose records are in the earlier ``match_images`` table (text,
    WITHOUT ROWID) reads as having none; the next writer drops that table."""
    from matchkit.jobs.dedupe import dedupe

    g = tmp_path / "g"
    first = dedupe([photo_dir], gallery=g, settings=Settings(workers=1))
    raw = sqlite3.connect(g / "gallery.sqlite")
    raw.execute("ALTER TABLE match_records RENAME TO match_images")
    raw.commit()
    raw.close()
    with Gallery(g) as gal:
        key = json.loads(gal._meta("match_keys"))[0]
        assert gal.match_records(key) == {}
    again = dedupe([photo_dir], gallery=g, settings=Settings(workers=1))
    assert again.stats["images_searched"] == first.stats["images_searched"]
    assert _content(again) == _content(first)
    raw = sqlite3.connect(g / "gallery.sqlite")
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "match_images" not in tables and "match_records" in tables


def test_pack_many_on_threads_gives_the_texts_in_order():
    texts = [EVIDENCE.replace("132", str(i)) * (1 + i % 3) for i in range(3000)]
    serial = stored_text.pack_many(texts, 1)
    assert serial == [stored_text.pack(t) for t in texts]
    assert stored_text.pack_many(texts, 2) == serial
    assert stored_text.pack_many(texts[:5], 2) == serial[:5]
    assert stored_text.pack_many([], 2) == []


@pytest.mark.parametrize("table, column", [("match_pairs", "before"),
                                           ("match_records", "record")])
def test_a_damaged_stored_text_is_matched_again_with_a_warning(photo_dir, tmp_path, table, column):
    """A stored text that does not inflate (a damaged row) never ends a run:
    the stored state is ignored with a warning, every image is matched again,
    the result is the same, and the state is written anew."""
    from matchkit.jobs.dedupe import dedupe

    g = tmp_path / "g"
    first = dedupe([photo_dir], gallery=g, settings=Settings(workers=1))
    raw = sqlite3.connect(g / "gallery.sqlite")
    raw.execute(f"UPDATE {table} SET {column}=? WHERE rowid IN (SELECT rowid FROM {table} LIMIT 1)"
                if table == "match_records" else
                f"UPDATE {table} SET {column}=? WHERE (a, b, kind) IN "
                f"(SELECT a, b, kind FROM {table} LIMIT 1)", (b"\x01garbage\xff\x00",))
    raw.commit()
    raw.close()
    with pytest.warns(UserWarning, match="stored matching state unreadable"):
        again = dedupe([photo_dir], gallery=g, settings=Settings(workers=1))
    assert _content(again) == _content(first)
    assert again.stats["pairs_reused"] == 0
    third = dedupe([photo_dir], gallery=g, settings=Settings(workers=1))
    assert _content(third) == _content(first) and third.stats["pairs_reused"] > 0


def test_the_cli_tells_a_damaged_state_in_one_line(photo_dir, tmp_path):
    import subprocess
    import sys

    g = tmp_path / "g"
    cmd = [sys.executable, "-m", "matchkit.cli", "dedupe", str(photo_dir), "--gallery", str(g),
           "--json", str(tmp_path / "out.json"), "-q"]
    subprocess.run(cmd, check=True, capture_output=True)
    raw = sqlite3.connect(g / "gallery.sqlite")
    raw.execute("UPDATE match_pairs SET before=?", (b"\x01garbage",))
    raw.commit()
    raw.close()
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if "stored matching state" in ln]
    assert len(lines) == 1 and lines[0].startswith("matchkit: warning: gallery ")
    assert "UserWarning" not in run.stderr and "warnings.warn" not in run.stderr


def test_record_hits_read_back_in_either_form():
    import base64

    from matchkit.match.incremental import _hits, _pack_ids

    ids = [3, 17, 250, 70_000, 2**31 - 1]
    packed = _pack_ids(ids)
    assert isinstance(packed, bytes)
    assert _hits({"hits": packed}).tolist() == ids
    assert _hits({"hits": base64.b64encode(packed).decode()}).tolist() == ids  # (stored whole)
    assert _hits({"hits": ids}).tolist() == ids  # (a JSON list, as earlier builds stored it)
    assert _hits({"hits": _pack_ids([])}).tolist() == []


def test_record_lists_stored_beside_the_json_read_back_as_they_were():
    """A record's neighbour lists and hits are stored as bytes beside its
    JSON (``split_record``), ids in as few bytes as the largest needs; they
    read back equal (empty slots, no lists, no hits, every id width), a
    record stored whole before reads back the same, and damaged or cut
    bytes raise ValueError (the stored state is then matched again)."""
    import base64

    from matchkit.match.incremental_state import (_lists, _pack_ids, _pack_lists, join_record,
                                                  split_record)
    from matchkit.util.jsonfmt import dumps_sorted, loads

    rng = np.random.default_rng(5)
    widths = set()
    for top in (3, 200, 60_000, 5_000_000, 2**31 - 2):
        for k in (0, 1, 4):
            rows = int(rng.integers(0, 6))
            ids = rng.integers(-1, top + 1, (rows, k) if k else rows).astype(np.int32)
            dists = rng.integers(0, 256, ids.shape).astype(np.uint8)
            rec = {"crowd": 96, "near": [[1, 90]], "vo": [[2, 1.5]],
                   "hits": _pack_ids(rng.integers(0, top + 1, int(rng.integers(0, 9))))}
            if rows or k:
                rec["nb"] = _pack_lists(ids, dists)
            rest, lists = split_record(rec)
            assert "nb" not in rest and "hits" not in rest and rest is not rec
            widths.add(lists[1])
            stored = stored_text.unpack_beside(stored_text.pack_beside(
                stored_text.pack(dumps_sorted(rest)), lists))
            back = join_record(loads(stored[0]), stored[1])
            assert back == rec
            if "nb" in rec:
                got_ids, got_d = _lists(back)
                assert got_ids.ravel().tolist() == ids.ravel().tolist()
                assert got_d.ravel().tolist() == dists.ravel().tolist()
            # A record stored whole, its lists as base64 inside the JSON.
            whole = {**rest, "hits": base64.b64encode(rec["hits"]).decode()}
            if "nb" in rec:
                whole["nb"] = [rec["nb"][0], base64.b64encode(rec["nb"][1]).decode(),
                               base64.b64encode(rec["nb"][2]).decode()]
            assert join_record(loads(dumps_sorted(whole)), None) == rec
            for bad in (lists[:-1], lists + b"\x00", lists[:5]):
                with pytest.raises(ValueError):
                    join_record(dict(rest), bad)
    assert widths == {1, 2, 3, 4}
    assert split_record({"crowd": 1}) == ({"crowd": 1}, None)
    with pytest.raises(ValueError):
        stored_text.unpack_beside(stored_text.pack_beside(stored_text.pack("{}"), b"xy")[:8])


@pytest.mark.parametrize("column", ["before", "after"])
def test_a_stored_pair_text_that_is_not_json_is_measured_again(photo_dir, tmp_path, column):
    """A pair text that inflates but does not parse (a damaged or foreign
    row) never ends a run: that pair is measured (or verified) again, with
    one warning, the others are reused, the result is the same, and the
    next run reads the row written anew."""
    from matchkit.jobs.dedupe import dedupe

    g = tmp_path / "g"
    first = dedupe([photo_dir], gallery=g, settings=Settings(workers=1))
    raw = sqlite3.connect(g / "gallery.sqlite")
    hit = raw.execute(f"UPDATE match_pairs SET {column}=? WHERE (a, b, kind) IN (SELECT a, b, "
                      f"kind FROM match_pairs WHERE {column} IS NOT NULL LIMIT 3)",
                      (stored_text.pack('{"a": 1, "ver": [oops'),))
    assert hit.rowcount == 3
    raw.commit()
    raw.close()
    with pytest.warns(UserWarning, match="unreadable") as told:
        again = dedupe([photo_dir], gallery=g, settings=Settings(workers=1))
    assert len([w for w in told if "unreadable" in str(w.message)]) == 1
    assert _content(again) == _content(first)
    assert again.stats["pairs_reused"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = dedupe([photo_dir], gallery=g, settings=Settings(workers=1))
    assert _content(third) == _content(first)
    assert third.stats["pairs_verified"] == 0
