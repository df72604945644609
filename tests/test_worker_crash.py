"""A decoder that kills its process (segfault, OOM kill) is not a Python
exception: it used to break the process pool (``BrokenProcessPool``) and end
the whole run. Now only the file that kills its worker is skipped."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_photo
from matchkit import features, gallery as gallery_mod
from matchkit.cli import cli
from matchkit.config import Settings
CRASH_HOOK_ENV = "MATCHKIT_TEST_CRASH_ON"
from matchkit.features import ImageRecord, extract_many
from matchkit.gallery import Gallery
from matchkit.io import ImageLoadError

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


def _fork_decoder_crash(monkeypatch, kill) -> None:
    """A decoder that crashes on crash_me.png, patched in this process and
    inherited by forked workers (no production hook involved)."""
    real = features.load_image

    def crashing(path, *a, **k):
        if os.path.basename(path) == CRASH:
            kill()
        return real(path, *a, **k)

    monkeypatch.setattr(features, "load_image", crashing)
    monkeypatch.setattr(features, "_pool_context", lambda: multiprocessing.get_context("fork"))


def _check(files: list[Path], results, death: str) -> None:
    assert [p for p, _ in results] == [str(f) for f in files]  # input order kept
    good = [r for p, r in results if not p.endswith(CRASH)]
    assert len(good) == 30 and all(isinstance(r, ImageRecord) for r in good)
    (bad,) = [r for p, r in results if p.endswith(CRASH)]
    assert isinstance(bad, ImageLoadError)
    assert bad.reason == f"the decoder crashed on this file (worker process died: {death})"
    st = os.stat(files[15])
    assert (bad.size, bad.mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("workers", [2, 1])
def test_segfault_in_worker_skips_only_that_file(crash_set, monkeypatch, workers):
    monkeypatch.setattr(features, "PROCESS_POOL_MIN_FILES", 0)  # the pool even for 31 files
    _fork_decoder_crash(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGSEGV))
    results = list(extract_many(crash_set, Settings(workers=workers)))
    _check(crash_set, results, "signal SIGSEGV")


def test_worker_that_exits_is_named_by_exit_code(crash_set, monkeypatch):
    monkeypatch.setattr(features, "PROCESS_POOL_MIN_FILES", 0)
    _fork_decoder_crash(monkeypatch, lambda: os._exit(139))
    results = list(extract_many(crash_set, Settings(workers=2)))
    _check(crash_set, results, "exit code 139")


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_crash_hook_works_whatever_the_start_method(crash_set, monkeypatch, start_method):
    """The test hook travels to workers as an argument, not through the
    environment a forkserver was started with."""
    monkeypatch.setattr(features, "PROCESS_POOL_MIN_FILES", 0)
    monkeypatch.setattr(features, "_pool_context",
                        lambda: multiprocessing.get_context(start_method))
    monkeypatch.setenv(CRASH_HOOK_ENV, CRASH)
    results = list(extract_many(crash_set, Settings(workers=2)))
    _check(crash_set, results, "signal SIGSEGV")


def test_crash_hook_is_inert_without_its_variable(crash_set, monkeypatch):
    monkeypatch.delenv(CRASH_HOOK_ENV, raising=False)
    results = list(extract_many(crash_set[14:17], Settings(workers=1)))
    assert all(isinstance(r, ImageRecord) for _, r in results)


def test_gallery_records_the_crash_and_does_not_retry_it(crash_set, tmp_path, monkeypatch):
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
    monkeypatch.setenv(CRASH_HOOK_ENV, CRASH)
    res = CliRunner().invoke(cli, ["index", str(crash_set[0].parent), "--gallery",
                                   str(tmp_path / "g"), "--no-embed", "--workers", "1", "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["added"] == 30
    assert [Path(s["path"]).name for s in report["skipped"]] == [CRASH]
    assert "worker process died: signal SIGSEGV" in report["skipped"][0]["reason"]
