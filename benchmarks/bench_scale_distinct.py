"""Scale of `dedupe --gallery` on distinct pictures with 5% planted copies.

The issue-15 targets (10k, 100k, 1M images) measured on collections from
``scale_set.py``: distinct synthetic pictures (no shared regions) and a known
5% of edited copies, so recall and precision are checked at every size. For
each size N (a multiple of 2,000) it makes the first N + 1% slots if missing
(resumable, both cores), then, with a fresh gallery:

1. ``first``: ``matchkit dedupe <the N/1000 folders> --gallery G``;
2. ``no-op``: the same command again (nothing new);
3. ``add 1%``: the folders plus the next N/100 files (with their copies, half
   of them of pictures already in the gallery).

Recorded per run: wall time, images/s, CPU seconds (of the dedupe process:
steadier than wall on a shared machine; its forkserver decoding workers are
probably not included), peak RSS, gallery disk per
image, time per image relative to the smallest size, pair precision and
recall against the planted groups, and the load average before the run.

    nice -n 5 python benchmarks/bench_scale_distinct.py                # 10000
    nice -n 5 python benchmarks/bench_scale_distinct.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import scale_set  # noqa: E402

STEP = 2000  # N and N/100 must be whole blocks of 20 copies


def score_run(out_json: Path, groups: list[list[str]]) -> dict:
    truth = C.pairs_from_groups([[os.path.basename(n) for n in g] for g in groups])
    pred = C.pairs_from_groups(C.clusters_from_json(out_json))
    return C.score(pred, truth)


def _phases(out_json: Path) -> str:
    """The run's ``stats.phase_seconds`` (where its time went), the steps of
    at least 0.1 s, as "add 1.5, stored 5.9, ..." ("" from a matchkit
    that does not report them)."""
    phases = json.loads(out_json.read_text())["stats"].get("phase_seconds") or {}
    return ", ".join(f"{k} {v:.1f}" for k, v in phases.items() if v >= 0.1)


def _tag(vote_index: str | None) -> str:
    """What names a vote index's galleries, outputs and results apart ("" for the default)."""
    return f"-{vote_index}" if vote_index else ""


def run_size(n: int, seed: int, root: Path, workers: int, keep: bool,
             vote_index: str | None = None) -> list[dict]:
    extra = n // 100
    made = scale_set.build(seed, root, n + extra, workers=workers)
    if made["made"]:
        print(f"made {made['made']} images, {made['s_per_1000']:.0f} s per 1,000", flush=True)
    img = root / "img"
    folders = [str(img / f"d{f:04d}") for f in range(n // scale_set.PER_FOLDER)]
    added = [str(img / scale_set.Slot(i).name) for i in range(n, n + extra)]
    tag = _tag(vote_index)
    gallery = root / f"gallery-{n}{tag}"
    shutil.rmtree(gallery, ignore_errors=True)
    rows = []
    runs = (("first", folders, n), ("no-op", folders, n), ("add 1%", folders + added, n + extra))
    for name, paths, count in runs:
        out = root / f"out-{n}{tag}-{name.split()[0].replace('%', '')}.json"
        cmd = [sys.executable, "-m", "matchkit.cli", "dedupe", *paths, "--gallery", str(gallery),
               "--json", str(out), "-q", *(["--vote-index", vote_index] if vote_index else [])]
        load = os.getloadavg()[0]
        u = C.run_usage(cmd)
        if u["rc"] not in (0, 1):
            raise SystemExit(f"dedupe failed ({u['rc']}) at {n}, run {name}")
        disk = C.folder_size(gallery)
        row = {"images": count, "run": name, **{k: u[k] for k in ("wall_s", "cpu_s", "peak_rss_mib")},
               "images_per_s": count / u["wall_s"], "cpu_ms_per_image": 1000 * u["cpu_s"] / count,
               "gallery_mb": disk / 2**20, "kb_per_image": disk / 1024 / count,
               **score_run(out, scale_set.truth(seed, count)), "load_before": load,
               "phases": _phases(out)}
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    first = rows[0]
    for r in rows[1:]:
        r["vs_first_run"] = f"{r['wall_s'] / first['wall_s']:.3f}x wall, {r['cpu_s'] / first['cpu_s']:.3f}x cpu"
    (root / f"results-{n}{tag}.json").write_text(json.dumps(rows, indent=1))
    if not keep:
        shutil.rmtree(gallery, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000", help="comma-separated, multiples of 2000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=None, help="collection folder "
                    "(default benchmarks/_work/scale-distinct-s<seed>)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes for making missing images")
    ap.add_argument("--keep-gallery", action="store_true")
    ap.add_argument("--vote-index", default=None,
                    help="pass --vote-index to dedupe (galleries, outputs and results-N-NAME.json "
                         "are kept apart per index)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    try:
        sizes = sorted(int(x) for x in args.sizes.split(","))
    except ValueError:
        ap.error("--sizes: comma-separated integers")
    if not sizes or any(n <= 0 or n % STEP for n in sizes):
        ap.error(f"--sizes: positive multiples of {STEP}")
    root = args.root or scale_set.default_root(args.seed)
    rows = [r for n in sizes
            for r in run_size(n, args.seed, root, args.workers, args.keep_gallery, args.vote_index)]
    # Smaller sizes measured by earlier invocations on this collection (their
    # results-N.json) join the table, so a 100k run is compared with the 10k.
    tag = _tag(args.vote_index)
    earlier = sorted((int(f.stem.split("-")[1]), f) for f in root.glob("results-*.json")
                     if f.stem[len("results-"):].lstrip("0123456789") == tag)
    earlier = [(n, f) for n, f in earlier if n < sizes[0]]
    rows = [{**r, "run": r["run"] + " (earlier)"} for _, f in earlier
            for r in json.loads(f.read_text())] + rows
    smallest = earlier[0][0] if earlier else sizes[0]
    base = {r["run"].replace(" (earlier)", ""): r for r in rows
            if r["images"] in (smallest, smallest + smallest // 100)}
    for r in rows:
        b = base[r["run"].replace(" (earlier)", "")]
        r["time_per_image_vs_smallest"] = (
            f"{(r['wall_s'] / r['images']) / (b['wall_s'] / b['images']):.2f}x wall, "
            f"{(r['cpu_s'] / r['images']) / (b['cpu_s'] / b['images']):.2f}x cpu")
    cols = ["images", "run", "wall_s", "images_per_s", "cpu_s", "cpu_ms_per_image",
            "peak_rss_mib", "gallery_mb", "kb_per_image", "precision", "recall", "pairs_found",
            "true_pairs", "load_before", "vs_first_run", "time_per_image_vs_smallest", "phases"]
    text = C.table(rows, cols)
    print(text)
    if not args.no_write:
        seed = f", seed {args.seed}" if args.seed else ""  # seed 0's sections came first
        C.write_section(f"scaling: distinct pictures with planted copies, {args.sizes}{seed}"
                        + (f", --vote-index {args.vote_index}" if args.vote_index else ""), (
            f"Data: `benchmarks/scale_set.py` seed {args.seed}: distinct procedural pictures "
            "(`synth.py`: fractal-noise textures, shapes, strokes, text, lighting, grain; "
            "640x480 to 1024x768 JPEG, no region shared between pictures, though the letters "
            "of their one font and the emojis some copies get recur at other sizes and colours) "
            "and 5% edited copies "
            "(copy-detection suite edits minus re-photographs and screenshots, whose shared frames "
            "would be regions common to different pictures), ground truth from the generator.\n"
            f"Command: `python benchmarks/bench_scale_distinct.py {' '.join(sys.argv[1:])}`\n"
            "Runs: `first` = `matchkit dedupe <folders> --gallery G` on a fresh gallery; `no-op` "
            "= the same again; `add 1%` = the folders plus the next 1% of files. Each in its own "
            "process; `cpu_s` is the CPU time of the dedupe process and the children it reaped (the "
            "decoding workers run under a forkserver and are probably not included: read it as "
            "main-process CPU); `load_before` is the 1-minute load "
            f"average on this shared {os.cpu_count()}-core machine before the run (wall times "
            "scale with it; compare `cpu_s` across runs made under different loads). Rows marked "
            "`(earlier)` come from an earlier invocation's `results-N.json`. Precision "
            "and recall are pair-level against the planted groups.\n\n"
            f"{text}\n"))


if __name__ == "__main__":
    main()
