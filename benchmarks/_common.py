"""Shared helpers for the benchmark scripts: timing, memory, scoring, RESULTS.md."""

from __future__ import annotations

import compileall
import datetime as _dt
import itertools
import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "imagenet-sample"
WORK = ROOT / "benchmarks" / "_work"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}"


def load_average() -> str:
    """The 1, 5 and 15-minute load averages (how busy the shared machine was:
    wall times grow with them)."""
    try:
        return "{:.1f} / {:.1f} / {:.1f} (1 / 5 / 15 min)".format(*os.getloadavg())
    except OSError:
        return "unknown"


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "matchkit"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+uncommitted" if dirty else "") if rev else "unknown"
    except OSError:
        return "unknown"


def run_measured(cmd: list[str], **kw) -> tuple[float, float, int]:
    """Run a command; return (wall seconds, peak RSS MiB of that process, exit code)."""
    m = run_measured_cpu(cmd, **kw)
    return m["wall_s"], m["peak_rss_mib"], m["rc"]


def compile_bytecode(env: dict | None = None) -> None:
    """Compile the matchkit that a measured command imports (``PYTHONPATH``'s
    first entry, else this checkout) to bytecode once, as ``pip install`` does.

    Why: this machine sets ``PYTHONDONTWRITEBYTECODE=1``, so an editable
    checkout never keeps its ``__pycache__`` and every matchkit process, its
    decoding workers included, compiled the package's ~60 modules again
    (0.13 s per process here): a cost users' installs do not have, and a
    tenth of a 2,000-image no-op re-run."""
    path = (env or os.environ).get("PYTHONPATH", "").split(os.pathsep)[0]
    package = Path(path or ROOT) / "matchkit"
    if package.is_dir() and package not in _COMPILED:
        compileall.compile_dir(str(package), quiet=1)
        _COMPILED.add(package)


_COMPILED: set[Path] = set()


def run_measured_cpu(cmd: list[str], **kw) -> dict:
    """Run a command; wall seconds, CPU seconds (user + system) and peak RSS
    MiB of that process, and its exit code. CPU time is the steadier measure
    on a shared machine, where wall time grows with other processes' load.
    The package it runs is compiled to bytecode first (``compile_bytecode``)."""
    compile_bytecode(kw.get("env"))
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, **kw)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024.0, "rc": proc.returncode}


def status_mib(field: str) -> float | None:
    """A memory field of this process's ``/proc/self/status`` in MiB ("VmRSS":
    resident now; "VmHWM": the peak since the process started its program,
    unlike ``ru_maxrss``, which a child can inherit from its parent); None
    where there is no such file or field (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def folder_size(path: str | os.PathLike) -> int:
    """Bytes of all files under ``path`` (a gallery's size on disk)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def machine_busy_seconds() -> float | None:
    """CPU seconds this machine (all cores) has spent busy since boot, from
    ``/proc/stat`` (None elsewhere). The difference over a run counts every
    process it started, including workers that a forkserver started (their
    time never reaches the run's own ``wait4``), and anything else running."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


#: The same measurement under the name the scale benchmarks use.
run_usage = run_measured_cpu


def pairs_from_groups(groups) -> set[frozenset]:
    """All unordered pairs inside each group (the pair-level protocol)."""
    out = set()
    for g in groups:
        for a, b in itertools.combinations(sorted(set(g)), 2):
            out.add(frozenset((a, b)))
    return out


def score(pred: set, truth: set) -> dict:
    tp = len(pred & truth)
    return {
        "pairs_found": len(pred),
        "true_pairs": len(truth),
        "tp": tp,
        "precision": tp / len(pred) if pred else 1.0,
        "recall": tp / len(truth) if truth else 1.0,
    }


def clusters_from_json(path: Path) -> list[list[str]]:
    data = json.loads(Path(path).read_text())
    return [[os.path.basename(m) for m in c["members"]] for c in data["clusters"]]


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md."""
    head = (f"<!-- BEGIN {name} -->\n## {name}\n\n"
            f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
            f"- commit: {commit()}\n- machine: {machine()}\n"
            f"- load average when written: {load_average()}\n\n")
    block = head + body.rstrip() + f"\n<!-- END {name} -->\n"
    text = RESULTS.read_text() if RESULTS.exists() else (
        "# Benchmark results\n\nWritten by the scripts in `benchmarks/`; each section says "
        "how to reproduce it.\n\n")
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->\n",
                         re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text + "\n" + block
    RESULTS.write_text(text)


def table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if v < 10 else f"{v:.1f}"
        return str(v)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)
