"""A decoder that kills its process (segfault, OOM kill) is not a Python
exception: it used to break the process pool (``BrokenProcessPool``) and end
the whole run. Now only the file that kills its worker is skipped."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_photo
from matchkit import features
from matchkit.store import gallery as gallery_mod
from matchkit.cli.commands import cli
from matchkit.config import Settings
from matchkit.features import CRASH_HOOK_ENV, ImageRecord, extract_many
from matchkit.store.gallery import Gallery
from matchkit.io.load import ImageLoadError

CRASH = "crash_me.png"


@pytest.fixture
def crash_set(tmp_path: Path) -> list[Path]:
    """30 good photos with crash_me.png in the middle, in input order."""
    d = tmp_path / "in"
    d.mkdir()
    files = []
    for i in range(30):
        make_photo(100 + i, (96, 72)).save(d / f"p{i:02d}.png")
        files.append(d / f"p{i:02d}.png")
        if i == 14:
            make_photo(999, (96, 72)).save(d / CRASH)
            files.append(d / CRASH)
    return files


#: Runs extract_many in a fresh process (no OpenCV threads yet, so forking is
#: safe) with a decoder patched to crash on crash_me.png; forked workers
#: inherit the patch, so no production hook is involved.
_PATCHED_RUN = """
import json, multiprocessing, os, signal, sys
from matchkit import features
from matchkit.config import Settings
how, workers, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
real = features.record.load_image
def crashing(path, *a, **k):
    if os.path.basename(path) == "crash_me.png":
        os.kill(os.getpid(), signal.SIGSEGV) if how == "segv" else os._exit(139)
    return real(path, *a, **k)
features.record.load_image = crashing
features.pool._pool_context = lambda: multiprocessing.get_context("fork")
features.pool.PROCESS_POOL_MIN_FILES = 0  # the pool even for 31 files
features.pool.EXTRACT_IN_WORKERS = True  # and one worker process for --workers 1
print(json.dumps([(p, r.reason, r.size, r.mtime_ns) if isinstance(r, features.ImageLoadError)
                  else (p, None, None, None) for p, r in features.extract_many(
                      paths, Settings(workers=workers))]))
"""


def _run_patched(files: list[Path], how: str, workers: int) -> list:
    env = dict(os.environ, PYTHONPATH=str(Path(features.__file__).parents[2]))
    env.pop(CRASH_HOOK_ENV, None)
    res = subprocess.run([sys.executable, "-c", _PATCHED_RUN, how, str(workers),
                          *map(str, files)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def _check(files: list[Path], rows: list, death: str) -> None:
    assert [r[0] for r in rows] == [str(f) for f in files]  # input order kept
    assert [r[0] for r in rows if r[1] is not None] == [str(files[15])]  # only the culprit
    _, reason, size, mtime_ns = rows[15]
    assert reason == f"the decoder crashed on this file (worker process died: {death})"
    st = os.stat(files[15])
    assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("workers", [2, 1])
def test_segfault_in_worker_skips_only_that_file(crash_set, workers):
    _check(crash_set, _run_patched(crash_set, "segv", workers), "signal SIGSEGV")


def test_worker_that_exits_is_named_by_exit_code(crash_set):
    _check(crash_set, _run_patched(crash_set, "exit", 2), "exit code 139")


def _rows(results) -> list:
    return [(p, r.reason, r.size, r.mtime_ns) if isinstance(r, ImageLoadError)
            else (p, None, None, None) for p, r in results]


@pytest.mark.parametrize("start_method", ["auto", "forkserver"])
def test_crash_hook_works_whatever_the_start_method(crash_set, monkeypatch, start_method):
    """The test hook travels to workers as an argument, not through the
    environment a forkserver was started with."""
    monkeypatch.setattr(features.pool, "PROCESS_POOL_MIN_FILES", 0)
    if start_method != "auto":
        monkeypatch.setattr(features.pool, "_pool_context",
                            lambda: multiprocessing.get_context(start_method))
    monkeypatch.setenv(CRASH_HOOK_ENV, CRASH)
    results = list(extract_many(crash_set, Settings(workers=2)))
    assert all(isinstance(r, ImageRecord) for p, r in results if not p.endswith(CRASH))
    _check(crash_set, _rows(results), "signal SIGSEGV")


def test_crash_hook_is_inert_without_its_variable(crash_set, monkeypatch):
    monkeypatch.setattr(features.pool, "EXTRACT_IN_WORKERS", True)
    monkeypatch.delenv(CRASH_HOOK_ENV, raising=False)
    results = list(extract_many(crash_set[14:17], Settings(workers=1)))
    assert all(isinstance(r, ImageRecord) for _, r in results)


def test_gallery_records_the_crash_and_does_not_retry_it(crash_set, tmp_path, monkeypatch):
    monkeypatch.setattr(features.pool, "EXTRACT_IN_WORKERS", True)
    monkeypatch.setenv(CRASH_HOOK_ENV, CRASH)
    with Gallery(tmp_path / "g") as g:
        first = g.add(crash_set)
        assert first.added == 30
        assert [(Path(s.path).name, s.reason) for s in first.skipped] == [
            (CRASH, "the decoder crashed on this file (worker process died: signal SIGSEGV)")]
        # An unchanged crashing file is not handed to a decoder again.
        real = gallery_mod.extract_many
        monkeypatch.setattr(gallery_mod, "extract_many", lambda paths, *a, **k: (
            pytest.fail("read again") if paths else real(paths, *a, **k)))
        again = g.add(crash_set)
    assert again.unchanged == 30 and [Path(s.path).name for s in again.skipped] == [CRASH]


def test_index_with_one_worker_survives_a_segfault(crash_set, tmp_path, monkeypatch):
    """``--workers 1`` runs extraction in one worker process, not in-process:
    the CLI (this very process under CliRunner) lives on."""
    monkeypatch.setattr(features.pool, "EXTRACT_IN_WORKERS", True)
    monkeypatch.setenv(CRASH_HOOK_ENV, CRASH)
    res = CliRunner().invoke(cli, ["index", str(crash_set[0].parent), "--gallery",
                                   str(tmp_path / "g"), "--no-embed", "--workers", "1", "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["added"] == 30
    assert [Path(s["path"]).name for s in report["skipped"]] == [CRASH]
    assert "worker process died: signal SIGSEGV" in report["skipped"][0]["reason"]


_AFTER_OPENCV = """
import sys
from matchkit import features
from matchkit.config import Settings
paths = sys.argv[1:]
done = 0
for _ in range(8):  # the hang is a race: about one fork in three
    features._extract_or_reason(paths[0], Settings())  # OpenCV's thread pool now runs here
    features.pool.EXTRACT_IN_WORKERS = True
    done += sum(1 for _ in features.extract_many(paths, Settings(workers=1)))
print(done)
"""


def test_no_hang_when_opencv_threads_run_in_the_caller(tmp_path):
    """A child forked after OpenCV's (native, invisible to ``threading``)
    thread pool ran hung for good in its first OpenCV call."""
    files = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, f in enumerate(files):
        make_photo(i, (800, 600)).save(f, quality=90)
    env = dict(os.environ, PYTHONPATH=str(Path(features.__file__).parents[2]))
    proc = subprocess.Popen([sys.executable, "-c", _AFTER_OPENCV, *map(str, files)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the hung workers too
        proc.communicate()
        pytest.fail("extraction hung")
    assert proc.returncode == 0 and out.strip() == "24", err[-2000:]
