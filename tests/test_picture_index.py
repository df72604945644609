"""The frame search's picture index, kept beside a gallery between runs
(``picture_index.PictureIndex``): always exactly the run's pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import textured
from matchkit import Settings
from matchkit.index import pictures as picture_index
from matchkit.jobs.dedupe import dedupe
from matchkit.store.gallery import Gallery
from matchkit.index.hamming import HammingIndex
from matchkit.index.pictures import (PICTURE_KEY_STRIDE, PictureIndex, forget_picture_files,
                                     picture_file, picture_rows)
from test_determinism import _content


def _pictures(seed: int, ids) -> dict[int, np.ndarray]:
    """0-3 random pictures per image, the same for an image at one seed."""
    out = {}
    for i in ids:
        rng = np.random.default_rng((seed, i))
        out[i] = rng.integers(0, 256, (int(rng.integers(0, 4)), 8, 32), dtype=np.uint8)
    return out


def _answers(index: HammingIndex, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return index.search(queries, 5)


@pytest.fixture
def kept_always(monkeypatch):
    """Keep a file at any size (the real threshold is 20,000 pictures)."""
    monkeypatch.setattr(picture_index, "EXACT_SEARCH_BELOW", 1)


def test_picture_rows_key_each_picture_by_its_image():
    pictures = {7: np.zeros((2, 8, 32), np.uint8), 3: np.ones((1, 8, 32), np.uint8),
                5: np.zeros((0, 8, 32), np.uint8)}
    keys, codes = picture_rows(pictures)
    assert keys.tolist() == [3 * PICTURE_KEY_STRIDE, 7 * PICTURE_KEY_STRIDE,
                             7 * PICTURE_KEY_STRIDE + 1]
    assert (codes[0] == 1).all() and (codes[1:] == 0).all()
    with pytest.raises(ValueError):
        picture_rows({1: np.zeros((PICTURE_KEY_STRIDE + 1, 8, 32), np.uint8)})


def test_a_kept_index_brought_up_to_date_answers_as_one_built_anew(tmp_path, kept_always):
    path = tmp_path / "p.npz"
    first = PictureIndex(path, *picture_rows(_pictures(0, range(200))))
    assert first.changed
    first.save()
    assert path.exists() and not first.changed

    # Images 0-9 gone, 10-19 changed, 200-219 new: the file is patched.
    now = {**_pictures(0, range(20, 200)), **_pictures(1, range(10, 20)),
           **_pictures(2, range(200, 220))}
    keys, codes = picture_rows(now)
    later = PictureIndex(path, keys, codes)
    assert later.changed
    assert sorted(later.index.keys().tolist()) == keys.tolist()
    built = HammingIndex(256)
    built.add(keys, codes)
    queries = np.random.default_rng(3).integers(0, 256, (50, 32), dtype=np.uint8)
    for a, b in zip(_answers(later.index, queries), _answers(built, queries)):
        assert np.array_equal(a, b)
    later.save()

    # Nothing changed: the file is used as it is, and not written again.
    before = path.stat().st_mtime_ns
    same = PictureIndex(path, keys, codes)
    assert not same.changed
    same.save()
    assert path.stat().st_mtime_ns == before


def test_a_mostly_replaced_or_damaged_file_is_built_again(tmp_path, kept_always, monkeypatch):
    path = tmp_path / "p.npz"
    PictureIndex(path, *picture_rows(_pictures(0, range(100)))).save()
    removed = []
    monkeypatch.setattr(HammingIndex, "remove", lambda self, keys: removed.append(keys))
    keys, codes = picture_rows(_pictures(5, range(100)))  # (every code another)
    again = PictureIndex(path, keys, codes)
    assert not removed and again.changed
    assert sorted(again.index.keys().tolist()) == keys.tolist()
    again.save()

    path.write_bytes(path.read_bytes()[:200])
    with pytest.warns(UserWarning, match="unreadable"):
        rebuilt = PictureIndex(path, keys, codes)
    assert sorted(rebuilt.index.keys().tolist()) == keys.tolist()
    rebuilt.save()
    assert len(PictureIndex(path, keys, codes).index) == len(keys)


def test_removals_add_up_until_the_index_is_built_again(tmp_path, kept_always, monkeypatch):
    """Each run removing a tenth of the pictures patches the file until the
    removals since it was built pass ``REBUILD_ABOVE`` of it (an HNSW graph
    keeps removed nodes): then it is built anew, and counting starts again."""
    path = tmp_path / "p.npz"
    ids = list(range(200))
    PictureIndex(path, *picture_rows(_pictures(0, ids))).save()
    built = []
    real_init = HammingIndex.__init__
    monkeypatch.setattr(HammingIndex, "__init__", lambda self, *a, **kw: (
        built.append(1), real_init(self, *a, **kw))[1])
    removed = []
    for step in range(5):
        ids = ids[20:] + list(range(200 + 20 * step, 220 + 20 * step))
        built.clear()
        keys, codes = picture_rows(_pictures(0, ids))
        index = PictureIndex(path, keys, codes)
        assert sorted(index.index.keys().tolist()) == keys.tolist()
        index.save()
        # (a load makes one HammingIndex; a build another)
        removed.append((index.removed, len(built) > 1))
    counts = [r for r, _ in removed]
    rebuilt = [b for _, b in removed]
    assert rebuilt.index(True) >= 1 and counts[rebuilt.index(True)] == 0
    assert all(r <= picture_index.REBUILD_ABOVE * 300 for r in counts)
    assert counts[0] > 0 and not rebuilt[0]


def test_no_file_is_kept_below_the_exhaustive_search_size(tmp_path, monkeypatch):
    path = tmp_path / "p.npz"
    monkeypatch.setattr(picture_index, "EXACT_SEARCH_BELOW", 1)
    PictureIndex(path, *picture_rows(_pictures(0, range(50)))).save()
    assert path.exists()
    monkeypatch.setattr(picture_index, "EXACT_SEARCH_BELOW", 10_000)
    small = PictureIndex(path, *picture_rows(_pictures(0, range(50))))
    small.save()
    assert not path.exists()


def test_picture_files_of_keys_no_longer_kept_are_deleted(tmp_path):
    for key in "abc":
        picture_file(tmp_path, key).write_bytes(b"x")
    (tmp_path / "gallery.sqlite").write_bytes(b"keep me")
    forget_picture_files(tmp_path, ["b"])
    assert sorted(f.name for f in tmp_path.iterdir()) == ["gallery.sqlite",
                                                          picture_file(tmp_path, "b").name]


def test_an_add_with_a_kept_picture_index_matches_a_run_from_scratch(tmp_path, kept_always,
                                                                     monkeypatch):
    """Recaptures (pictures inside frames) and an add: the gallery keeps the
    picture index, the add only patches it, and the report is a fresh run's."""
    from matchkit.match.edits import Edit, apply_edit
    from matchkit.match.incremental import settings_key

    def recapture(pic, kind, seed):
        edit = Edit("r", ({"op": "recapture", "blur": 1.0, "noise": 5, "kind": kind,
                           "degrees": 25 + seed},))
        return apply_edit(pic, edit, "r")[0]

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        recapture(textured(880 + i), "print" if i % 2 else "monitor", i).save(
            folder / f"r{i}.jpg", quality=88)
        textured(890 + i).save(folder / f"other{i}.jpg", quality=90)
    settings = Settings(workers=1)
    g = tmp_path / "g"
    dedupe([folder], gallery=g, settings=settings)
    kept = picture_file(g, settings_key(settings))
    assert kept.exists()
    stored_keys = np.load(kept)["keys"]
    assert len(stored_keys)

    patched = []
    real_difference = picture_index._difference
    monkeypatch.setattr(picture_index, "_difference", lambda *a: patched.append(
        real_difference(*a)) or patched[-1])
    textured(880).save(folder / "z-original0.png")  # (sorts last: the next id)
    recapture(textured(881), "print", 1).resize((500, 380)).save(folder / "z-r1.jpg",
                                                                   quality=80)
    grown = dedupe([folder], gallery=g, settings=settings)
    assert _content(grown) == _content(dedupe([folder], settings=settings))
    now = np.load(kept)["keys"]
    # (the add put in only the new images' pictures, not every picture again)
    (gone, new), = patched
    assert 0 < len(new) < len(now) and len(gone) < len(stored_keys)
    with Gallery(g, settings) as gallery:
        records = {i: json.loads(r) for i, (_, r, _) in
                   gallery.match_records(settings_key(settings)).items()}
    with_pictures = {i for i, r in records.items() if r.get("fh")}
    assert set((now // PICTURE_KEY_STRIDE).tolist()) == with_pictures

    # Settings that change matching keep their own picture index; a key no
    # longer kept loses it.
    other = Settings(workers=1, verify_top=settings.verify_top + 1)
    dedupe([folder], gallery=g, settings=other)
    assert picture_file(g, settings_key(other)).exists() and kept.exists()
    monkeypatch.setattr("matchkit.store.gallery_matches.MAX_MATCH_KEYS", 1)
    dedupe([folder], gallery=g, settings=settings)
    assert kept.exists() and not picture_file(g, settings_key(other)).exists()
