"""How many other pictures carry the part a dedupe run's local matches rest on.

Why: the burstiness check (``matchkit/match/burst.py``) refuses a local match
whose inliers gather (spread under ``burst.SPREAD``) on a part that at least
``Settings.burst_pictures`` other images carry (each holding at least
``burst.SHARED_SHARE`` of its inliers), or that fewer carry but that few of
the pair's descriptors voted for (``Settings.burst_weak_votes`` and
``burst_weak_pictures``). Those numbers are chosen here, on dev data, from every local match of a run with the check measuring but refusing
nothing: false links (different pictures) must be refused, true pairs kept.
Whether a true pair is also matched by pHash is shown too (a refused local
match changes nothing there).

Sets: a ``bench_dedupe.py`` set (``--set hard --split calib``) or the sticker
dev set (``--sticker ROOT --size N --stickers M``, ``sticker_set.py``).

    python benchmarks/burst_pairs.py --set hard --split calib
    python benchmarks/burst_pairs.py --sticker benchmarks/_work/scale-distinct-s0 --size 4000 --stickers 800
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _common as C  # noqa: E402
import sets  # noqa: E402

from matchkit.match import burst  # noqa: E402
from matchkit.config import Settings  # noqa: E402

#: ``burst_pictures`` values reported.
PICTURES = (10, 16, 20, 25, 32, 40)


def measured_run(folders: list[Path], settings: Settings) -> list[dict]:
    """Every local match a dedupe of ``folders`` measured: paths, inliers,
    spread and the images holding each inlier (nothing refused)."""
    from matchkit.jobs.dedupe import dedupe

    rows: list[dict] = []

    def apply(self, ev, part):
        paths = self._m.paths
        o = ev.overlap
        rows.append({"a": paths[ev.a], "b": paths[ev.b], "inliers": ev.inliers,
                     "phash": ev.phash_distance, "votes": round(float(ev.votes), 3),
                     "spread": None if o is None else round(float(o.spread), 3),
                     "carried_by": None if part is None else part.carriers()})
        ev.extra["carried_by"] = None

    original = burst.BurstMatcher.apply
    burst.BurstMatcher.apply = apply
    try:
        with tempfile.TemporaryDirectory() as tmp:
            dedupe([str(f) for f in folders], gallery=Path(tmp) / "g",
                   settings=settings.with_(burst_pictures=1))
    finally:
        burst.BurstMatcher.apply = original
    return rows


def _tally(rows: list[dict], same, settings: Settings, head: dict) -> dict:
    """False links and true pairs among ``rows`` that ``settings`` refuses."""
    r = {**head, "false": 0, "false_refused": 0, "true": 0, "true_refused": 0,
         "true_refused_no_phash": 0}
    for row in rows:
        if row["carried_by"] is None:
            continue
        ok = same(row["a"], row["b"])
        refused = burst.refuses(row["carried_by"], row["spread"], settings, row.get("votes"))
        kind = "true" if ok else "false"
        r[kind] += 1
        r[f"{kind}_refused"] += refused
        if ok and refused and row["phash"] > settings.phash_max_distance:
            r["true_refused_no_phash"] += 1
    return r


def summarise(rows: list[dict], same) -> list[dict]:
    """Per ``burst_pictures`` value (the weak-match rule off): what it refuses."""
    return [_tally(rows, same, Settings(burst_pictures=n, burst_weak_pictures=0),
                   {"burst_pictures": n}) for n in PICTURES]


#: (votes under, carriers from) pairs of the weak-match rule reported
#: (``Settings.burst_weak_votes`` / ``burst_weak_pictures``).
WEAK = tuple((v, c) for v in (1.5, 2.0, 2.5) for c in (6, 8, 10, 12, 16))


def summarise_weak(rows: list[dict], same) -> list[dict]:
    """Per (votes, carriers) pair of the weak-match rule, with
    ``burst_pictures`` at its default: what both refuse."""
    return [_tally(rows, same, Settings(burst_weak_votes=v, burst_weak_pictures=c),
                   {"weak_votes_under": v, "weak_carriers_from": c}) for v, c in WEAK]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=sorted(sets.BUILDERS))
    ap.add_argument("--split", default="calib", choices=["eval", "calib"])
    ap.add_argument("--sticker", type=Path, help="sticker dev set root (sticker_set.py)")
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--stickers", type=int, default=800)
    ap.add_argument("--out", type=Path, help="write every measured pair here (JSON lines)")
    args = ap.parse_args()
    if bool(args.set) == bool(args.sticker):
        ap.error("give --set or --sticker")
    if args.set:
        base = sets.photos(C.DEFAULT_PHOTOS, args.split)
        folder = sets.build(args.set, base, C.WORK / f"{args.set}-{args.split}-{len(base)}")
        folders, name = [folder], f"{args.set} {args.split}"

        def same(a: str, b: str) -> bool:
            return sets.group_of(Path(a).name) == sets.group_of(Path(b).name)
    else:
        root = args.sticker.resolve()
        truth = json.loads((root / f"sticker-truth-{args.size}-{args.stickers}.json").read_text())
        group = {str(root / n): g for g, names in enumerate(truth["groups"]) for n in names}
        folders = [root / "img" / f"d{f:04d}" for f in range(-(-args.size // 1000))]
        folders.append(root / "stickers")
        name = f"stickers {args.size}+{args.stickers}"
        if args.size % 1000:
            ap.error("--size must be a multiple of 1000 here (whole folders)")

        def same(a: str, b: str) -> bool:
            ga, gb = group.get(str(Path(a).resolve())), group.get(str(Path(b).resolve()))
            return ga is not None and ga == gb
    rows = measured_run(folders, Settings())
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{name}: {len(rows)} local matches measured")
    summary = summarise(rows, same)
    print(C.table(summary, list(summary[0])) if summary else '')
    weak = summarise_weak(rows, same)
    print(C.table(weak, list(weak[0])) if weak else '')
    for ok, label in ((False, "false"), (True, "true")):
        top = sorted((r for r in rows if r["carried_by"] is not None
                      and same(r["a"], r["b"]) == ok), key=lambda r: -r["carried_by"])[:10]
        print(f"{label} local matches whose part the most pictures carry:")
        for r in top:
            print(f"  {Path(r['a']).name} {Path(r['b']).name}: carried by {r['carried_by']}, "
                  f"inliers {r['inliers']}, spread {r['spread']}, votes {r['votes']}")
    weakest = sorted((r for r in rows if r["carried_by"] is not None and same(r["a"], r["b"])
                      and (r["spread"] is None or r["spread"] < burst.SPREAD)),
                     key=lambda r: (r["votes"], -r["carried_by"]))[:10]
    print("true local matches the weak-match rule could refuse, fewest votes first:")
    for r in weakest:
        print(f"  {Path(r['a']).name} {Path(r['b']).name}: votes {r['votes']}, "
              f"carried by {r['carried_by']}, inliers {r['inliers']}, spread {r['spread']}")


if __name__ == "__main__":
    main()
