"""Headless Chromium through chromedriver, spoken to in plain W3C WebDriver.

Just enough of the protocol (session, navigate, execute script, screenshot)
over ``urllib`` to check a report page in a real browser, with no Python
dependency beyond the standard library. Needs the Debian packages
``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). Used by
tests/test_browser.py and benchmarks/bench_report.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("MATCHKIT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MATCHKIT_CHROMEDRIVER", "/usr/bin/chromedriver")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"]


def available() -> bool:
    return (Path(CHROMIUM).exists() or shutil.which("chromium") is not None) and \
        (Path(CHROMEDRIVER).exists() or shutil.which("chromedriver") is not None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriverError(RuntimeError):
    pass


class Chromium:
    """One headless browser session; use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 1000, timeout: float = 30.0,
                 downloads: str | os.PathLike | None = None):
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="matchkit-chromium-")
        driver = CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver")
        binary = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        self.proc = subprocess.Popen([driver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = None
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if self._call("GET", "/status")["ready"]:
                        break
                except (OSError, WebDriverError, KeyError):
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise WebDriverError("chromedriver did not start")
                time.sleep(0.05)
            caps = {"capabilities": {"alwaysMatch": {
                "browserName": "chrome", "pageLoadStrategy": "normal",
                "goog:chromeOptions": {"binary": binary, "args": [
                    *ARGS, f"--window-size={width},{height}", f"--user-data-dir={self.profile}"]},
            }}}
            if downloads is not None:  # files the page downloads land here, unasked
                caps["capabilities"]["alwaysMatch"]["goog:chromeOptions"]["prefs"] = {
                    "download.default_directory": str(downloads),
                    "download.prompt_for_download": False}
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except BaseException:
            self.close()
            raise

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                out = json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("value", {}).get("message", str(e))
            except (ValueError, AttributeError):
                msg = str(e)
            raise WebDriverError(msg.splitlines()[0] if msg else str(e)) from None
        return out.get("value", out)

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def get(self, url: str) -> None:
        """Navigate and wait for the page's load event."""
        self._call("POST", self._s("/url"), {"url": url})

    def run(self, script: str, *args):
        """Run JavaScript (a function body; ``arguments`` holds ``args``); return its value."""
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def wait(self, script: str, timeout: float = 20.0, interval: float = 0.02):
        """Poll ``script`` until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.run(script)
            if v:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for: {script}")
            time.sleep(interval)

    def screenshot(self, path: str | os.PathLike) -> Path:
        png = base64.b64decode(self._call("GET", self._s("/screenshot")))
        Path(path).write_bytes(png)
        return Path(path)

    def close(self) -> None:
        if self.session is not None:
            try:
                self._call("DELETE", self._s(""))
            except (OSError, WebDriverError):
                pass
            self.session = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
