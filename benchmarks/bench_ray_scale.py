"""Ray at scale: the scale collection deduped on 1, 2 and 4 simulated nodes.

Issue 16's benchmark: the first N images of ``scale_set.py``'s collection
(distinct pictures, 5% planted copies, so precision and recall are known at
every size) deduped with ``dedupe(..., ray="auto")`` on a
``ray.cluster_utils.Cluster`` of K one-CPU nodes on this machine, into a new
sharded gallery of K shards (extraction included). Each node count runs in
its own child process. Reported per run: wall time, the driver's peak RSS
(and per image, above its RSS once joined to the cluster), per-node work
(images extracted, pairs verified), bytes between nodes per image, and each
node's peak memory: its shard actor's and its largest task worker's
(``RayRun.stats``; a node's total is at most the actor plus one worker per
CPU).

    nice -n 5 python benchmarks/bench_ray_scale.py --sizes 10000 --nodes 1,2,4
    python benchmarks/bench_ray_scale.py --sizes 2000 --nodes 2 --no-write

All nodes share this machine's two cores: wall time shows overhead and how
the work divides, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import bench_ray  # noqa: E402
import bench_scale_distinct  # noqa: E402
import scale_set  # noqa: E402
from matchkit.config import VOTE_INDEXES  # noqa: E402


def node_memory(work: dict) -> dict:
    """Each node's peak memory (MiB) from ``stats["ray"]["work"]``: shard
    actor and largest task worker, nodes in the same order as ``per_node``."""
    nodes = sorted(n for n in work if n != "driver")

    def mib(key: str) -> str:
        return "/".join(f"{work[n].get(key, 0) / 1024:.0f}" for n in nodes)

    return {"actor_peak_mib_per_node": mib("actor_peak_rss_kib"),
            "task_peak_mib_per_node": mib("task_peak_rss_kib")}


def run(n: int, nodes: int, seed: int, root: Path, vote_index: str) -> dict:
    """One child run of the first ``n`` images on ``nodes`` nodes; its row."""
    folders = [str(root / "img" / f"d{f:04d}") for f in range(n // scale_set.PER_FOLDER)]
    with tempfile.TemporaryDirectory() as tmp:
        out, args = Path(tmp) / "out.json", Path(tmp) / "folders.json"
        args.write_text(json.dumps(folders))
        load = os.getloadavg()[0]
        subprocess.run([sys.executable, __file__, "--child", str(args), str(nodes), str(out),
                        "--vote-index", vote_index], check=True)
        data = json.loads(out.read_text())
        score = bench_scale_distinct.score_run(out, scale_set.truth(seed, n))
    bench, ray_stats = data["bench"], data["stats"]["ray"]
    work = ray_stats["work"]
    return {"images": n, "nodes": nodes, "wall_s": bench["wall_s"],
            "images_per_s": n / bench["wall_s"],
            "driver_peak_rss_mib": bench["driver_peak_rss_mib"],
            "driver_kb_per_image": 1024 * (bench["driver_peak_rss_mib"]
                                           - bench["driver_joined_rss_mib"]) / n,
            "precision": score["precision"], "recall": score["recall"],
            **bench_ray.per_node(work, n), **node_memory(work), "load_before": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000", help="comma-separated, multiples of 1000")
    ap.add_argument("--nodes", default="1,2,4", help="comma-separated node counts")
    ap.add_argument("--seed", type=int, default=3, help="scale collection (default seed 3)")
    ap.add_argument("--root", type=Path, default=None,
                    help="collection folder (default benchmarks/_work/scale-distinct-s<seed>)")
    ap.add_argument("--vote-index", default="ivf", choices=list(VOTE_INDEXES),
                    help="vote index of the sharded gallery (default %(default)s)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--child", nargs=3, metavar=("FOLDERS_JSON", "NODES", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        folders, nodes, out = args.child
        bench_ray.child(json.loads(Path(folders).read_text()), int(nodes), out, args.vote_index)
        return
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
        node_counts = [int(x) for x in args.nodes.split(",")]
    except ValueError:
        ap.error("--sizes and --nodes: comma-separated integers")
    if any(n <= 0 or n % scale_set.PER_FOLDER for n in sizes) or any(k < 1 for k in node_counts):
        ap.error(f"--sizes: positive multiples of {scale_set.PER_FOLDER}; --nodes: 1 or more")
    root = args.root or scale_set.default_root(args.seed)
    rows = []
    for n in sizes:
        scale_set.build(args.seed, root, n, workers=os.cpu_count() or 1)
        for k in node_counts:
            rows.append(run(n, k, args.seed, root, args.vote_index))
            print({key: (round(v, 4) if isinstance(v, float) else v)
                   for key, v in rows[-1].items()}, flush=True)
    cols = ["images", "nodes", "wall_s", "images_per_s", "driver_peak_rss_mib",
            "driver_kb_per_image", "precision", "recall", "extracted_per_node",
            "verified_per_node", "extract_max_over_even", "across_kb_per_image",
            "across_rec/list/query/answer", "verify_across_kb_per_pair",
            "actor_peak_mib_per_node", "task_peak_mib_per_node", "load_before"]
    text = C.table(rows, cols)
    print(text)
    if not args.no_write:
        C.write_section(f"ray: scale collection on {args.nodes} simulated nodes, {args.sizes} "
                        f"images ({args.vote_index} votes)", (
            f"Data: `benchmarks/scale_set.py` seed {args.seed}, the first N images (distinct "
            "pictures, 5% planted copies; precision and recall of pairs against the generator's "
            "groups).\n"
            f"Command: `python benchmarks/bench_ray_scale.py {' '.join(sys.argv[1:])}`\n"
            "Each run: a `ray.cluster_utils.Cluster` of one-CPU nodes on this 2-core machine, "
            "`dedupe(folders, gallery=<new>, ray=\"auto\", shards=nodes)`, extraction included. "
            "Per node, in one order across columns: images extracted, pairs verified, peak RSS "
            "of the shard actor and of the largest task worker (MiB). `across_*`: bytes that "
            "left the node they were made on, per image (records / listing / queries / "
            "answers) and per verified pair. `driver_kb_per_image`: driver peak less its RSS "
            "once joined, per image. `load_before`: 1-minute load average before the run.\n\n"
            + text))


if __name__ == "__main__":
    main()
