"""Gallery: round trip, incremental re-add, remove/update, atomic saves under kill."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from matchkit import Gallery, GalleryError, Settings
from matchkit.store.gallery import DB_NAME, ORB_INDEX_NAME, PHASH_INDEX_NAME
from matchkit.store.gallery_indexes import ORB_IVF_INDEX_NAME, ORB_KEY_STRIDE
from matchkit.io.load import iter_image_files

from conftest import make_photo

#: The tests of the descriptor index worked in the background (``HammingIndex``
#: add and save watched on the index worker) build HNSW galleries.
HNSW = Settings(vote_index="hnsw")


def _files(folder):
    return list(iter_image_files([folder]))


def test_round_trip_persists_records_and_index(photo_dir, tmp_path):
    gdir = tmp_path / "g"
    with Gallery(gdir) as g:
        report = g.add(_files(photo_dir))
        g.save()
        assert report.added == 9 and not report.skipped
        before = g.images()
        variants = g.phash_variants(sorted(before))
    assert (gdir / DB_NAME).exists() and (gdir / PHASH_INDEX_NAME).exists()
    with Gallery(gdir, create=False) as g:
        assert g.images() == before
        np.testing.assert_array_equal(g.phash_variants(sorted(before)), variants)
        index = g.phash_index
        assert len(index) == 9
        # Each image finds itself at distance 0 (a.jpg has exact copies: ask for all).
        keys, dists = index.search(variants[:, 0], 9)
        for i, image_id in enumerate(sorted(before)):
            assert image_id in keys[i][dists[i] == 0]


def test_open_missing_gallery_without_create_fails(tmp_path):
    with pytest.raises(GalleryError, match="no gallery"):
        Gallery(tmp_path / "nope", create=False)


def test_corrupt_database_is_a_clear_error(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(GalleryError, match="not a usable gallery"):
        Gallery(tmp_path)


def test_incremental_add_only_processes_new_or_changed(photo_dir, tmp_path):
    with Gallery(tmp_path / "g") as g:
        first = g.add(_files(photo_dir))
        again = g.add(_files(photo_dir))
        assert (again.added, again.updated, again.unchanged) == (0, 0, 9)
        assert sorted(again.ids) == sorted(first.ids)
        # Change one file (new content, new mtime) and add a new one.
        make_photo(50).save(photo_dir / "c.jpg", quality=90)
        os.utime(photo_dir / "c.jpg", ns=(time.time_ns(), time.time_ns() + 10**9))
        make_photo(51).save(photo_dir / "e.jpg", quality=90)
        third = g.add(_files(photo_dir))
        assert (third.added, third.updated, third.unchanged) == (1, 1, 8)
        assert len(g) == 10


def test_unreadable_files_are_remembered_not_redecoded(photo_dir, tmp_path, monkeypatch):
    (photo_dir / "bad.jpg").write_bytes(b"\xff\xd8\xff" + b"garbage" * 10)
    with Gallery(tmp_path / "g") as g:
        r1 = g.add(_files(photo_dir))
        assert [s.path for s in r1.skipped] == [str((photo_dir / "bad.jpg").resolve())]
        import matchkit.store.gallery as gallery_mod
        calls = []
        real = gallery_mod.extract_many
        monkeypatch.setattr(gallery_mod, "extract_many",
                            lambda paths, *a, **k: calls.append(list(paths)) or real(paths, *a, **k))
        r2 = g.add(_files(photo_dir))
        assert calls == [[]]  # nothing decoded again
        assert r2.skipped[0].reason == r1.skipped[0].reason


def test_remove_and_update(photo_dir, tmp_path):
    with Gallery(tmp_path / "g") as g:
        g.add(_files(photo_dir))
        rec = g.update(photo_dir / "b.jpg", meta={"year": 2021}, labels=["boat"])
        assert rec.meta == {"year": 2021} and rec.labels == ["boat"]
        rec = g.update(photo_dir / "b.jpg", meta={"source": "phone"})
        assert rec.meta == {"year": 2021, "source": "phone"}
        assert g.remove([photo_dir / "b.jpg", photo_dir / "nothing.jpg"]) == 1
        assert g.find(photo_dir / "b.jpg") is None
        assert rec.id not in g.phash_index
        g.save()
    with Gallery(tmp_path / "g") as g:
        assert len(g) == 8 and len(g.phash_index) == 8


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_removing_images_uses_the_saved_index_files(photo_dir, tmp_path, monkeypatch, kind):
    """A gallery opened to remove images loads its saved index files and
    takes the images out of them; it does not rebuild them from every row
    (loaded after the removal's commit, the files looked stale)."""
    from matchkit.store.gallery_indexes import _IndexesMixin

    gdir, settings = tmp_path / "g", Settings(vote_index=kind)
    with Gallery(gdir, settings) as g:
        g.add(_files(photo_dir))
        gone = g.find(photo_dir / "b.jpg").id
    built = []
    real = _IndexesMixin._new_index
    monkeypatch.setattr(_IndexesMixin, "_new_index",
                        lambda self, name: built.append(name) or real(self, name))
    with Gallery(gdir, settings) as g:
        assert g.remove([photo_dir / "b.jpg"]) == 1
        assert gone not in g.phash_index and len(g.phash_index) == 8
    assert built == []
    with Gallery(gdir, settings) as g:  # (the files saved hold the removal)
        assert len(g.phash_index) == 8 and gone not in g.phash_index
        keys = np.asarray(g.orb_index.keys())
        assert len(keys) and not (keys // ORB_KEY_STRIDE == gone).any()
    assert built == []


def test_stale_index_file_is_rebuilt(photo_dir, tmp_path):
    gdir = tmp_path / "g"
    with Gallery(gdir) as g:
        g.add(_files(photo_dir)[:4])
    older = (gdir / PHASH_INDEX_NAME).read_bytes()
    with Gallery(gdir) as g:
        g.add(_files(photo_dir))
    (gdir / PHASH_INDEX_NAME).write_bytes(older)  # a file from before the last add
    with Gallery(gdir) as g:
        assert len(g.phash_index) == len(g) == 9


@pytest.mark.parametrize("kind,orb_file", [("ivf", ORB_IVF_INDEX_NAME), ("hnsw", ORB_INDEX_NAME)])
def test_closing_a_writer_saves_the_indexes_it_changed(photo_dir, tmp_path, monkeypatch, kind,
                                                        orb_file):
    gdir = tmp_path / "g"
    with Gallery(gdir, Settings(vote_index=kind)) as g:
        g.add(_files(photo_dir))
    assert (gdir / PHASH_INDEX_NAME).exists() and (gdir / orb_file).exists()
    rebuilt = []
    real = Gallery._new_index
    monkeypatch.setattr(Gallery, "_new_index", lambda self, name: rebuilt.append(name)
                        or real(self, name))
    with Gallery(gdir, create=False) as g:  # a reader: takes the saved files
        assert len(g.phash_index) == 9 and len(g.orb_index) > 0
        report = g.verify()
        assert report.differences == [] and report.stale == []
    assert rebuilt == []


# -- atomic saves under SIGKILL ---------------------------------------------

_CHILD = textwrap.dedent("""
    import sys, time, pathlib
    sys.path.insert(0, {tests!r})
    from matchkit import Gallery
    from matchkit.index.hamming import HammingIndex
    import matchkit.util.fs as fs
    from conftest import make_photo

    gdir, photos, mode, marker = sys.argv[1:5]
    marker = pathlib.Path(marker)
    real_replace = fs.os.replace
    real_save = HammingIndex.save

    def slow_replace(src, dst):          # killed after the temp file, before the rename
        marker.write_text("in-save")
        time.sleep(30)
        real_replace(src, dst)

    def save_then_hang(self, path):       # killed after the rename, before the stamp
        real_save(self, path)
        marker.write_text("in-save")
        time.sleep(30)

    with Gallery(gdir) as g:
        files = sorted(pathlib.Path(photos).glob("*.jpg"))
        g.add(files[:3]); g.save()        # last good state: 3 images
        g.add(files[3:])                  # 6 images committed, index not yet saved
        if mode == "before-rename":
            fs.os.replace = slow_replace
        elif mode == "before-stamp":
            HammingIndex.save = save_then_hang
        elif mode == "mid-add":
            import matchkit.store.gallery as gm
            import matchkit.store.adding as adding
            adding.BATCH = 1
            real_write = gm.Gallery._write_batch
            def write_then_hang(self, *a):
                real_write(self, *a)
                marker.write_text("in-save")
                time.sleep(30)
            gm.Gallery._write_batch = write_then_hang
            more = pathlib.Path(photos) / "more"
            g.add(sorted(more.glob("*.jpg")))
        g.save()
""")


@pytest.mark.parametrize("mode", ["before-rename", "before-stamp", "mid-add"])
def test_killed_save_leaves_a_consistent_gallery(tmp_path, mode):
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    for i in range(6):
        make_photo(100 + i).save(photos / f"p{i}.jpg", quality=90)
    for i in range(3):
        make_photo(200 + i).save(photos / "more" / f"m{i}.jpg", quality=90)
    gdir, marker = tmp_path / "g", tmp_path / "marker"
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(Path(__file__).parent)))
    child = subprocess.Popen([sys.executable, str(script), str(gdir), str(photos), mode,
                              str(marker)])
    deadline = time.time() + 60
    while not marker.exists():
        assert child.poll() is None, "child ended before reaching the save"
        assert time.time() < deadline
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL

    con = sqlite3.connect(gdir / DB_NAME)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    with Gallery(gdir, create=False) as g:
        assert not list(gdir.glob(".*tmp*"))  # a dead writer's temp file is cleaned up
        n = len(g)
        expected = 7 if mode == "mid-add" else 6  # every committed batch survives
        assert n == expected
        ids = g.ids()
        variants = g.phash_variants(ids)
        keys, dists = g.phash_index.search(variants[:, 0], 1)
        assert len(g.phash_index) == n
        assert keys[:, 0].tolist() == ids and set(dists[:, 0].tolist()) == {0}
        # And the gallery keeps working after the crash.
        g.add(sorted(photos.glob("*.jpg")))
        g.save()
    with Gallery(gdir) as g:
        assert len(g.phash_index) == len(g) == expected


def test_gallery_written_before_quality_and_blank_columns_is_migrated(tmp_path):
    """An existing gallery gains the new columns on open; its rows are decoded
    once more on the next add (to fill them), then stay unchanged."""
    from PIL import Image

    from matchkit.store.gallery import SCHEMA_VERSION

    make_photo(40).save(tmp_path / "a.jpg", quality=70)
    Image.new("RGBA", (50, 40), (0, 0, 0, 0)).save(tmp_path / "empty.png")
    files = [tmp_path / "a.jpg", tmp_path / "empty.png"]
    with Gallery(tmp_path / "g") as g:
        g.add(files)
    db = sqlite3.connect(tmp_path / "g" / DB_NAME)
    for column in ("jpeg_quality", "blank"):  # what an older matchkit wrote
        db.execute(f"ALTER TABLE images DROP COLUMN {column}")
    db.commit()
    db.close()
    with Gallery(tmp_path / "g") as g:
        assert g.find(tmp_path / "a.jpg").jpeg_quality is None
        report = g.add(files)
        assert (report.updated, report.unchanged) == (2, 0)
        assert g.find(tmp_path / "a.jpg").jpeg_quality == 70
        assert g.find(tmp_path / "empty.png").blank
        assert not g.find(tmp_path / "a.jpg").blank
    with Gallery(tmp_path / "g") as g:
        assert g.add(files).unchanged == 2
        assert g._meta("schema_version") == str(SCHEMA_VERSION)


def test_leaving_a_with_block_by_an_exception_saves_no_index(photo_dir, tmp_path):
    gdir = tmp_path / "g"
    with pytest.raises(KeyboardInterrupt):
        with Gallery(gdir) as g:
            g.add(_files(photo_dir))
            raise KeyboardInterrupt
    assert not (gdir / PHASH_INDEX_NAME).exists()
    with Gallery(gdir) as g:  # rebuilt from the committed rows
        assert len(g.phash_index) == len(g) == 9


# -- the descriptor index built on a worker thread ---------------------------

def test_index_in_background_gives_the_same_index(photo_dir, tmp_path, monkeypatch):
    """An add with ``index_in_background`` returns before the descriptors are
    in the graph; ``orb_index_ready()`` (called on this thread, waited on
    another) and every later use see all of them, and the saved files are
    current (not rebuilt on the next open)."""
    import threading

    from matchkit.index.hamming import HammingIndex

    files = _files(photo_dir)
    with Gallery(tmp_path / "plain", HNSW) as g:
        g.add(files)
        keys = sorted(g.orb_index.keys().tolist())
    release, started = threading.Event(), threading.Event()
    real_add = HammingIndex.add

    def slow_add(self, *a, **kw):
        if threading.current_thread().name.startswith("matchkit-index"):
            started.set()
            assert release.wait(10)
        return real_add(self, *a, **kw)

    monkeypatch.setattr(HammingIndex, "add", slow_add)
    gdir = tmp_path / "behind"
    with Gallery(gdir, HNSW) as g:
        g.orb_index  # (loaded before: the add goes to the loaded graph)
        g.index_in_background = True
        g.add(files)  # returns while the worker waits
        assert started.wait(10) and g._indexing is not None and not g._indexing.done()
        ready = g.orb_index_ready()
        got = []
        reader = threading.Thread(target=lambda: got.append(len(ready())))
        reader.start()
        time.sleep(0.2)
        assert got == []  # (still waiting for the add)
        release.set()
        reader.join(10)
        assert got == [len(keys)]
        assert sorted(g.orb_index.keys().tolist()) == keys
    monkeypatch.setattr(HammingIndex, "add", real_add)
    with Gallery(gdir, create=False) as g:
        report = g.verify()
        assert report.differences == [] and report.stale == []
        assert sorted(g.orb_index.keys().tolist()) == keys


def test_an_add_loads_the_saved_descriptor_index_ahead(photo_dir, tmp_path, monkeypatch):
    """With ``index_in_background``, an add that has files to decode starts
    loading the saved descriptor index on the index worker
    (``prefetch_indexes``); its first use takes that index, which holds what
    a load on this thread would. An add with nothing to decode starts none."""
    import threading

    from matchkit.store import gallery_indexes

    files = _files(photo_dir)
    with Gallery(tmp_path / "g", HNSW) as g:
        g.add(files[:6])
    loaded_on = []
    real = gallery_indexes.file_loader

    def spy(file, *a, **kw):
        load = real(file, *a, **kw)

        def wrapped():
            if Path(file).name == ORB_INDEX_NAME:
                loaded_on.append(threading.current_thread().name)
            return load()
        return wrapped

    monkeypatch.setattr(gallery_indexes, "file_loader", spy)
    with Gallery(tmp_path / "g", create=False) as g:
        g.index_in_background = True
        g.add(files[:6])  # (all unchanged: nothing to decode, nothing loaded ahead)
        assert g._prefetched is None and loaded_on == []
        g.add(files[6:])
        assert g._prefetched is None  # (taken by the add's first write)
        keys = sorted(g.orb_index.keys().tolist())
    assert len(loaded_on) == 1 and loaded_on[0].startswith("matchkit-index")
    with Gallery(tmp_path / "g", create=False) as g:
        assert g.verify().differences == []
        assert sorted(g.orb_index.keys().tolist()) == keys
    with Gallery(tmp_path / "at-once", HNSW) as g:
        g.add(files)
        assert sorted(g.orb_index.keys().tolist()) == keys


def test_an_index_loaded_ahead_is_used_only_against_its_own_stamp(photo_dir, tmp_path):
    files = _files(photo_dir)
    with Gallery(tmp_path / "g", HNSW) as g:
        g.add(files)
        n = len(g.orb_index)
    with Gallery(tmp_path / "g", create=False) as g:
        g.index_in_background = True
        g.prefetch_indexes()
        record = g._file_record("orb")
        assert g._prefetched is not None and g._prefetched[0] == record
        assert g._take_prefetched("orb", {**record, "sha256": "0" * 64}) is None
        assert g._prefetched is None
        assert len(g.orb_index) == n  # (loaded here, as without it)


def _counted_saves(monkeypatch):
    from matchkit.index.hamming import HammingIndex

    saved = []
    real_save = HammingIndex.save

    def save(self, path):
        saved.append(os.path.basename(path))
        return real_save(self, path)
    monkeypatch.setattr(HammingIndex, "save", save)
    return saved


def test_index_files_written_ahead_are_recorded_not_written_again(photo_dir, tmp_path,
                                                                  monkeypatch):
    """``save_ahead`` writes the changed descriptor index file on the index
    worker after its add; ``save`` records it without writing it again (and
    writes the pHash index), and the next open loads both as current. An
    index changed after that is written again."""
    files = _files(photo_dir)
    saved = _counted_saves(monkeypatch)
    with Gallery(tmp_path / "g", HNSW) as g:
        g.index_in_background = True
        g.add(files[:6])
        g.save_ahead()
        g._saving.result(10)
        assert saved == [ORB_INDEX_NAME]
        g.save()
        assert sorted(saved) == sorted([ORB_INDEX_NAME, PHASH_INDEX_NAME])  # (not again)
        keys = sorted(g.orb_index.keys().tolist())
    with Gallery(tmp_path / "g", create=False) as g:
        report = g.verify()
        assert report.differences == [] and report.stale == []
        assert sorted(g.orb_index.keys().tolist()) == keys
        g.index_in_background = True
        g.save_ahead()  # (nothing changed: nothing written)
        assert g._saving is None and len(saved) == 2
        g.add(files[6:8])
        g.save_ahead()
        g.add(files[8:])  # (waits for the file, then changes the index again)
        g.save()
        assert saved[2:] == [ORB_INDEX_NAME, ORB_INDEX_NAME, PHASH_INDEX_NAME]
        keys = sorted(g.orb_index.keys().tolist())
    with Gallery(tmp_path / "g", create=False) as g:
        report = g.verify()
        assert report.differences == [] and report.stale == []
        assert sorted(g.orb_index.keys().tolist()) == keys and len(g) == len(files)


def test_index_in_background_failure_is_raised_and_the_index_rebuilt(photo_dir, tmp_path,
                                                                     monkeypatch):
    """An add that fails on the worker raises at the next use of the index;
    the half-built graph is dropped and rebuilt from the database."""
    import threading

    from matchkit.index.hamming import HammingIndex

    files = _files(photo_dir)
    with Gallery(tmp_path / "plain", HNSW) as g:
        g.add(files)
        keys = sorted(g.orb_index.keys().tolist())
    real_add = HammingIndex.add

    def failing_add(self, *a, **kw):
        if threading.current_thread().name.startswith("matchkit-index"):
            raise MemoryError("no room for the graph")
        return real_add(self, *a, **kw)

    monkeypatch.setattr(HammingIndex, "add", failing_add)
    saved = _counted_saves(monkeypatch)
    with Gallery(tmp_path / "g", HNSW) as g:
        g.index_in_background = True
        g.add(files)
        g.save_ahead()  # (the half-built graph is not written)
        assert g._saving.result(10) is None and saved == []
        with pytest.raises(MemoryError, match="no room"):
            g.orb_index
        g.index_in_background = False
        assert sorted(g.orb_index.keys().tolist()) == keys  # rebuilt from the database
        assert g.verify().differences == []
