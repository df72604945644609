"""A script that calls matchkit without ``if __name__ == "__main__":`` gets
one clear error (its worker processes import it again as they start),
instead of hanging on the gallery's lock or reporting every file as a
decoder crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from matchkit.util.spawned import WorkerStartError, refuse_while_starting

SCRIPT = """
import sys
from matchkit.features import pool
pool.PROCESS_POOL_MIN_FILES = 1   # (worker processes even for these few files)
from matchkit import Settings, dedupe
{call}
"""


def _folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for n in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            folder / f"{n}.png")
    return folder


def _run(tmp_path, call: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(call=textwrap.dedent(call)))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)


@pytest.mark.parametrize("gallery", [False, True])
def test_an_unguarded_script_gets_one_clear_error(tmp_path, gallery):
    folder = _folder(tmp_path)
    g = f", gallery={str(tmp_path / 'g')!r}" if gallery else ""
    done = _run(tmp_path, f"r = dedupe([{str(folder)!r}]{g}, settings=Settings(workers=2))\n"
                          "print('images', r.stats['images'])\n")
    assert done.returncode != 0
    assert "WorkerStartError" in done.stderr and '__name__ == "__main__"' in done.stderr
    assert "images" not in done.stdout


def test_a_guarded_script_runs(tmp_path):
    folder = _folder(tmp_path)
    done = _run(tmp_path, f"""
if __name__ == "__main__":
    r = dedupe([{str(folder)!r}], gallery={str(tmp_path / 'g')!r}, settings=Settings(workers=2))
    print('images', r.stats['images'])
""")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "images 4" in done.stdout


def test_refusing_only_while_a_worker_starts(monkeypatch):
    import multiprocessing

    refuse_while_starting()  # (this process is not starting)
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(WorkerStartError, match="__main__"):
        refuse_while_starting()
