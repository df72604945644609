"""End to end with settings variants: each benchmark half deduplicated in its
own process with ``Settings(**variant)`` (no gallery), scored against the
half's true pairs as ``bench_dedupe.py`` scores them.

Why: settings that the CLI does not take (``ivf_vocabulary``, ``ivf_nodes``,
...) still need end-to-end pair precision and recall, wall and CPU time and
peak RSS beside the defaults, on the calib halves to choose and on the eval
halves to report.

Variants are ``NAME`` (default settings) or ``NAME:key=value,key=value``;
values are read as JSON where they parse (numbers), else as text.

Example (section "candidates: words chosen node by node, and a 65,536-word
vocabulary" of RESULTS.md):
    python benchmarks/bench_settings.py --set transformed,recapture,hard --split calib \\
        --variant hnsw \\
        --variant ivf64k:vote_index=ivf,ivf_vocabulary=orb-64k,ivf_probes=16,ivf_nodes=8 \\
        --no-write
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import sets  # noqa: E402
from bench_dedupe import truth_pairs  # noqa: E402


def parse_variant(spec: str) -> tuple[str, dict]:
    """``NAME[:key=value,...]`` -> (name, settings changes)."""
    name, _, rest = spec.partition(":")
    changes = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bad variant item {item!r}: expected key=value")
        try:
            changes[key] = json.loads(value)
        except ValueError:
            changes[key] = value
    return name, changes


def child(folder: Path, changes: dict) -> dict:
    """One run in this process (peak RSS is this process's)."""
    from matchkit import Settings
    from matchkit.jobs.dedupe import dedupe

    t, c = time.perf_counter(), time.process_time()
    report = dedupe([folder], settings=Settings(**changes))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    groups = [[Path(m).name for m in cl.members] for cl in report.clusters]
    return {"groups": groups, "wall_s": wall, "cpu_s": cpu,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--set", default="transformed", help="comma-separated set kinds")
    ap.add_argument("--split", default="eval", choices=["eval", "calib"])
    ap.add_argument("--photos", type=Path, default=C.DEFAULT_PHOTOS)
    ap.add_argument("--variant", action="append", default=[], help="NAME[:key=value,...]")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), json.loads(args.child[1]))))
        return
    if not args.variant:
        ap.error("give at least one --variant")
    variants = [parse_variant(v) for v in args.variant]
    rows = []
    for kind in args.set.split(","):
        base = sets.photos(args.photos, args.split)
        folder = sets.build(kind, base, C.WORK / f"{kind}-{args.split}-{len(base)}")
        truth = truth_pairs(folder)
        for name, changes in variants:
            out = subprocess.run([sys.executable, __file__, "--child", str(folder),
                                  json.dumps(changes)], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{kind} {name} failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            row = {"set": f"{kind} {args.split}", "variant": name,
                   **C.score(C.pairs_from_groups(r["groups"]), truth),
                   "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mib": r["peak_rss_mib"]}
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
                  flush=True)
    cols = ["set", "variant", "pairs_found", "tp", "precision", "recall", "wall_s", "cpu_s",
            "peak_rss_mib"]
    table = C.table(rows, cols)
    print(table)
    if not args.no_write:
        spec = "; ".join(f"`{n}`: {c or 'default settings'}" for n, c in variants)
        C.write_section(f"settings: {args.set} {args.split}",
                        "Command: `python benchmarks/bench_settings.py " + " ".join(sys.argv[1:])
                        + f"`\n\nVariants: {spec}.\n\n" + table)


if __name__ == "__main__":
    main()
