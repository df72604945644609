"""Descriptor-vote candidates: today's HNSW index vs IVF variants (``matchkit/index/ivf.py``).

For each set (a gallery built from its folder with ``matchkit index``), the
strongest ``index_features`` ORB descriptors of every image are indexed and
every image votes with its ``query_features`` strongest descriptors
(``candidates.vote_candidates``, default limits unless a variant says
otherwise). Reported per variant:
- candidate pairs, and recall of the true pairs among them;
- recall at equal budget: the top pairs by votes (ties by pair), as many as
  HNSW gave on that set;
- index bytes per image in memory and on disk, add and search time per image;
- with ``--shards N``: the share of query descriptors whose neighbour lists
  differ when the index is split into N shards and merged, and the vote
  pairs that differ (a sharded or Ray run should equal one machine's).

Variants are ``hnsw`` or ``ivf:VOCAB.npz:PROBES:MAXDIST[:NEIGHBOURS[:NODES[:BITS]]]``
(NODES: first-level nodes the probes are chosen in, default 2; BITS: signature
bits, 64 / 128 / 256, default the vocabulary's).

Example:
    python benchmarks/bench_candidates.py --gallery hard=/tmp/g-hard-calib \\
        --gallery recapture=/tmp/g-recapture-calib --folder-root benchmarks/_work \\
        --variant hnsw --variant ivf:matchkit/data/orb_vocab.npz:2:56 --section calib
    python benchmarks/bench_candidates.py --gallery scale=/tmp/g-scale-10k \
        --truth scale=benchmarks/_work/scale-distinct-s3/truth-10100.json --variant hnsw ...
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _common as C  # noqa: E402

from matchkit.match.candidates import vote_candidates  # noqa: E402
from matchkit.config import Settings  # noqa: E402
from matchkit.store.gallery import ORB_KEY_STRIDE, Gallery  # noqa: E402
from matchkit.index.hamming import HammingIndex  # noqa: E402
from matchkit.index.ivf import IVFIndex, Vocabulary  # noqa: E402
from matchkit.store.shards import MergedIndex  # noqa: E402
import sets  # noqa: E402


def load(gallery: Path, per_image: int, truth_file: Path | None = None):
    """Descriptors by image id, and the true pairs: images of one photo
    (``sets.group_of``), or with ``truth_file`` the groups it lists
    ({"groups": [[name, ...], ...]}, as ``scale_set.py`` writes; matched by
    file name, so folders of links to the set's files work)."""
    db = sqlite3.connect(f"file:{gallery / 'gallery.sqlite'}?mode=ro", uri=True)
    try:
        names = {i: os.path.basename(p) for i, p in db.execute("SELECT id, path FROM images")}
        descs = {i: np.frombuffer(d, np.uint8).reshape(-1, 32)
                 for i, d in db.execute("SELECT image_id, descriptors FROM local_features "
                                        "ORDER BY image_id")}
    finally:
        db.close()
    groups: dict[str, list[int]] = {}
    if truth_file is not None:
        by_name = {n: i for i, n in names.items()}
        for g, members in enumerate(json.loads(truth_file.read_text())["groups"]):
            groups[str(g)] = [by_name[os.path.basename(m)] for m in members
                              if os.path.basename(m) in by_name]
    else:
        for i, n in names.items():
            groups.setdefault(sets.group_of(n), []).append(i)
    truth = {(a, b) for g in groups.values() for a in g for b in g if a < b}
    return descs, truth


def build(variant: str, descs: dict, s: Settings, shard: tuple[int, int] | None = None):
    """The variant's index over ``descs`` (only images ``id % n == i`` with ``shard=(i, n)``)."""
    if shard is not None:
        descs = {i: d for i, d in descs.items() if i % shard[1] == shard[0]}
    if variant == "hnsw":
        nbits, params = Gallery._index_params("orb")
        idx = HammingIndex(nbits, **params)
        limits = {}
    else:
        _, vocab, probes, maxd, *rest = variant.split(":")
        voc = Vocabulary.load(vocab)
        if len(rest) > 2:
            voc = voc.with_signature_bits(int(rest[2]))
        idx = IVFIndex(voc, probes=int(probes), nodes=int(rest[1]) if len(rest) > 1 else 2)
        limits = {"max_distance": int(maxd)}
        if rest:
            limits["neighbours"] = int(rest[0])
    items = [(i, d[: s.index_features]) for i, d in sorted(descs.items()) if len(d)]
    keys = np.concatenate([i * ORB_KEY_STRIDE + np.arange(len(d)) for i, d in items])
    t = time.process_time()
    idx.add(keys, np.concatenate([d for _, d in items]), replace=False)
    if hasattr(idx, "_merge"):
        idx._merge()
    add_s = time.process_time() - t
    return idx, limits, add_s


def measure(name: str, variant: str, descs: dict, truth: set, s: Settings,
            shards: int = 1) -> dict:
    idx, limits, add_s = build(variant, descs, s)
    queries = {i: d[: s.query_features] for i, d in descs.items() if len(d)}
    kw = dict(neighbours=s.vote_neighbours, max_distance=s.vote_max_distance,
              per_query=s.vote_candidates, min_votes=s.vote_min_votes)
    kw.update(limits)
    t = time.process_time()
    votes = vote_candidates(idx, queries, key_stride=ORB_KEY_STRIDE, **kw)
    search_s = time.process_time() - t
    with tempfile.TemporaryDirectory() as tmp:
        disk = idx.save(Path(tmp) / "orb.idx")["size"]
    n = len(descs)
    mem = idx.nbytes() if hasattr(idx, "nbytes") else idx._index.memory_usage
    row = {"set": name, "variant": variant.replace("ivf:", "").replace(".npz", ""),
           "pairs": len(votes), "recall": len(set(votes) & truth) / len(truth),
           "votes": votes, "mem_B_img": mem / n, "disk_B_img": disk / n,
           "add_ms_img": 1000 * add_s / n, "search_ms_img": 1000 * search_s / n}
    if shards > 1:  # the same searches over shards, merged as shards.MergedIndex merges
        merged = MergedIndex([build(variant, descs, s, (i, shards))[0] for i in range(shards)])
        q = np.concatenate(list(queries.values()))
        a, b = idx.search(q, kw["neighbours"]), merged.search(q, kw["neighbours"])
        row["rows_differ_sharded"] = float(np.mean(np.any((a[0] != b[0]) | (a[1] != b[1]), 1)))
        split = vote_candidates(merged, queries, key_stride=ORB_KEY_STRIDE, **kw)
        row["pairs_differ_sharded"] = len(set(split) ^ set(votes))
    return row


def at_budget(votes: dict, budget: int, truth: set) -> float:
    top = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:budget]
    return sum(1 for p, _ in top if p in truth) / len(truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gallery", action="append", required=True, metavar="NAME=FOLDER",
                    help="a set's gallery (built with matchkit index --no-embed)")
    ap.add_argument("--truth", action="append", default=[], metavar="NAME=FILE",
                    help="the true groups of set NAME from a file (scale_set.py's "
                         "truth-N.json), instead of the photo in each file name")
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--shards", type=int, default=1,
                    help="also search N shards (image id mod N) merged, and count the query "
                         "rows and vote pairs that differ from one index")
    ap.add_argument("--section", default=None,
                    help="write RESULTS.md section 'candidates: SECTION'")
    args = ap.parse_args()
    s = Settings()
    rows = []
    truths = dict(t.split("=", 1) for t in args.truth)
    for spec in args.gallery:
        name, _, folder = spec.partition("=")
        truth_file = Path(truths[name]) if name in truths else None
        descs, truth = load(Path(folder), s.index_features, truth_file)
        print(f"{name}: {len(descs)} images, {len(truth)} true pairs", flush=True)
        base = None
        for v in args.variant:
            r = measure(name, v, descs, truth, s, args.shards)
            if base is None:
                base = r["pairs"]
            r["budget"] = base
            r["recall_at_budget"] = at_budget(r.pop("votes"), base, truth)
            rows.append(r)
            print({k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()},
                  flush=True)
    cols = ["set", "variant", "pairs", "recall", "budget", "recall_at_budget", "mem_B_img",
            "disk_B_img", "add_ms_img", "search_ms_img"]
    if args.shards > 1:
        cols += ["rows_differ_sharded", "pairs_differ_sharded"]
    print(C.table(rows, cols))
    if args.section:
        load_avg = os.getloadavg()
        body = ("Command: `python benchmarks/bench_candidates.py " + " ".join(sys.argv[1:])
                + "`\n\nVariant `VOCAB:PROBES:MAXDIST[:NEIGHBOURS[:NODES[:BITS]]]` is the IVF index; "
                "budget = the first variant's candidate pairs; recall_at_budget = recall "
                "of that many top-voted pairs. Times are CPU ms per image, measured under "
                f"load (load average {load_avg[0]:.1f}).\n\n" + C.table(rows, cols))
        C.write_section(f"candidates: {args.section}", body)


if __name__ == "__main__":
    main()
