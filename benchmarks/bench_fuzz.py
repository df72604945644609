"""Fuzzing at scale: N mutated image files through `matchkit dedupe`.

The generator is the one of tests/test_fuzz.py (tests/_fuzz_data.py: valid
JPEG/PNG/GIF/WebP/TIFF files with bit flips, truncations, header and size
edits, spliced bytes, and valid files of extreme sizes). The CLI runs in its
own process under a timeout. Pass: exit code 0, no hang, no traceback, and
every file either processed or listed as skipped with a reason.

    python benchmarks/bench_fuzz.py            # 10,000 files, seed 0
    python benchmarks/bench_fuzz.py --n 500 --seed 7 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

import _common as C  # noqa: E402
from _fuzz_data import MUTATIONS, make_fuzz_set  # noqa: E402


def run_cli(cmd: list[str], timeout: float, stderr_path: Path) -> dict:
    """Run ``cmd``; kill it after ``timeout`` s. Wall time, peak RSS, exit code, hang."""
    env = {**os.environ, "PYTHONPATH": str(C.ROOT)}
    with open(stderr_path, "wb") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        hung = threading.Event()

        def kill():
            hung.set()
            proc.send_signal(signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
        wall = time.perf_counter() - t
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024.0,
            "exit": os.waitstatus_to_exitcode(status), "hang": hung.is_set()}


def reason_kind(reason: str) -> str:
    """The stable head of a skip reason ("truncated or corrupt image", ...)."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="number of mutated files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds before a hang")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args(argv)

    work = C.WORK / f"fuzz-{args.seed}-{args.n}"
    if work.exists():
        shutil.rmtree(work)
    files = work / "files"
    t = time.perf_counter()
    records = make_fuzz_set(files, args.n, args.seed)
    gen_s = time.perf_counter() - t
    out = work / "report.json"
    load_before = os.getloadavg()
    run = run_cli([sys.executable, "-m", "matchkit.cli", "dedupe", str(files), "--json",
                   str(out), "--csv", str(work / "report.csv"), "--quiet"],
                  args.timeout, work / "stderr.txt")
    load_after = os.getloadavg()
    stderr = (work / "stderr.txt").read_text(errors="replace")
    data = json.loads(out.read_text(encoding="utf-8")) if out.exists() else None
    skipped = {} if data is None else {Path(s["path"]).name: s["reason"]
                                       for s in data["skipped"]}
    rows, reasons = [], Counter()
    for kind in MUTATIONS:
        names = [r["name"] for r in records if r["mutation"] == kind]
        bad = [skipped[n] for n in names if n in skipped]
        reasons.update(reason_kind(r) for r in bad)
        rows.append({"mutation": kind, "files": len(names), "processed": len(names) - len(bad),
                     "skipped": len(bad),
                     "internal_errors": sum(r.startswith("cannot process image") for r in bad)})
    total = {"mutation": "all", "files": len(records),
             "processed": len(records) - len(skipped), "skipped": len(skipped),
             "internal_errors": sum(r["internal_errors"] for r in rows)}
    rows.append(total)
    ok = (data is not None and run["exit"] == 0 and not run["hang"]
          and "Traceback" not in stderr
          and data["stats"]["images"] + len(data["skipped"]) == len(records)
          and all(s["reason"] for s in data["skipped"]))
    cols = ["mutation", "files", "processed", "skipped", "internal_errors"]
    body = "\n".join([
        f"Data: {args.n} files from `tests/_fuzz_data.py` (seed {args.seed}): "
        f"{len(set(r['base'] for r in records))} valid JPEG/PNG/GIF/WebP/TIFF seed files "
        "(12 pictures of 48-260 px and 9 extreme sizes: 1x1, 2x2, 1x700, 700x1, 3x8000, "
        "8000x3, 2x3000, 31x31, 32x1200) mutated by bit flips, truncation, header bytes, "
        "width/height fields, spliced or zeroed blocks, or left valid.",
        f"Command: `python benchmarks/bench_fuzz.py --n {args.n} --seed {args.seed}` "
        "(runs `matchkit dedupe FILES --json --csv --quiet` in its own process).",
        f"Result: **{'PASS' if ok else 'FAIL'}**: exit code {run['exit']}, "
        f"hang: {'yes' if run['hang'] else 'no'}, traceback: "
        f"{'yes' if 'Traceback' in stderr else 'no'}; every file processed or skipped with a "
        "reason. `internal_errors`: files skipped because matchkit's own code (not the "
        "decoder) raised, caught per file.",
        f"Time: {run['wall_s']:.1f} s for dedupe ({args.n / run['wall_s']:.0f} files/s), "
        f"peak RSS {run['peak_rss_mib']:.0f} MiB; generating the files took {gen_s:.1f} s. "
        f"Load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {' '.join(f'{x:.2f}' for x in load_after)} (shared machine: times are "
        "indicative only).",
        "",
        C.table(rows, cols),
        "",
        "Skip reasons: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()) + ".",
    ])
    print(body)
    if not args.no_write:
        C.write_section(f"fuzz: {args.n} mutated files through dedupe", body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
