"""Speed of two checkouts of matchkit, back to back on the same sets.

Issue 13 asks that the engine stay within 10% of the speed of commit a26e2d7
on the eval halves. On this shared 2-core machine one run's wall time moves
by 10-25% from run to run (the same commit, minutes apart), so one pair of
runs settles nothing: this script alternates the checkouts for several
rounds (the order flips every round, so neither always runs second) and
reports per-run numbers and the median of each, with their ratio.

Each run is ``python -m matchkit.cli dedupe SET --json OUT -q`` in its own
process with ``PYTHONPATH`` set to the checkout; wall and CPU (user + system
of that process and the workers it waited for) come from ``wait4``; that CPU
misses the workers a forkserver starts, so the machine's busy CPU over the
run (``/proc/stat``) is reported too, and its medians are compared; pairs,
precision and recall are scored against the set's truth, so a faster
checkout that finds other pairs shows it.

Usage (checkouts from ``git worktree add /tmp/sp-X X``):
    python benchmarks/ab_speed.py /tmp/sp-NEW /tmp/sp-a26e2d7 --rounds 3
    python benchmarks/ab_speed.py /tmp/sp-NEW /tmp/sp-OLD --rounds 5 --hash-only
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from bench_dedupe import load_set  # noqa: E402
from bench_determinism import canonical, digest  # noqa: E402


def _commit(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return checkout.name


def run_once(checkout: Path, folder: Path, truth: set, tmp: Path,
             extra: tuple[str, ...] = ()) -> dict:
    out = tmp / "run.json"
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    load = os.getloadavg()[0]
    busy = C.machine_busy_seconds()
    m = C.run_measured_cpu([sys.executable, "-m", "matchkit.cli", "dedupe", str(folder),
                            "--json", str(out), "-q", *extra], env=env, cwd=tmp)
    busy = None if busy is None else round(C.machine_busy_seconds() - busy, 1)
    if m["rc"]:
        raise SystemExit(f"matchkit at {checkout} failed ({m['rc']})")
    found = C.pairs_from_groups(C.clusters_from_json(out))
    score = C.score(found, truth) if truth is not None else {
        "pairs_found": len(found), "precision": None, "recall": None}
    return {"load_1min": round(load, 2), "pairs_found": score["pairs_found"],
            "precision": score["precision"], "recall": score["recall"],
            "report": digest(canonical(out)),
            "wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "busy_cpu_s": busy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Example: python benchmarks/ab_speed.py "
                                        "/tmp/sp-NEW /tmp/sp-a26e2d7 --rounds 3")
    ap.add_argument("new", type=Path, help="checkout of the commit measured")
    ap.add_argument("old", type=Path, help="checkout of the commit compared with")
    ap.add_argument("--sets", default="transformed,hard", help="comma-separated set kinds")
    ap.add_argument("--split", default="eval", choices=["eval", "calib", "all"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--folder", type=Path, action="append", default=[],
                    help="also (or, with --sets '', only) this folder of images, "
                         "unscored (repeatable)")
    ap.add_argument("--hash-only", action="store_true",
                    help="run `dedupe --hash-only` (pHash and colour only)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    extra = ("--hash-only",) if args.hash_only else ()
    flag = "".join(f" {a}" for a in extra)  # (as the command line shows it)
    mode = ", hash-only" if args.hash_only else ""
    for c in (args.new, args.old):
        if not (c / "matchkit" / "__init__.py").exists():
            ap.error(f"{c} is not a matchkit checkout")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    for f in args.folder:
        if not f.is_dir():
            ap.error(f"--folder {f}: not a folder")
    names = {args.new: _commit(args.new), args.old: _commit(args.old)}
    rows = []
    n_images: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plan = [(kind, None) for kind in args.sets.split(",") if kind]
        plan += [("/".join(f.resolve().parts[-2:]), f.resolve()) for f in args.folder]
        for kind, folder in plan:
            truth = None
            if folder is None:
                ns = argparse.Namespace(set=kind, photos=C.DEFAULT_PHOTOS, split=args.split,
                                        limit=None)
                _, folder, _, truth = load_set(ns)
            n_images[kind] = sum(1 for p in folder.rglob("*")
                                 if p.is_file() and not p.name.startswith("."))
            for r in range(1, args.rounds + 1):
                order = (args.new, args.old) if r % 2 else (args.old, args.new)
                for c in order:
                    row = {"set": kind, "round": r, "commit": names[c],
                           **run_once(c, folder, truth, Path(tmp), extra)}
                    print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
                    rows.append(row)
    cols = ["set", "round", "commit", "load_1min", "pairs_found", "precision", "recall",
            "report", "wall_s", "cpu_s", "busy_cpu_s"]
    summary = []
    for kind in n_images:
        med = {}
        for c in (args.new, args.old):
            mine = [r for r in rows if r["set"] == kind and r["commit"] == names[c]]
            med[c] = {k: statistics.median(r[k] for r in mine) if all(
                r[k] is not None for r in mine) else None for k in ("wall_s", "busy_cpu_s")}
        new, old = med[args.new], med[args.old]
        summary.append({"set": kind, "images": n_images[kind],
                        "new": names[args.new], "old": names[args.old],
                        "new_wall_s": new["wall_s"], "old_wall_s": old["wall_s"],
                        "wall_ratio": round(new["wall_s"] / old["wall_s"], 3),
                        "new_images_per_s": round(n_images[kind] / new["wall_s"], 1),
                        "old_images_per_s": round(n_images[kind] / old["wall_s"], 1),
                        "new_busy_cpu_s": new["busy_cpu_s"], "old_busy_cpu_s": old["busy_cpu_s"],
                        "busy_cpu_ratio": round(new["busy_cpu_s"] / old["busy_cpu_s"], 3)
                        if new["busy_cpu_s"] and old["busy_cpu_s"] else None})
    text = C.table(rows, cols)
    medians = C.table(summary, list(summary[0]))
    print(text + "\n\nMedians over rounds, new / old:\n\n" + medians)
    if not args.no_write:
        sets_arg = args.sets or "''"
        body = (f"Command: `python benchmarks/ab_speed.py {args.new} {args.old} --sets {sets_arg} "
                f"--split {args.split} --rounds {args.rounds}"
                f"{''.join(f' --folder {f}' for f in args.folder)}"
                f"{flag}` (worktrees of {names[args.new]} and {names[args.old]}; each "
                f"run `matchkit dedupe SET --json OUT -q{flag}` in its own process, "
                f"the checkouts alternating, the order flipped every round). `cpu_s`: "
                f"user + system of that process and the children it waited for, which misses "
                f"the workers a forkserver starts (extraction; settling relations and frame "
                f"hashes in large runs); `busy_cpu_s`: busy CPU of the whole machine during the "
                f"run (`/proc/stat`), which counts them, and anything else running; `report`: "
                f"digest of the report's clusters and skipped files (`bench_determinism."
                f"canonical`); a `--folder` has no truth, so no precision or recall."
                f"\n\n{text}\n\n"
                f"Medians over rounds, new / old:\n\n{medians}\n")
        what = ", ".join(([f"{args.split} halves"] if args.sets else [])
                         + [kind for kind, f in plan if f is not None])
        C.write_section(f"speed: {names[args.new]} vs {names[args.old]} ({what}, "
                        f"{args.rounds} rounds{mode})", body)


if __name__ == "__main__":
    main()
