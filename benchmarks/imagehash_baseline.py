"""Peer baseline: imagehash pHash with equal-hash grouping (as imagededup's docs describe).

Usage: python benchmarks/imagehash_baseline.py DIR OUT.json
Writes {"clusters": [{"members": [...]}]} in matchkit's JSON shape.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import imagehash
from PIL import Image


def main(folder: str, out: str) -> None:
    groups = defaultdict(list)
    for p in sorted(Path(folder).iterdir()):
        if p.name.startswith("."):
            continue
        with Image.open(p) as im:
            groups[str(imagehash.phash(im))].append(str(p))
    clusters = [{"members": m} for m in groups.values() if len(m) > 1]
    Path(out).write_text(json.dumps({"clusters": clusters}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
