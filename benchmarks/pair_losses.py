"""Where the true pairs of a benchmark set are lost, per kind of pair.

Runs the dedupe pipeline in process (default settings, one gallery kept under
``benchmarks/_work`` so reruns skip feature extraction), then follows every
true pair that did not end in one cluster back through the stages:

- ``no_candidate``: neither search (pHash neighbours, descriptor votes, icons)
  proposed the pair, nor the clustering's second hop;
- ``few_inliers``: verified (now, if the clustering never asked), under
  ``Settings.min_inliers`` inliers of one transform;
- ``refused``: enough inliers, but ``match.relation_of`` says the images share
  a part only (a frame, a sticker): no relation;
- ``other_level``: a relation looser than the level (variant, same-scene);
- ``clustering``: the pair matches, but its images went to different stars
  (its keeper did not match one of them).

Pairs are named by their two files' edit names (``monitor-orig``); the
keeper table counts which edit kept each cluster.

    python benchmarks/pair_losses.py --set recapture --split calib
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import bench_dedupe as B  # noqa: E402
import sets  # noqa: E402

STAGES = ("found", "no_candidate", "few_inliers", "refused", "other_level", "clustering")


def edit_of(name: str) -> str:
    return Path(name).stem.split("__", 1)[1] if "__" in name else "?"


def pair_kind(a: str, b: str) -> str:
    return "-".join(sorted((edit_of(a), edit_of(b))))


def run(folder: Path, settings, gallery_dir: Path):
    """Cluster ``folder``; returns (clusters, matcher, {path: id})."""
    from matchkit import Gallery
    from matchkit.jobs.dedupe import find_clusters
    from matchkit.io.load import iter_image_files
    from matchkit.match.pairs import PairMatcher

    g = Gallery(gallery_dir, settings)
    ids = g.add(list(iter_image_files([folder]))).ids
    made = []

    def make(visible, same):
        m = PairMatcher(g, visible, settings, same=same)
        between = m.evidence_between

        def recorded(a, b, reflect):  # second-hop pairs join the evidence
            ev = between(a, b, reflect)
            m.evidence.append(ev)
            return ev
        m.evidence_between = recorded
        made.append(m)
        return m

    clusters, _, _ = find_clusters(g, ids, settings, make_matcher=make)
    paths = {img.path: i for i, img in g.images(ids).items()}
    return g, clusters, made[0], paths


def stage_of(ev, settings) -> tuple[str, str]:
    """Stage at which a verified (or global) pair failed, and its relation."""
    from matchkit.match.pairs import relation_of
    from matchkit.relation import in_level

    if ev is None:
        return "no_candidate", ""
    if ev.rule:
        return "clustering", ev.relation() or ""
    if ev.inliers < settings.min_inliers:
        return "few_inliers", ""
    kind = relation_of(ev)
    if kind is None:
        return "refused", ""
    return ("other_level" if not in_level(kind, settings.level) else "refused"), kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    B.add_set_arguments(ap, default="recapture")
    ap.add_argument("--fresh", action="store_true", help="rebuild the kept gallery")
    ap.add_argument("--show", type=int, default=0,
                    help="print this many lost pairs per stage with their evidence")
    args = ap.parse_args()

    import shutil

    from matchkit import Settings
    
    base, folder, n_images, truth = B.load_set(args)
    settings = Settings()
    gdir = C.WORK / f"gallery-{folder.name}"
    if args.fresh and gdir.exists():
        shutil.rmtree(gdir)
    g, clusters, matcher, ids = run(folder, settings, gdir)
    name = {i: Path(p).name for p, i in ids.items()}
    found = C.pairs_from_groups([[Path(m).name for m in c.members] for c in clusters])
    by_pair = defaultdict(list)
    for ev in matcher.evidence:
        by_pair[frozenset((name[ev.a], name[ev.b]))].append(ev)

    lost = [p for p in truth if p not in found]
    # Pairs the clustering never verified: verify them now, as they would be.
    todo = [ev for p in lost for ev in by_pair.get(p, []) if ev.pending]
    matcher.verify(todo)
    matcher.close()

    rows: dict[str, Counter] = defaultdict(Counter)
    examples: dict[str, list] = defaultdict(list)
    for p in truth:
        a, b = sorted(p)
        kind = pair_kind(a, b)
        rows[kind]["true"] += 1
        if p in found:
            rows[kind]["found"] += 1
            continue
        evs = by_pair.get(p, [])
        ev = next((e for e in evs if e.rule), None) or (
            max(evs, key=lambda e: e.inliers) if evs else None)
        stage, rel = stage_of(ev, settings)
        rows[kind][stage] += 1
        examples[stage].append((a, b, rel, ev))
    false = [p for p in found if p not in truth]

    total = Counter()
    for c in rows.values():
        total.update(c)
    table = [{"pairs": k, "true": c["true"], **{s: c[s] for s in STAGES}}
             for k, c in sorted(rows.items())]
    table.append({"pairs": "all", "true": total["true"], **{s: total[s] for s in STAGES}})
    print(C.table(table, ["pairs", "true", *STAGES]))
    keepers = Counter(edit_of(c.keep) for c in clusters)
    print("keepers by edit:", dict(sorted(keepers.items())))
    print(f"false pairs found: {len(false)}; recall {len(found & truth) / len(truth):.4f}")
    for stage, items in examples.items():
        for a, b, rel, ev in items[: args.show]:
            evidence = ev.to_evidence() if ev is not None else {}
            pic = ev.extra.get("picture") if ev is not None else None
            extra = {k: round(ev.extra[k], 3) for k in ("perspective", "inner")
                     if ev is not None and k in ev.extra}
            if pic is not None:
                extra["picture"] = (round(pic.agreement, 2), round(pic.correlation, 2),
                                    round(pic.coverage_a, 3), round(pic.coverage_b, 3))
            keep = {"inliers", "agreement", "spread", "coverage", "overlap_correlation",
                    "phash_distance", "rule"}
            print(stage, rel, a, b, {k: v for k, v in evidence.items() if k in keep}, extra)
    g.close()


if __name__ == "__main__":
    main()
