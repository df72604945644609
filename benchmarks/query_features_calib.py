"""How many descriptors per image should vote for candidates? One in-process
`dedupe` (no gallery) per set and value of ``Settings.query_features``, on
calib halves and the scale collection only (choosing nothing on eval).

Why: on the 10,000-image scale set, 6 of 41 planted 50% crops were missed,
two of them because no descriptor among the 100 strongest of either image
came within the vote distance of the other's 100 (the crop is magnified at
the working size, so the strongest responses differ); 200 query
descriptors found 17 and 33 of them.

Prints one JSON row per run: pair precision and recall against the set's
groups, wall time and this process's CPU time (the decoding workers are
other processes; verification threads are counted).

    python benchmarks/query_features_calib.py hard-calib-vb:100 hard-calib-vb:200 scale:4000:100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _common as C  # noqa: E402
import scale_set  # noqa: E402
from bench_dedupe import truth_pairs  # noqa: E402


def run(spec: str) -> dict:
    """``FOLDER:QF`` (a set folder under benchmarks/_work) or ``scale:N:QF``."""
    from matchkit import Settings
    from matchkit.jobs.dedupe import dedupe

    *where, qf = spec.split(":")
    if where[0] == "scale":
        n = int(where[1])
        root = scale_set.default_root(0)
        paths = [str(root / "img" / f"d{i:04d}") for i in range(n // scale_set.PER_FOLDER)]
        truth = C.pairs_from_groups([[os.path.basename(x) for x in g]
                                     for g in scale_set.truth(0, n)])
    else:
        folder = C.WORK / where[0]
        paths = [str(folder)]
        truth = truth_pairs(folder)
    t, c = time.time(), time.process_time()
    res = dedupe(paths, settings=Settings(query_features=int(qf)))
    pred = C.pairs_from_groups([[os.path.basename(m) for m in cl["members"]]
                                for cl in res.to_dict()["clusters"]])
    return {"run": spec, **C.score(pred, truth),
            "wall_s": round(time.time() - t, 1), "cpu_s": round(time.process_time() - c, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", help="FOLDER:QF or scale:N:QF")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(args.runs[0])), flush=True)
        return
    for spec in args.runs:  # each in a fresh process: no cache carries over
        subprocess.run([sys.executable, __file__, "--child", spec], check=True)


if __name__ == "__main__":
    main()
