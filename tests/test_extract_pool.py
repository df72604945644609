"""The extraction pool keeps only a few chunks out ahead of its caller, and its
workers run below the caller's priority: the caller (the gallery's writer)
is the slower side, so results it has not taken would pile up in its memory
(1.6 GB at 50,000 images), and at equal priority it got two thirds of a core."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from conftest import make_photo
from matchkit import features
from matchkit.config import Settings
from matchkit.features import ImageRecord, extract_many


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    files = []
    for i in range(40):
        files.append(tmp_path / f"p{i:02d}.png")
        make_photo(200 + i, (80, 60)).save(files[-1])
    return files


def test_pool_keeps_a_bounded_window_ahead_of_its_caller(photos, monkeypatch):
    """A caller that takes results slowly never has more files submitted
    and not yet taken than ``IMAGES_AHEAD`` allows (at least two chunks a
    worker)."""
    submitted = []

    class Counting(ProcessPoolExecutor):
        def submit(self, fn, paths, *args, **kwargs):
            submitted.append(len(paths))
            return super().submit(fn, paths, *args, **kwargs)

    monkeypatch.setattr(features.pool, "ProcessPoolExecutor", Counting)
    monkeypatch.setattr(features.pool, "PROCESS_POOL_MIN_FILES", 0)
    monkeypatch.setattr(features.pool, "IMAGES_AHEAD", 1)
    size = len(photos) // (2 * 8)  # _in_pool's chunk size for 2 workers
    taken, most_out = [], 0
    for path, result in extract_many(photos, Settings(workers=2)):
        taken.append((path, result))
        most_out = max(most_out, sum(submitted) - len(taken))
    assert [p for p, _ in taken] == [str(p) for p in photos]  # all, in order
    assert all(isinstance(r, ImageRecord) for _, r in taken)
    assert sum(submitted) == len(photos)
    # Two workers, two chunks each ahead, and the chunk being handed over.
    assert most_out <= 4 * size + size
    assert most_out < len(photos) // 2  # all at once would be 39


def test_crash_past_the_first_window_skips_only_that_file(tmp_path, monkeypatch):
    """A worker dies on a file whose chunk was submitted after others were
    taken: the chunks never submitted still run, in a fresh pool."""
    d = tmp_path / "in"
    d.mkdir()
    files = []
    for i in range(30):
        files.append(d / f"p{i:02d}.png")
        make_photo(300 + i, (80, 60)).save(files[-1])
    crash = d / "crash_me.png"
    make_photo(999, (80, 60)).save(crash)
    files.insert(22, crash)
    monkeypatch.setattr(features.pool, "PROCESS_POOL_MIN_FILES", 0)
    monkeypatch.setattr(features.pool, "IMAGES_AHEAD", 1)
    monkeypatch.setenv(features.CRASH_HOOK_ENV, crash.name)
    results = list(extract_many(files, Settings(workers=2)))
    assert [p for p, _ in results] == [str(f) for f in files]
    failed = [(p, r.reason) for p, r in results if not isinstance(r, ImageRecord)]
    assert failed == [(str(crash), "the decoder crashed on this file "
                                   "(worker process died: signal SIGSEGV)")]


def test_pool_broken_before_a_submission_loses_no_file(photos, monkeypatch):
    """A worker can die between one result and the next submission; then
    ``submit`` itself raises BrokenProcessPool (CI saw it once). The chunk
    that was never sent waits for the next pool, and every file still gets
    its record. Simulated: the first pool refuses its third submission."""
    from concurrent.futures.process import BrokenProcessPool

    pools = []

    class RefusingPool(ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)
            self.sent = 0

        def submit(self, *args, **kwargs):
            self.sent += 1
            if len(pools) == 1 and self.sent == 3:
                raise BrokenProcessPool("a child process terminated abruptly (simulated)")
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(features.pool, "ProcessPoolExecutor", RefusingPool)
    monkeypatch.setattr(features.pool, "PROCESS_POOL_MIN_FILES", 0)
    monkeypatch.setattr(features.pool, "IMAGES_AHEAD", 1)
    results = list(extract_many(photos, Settings(workers=2)))
    assert [p for p, _ in results] == [str(f) for f in photos]
    assert all(isinstance(r, ImageRecord) for _, r in results)
    assert len(pools) >= 2  # the chunks not sent ran in a fresh pool


def _niceness(_: object) -> int:
    return os.nice(0)


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no os.nice on this platform")
def test_extraction_workers_run_below_their_caller():
    ours = os.nice(0)
    with ProcessPoolExecutor(1, mp_context=features._pool_context(),
                             initializer=features._worker_init, initargs=(None,)) as pool:
        theirs = pool.submit(_niceness, None).result()
    assert theirs == min(19, ours + features.WORKER_NICE)
    assert features.WORKER_NICE > 0
