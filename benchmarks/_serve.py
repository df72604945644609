"""Helpers for the HTTP API benchmarks: a gallery to serve and a server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label_of(path: str) -> str:
    """The class name in a sample photo's file name, edits included."""
    return Path(path).name.split("__", 1)[0].rsplit(".", 1)[0].split("_", 1)[-1]


def build_gallery(folder: Path, photos: list[Path], *, labels: bool = True,
                  hash_only: bool = False) -> Path:
    """A gallery of ``photos``, labelled by their names (``n0144_tench.JPEG`` and its
    edits ``n0144_tench__crop50.jpg``: tench)."""
    from matchkit.config import Settings
    from matchkit.store.gallery import Gallery

    settings = Settings(local_features=False) if hash_only else Settings()
    with Gallery(folder, settings) as g:
        report = g.add(photos)
        if labels:
            g.set_labels({i: [label_of(g.get(i).path)] for i in report.ids})
        g.save()
    return folder


def start_server(gallery: Path, port: int, *args: str, wait: float = 60.0) -> subprocess.Popen:
    """``matchkit serve`` on loopback, returned once /api/health answers."""
    import httpx

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "matchkit.cli", "serve", "--gallery",
                             str(gallery), "--port", str(port), *args], env=env)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")
