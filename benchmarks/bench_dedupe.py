"""Dedupe benchmark: matchkit vs imagehash pHash on a synthetic duplicate set.

Builds the set from base photos (default ../shared/data/imagenet-sample), runs
each method in its own process (wall time and peak RSS of that process) and
scores pairs: every pair inside a predicted cluster is a predicted pair, every
pair of files made from the same photo is a true pair.

    python benchmarks/bench_dedupe.py --set transformed            # eval half, writes RESULTS.md
    python benchmarks/bench_dedupe.py --set transformed --split calib --sweep 60,80,90 --colour-sweep 0.8,0.9

``--set recapture`` re-photographs each photo (monitor on a shared setup, monitor at
its own pose, print; ``sets.recapture_edits``); its table adds ``negatives_merged``:
pairs of different photos shown on one monitor setup that ended in one cluster.

``--sweep`` (for choosing defaults) runs on the split you name and never
writes RESULTS.md; defaults are chosen on ``calib`` and reported on ``eval``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import sets  # noqa: E402


DEFAULT_METHODS = "matchkit,matchkit-hash-only,imagehash"


def truth_pairs(folder: Path) -> set:
    groups: dict[str, list[str]] = {}
    for p in folder.iterdir():
        if not p.name.startswith("."):
            groups.setdefault(sets.group_of(p.name), []).append(p.name)
    return C.pairs_from_groups(groups.values())


def add_set_arguments(ap: argparse.ArgumentParser, default: str = "transformed") -> None:
    """The options that choose a benchmark set: kind, base photos, split, limit."""
    ap.add_argument("--set", default=default, choices=sorted(sets.BUILDERS))
    ap.add_argument("--photos", type=Path, default=C.DEFAULT_PHOTOS)
    ap.add_argument("--split", default="eval", choices=["eval", "calib", "all"])
    ap.add_argument("--limit", type=int, default=None, help="use only the first N photos")


def load_set(args) -> tuple[list[Path], Path, int, set]:
    """Build (or reuse) the set the options name: base photos, folder, image
    count and true pairs."""
    base = sets.photos(args.photos, args.split, args.limit)
    folder = sets.build(args.set, base, C.WORK / f"{args.set}-{args.split}-{len(base)}")
    n_images = sum(1 for p in folder.iterdir() if not p.name.startswith("."))
    truth = truth_pairs(folder)
    print(f"{args.set} set: {len(base)} photos ({args.split} split) -> {n_images} images, "
          f"{len(truth)} true pairs", flush=True)
    return base, folder, n_images, truth


def run_matchkit(folder: Path, tmp: Path, extra: list[str]) -> dict:
    out = tmp / "matchkit.json"
    cmd = [sys.executable, "-m", "matchkit.cli", "dedupe", str(folder), "--json", str(out), "-q",
           *extra]
    wall, rss, rc = C.run_measured(cmd)
    if rc:
        raise SystemExit(f"matchkit failed ({rc}): {' '.join(cmd)}")
    return {"wall_s": wall, "peak_rss_mib": rss, "clusters": C.clusters_from_json(out)}


def method_args(method: str) -> list[str]:
    """CLI arguments of a method name: ``matchkit``, ``matchkit-hash-only``,
    ``matchkit-ivf`` (the IVF descriptor index),
    ``matchkit+MODEL`` (embedding candidates) or ``matchkit+MODEL@COS``
    (and the embedding alone matches at cosine >= COS)."""
    if method == "matchkit":
        return []
    if method == "matchkit-hash-only":
        return ["--hash-only"]
    if method == "matchkit-ivf":  # the IVF descriptor index (matchkit/index/ivf.py)
        return ["--vote-index", "ivf"]
    if method.startswith("matchkit+"):
        model, _, cos = method[len("matchkit+"):].partition("@")
        return ["--model", model] + (["--min-cosine", cos] if cos else [])
    raise SystemExit(f"unknown method: {method}")


def cosine_sweep(folder: Path, tmp: Path, model: str, values: list[str], truth: set) -> None:
    """Runs with one shared gallery (embeddings computed once), one per
    ``--min-cosine`` value ('none': the embedding never decides alone)."""
    rows = []
    for v in values:
        extra = ["--model", model, "--gallery", str(tmp / "gallery")]
        if v != "none":
            extra += ["--min-cosine", v]
        r = run_matchkit(folder, tmp, extra)
        rows.append({"min_cosine": v, **C.score(C.pairs_from_groups(r["clusters"]), truth),
                     "wall_s": r["wall_s"]})
        print(C.table(rows[-1:], list(rows[-1])), flush=True)
    print(C.table(rows, list(rows[0])))


def run_imagehash(folder: Path, tmp: Path) -> dict:
    out = tmp / "imagehash.json"
    cmd = [sys.executable, str(Path(__file__).parent / "imagehash_baseline.py"), str(folder),
           str(out)]
    wall, rss, rc = C.run_measured(cmd)
    if rc:
        raise SystemExit("imagehash baseline failed")
    return {"wall_s": wall, "peak_rss_mib": rss, "clusters": C.clusters_from_json(out)}


def sweep(folder: Path, thresholds: list, truth: set, margins: list[int]) -> None:
    from matchkit import Gallery, Settings
    from matchkit.jobs.dedupe import find_clusters
    from matchkit.io.load import iter_image_files

    with tempfile.TemporaryDirectory() as tmp, Gallery(tmp) as g:
        ids = g.add(list(iter_image_files([folder]))).ids
        rows = []
        for t, c in thresholds:
            for m in margins:
                s = Settings(phash_max_distance=t, colour_min_similarity=c, crowd_margin=m)
                clusters, _, _ = find_clusters(g, ids, s)
                pred = C.pairs_from_groups([[Path(x).name for x in cl.members] for cl in clusters])
                rows.append({"threshold": t, "colour": c, "margin": m, **C.score(pred, truth)})
    print(C.table(rows, ["threshold", "colour", "margin", "pairs_found", "tp", "precision", "recall"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_set_arguments(ap)
    ap.add_argument("--sweep", default=None, help="comma-separated pHash thresholds to try")
    ap.add_argument("--colour-sweep", default=None,
                    help="comma-separated colour-similarity minimums to try with --sweep")
    ap.add_argument("--margin-sweep", default=None,
                    help="comma-separated crowd margins to try with --sweep")
    ap.add_argument("--methods", default=DEFAULT_METHODS,
                    help="comma-separated: matchkit, matchkit-hash-only, imagehash, "
                         "matchkit+MODEL, matchkit+MODEL@MIN_COSINE")
    ap.add_argument("--cosine-sweep", default=None, metavar="MODEL:V1,V2,...",
                    help="try --min-cosine values ('none' = never alone) with MODEL")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()

    base, folder, n_images, truth = load_set(args)
    # Pairs made to look alike on purpose (two photos on one monitor): how many merge.
    negatives = sets.hard_negatives(args.set, folder)
    if args.cosine_sweep:
        model, _, values = args.cosine_sweep.partition(":")
        with tempfile.TemporaryDirectory() as tmp:
            cosine_sweep(folder, Path(tmp), model, values.split(","), truth)
        return
    if args.sweep:
        grid = [(int(t), float(c)) for t in args.sweep.split(",")
                for c in (args.colour_sweep or "0").split(",")]
        sweep(folder, grid, truth, [int(m) for m in (args.margin_sweep or "0").split(",")])
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for method in args.methods.split(","):
            if method == "imagehash":
                r = run_imagehash(folder, tmp)
            else:
                r = run_matchkit(folder, tmp, method_args(method))
            pred = C.pairs_from_groups(r["clusters"])
            extra = {"negatives_merged": f"{len(pred & negatives)}/{len(negatives)}"} \
                if negatives else {}
            rows.append({"method": method, **C.score(pred, truth), **extra, "wall_s": r["wall_s"],
                         "images_per_s": n_images / r["wall_s"], "peak_rss_mib": r["peak_rss_mib"]})
    cols = ["method", "pairs_found", "tp", "precision", "recall",
            *(["negatives_merged"] if negatives else []), "wall_s", "images_per_s",
            "peak_rss_mib"]
    text = C.table(rows, cols)
    print(text)
    if not args.no_write:
        limit = f" --limit {args.limit}" if args.limit else ""
        body = (f"Data: {args.set} set built from `{args.photos.name}` ({args.split} split"
                f"{', first photos only' if args.limit else ''}: "
                f"{len(base)} photos, {n_images} images, {len(truth)} true pairs).\n"
                f"Command: `python benchmarks/bench_dedupe.py --set {args.set} --split {args.split}"
                f"{limit}{'' if args.methods == DEFAULT_METHODS else ' --methods ' + args.methods}`"
                f"\nEach method runs in its own process; time includes process start and "
                f"decoding; memory is that process's peak RSS.\n\n{text}\n")
        extra = ("" if args.methods == DEFAULT_METHODS else f", {args.methods}") + (
            f", {len(base)} photos" if args.limit else "")
        C.write_section(f"dedupe: {args.set} set ({args.split} split{extra})", body)


if __name__ == "__main__":
    main()
