"""Which edit each cluster keeps, on a benchmark set (files ``<stem>__<edit>.<ext>``).

A keeper should be the source picture: on the transformed set the original
or a same-size flip (the same pixels, mirrored), on the hard set the
original. Reads a ``matchkit dedupe --json`` file of such a set:

    python -m matchkit.cli dedupe benchmarks/_work/transformed-calib-353 --json t.json -q
    python benchmarks/keepers.py t.json --good orig,hflip,vflip
    python benchmarks/keepers.py h.json --good orig
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def edit_of(path: str) -> str:
    return Path(path).stem.split("__", 1)[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path)
    ap.add_argument("--good", default="orig,hflip,vflip",
                    help="edits that count as a right keeper (comma-separated)")
    args = ap.parse_args()
    good = set(args.good.split(","))
    clusters = json.loads(args.json.read_text())["clusters"]
    edits = collections.Counter(edit_of(c["keep"]) for c in clusters)
    reasons = collections.Counter((c.get("keep_reason") or "").split(" (")[0] for c in clusters)
    right = sum(n for e, n in edits.items() if e in good)
    print(f"{len(clusters)} clusters; keeper is one of {sorted(good)} in {right}")
    print("keeper edits:", dict(edits.most_common()))
    print("keep_reason (first words):", dict(reasons.most_common(8)))


if __name__ == "__main__":
    main()
