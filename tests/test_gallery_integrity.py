"""Gallery integrity: one writer at a time, verified cache files, damaged databases.

Each test here failed before the fix: two writers left an index file that
lacked the other's images yet was stamped current; damaged, older or swapped
cache files were loaded blindly (segfaults, wrong answers, tracebacks); a
damaged database page gave a traceback and a 0-byte database was taken for a
new, empty gallery.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from matchkit import Gallery, GalleryError
from matchkit.store.gallery import DB_NAME, PHASH_INDEX_NAME
# (the descriptor index file of the default kind, IVF)
from matchkit.store.gallery_indexes import ORB_IVF_INDEX_NAME as ORB_INDEX_NAME
from matchkit.io.load import iter_image_files

from conftest import make_photo

import matchkit

#: The matchkit under test (subprocesses run the same one).
ROOT = Path(matchkit.__file__).resolve().parent.parent
#: Weights of the tiny ONNX model (mean colour -> 4-d): enough to test mechanics.
W = np.array([[1.0, 0.0, 0.5, 0.2], [0.0, 1.0, 0.5, -0.3], [0.3, -0.2, 1.0, 0.1]], np.float32)


def _photos(folder: Path, seeds) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        make_photo(s).save(folder / f"p{s:03d}.jpg", quality=90)
    return [str(p) for p in iter_image_files([folder])]


def _saved_gallery(tmp_path: Path, n: int) -> tuple[list[str], Path]:
    files = _photos(tmp_path / "photos", range(n))
    gdir = tmp_path / "g"
    with Gallery(gdir) as g:
        g.add(files)
        g.save()
    return files, gdir


def _model(tmp_path: Path) -> str:
    pytest.importorskip("onnxruntime")
    from test_embed import mean_colour_model
    return str(mean_colour_model(tmp_path / "colour.onnx", W, dims=["batch", 3, 16, 16]))


def _embedder(path: str):
    from matchkit.embed import load_embedder
    return load_embedder(path)


def _index_keys(g: Gallery) -> tuple[set, set]:
    return set(g.phash_index.keys().tolist()), {int(k) // 1024 for k in g.orb_index.keys()}


# -- two writers ----------------------------------------------------------------------------
def _writer(gdir, files, barrier, model=None, ids=None):
    """Load the indexes, wait for the other writer to have done the same, then write."""
    with Gallery(gdir) as g:
        if model:
            g.vector_index(_embedder(model).name)
        else:
            g.phash_index, g.orb_index
        barrier.wait(timeout=60)
        if model:
            g.embed(_embedder(model), ids=ids, workers=1)
        else:
            g.add(files)
            g.save()


def _run_two(target, args_a, args_b):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=target, args=(*a[:2], barrier, *a[2:])) for a in (args_a, args_b)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def test_two_concurrent_writers_leave_indexes_that_hold_every_image(tmp_path):
    files = _photos(tmp_path / "photos", range(10))
    gdir = tmp_path / "g"
    Gallery(gdir).close()
    _run_two(_writer, (gdir, files[:5]), (gdir, files[5:]))
    with Gallery(gdir, create=False) as g:
        assert len(g) == 10
        phash, orb = _index_keys(g)
        assert phash == set(g.ids()) and orb == set(g.ids())
        report = g.verify()
        assert report.ok, report.differences


def test_two_concurrent_embedders_leave_every_vector_indexed(tmp_path):
    files = _photos(tmp_path / "photos", range(12))
    model = _model(tmp_path)
    gdir = tmp_path / "g"
    with Gallery(gdir) as g:
        g.add(files)
        g.save()
        ids = g.ids()
        g.embed(_embedder(model), ids=ids[:1], workers=1)
    _run_two(_writer, (gdir, None, model, ids[1:6]), (gdir, None, model, ids[6:]))
    with Gallery(gdir, create=False) as g:
        name = _embedder(model).name
        assert set(g.vector_index(name).keys().tolist()) == set(ids)
        assert g.verify().ok


def _hold_lock(gdir, ready, release):
    with Gallery(gdir) as g:
        g.add([])  # any write takes the writer lock, held until close
        ready.set()
        release.wait(60)


def test_second_writer_waits_with_a_message_or_times_out(tmp_path, capfd):
    files = _photos(tmp_path / "photos", range(2))
    gdir = tmp_path / "g"
    Gallery(gdir).close()
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(gdir, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with Gallery(gdir, lock_timeout=0.3) as g:
            with pytest.raises(GalleryError, match="being written by another matchkit"):
                g.add(files)
            assert len(g) == 0  # readers are not blocked
        assert "waiting for another matchkit" in capfd.readouterr().err
    finally:
        release.set()
        holder.join(60)
    with Gallery(gdir, lock_timeout=5) as g:
        assert g.add(files).added == 2


# -- damaged cache files --------------------------------------------------------------------
_ANSWERS = r"""
import json, sys
from matchkit import Gallery
from matchkit.jobs.check import check
from matchkit.jobs.search import search
gdir, model, files = sys.argv[1], sys.argv[2], sys.argv[3:]
rep = check(gdir, files, k=3).to_dict()
out = {"check": [sorted(m["path"] for m in r.get("matches", []) if m.get("matched"))
                 for r in rep["results"]],
       "search": [[h.path for h in search(gdir, image=f, k=2, model=model)] for f in files]}
with Gallery(gdir, create=False) as g:
    out["verify"] = g.verify().to_dict() if hasattr(g, "verify") else {}
print(json.dumps(out))
"""


def _answers(gdir: Path, model: str, files: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _ANSWERS, str(gdir), model, *files],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def _flip_bits(path: Path, rng, n=8):
    data = bytearray(path.read_bytes())
    for pos in rng.integers(0, len(data) * 8, n):
        data[pos // 8] ^= 1 << (pos % 8)
    path.write_bytes(bytes(data))


def test_damaged_older_and_swapped_cache_files_are_rebuilt_not_trusted(tmp_path):
    files = _photos(tmp_path / "photos", range(8))
    model = _model(tmp_path)
    gdir = tmp_path / "g"
    with Gallery(gdir) as g:  # an older state of every cache file first
        g.add(files[:4])
        g.save()
        g.embed(_embedder(model), workers=1)
        vec_name = next(p.name for p in gdir.glob("vectors-*.usearch"))
    old = tmp_path / "old"
    shutil.copytree(gdir, old)
    with Gallery(gdir) as g:
        g.add(files)
        g.save()
        g.embed(_embedder(model), workers=1)
    clean = _answers(gdir, model, files)
    assert all(clean["check"]) and all(r[0] == f for r, f in zip(clean["search"], files))
    pristine = tmp_path / "pristine"
    shutil.copytree(gdir, pristine)
    rng = np.random.default_rng(7)
    garbage = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    cases = {
        "orb bits": lambda: _flip_bits(gdir / ORB_INDEX_NAME, rng),
        "phash bits": lambda: _flip_bits(gdir / PHASH_INDEX_NAME, rng),
        "vector bits": lambda: _flip_bits(gdir / vec_name, rng),
        "orb garbage": lambda: (gdir / ORB_INDEX_NAME).write_bytes(garbage),
        "vector truncated": lambda: (gdir / vec_name).write_bytes(
            (gdir / vec_name).read_bytes()[:100]),
        "phash empty": lambda: (gdir / PHASH_INDEX_NAME).write_bytes(b""),
        "swapped": lambda: (shutil.copy(pristine / ORB_INDEX_NAME, gdir / PHASH_INDEX_NAME),
                            shutil.copy(pristine / PHASH_INDEX_NAME, gdir / ORB_INDEX_NAME)),
        "older": lambda: [shutil.copy(old / n, gdir / n)
                          for n in (ORB_INDEX_NAME, PHASH_INDEX_NAME, vec_name)],
    }
    failed = []
    for what, damage in cases.items():
        shutil.rmtree(gdir)
        shutil.copytree(pristine, gdir)
        damage()
        try:
            got = _answers(gdir, model, files)
        except AssertionError as e:  # a crash (e.g. a segfault, exit -11)
            failed.append(f"{what}: {str(e)[:300]}")
            continue
        if (got["check"], got["search"]) != (clean["check"], clean["search"]):
            failed.append(f"{what}: answers differ from the clean gallery's")
        elif not (got["verify"].get("ok") and got["verify"].get("stale")):
            failed.append(f"{what}: verify says {got['verify']}")
    assert not failed, "; ".join(f[:150] for f in failed)


# -- damaged database -----------------------------------------------------------------------
def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "matchkit.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_damaged_database_page_is_a_one_line_error_with_a_recovery_hint(tmp_path):
    files, gdir = _saved_gallery(tmp_path, 6)
    db = gdir / DB_NAME
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    rng = np.random.default_rng(3)
    # The second half of the file: row and feature pages, met mid-run (the
    # schema on page 1 is intact, so the gallery opens).
    for start in range(len(data) // page // 2 * page, len(data), page):
        data[start:start + page] = rng.integers(0, 256, page, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))
    for args in (["check", "--gallery", gdir, files[0]], ["verify", gdir],
                 ["index", files[0], "--gallery", gdir, "-q"]):
        proc = _cli(*args)
        assert proc.returncode == 2, (args, proc.stderr[-1500:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("matchkit: error: "), proc.stderr
        assert ".recover" in lines[0] and "Traceback" not in proc.stderr


def test_empty_database_file_is_refused_not_recreated(tmp_path):
    gdir = tmp_path / "g"
    gdir.mkdir()
    (gdir / DB_NAME).write_bytes(b"")
    with pytest.raises(GalleryError, match="empty"):
        Gallery(gdir)
    assert (gdir / DB_NAME).stat().st_size == 0
    files = _photos(tmp_path / "photos", range(1))
    proc = _cli("index", files[0], "--gallery", gdir, "-q")
    assert proc.returncode == 2 and "empty (0 bytes)" in proc.stderr
    assert (gdir / DB_NAME).stat().st_size == 0


def test_verify_cli_reports_and_repairs(tmp_path):
    files, gdir = _saved_gallery(tmp_path, 4)
    _flip_bits(gdir / ORB_INDEX_NAME, np.random.default_rng(1))
    proc = _cli("verify", gdir)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["ok"] and out["stale"] and not out["repaired"]
    proc = _cli("verify", gdir, "--repair")
    assert json.loads(proc.stdout)["repaired"] == [ORB_INDEX_NAME]
    out = json.loads(_cli("verify", gdir).stdout)
    assert out["ok"] and not out["stale"] and out["keys"][PHASH_INDEX_NAME] == 4
