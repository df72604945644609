"""Capacity plan: what N images cost on a cluster, from measured per-image costs.

Issue 16 asks for a plan of 100M images on real hardware built from the
per-image costs this machine measured. Nothing here is measured by this script:
every input is a number from another RESULTS.md section (named next to it), and
the plan is arithmetic on them, so it is only as good as the assumption that
those costs stay flat with size (at 20,000 images the time per image had grown
1.24x over 1,000: see "scaling: dedupe cost vs collection size").

    python benchmarks/capacity_plan.py                       # 100M images, 8..64 nodes
    python benchmarks/capacity_plan.py --images 1e9 --cores 64 --ram-gb 512

The driver row says where today's design stops: the driver holds about
11 KB per image while matching (measured at 100,000 images), so a plan
needs the streaming clustering named in the notes, not more nodes.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


@dataclass(frozen=True)
class Costs:
    """Per-image costs, each from a RESULTS.md section of this machine."""

    #: "throughput: hash-only add": default add, 2 processes, 179.9 images/s on
    #: 2 cores (ImageNet JPEGs, median 500x333).
    extract_core_ms: float = 2 / 179.9 * 1000
    #: "speed: this session's code vs a26e2d7": transformed eval half end to
    #: end, 2,118 images in 26.2 s on 2 cores (idle machine).
    dedupe_core_ms: float = 2 * 26.2 / 2118 * 1000
    #: "candidates: HNSW vs IVF votes": CPU ms per image to search the
    #: descriptor index (hard calib half, under load).
    search_ms_hnsw: float = 4.50
    search_ms_ivf: float = 2.30
    #: "Compact stored features": whole gallery per image on disk (SQLite
    #: 23.0 KB + orb.usearch 11.7 + phash.usearch 0.2); IVF replaces the
    #: 11.7 KB descriptor index by 1.2 KB ("ivf: compact descriptor index").
    disk_kb_hnsw: float = 34.9
    disk_kb_ivf: float = 23.0 + 1.2 + 0.2
    #: descriptor index in memory per image ("candidates: HNSW vs IVF votes").
    ram_kb_hnsw: float = 27.7
    ram_kb_ivf: float = 1.2
    #: "ray: driver memory at 100,000 images": queries and answers that
    #: crossed nodes, 1,247 MB for 100,000 images on 3 nodes (HNSW votes),
    #: 6.2 KB per image per other node (6.1 at 2,118-3,177 images, "ray3").
    across_kb_per_other_node: float = 6.2
    #: "ray: driver memory at 100,000 images, search dicts freed and
    #: relations settled in parts": driver peak RSS per image at 100,000
    #: images (914.7 MiB; 1,024.6 before, 120 KB per image in "ray3", before
    #: the driver's rows became columns).
    driver_kb: float = 914.7 * 1.048576 / 100


def plan(images: float, nodes: int, cores: int, ram_gb: float, gbit: float,
         index: str, costs: Costs = Costs()) -> dict:
    """One row of the plan: hours, disk, memory and network for ``nodes``."""
    ivf = index == "ivf"
    compute_h = images * costs.dedupe_core_ms / 1000 / 3600 / (nodes * cores)
    # Image-sharded index (today): every node answers every image's queries,
    # so its search work does not shrink with more nodes.
    search_ms = costs.search_ms_ivf if ivf else costs.search_ms_hnsw
    search_h = images * search_ms / 1000 / 3600 / cores
    across_tb = images * costs.across_kb_per_other_node * (nodes - 1) / 1e9
    inbound_gb = images * costs.across_kb_per_other_node * (nodes - 1) / nodes / 1e6
    network_h = inbound_gb / (gbit / 8) / 3600
    index_gb = images * (costs.ram_kb_ivf if ivf else costs.ram_kb_hnsw) / nodes / 1e6
    disk_gb = images * (costs.disk_kb_ivf if ivf else costs.disk_kb_hnsw) / nodes / 1e6
    return {"index": index, "nodes": nodes, "compute_h": compute_h,
            "search_h_per_node": search_h, "network_h": network_h,
            "hours_if_serial": compute_h + search_h + network_h,
            "index_ram_gb_per_node": index_gb,
            "fits_ram": "yes" if index_gb <= 0.5 * ram_gb else "no",
            "disk_gb_per_node": disk_gb, "across_tb_total": across_tb,
            "driver_gb_today": images * costs.driver_kb / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=float, default=1e8, help="collection size (default 1e8)")
    ap.add_argument("--nodes", default="8,16,32,64", help="node counts to plan")
    ap.add_argument("--cores", type=int, default=32, help="cores per node (default 32)")
    ap.add_argument("--ram-gb", type=float, default=256, help="RAM per node (default 256)")
    ap.add_argument("--gbit", type=float, default=10, help="network per node, Gbit/s (default 10)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    try:
        counts = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        ap.error("--nodes takes comma-separated integers, e.g. 8,16,32")
    if args.images <= 0 or args.cores <= 0 or min(counts) < 1:
        ap.error("--images, --cores and --nodes must be positive")
    rows = [plan(args.images, n, args.cores, args.ram_gb, args.gbit, index)
            for index in ("hnsw", "ivf") for n in counts]
    cols = list(rows[0])
    table = C.table(rows, cols)
    print(table)
    if args.no_write:
        return
    c = Costs()
    n = f"{args.images:,.0f}"
    C.write_section("capacity plan: 100M images on a cluster (issue 16, item 5)" if
                    args.images == 1e8 else f"capacity plan: {n} images", (
        f"Command: `python benchmarks/capacity_plan.py --images {args.images:g} --nodes "
        f"{args.nodes} --cores {args.cores} --ram-gb {args.ram_gb:g} --gbit {args.gbit:g}`.\n"
        "**Arithmetic, not a measurement**: every per-image cost is a number measured on "
        "this 2-core machine at 2,000-100,000 images (sections named in the script's "
        "`Costs`), assumed flat with size. Of the runs the issue asks for, the 100k scale "
        "collection ran on 3 simulated nodes (sections \"ray: driver memory at 100,000 "
        "images\": the network costs below, and \"..., search dicts freed and relations "
        "settled in parts\": the driver's); the 1, 2 and 4 node runs were made at 10,000 "
        "images only (section \"ray: scale collection on 1,2,4 simulated nodes\").\n\n"
        f"Inputs: end-to-end dedupe {c.dedupe_core_ms:.1f} core-ms per image (extraction "
        f"alone {c.extract_core_ms:.1f}); descriptor search {c.search_ms_hnsw} ms (HNSW) "
        f"or {c.search_ms_ivf} ms (IVF) per image; gallery on disk {c.disk_kb_hnsw} KB "
        f"(HNSW) or {c.disk_kb_ivf:.1f} KB (IVF) per image; descriptor index in memory "
        f"{c.ram_kb_hnsw} / {c.ram_kb_ivf} KB per image; {c.across_kb_per_other_node} KB "
        f"per image per other node crossing the network; driver {c.driver_kb:.1f} KB per "
        f"image. Nodes of {args.cores} cores, {args.ram_gb:g} GB RAM (half for the "
        f"index), {args.gbit:g} Gbit/s.\n\n"
        "Columns: `compute_h` extraction, verification and clustering spread over all "
        "cores; `search_h_per_node` the candidate search each node does for *every* image "
        "(the index is split by image, so each query visits every shard: this does not "
        "shrink with more nodes); `network_h` each node's inbound queries and answers at "
        "line rate; `driver_gb_today` what the driver would hold with today's code.\n\n"
        f"{table}\n\n"
        f"Reading it. (1) **The driver is the first wall**: at {c.driver_kb:.1f} KB per image "
        f"it holds {1e8 * c.driver_kb / 1e9:,.1f} TB at 100M (1 GB at about "
        f"{1e6 / c.driver_kb:,.0f} images); the matcher builds per-image "
        "structures over all images at once. Clustering only needs the accepted pairs: a "
        "union-find over image ids (8-16 bytes per image, 1-2 GB at 100M) fed by the shards' "
        "verified pairs, with the report written per cluster, is the change that makes "
        "100M possible. (2) **The image-split index is the second**: with HNSW the "
        "descriptor index needs 2.8 TB of RAM in total (22 nodes of 256 GB just to hold "
        "it), and every node searches for all 100M images (about 3.9 h on 32 cores, "
        "whatever the node count), while the bytes across the network grow with the node "
        f"count ({c.across_kb_per_other_node} KB per image per other node). The IVF index "
        "(1.2 KB per image, exact "
        "merge across shards) fits in memory on any of these clusters; split by visual word "
        "instead of by image, each query descriptor would go to one node, so search work "
        "and bytes would divide by the node count (about 3.2 KB per image in total). "
        "(3) With both changes, 100M images on 32 nodes of 32 cores is about "
        f"{plan(args.images, 32, args.cores, args.ram_gb, args.gbit, 'ivf')['compute_h']:.1f} "
        "hours of extraction and matching at today's per-image cost, plus reading "
        "the files: a 12-megapixel JPEG costs more to decode than the ImageNet photos "
        "measured here (draft-mode decoding keeps it to a fraction of a full decode).\n"))


if __name__ == "__main__":
    main()
