"""The zoomed second look of `check`, on the hard set's calib half only: what
its descriptor search costs and what it finds, with fewer descriptors or a
shallower search (issue 15: p99 <= 250 ms per query on one core).

Unmatched queries take the zoomed look (``query.QueryMatcher._distinctive_votes``):
about 1,500 descriptors of a twice-larger view, 16 neighbours each in the
HNSW graph. This script measures variants of it, choosing nothing on the
eval half:

- gallery: the first 253 originals of the hard calib half plus the first N
  slots of the scale collection (``scale_set.py``, seed 0), built once under
  ``/tmp/check-zoom-calib`` (``bench_check_latency.build``);
- queries: one edited copy of each of those originals (edit kinds in turn)
  and the other 100 calib originals, which must match nothing;
- each variant in its own process pinned to one core (``bench_check_latency.measure``).

Variants: ``all`` (as shipped), ``top:N`` (only the N strongest zoomed
descriptors vote) or ``search:K:EF`` (K neighbours, search depth EF).

    python benchmarks/check_zoom_calib.py --size 10000 all top:600 search:8:8
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import replace
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402
import bench_check_latency as L  # noqa: E402
import sets  # noqa: E402
from bench_check import _edit, one_copy_each  # noqa: E402

L.ROOT = Path("/tmp/check-zoom-calib")
CALIB = C.WORK / "hard-calib-353"


def split(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(gallery originals, their edited copies, unrelated originals) of a calib set."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in sets.EXTS)
    originals = [p for p in files if _edit(p.name) == "orig"]
    gallery, others = originals[:253], originals[253:]
    return gallery, one_copy_each(files, gallery), others


def patch(variant: str) -> None:
    """Make this process's zoomed look the variant."""
    import matchkit.match.query as Q

    if variant == "all":
        return
    kind, *args = variant.split(":")
    plain = Q.QueryMatcher._distinctive_votes
    if kind == "top":
        keep = int(args[0])
        levels = Q.ZOOM_VOTE_LEVELS

        def votes(self, records, keys, exclude, *a, **kw):
            cut = []
            for r in records:
                if r.local is not None and r.local.octave is not None:
                    keep_idx = np.flatnonzero(r.local.octave < levels)[:keep]
                    r = replace(r, local=r.local.subset(keep_idx))
                cut.append(r)
            return plain(self, cut, keys, exclude, *a, **kw)
    elif kind == "search":
        k, ef = int(args[0]), int(args[1])

        def votes(self, records, keys, exclude, ratio=0.8, neighbours=16, min_votes=3):
            graph = self.gallery.orb_index._index
            old, graph.expansion_search = graph.expansion_search, ef
            try:
                return plain(self, records, keys, exclude, ratio, k, min_votes)
            finally:
                graph.expansion_search = old
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    Q.QueryMatcher._distinctive_votes = votes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("variants", nargs="*", help="all, top:N or search:K:EF")
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--calib", type=Path, default=CALIB, help="the hard calib half's folder")
    ap.add_argument("--scale-root", type=Path, default=None)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    gallery, copies, others = split(args.calib)
    if args.child:
        patch(args.child[0])
        res = L.measure(str(L.ROOT / f"g{args.size}-hnsw"), [str(p) for p in copies + others])
        Path(args.child[1]).write_text(json.dumps(res))
        return
    if not args.variants:
        ap.error("name at least one variant")
    import scale_set

    L.build(args.size, "hnsw", gallery, args.scale_root or scale_set.default_root(0))
    rows = []
    for v in args.variants:
        out = L.ROOT / f"result-{args.size}-{v.replace(':', '-')}.json"
        subprocess.run([sys.executable, __file__, "--size", str(args.size), "--calib",
                        str(args.calib), "--child", v, str(out)], check=True)
        row = {"variant": v, **L.score(json.loads(out.read_text()), copies)}
        rows.append(row)
        print({k: (round(x, 4) if isinstance(x, float) else x) for k, x in row.items()},
              flush=True)
    print(C.table(rows, ["variant", "copies", "recall", "wrong", "alarms", "p50_ms", "p90_ms",
                         "p99_ms", "mean_cpu_ms", "matched_p50_ms", "unmatched_p50_ms"]))


if __name__ == "__main__":
    main()
