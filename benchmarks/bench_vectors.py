"""VectorIndex at scale: build time, memory, single-query latency, recall@10.

Gallery: N random unit vectors (standard normal, seeded, normalised): the
worst case for HNSW, because in high dimensions all random points are almost
equally far apart. Two query sets, 1,000 each by default:

* held-out: fresh random unit vectors (not in the gallery);
* perturbed: gallery vectors plus Gaussian noise (cosine ~0.9 to their
  source), the near-duplicate lookup case.

Latency is one query per call, one search thread (``threads=1``), timed
around ``VectorIndex.search`` (Python overhead included). Recall@10 is
measured against exact float32 search (numpy matmul in chunks) over the
same gallery. expansion_search is swept on one built graph; the filtered
section times both filtered strategies (exhaustive scan of the allowed ids,
oversampled graph search) at several selectivities, which is how the
switch-over constants in matchkit/index/vectors_search.py were chosen.

    python benchmarks/bench_vectors.py --n 100000          # quick
    python benchmarks/bench_vectors.py                      # 1M (long build)
    python benchmarks/bench_vectors.py --n 100000 --connectivity 32 --ef 64,128,256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as C  # noqa: E402

import matchkit.index.vectors as V  # noqa: E402
import matchkit.index.vectors_search as S  # noqa: E402
from matchkit.index.vectors import VectorIndex  # noqa: E402


def rss_mib() -> float:
    now = C.status_mib("VmRSS")
    return float("nan") if now is None else now


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_unit(rng, n: int, dim: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + len(x)] = x
    return out


def structured_unit(rng, n: int, dim: int, intrinsic: int = 32, noise: float = 0.1,
                    chunk: int = 100_000) -> np.ndarray:
    """Unit vectors near a random ``intrinsic``-dimensional subspace (plus a
    little isotropic noise): a stand-in for learned embeddings, whose
    neighbourhoods live on a low-dimensional manifold, unlike i.i.d. noise."""
    basis = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = rng.standard_normal((m, intrinsic), dtype=np.float32) @ basis.T
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x += rng.standard_normal((m, dim), dtype=np.float32) * (noise / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + m] = x
    return out


def exact_topk(gallery: np.ndarray, queries: np.ndarray, k: int, ids: np.ndarray | None = None,
               chunk: int = 200_000) -> np.ndarray:
    """Exact top-k rows by inner product (= cosine for unit vectors), chunked."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    rows = np.arange(len(gallery)) if ids is None else ids
    for s in range(0, len(rows), chunk):
        r = rows[s:s + chunk]
        sims = queries @ gallery[r].T
        kk = min(k, len(r))
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, r[part]], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[a >= 0].tolist()) & set(b.tolist())) / k
                          for a, b in zip(got, truth)]))


def timed_queries(idx: VectorIndex, queries: np.ndarray, k: int, allowed=None):
    lat = np.empty(len(queries))
    ids = np.empty((len(queries), k), dtype=np.int64)
    for i, q in enumerate(queries):
        t = time.perf_counter()
        got, _ = idx.search(q, k, allowed=allowed)
        lat[i] = time.perf_counter() - t
        ids[i] = got[0]
    return ids, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--dtype", default="f16")
    ap.add_argument("--connectivity", type=int, default=V.CONNECTIVITY)
    ap.add_argument("--expansion-add", type=int, default=V.EXPANSION_ADD)
    ap.add_argument("--ef", default="64,128,256,512",
                    help="expansion_search values to sweep (comma-separated)")
    ap.add_argument("--noise", type=float, default=0.5,
                    help="perturbation norm relative to the vector (0.5 -> cosine ~0.9)")
    ap.add_argument("--filters", default="0.001,0.01,0.02,0.05,0.2",
                    help="fractions of the gallery kept by filters ('' to skip)")
    ap.add_argument("--filter-queries", type=int, default=200)
    ap.add_argument("--build-threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--data", default="random", choices=["random", "structured"],
                    help="random: i.i.d. unit vectors (the worst case); structured: near a "
                         "32-d subspace, like learned embeddings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true", help="skip the save/load timing")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder keeping the built index (and its build time) between runs: "
                         "build once, then time the searches on a quiet machine")
    args = ap.parse_args()
    k, n, dim = args.k, args.n, args.dim
    rng = np.random.default_rng(args.seed)

    print(f"generating {n:,} x {dim} gallery ...", flush=True)
    if args.data == "random":
        gallery = random_unit(rng, n, dim)
        held_out = random_unit(rng, args.queries, dim)
    else:
        both = structured_unit(rng, n + args.queries, dim)
        gallery, held_out = both[:n], both[n:]
    src = rng.choice(n, size=args.queries, replace=False)
    noise = random_unit(rng, args.queries, dim) * args.noise
    perturbed = gallery[src] + noise
    perturbed /= np.linalg.norm(perturbed, axis=1, keepdims=True)
    cos_to_src = float(np.mean(np.sum(perturbed * gallery[src], axis=1)))

    rss0 = rss_mib()
    cached = built_note = None
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
        stem = (f"v{n}-{dim}-{args.dtype}-M{args.connectivity}-ea{args.expansion_add}"
                f"-seed{args.seed}" + ("" if args.data == "random" else f"-{args.data}"))
        cached, built_note = args.cache / f"{stem}.usearch", args.cache / f"{stem}.build.json"
    if cached is not None and cached.exists() and built_note.exists():
        print(f"loading the index built earlier: {cached}", flush=True)
        idx = VectorIndex.load(cached, expect_model="bench")
        note = json.loads(built_note.read_text())
        build_s, build_when = note["build_s"], note["when"]
        rss1 = rss_mib()
    else:
        idx = VectorIndex("bench", dim, dtype=args.dtype, connectivity=args.connectivity,
                          expansion_add=args.expansion_add, threads=args.build_threads)
        print("building ...", flush=True)
        t = time.perf_counter()
        step = 100_000
        for s in range(0, n, step):
            idx.add(np.arange(s, min(n, s + step)), gallery[s:s + step])
            print(f"  {min(n, s + step):,} in {time.perf_counter() - t:.0f} s", flush=True)
        build_s = time.perf_counter() - t
        build_when = f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average " \
                     f"{os.getloadavg()[0]:.1f} at the end"
        rss1 = rss_mib()
        if cached is not None:
            idx.save(cached)
            built_note.write_text(json.dumps({"build_s": build_s, "when": build_when}))
    print(f"build: {build_s:.0f} s ({build_when})", flush=True)
    index_mib = idx.memory_usage / 2**20
    idx.threads = 1  # single-threaded searches from here on

    print("exact ground truth ...", flush=True)
    t = time.perf_counter()
    truth_h = exact_topk(gallery, held_out, k)
    truth_p = exact_topk(gallery, perturbed, k)
    exact_s = (time.perf_counter() - t) / (2 * args.queries)

    rows = []
    search_load = os.getloadavg()[0]
    for ef in [int(x) for x in args.ef.split(",") if x]:
        idx.expansion_search = ef
        for label, qs, truth in (("held-out", held_out, truth_h), ("perturbed", perturbed, truth_p)):
            got, lat = timed_queries(idx, qs, k)
            row = {"queries": label, "expansion_search": ef, f"recall@{k}": recall(got, truth),
                   "p50 ms": float(np.percentile(lat, 50) * 1e3),
                   "p99 ms": float(np.percentile(lat, 99) * 1e3)}
            if label == "perturbed":
                row["source at rank 1"] = float(np.mean(got[:, 0] == src))
            rows.append(row)
            print(row, flush=True)

    # Filtered search: both strategies at each selectivity, default expansion_search.
    # Scans of large allowed sets read a row copy of the vectors, built on first use:
    # build it here so its one-off cost is reported rather than hidden in a latency.
    idx.expansion_search = V.EXPANSION_SEARCH
    t = time.perf_counter()
    idx._fetch(np.arange(min(n, S.DIRECT_GET_MAX + 1), dtype=np.uint64))
    rows_s = time.perf_counter() - t
    rows_mib = idx._rows.mat.nbytes / 2**20 if idx._rows is not None else 0.0
    frows = []
    fq = held_out[: args.filter_queries]
    saved = (S.EXACT_ALLOWED_MAX, S.EXACT_ALLOWED_FRACTION, S.EXACT_SEARCH_BELOW)
    for frac in [float(x) for x in args.filters.split(",") if x]:
        m = max(1, int(round(frac * n)))
        allowed = np.sort(rng.choice(n, size=m, replace=False))
        truth_f = exact_topk(gallery, fq, k, ids=allowed)
        default_path = "scan" if m <= max(saved[0], saved[1] * n) else "graph"
        for path in ("scan", "graph"):
            if path == "scan":
                S.EXACT_ALLOWED_MAX, S.EXACT_ALLOWED_FRACTION = n, 1.0
            else:
                S.EXACT_ALLOWED_MAX, S.EXACT_ALLOWED_FRACTION, S.EXACT_SEARCH_BELOW = 0, 0.0, 0
            try:
                got, lat = timed_queries(idx, fq, k, allowed=allowed)
            finally:
                S.EXACT_ALLOWED_MAX, S.EXACT_ALLOWED_FRACTION, S.EXACT_SEARCH_BELOW = saved
            row = {"filter keeps": f"{frac:.1%} ({m:,})", "strategy": path
                   + (" (default)" if path == default_path else ""),
                   f"recall@{k}": recall(got, truth_f),
                   "full results": float(np.mean((got >= 0).all(axis=1))),
                   "p50 ms": float(np.percentile(lat, 50) * 1e3),
                   "p99 ms": float(np.percentile(lat, 99) * 1e3)}
            frows.append(row)
            print(row, flush=True)

    save_s = load_s = view_s = float("nan")
    file_mib = float("nan")
    if not args.no_save:
        C.WORK.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=C.WORK) as tmp:
            p = Path(tmp) / "v.usearch"
            t = time.perf_counter()
            idx.save(p)
            save_s = time.perf_counter() - t
            file_mib = p.stat().st_size / 2**20
            del idx
            t = time.perf_counter()
            again = VectorIndex.load(p, expect_model="bench")
            load_s = time.perf_counter() - t
            del again
            t = time.perf_counter()
            viewed = VectorIndex.load(p, expect_model="bench", view=True)
            view_s = time.perf_counter() - t
            del viewed

    summary = {"vectors": f"{n:,} x {dim}-d ({args.dtype})", "build s": build_s,
               "vectors/s": n / build_s, "index MiB (usearch)": index_mib,
               "RSS growth MiB": rss1 - rss0, "peak RSS MiB": peak_rss_mib(),
               "exact numpy ms/query": exact_s * 1e3}
    print(summary)
    cfg = (f"connectivity={args.connectivity}, expansion_add={args.expansion_add}, "
           f"storage {args.dtype}, build threads={args.build_threads or 'all'}")
    what = ("random unit vectors (standard normal, normalised)" if args.data == "random" else
            "unit vectors near a random 32-d subspace (plus noise 0.1), like learned embeddings")
    body = (
        f"- data: {n:,} {what}, {dim}-d, seed {args.seed}; queries: {args.queries} held-out "
        f"vectors of the same kind and {args.queries} "
        f"perturbed gallery vectors (noise {args.noise} of the norm, mean cosine to source "
        f"{cos_to_src:.3f})\n"
        f"- index: {cfg}\n"
        f"- latency: one query per call, 1 search thread, wall time of VectorIndex.search; "
        f"recall@{k} against exact float32 search\n"
        f"- command: `python benchmarks/bench_vectors.py --n {n} --ef {args.ef}"
        f"{'' if args.data == 'random' else ' --data ' + args.data}`\n"
        f"- load average (1 min) when the searches started: {search_load:.1f} on 2 cores\n\n"
        f"Build: {build_s:.0f} s ({n / build_s:,.0f} vectors/s, built {build_when}); index memory {index_mib:,.0f} MiB (USearch's "
        f"count); RSS grew {rss1 - rss0:,.0f} MiB while building (gallery array of {gallery.nbytes / 2**20:,.0f} MiB excluded); peak RSS "
        f"{peak_rss_mib():,.0f} MiB (includes the float32 gallery and queries). Saved file "
        f"{file_mib:,.0f} MiB; save {save_s:.1f} s, load {load_s:.1f} s, memory-mapped open "
        f"{view_s:.2f} s. Exact numpy search: {exact_s * 1e3:.1f} ms per query (batched).\n\n"
        + C.table(rows, ["queries", "expansion_search", f"recall@{k}", "p50 ms", "p99 ms",
                         "source at rank 1"])
        + f"\n\nFiltered search ({args.filter_queries} held-out queries, "
          f"expansion_search={V.EXPANSION_SEARCH}; 'default' marks what VectorIndex picks; "
          f"the row copy that scans read was built once in {rows_s:.1f} s, {rows_mib:,.0f} MiB):\n\n"
        + C.table(frows, ["filter keeps", "strategy", f"recall@{k}", "full results",
                          "p50 ms", "p99 ms"]))
    print(body)
    if not args.no_write:
        C.write_section(f"vectors: {n:,} x {dim}-d {args.data} ({args.dtype}, M={args.connectivity})",
                        body)


if __name__ == "__main__":
    main()
