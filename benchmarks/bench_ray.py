"""Ray benchmark: dedupe on 1, 2 and 3 simulated nodes against one machine.

For each set (eval halves of ``transformed`` and ``hard``, see ``sets.py``)
the one-machine run (``matchkit dedupe``) is the reference. Then, for each
node count, a child process starts a ``ray.cluster_utils.Cluster`` of that
many 1-CPU nodes on this machine, runs ``dedupe(..., ray="auto")`` into a
new sharded gallery (one shard per node) and reports: wall time of the
dedupe call (cluster start excluded), the driver's peak RSS, per-node work
(images extracted, pairs verified, bytes shipped) and whether clusters,
keepers and pair relations are identical to the one-machine run.

    python benchmarks/bench_ray.py --limit 40          # first 40 photos of each eval half
    python benchmarks/bench_ray.py --set hard --nodes 1,3 --no-write

All "nodes" share this machine's cores, so wall time shows overhead, not
speed-up; per-node work shows how evenly the work spreads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import bench_dedupe  # noqa: E402
import sets  # noqa: E402
from matchkit.config import VOTE_INDEXES  # noqa: E402


def result_key(clusters: list[dict]) -> list:
    """Clusters, keepers and pair relations of a report's JSON."""
    return sorted((c["keep"], sorted(c["members"]),
                   sorted((p["a"], p["b"], p["relation"]) for p in c["pairs"]))
                  for c in clusters)


def child(folder: str | list[str], nodes: int, out: str, vote_index: str = "ivf") -> None:
    """Start a cluster of ``nodes`` 1-CPU nodes, dedupe ``folder`` (or a list
    of folders) into a new sharded gallery on it, write the report and
    measurements as JSON to ``out``."""
    from matchkit.config import Settings, vote_index_settings
    import ray
    from ray.cluster_utils import Cluster

    from matchkit.jobs.dedupe import dedupe

    temp = tempfile.mkdtemp(prefix="mkbench-")
    os.makedirs(os.path.join(temp, "ray"))
    os.environ["RAY_TMPDIR"] = temp
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "temp_dir": os.path.join(temp, "ray"), "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        joined = _rss_mib()
        start = time.perf_counter()
        folders = [folder] if isinstance(folder, str) else folder
        report = dedupe(folders, gallery=os.path.join(temp, "gallery"), ray="auto",
                        shards=nodes, settings=Settings().with_(**vote_index_settings(vote_index)))
        wall = time.perf_counter() - start
        data = report.to_dict()
        data["bench"] = {"wall_s": wall, "driver_joined_rss_mib": joined,
                         "driver_peak_rss_mib": resource.getrusage(
                             resource.RUSAGE_SELF).ru_maxrss / 1024.0}
        Path(out).write_text(json.dumps(data))
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _rss_mib() -> float:
    """This process's resident memory now (MiB)."""
    return C.status_mib("VmRSS") or 0.0


def first_photos(folder: Path, n: int, out: Path) -> Path:
    """The files of the first ``n`` photos of a built set, linked into ``out``
    (the full set is built once; some builders need extra packages)."""
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    keep = sorted({sets.group_of(p.name) for p in files})[:n]
    out.mkdir()
    for p in files:
        if sets.group_of(p.name) in keep:
            os.link(p, out / p.name)
    return out


def per_node(work: dict, n_images: int) -> dict:
    """Per-node work and bytes of a run's ``stats["ray"]["work"]``. Bytes are
    counted twice: serialised (every object handed to Ray: records to the shard
    actors, listings, candidate queries and answers, verification chunks) and
    across nodes (only what left the node it was made on: an object between
    two processes of one node stays in that node's object store)."""
    nodes = sorted(n for n in work if n != "driver")
    every = [work[n] for n in work]
    extracted = [work[n].get("images_extracted", 0) for n in nodes]
    verified = [work[n].get("pairs_verified", 0) for n in nodes]

    def total(key: str) -> int:
        return sum(w.get(key, 0) for w in every)

    def kb(key: str, per: int) -> float:
        return total(key) / 1024 / max(1, per)

    images, pairs = n_images, sum(verified)
    parts = ("records", "listing", "query", "answer")
    seconds = [work[n].get("extract_ms", 0) / 1000 for n in nodes]
    busy = [e for e in extracted if e]
    return {"extracted_per_node": "/".join(map(str, extracted)),
            "extract_s_per_node": "/".join(f"{s:.1f}" for s in seconds),
            "verified_per_node": "/".join(map(str, verified)),
            "extract_max_over_even": (max(busy) / (sum(busy) / len(busy))) if busy else 0.0,
            "across_kb_per_image": sum(kb(f"{p}_bytes_across_nodes", images) for p in parts),
            "across_rec/list/query/answer": "/".join(
                f"{kb(f'{p}_bytes_across_nodes', images):.2f}" for p in parts),
            "serialised_kb_per_image": sum(kb(f"{p}_bytes", images) for p in parts),
            "serialised_rec/list/query/answer": "/".join(
                f"{kb(f'{p}_bytes', images):.2f}" for p in parts),
            "verify_across_kb_per_pair": kb("verify_bytes_across_nodes", pairs),
            "verify_serialised_kb_per_pair": kb("verify_bytes", pairs),
            "features_read_kb_per_pair": kb("features_read_bytes", pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--set", default="transformed,hard", help="comma-separated sets")
    ap.add_argument("--photos", type=Path, default=C.DEFAULT_PHOTOS)
    ap.add_argument("--split", default="eval", choices=["eval", "calib", "all"])
    ap.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--vote-index", default="ivf", choices=list(VOTE_INDEXES),
                    help="descriptor index for votes, on one machine and on the nodes "
                         "(default %(default)s)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--child", nargs=3, metavar=("FOLDER", "NODES", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2], args.vote_index)
        return
    sections = []
    for name in args.set.split(","):
        set_args = argparse.Namespace(set=name, photos=args.photos, split=args.split,
                                      limit=None)
        _, folder, n_images, _ = bench_dedupe.load_set(set_args)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            if args.limit:
                folder = first_photos(folder, args.limit, Path(tmp) / "set")
                n_images = sum(1 for _ in folder.iterdir())
            single = bench_dedupe.run_matchkit(folder, Path(tmp),
                                               ["--vote-index", args.vote_index])
            reference = result_key(json.loads((Path(tmp) / "matchkit.json").read_text())
                                   ["clusters"])
            rows.append({"nodes": "one machine", "wall_s": single["wall_s"],
                         "driver_peak_rss_mib": single["peak_rss_mib"], "identical": "-",
                         "clusters": len(reference)})
            print(C.table(rows, list(rows[0])), flush=True)
            for n in [int(x) for x in args.nodes.split(",")]:
                out = Path(tmp) / f"ray-{n}.json"
                wall, _, rc = C.run_measured([sys.executable, __file__, "--child", str(folder),
                                              str(n), str(out), "--vote-index",
                                              args.vote_index])
                if rc:
                    raise SystemExit(f"ray run on {n} nodes failed ({rc})")
                data = json.loads(out.read_text())
                bench = data["bench"]
                rows.append({"nodes": n, "wall_s": bench["wall_s"],
                             "driver_peak_rss_mib": bench["driver_peak_rss_mib"],
                             "driver_kb_per_image": 1024 * (bench["driver_peak_rss_mib"]
                                                            - bench["driver_joined_rss_mib"])
                             / n_images,
                             "identical": result_key(data["clusters"]) == reference,
                             "clusters": len(data["clusters"]),
                             **per_node(data["stats"]["ray"]["work"], n_images)})
                print(C.table(rows[-1:], list(rows[-1])), flush=True)
        cols = ["nodes", "wall_s", "driver_peak_rss_mib", "driver_kb_per_image", "identical",
                "clusters",
                "extracted_per_node", "extract_s_per_node", "verified_per_node",
                "extract_max_over_even", "across_kb_per_image", "across_rec/list/query/answer",
                "serialised_kb_per_image", "serialised_rec/list/query/answer",
                "verify_across_kb_per_pair", "verify_serialised_kb_per_pair",
                "features_read_kb_per_pair"]
        table = C.table(rows, cols)
        print(table)
        sections.append(f"### {name} set, {args.split} split"
                        f"{f', first {args.limit} photos' if args.limit else ''}: "
                        f"{n_images} images\n\n{table}\n")
    if not args.no_write:
        cmd = " ".join(["python benchmarks/bench_ray.py", f"--set {args.set}",
                        f"--split {args.split}", f"--nodes {args.nodes}"]
                       + [f"--vote-index {args.vote_index}"]
                       + ([f"--limit {args.limit}"] if args.limit else []))
        C.write_section("ray: dedupe on simulated nodes"
                        + f" ({args.vote_index} votes)", (
            f"`{cmd}` (Ray 2.60, `ray.cluster_utils.Cluster`, nodes of 1 CPU on this one "
            "machine, one shard per node; the machine is shared with other sessions, so "
            "wall times are measured under load). `wall_s`: the dedupe call (one machine: "
            "the whole CLI run); `driver_kb_per_image`: the driver's peak RSS less its RSS "
            "once joined to the cluster, per image; `identical`: clusters, keepers and pair "
            "relations equal the one-machine run's; `extracted`/`verified` per node; "
            "`extract_s_per_node`: time in extraction tasks per node (each node extracts "
            "the images of its own shard); `extract_max_over_even`: busiest node over the "
            "even share. Bytes: `across_*` counts only what left the node it was made on "
            "(between processes of one node, Ray's object store moves nothing between "
            "machines), `serialised_*` everything handed to Ray; `rec` the extracted "
            "records (worker to shard actor), `list` the listing (plans of the shards, "
            "owning shard of each file), `query` candidate queries (pHash variants, the "
            "descriptors each image votes with; put once per search, so once per node), "
            "`answer` the shards' answers (int32 keys, uint8 distances); "
            "`verify_*_kb_per_pair`: verification chunks and their results; "
            "`features_read_kb_per_pair`: stored features the verification tasks read from "
            "the shards' files (shared storage). All nodes share this machine's cores, so "
            "wall time measures overhead, not speed-up. Load average (1 min) at the end: "
            f"{os.getloadavg()[0]:.1f}.\n\n"
            + "\n".join(sections)))


if __name__ == "__main__":
    main()
