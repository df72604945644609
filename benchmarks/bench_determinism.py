"""Determinism check: the same files and settings must give the same report.

Runs ``matchkit dedupe`` several times on one benchmark set, with each
worker count asked for (fresh temporary gallery every run), and compares
the JSON reports without their timing fields: clusters, keepers, pair
scores and evidence must be identical across runs and worker counts.

    python benchmarks/bench_determinism.py --set hard --split eval --runs 2 --workers 1,2

Exits 1 when any run differs from the first (so it can gate a change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from bench_dedupe import add_set_arguments, load_set  # noqa: E402


def canonical(path: Path) -> dict:
    """The report's content that must not depend on scheduling: clusters
    (keeper, members, pairs with scores and evidence) and skipped files.
    Stats are left out (``seconds`` is a timing)."""
    data = json.loads(path.read_text())
    return {"clusters": data["clusters"], "skipped": data["skipped"]}


def digest(report: dict) -> str:
    return hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()[:12]


def first_difference(a: dict, b: dict) -> str:
    """A short description of where two canonical reports differ."""
    ka = {c["keep"]: c for c in a["clusters"]}
    kb = {c["keep"]: c for c in b["clusters"]}
    only_a, only_b = sorted(set(ka) - set(kb)), sorted(set(kb) - set(ka))
    if only_a or only_b:
        return (f"{len(only_a)} keepers only in the first run, {len(only_b)} only in this one "
                f"(e.g. {Path((only_a or only_b)[0]).name})")
    for k in sorted(ka):
        if ka[k] != kb[k]:
            return f"cluster of {Path(k).name} differs (members or pair evidence)"
    return "cluster order or skipped files differ"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_set_arguments(ap, default="hard")
    ap.add_argument("--runs", type=int, default=2, help="runs per worker count")
    ap.add_argument("--workers", default="1,2",
                    help="comma-separated worker counts (repeat one to run it again)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        ap.error("--workers: comma-separated integers expected")
    if args.runs < 1 or any(w < 1 for w in workers):
        ap.error("--runs and --workers must be positive")

    base, folder, n_images, truth = load_set(args)

    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        for w in workers:
            for _ in range(args.runs):
                cmd = [sys.executable, "-m", "matchkit.cli", "dedupe", str(folder), "--json",
                       str(out), "-q", "--workers", str(w)]
                wall, _, rc = C.run_measured(cmd)
                if rc:
                    raise SystemExit(f"matchkit failed ({rc}): {' '.join(cmd)}")
                report = canonical(out)
                if reference is None:
                    reference = report
                pred = C.pairs_from_groups(C.clusters_from_json(out))
                same = report == reference
                rows.append({"workers": w, "run": len(rows) + 1,
                             "clusters": len(report["clusters"]),
                             **C.score(pred, truth), "digest": digest(report),
                             "identical": "yes" if same else "NO",
                             "difference": "" if same else first_difference(reference, report),
                             "wall_s": wall})
                print(C.table(rows[-1:], list(rows[-1])), flush=True)
    cols = ["workers", "run", "clusters", "pairs_found", "precision", "recall", "digest",
            "identical", "difference"]
    text = C.table(rows, cols)
    print(text)
    all_same = all(r["identical"] == "yes" for r in rows)
    print("all runs identical" if all_same else "RUNS DIFFER")
    if not args.no_write:
        limit = f" --limit {args.limit}" if args.limit else ""
        body = (f"Data: {args.set} set built from `{args.photos.name}` ({args.split} split: "
                f"{len(base)} photos, {n_images} images, {len(truth)} true pairs).\n"
                f"Command: `python benchmarks/bench_determinism.py --set {args.set} "
                f"--split {args.split}{limit} --runs {args.runs} --workers {args.workers}`\n"
                f"Each run is a fresh `matchkit dedupe --workers W` process with a temporary "
                f"gallery; `identical` compares the JSON clusters, keepers, pair scores, "
                f"evidence and skipped files with the first run (timings excluded). "
                f"All identical: **{'yes' if all_same else 'no'}**.\n\n{text}\n")
        C.write_section(f"determinism: {args.set} set ({args.split} split)", body)
    sys.exit(0 if all_same else 1)


if __name__ == "__main__":
    main()
