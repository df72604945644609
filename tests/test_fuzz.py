"""Fuzzing: 500 mutated image files (seeded, tests/_fuzz_data.py) through dedupe.

No crash, no hang, every file either processed (a gallery row) or skipped
with a reason; valid files of extreme sizes are processed, never skipped.
The long run (10,000 files) is ``benchmarks/bench_fuzz.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from _fuzz_data import make_fuzz_set
from matchkit.jobs.dedupe import dedupe
from matchkit.store.gallery import Gallery

N_FILES = 500
SEED = 20261202
#: Far above the ~20 s a run takes here; a hang fails instead of blocking CI.
TIMEOUT_S = 300


@contextmanager
def watchdog(seconds: int):
    """Fail the test (instead of hanging) when the block runs too long."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(*_):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def fuzz_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "files"
    records = make_fuzz_set(folder, N_FILES, SEED)
    return folder, records


def test_fuzzed_files_never_end_a_dedupe_run(fuzz_set, tmp_path):
    folder, records = fuzz_set
    with watchdog(TIMEOUT_S):
        report = dedupe([folder], gallery=tmp_path / "g")
    files = {str((folder / r["name"]).resolve()) for r in records}
    skipped = {s.path: s.reason for s in report.skipped}
    assert len(skipped) == len(report.skipped)  # each file reported once
    assert set(skipped) <= files
    assert all(reason.strip() for reason in skipped.values())
    assert report.stats["images"] + len(skipped) == N_FILES
    with Gallery(tmp_path / "g", create=False) as g:
        processed = {p for p in files if g.find(p) is not None}
    assert processed == files - set(skipped)  # processed or skipped, never lost
    # Valid files (extreme sizes among them: 1x1, 1x700, 8000x3...) are all read.
    valid = {str((folder / r["name"]).resolve()) for r in records if r["mutation"] == "unchanged"}
    assert valid and not valid & set(skipped), sorted(valid & set(skipped))[:3]
    members = {m for c in report.clusters for m in c.members}
    assert members <= processed


def test_fuzzed_files_through_the_cli(fuzz_set, tmp_path):
    folder, records = fuzz_set
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "matchkit.cli", "dedupe", str(folder), "--json", str(out),
         "--csv", str(tmp_path / "r.csv"), "--quiet"],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["stats"]["images"] + len(data["skipped"]) == N_FILES
    assert all(s["reason"] for s in data["skipped"])
