"""How long one `check` query takes against a large gallery, on one core.

Issue 15's target: p50 <= 50 ms and p99 <= 250 ms per query against the
gallery, with the same recall on hard-set copies as against a small one.

Gallery: the 353 originals of the hard set's eval half plus the first N
slots of the scale collection (``scale_set.py``: distinct synthetic
pictures, 5% edited copies of each other), built once per size and vote
index under ``benchmarks/_work/check-latency/`` (a larger size starts from a
copy of the next smaller one and adds the rest: incremental adds). Queries:
the edited copies ``bench_check.py`` uses (one per original, edit kinds in
turn: crops, overlays, screenshots, blur, padding...) and 100 calib-half
originals that must match nothing.

Each size is measured in a fresh process pinned to one core
(``sched_setaffinity``) with ``Settings(workers=1)``: the gallery is opened
and its indexes loaded (reported as ``open_s``), then every query is checked
alone, as ``matchkit check`` does it (read and extract the file, candidates,
verification, the closer second look for unmatched queries), timed per
query. ``found``: the best match is the query's original; ``wrong``: matches
to any other image; ``alarms``: unrelated photos matched to something.

    python benchmarks/bench_check_latency.py --sizes 10000,20000
    python benchmarks/bench_check_latency.py --sizes 10000 --vote-index ivf --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _common as C  # noqa: E402
from bench_check import hard_check_set  # noqa: E402
import scale_set  # noqa: E402
import sets  # noqa: E402

ROOT = C.WORK / "check-latency"


def build(size: int, vote_index: str, originals: list[Path], scale_root: Path) -> dict:
    """The gallery of ``originals`` + the first ``size`` scale slots (made if missing)."""
    from matchkit.config import Settings
    from matchkit.store.gallery import Gallery

    path = ROOT / f"g{size}-{vote_index}"
    done = path / "built.json"
    if done.exists():
        return json.loads(done.read_text())
    if path.exists():
        shutil.rmtree(path)
    smaller = sorted((int(p.name[1:].split("-")[0]), p) for p in ROOT.glob(f"g*-{vote_index}")
                     if (p / "built.json").exists() and int(p.name[1:].split("-")[0]) < size)
    start = 0
    if smaller:
        start, src = smaller[-1]
        shutil.copytree(src, path)
        (path / "built.json").unlink()
    missing = [i for i in range(start, size)
               if not (scale_root / "img" / scale_set.slot(0, i).name).exists()]
    if missing:
        raise SystemExit(f"scale collection lacks {len(missing)} of slots {start}-{size}: "
                         f"python benchmarks/scale_set.py --size {size}")
    files = ([] if start else [str(p) for p in originals]) + [
        str(scale_root / "img" / scale_set.slot(0, i).name) for i in range(start, size)]
    t = time.perf_counter()
    with Gallery(path, Settings(vote_index=vote_index)) as g:
        report = g.add(files)
        n = len(g)
    info = {"size": size, "images": n, "added": len(files), "skipped": len(report.skipped),
            "from": start, "add_s": round(time.perf_counter() - t, 1)}
    done.write_text(json.dumps(info))
    return info


def measure(gallery: str, queries: list[str]) -> dict:
    """In this process (pinned to one core): open, then check each query alone."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from matchkit.features import extract_many
    from matchkit.store.gallery import Gallery
    from matchkit.io.load import ImageLoadError
    from matchkit.match.query import QueryMatcher

    t = time.perf_counter()
    g = Gallery(gallery, create=False)
    s = g.settings.with_(workers=1)
    _ = g.phash_index, g.orb_index
    open_s = time.perf_counter() - t
    out = []
    with QueryMatcher(g, s) as m:
        for q in queries:
            t0, c0 = time.perf_counter(), time.process_time()
            [(_, rec)] = list(extract_many([q], s))
            if isinstance(rec, ImageLoadError):
                out.append({"path": q, "error": rec.reason})
                continue
            [nbs] = m.match_records([rec])
            ms = (time.perf_counter() - t0) * 1000
            cpu = (time.process_time() - c0) * 1000
            out.append({"path": q, "ms": ms, "cpu_ms": cpu,
                        "matches": [nb.path for nb in nbs if nb.matched],
                        "scores": [round(nb.score, 6) for nb in nbs],
                        "zoom": any(nb.evidence.extra.get("zoom") for nb in nbs)})
    g.close()
    return {"open_s": open_s, "rss_mib": peak_rss_mib(), "queries": out}


def peak_rss_mib() -> float:
    """This process's peak RSS since it started its program: Linux's VmHWM.
    Not ``ru_maxrss``, which a child started by a process that had built a
    100,000-image gallery reported as that process's 2,220 MiB."""
    peak = C.status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def score(result: dict, copies: list[Path]) -> dict:
    truth = {str(q): sets.group_of(q.name) for q in copies}
    found = wrong = alarms = n_copy = n_other = 0
    ms, cpu, matched_ms, unmatched_ms = [], [], [], []
    for r in result["queries"]:
        if "error" in r:
            continue
        ms.append(r["ms"])
        cpu.append(r["cpu_ms"])
        (matched_ms if r["matches"] else unmatched_ms).append(r["ms"])
        groups = [sets.group_of(Path(p).name) if "__" in Path(p).name else None
                  for p in r["matches"]]
        if r["path"] in truth:
            n_copy += 1
            found += bool(groups) and groups[0] == truth[r["path"]]
            wrong += sum(g != truth[r["path"]] for g in groups)
        else:
            n_other += 1
            alarms += bool(groups)
    return {"copies": n_copy, "recall": found / max(1, n_copy), "wrong": wrong,
            "alarms": f"{alarms}/{n_other}",
            "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms) if ms else float("nan"),
            "mean_cpu_ms": sum(cpu) / max(1, len(cpu)),
            "matched_p50_ms": percentile(matched_ms, 50),
            "unmatched_p50_ms": percentile(unmatched_ms, 50),
            "open_s": result["open_s"], "rss_mib": result["rss_mib"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000", help="scale slots in the gallery, comma-separated")
    ap.add_argument("--vote-index", default="hnsw", choices=("hnsw", "ivf"))
    ap.add_argument("--unrelated", type=int, default=100)
    ap.add_argument("--scale-root", type=Path, default=None)
    ap.add_argument("--label", default="", help="names this checkout in the table")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--measure", nargs=2, metavar=("GALLERY", "QUERIES_JSON"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        gallery, qfile = args.measure
        print(json.dumps(measure(gallery, json.loads(Path(qfile).read_text()))))
        return
    originals, copies, others = hard_check_set(args.unrelated)
    scale_root = args.scale_root or scale_set.default_root(0)
    ROOT.mkdir(parents=True, exist_ok=True)
    qfile = ROOT / "queries.json"
    qfile.write_text(json.dumps([str(p) for p in [*copies, *others]]))
    rows = []
    for size in [int(x) for x in args.sizes.split(",")]:
        info = build(size, args.vote_index, originals, scale_root)
        gpath = ROOT / f"g{size}-{args.vote_index}"
        print(f"gallery {gpath.name}: {info['images']} images", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--measure", str(gpath), str(qfile)],
                              capture_output=True, text=True, cwd=HERE.parent)
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        (ROOT / f"last-{gpath.name}.json").write_text(proc.stdout)
        row = {"label": args.label or C.commit(), "vote_index": args.vote_index,
               "gallery_images": info["images"],
               "disk_kb_per_image": C.folder_size(gpath) / 1024 / info["images"],
               **score(json.loads(proc.stdout), copies)}
        rows.append(row)
        print(C.table([row], list(row)), flush=True)
    cols = ["label", "vote_index", "gallery_images", "copies", "recall", "wrong", "alarms",
            "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_cpu_ms", "matched_p50_ms",
            "unmatched_p50_ms", "open_s", "rss_mib", "disk_kb_per_image"]
    body = (f"Command: `python benchmarks/bench_check_latency.py --sizes {args.sizes} "
            f"--vote-index {args.vote_index}"
            f"{f' --scale-root {args.scale_root}' if args.scale_root else ''}`\n\n"
            "Gallery: the 353 hard eval originals plus the first N slots of the scale "
            f"collection (`scale_set.py`, {scale_root}). Queries: 353 edited copies (one per "
            f"original, edit kinds in turn) and {args.unrelated} unrelated calib-half "
            "originals, each checked alone in one process pinned to one core "
            "(`Settings(workers=1)`), file read and extraction included. `recall`: the "
            "best match is the copy's original; `wrong`: matches to other images; "
            "`alarms`: unrelated photos matched; `matched_p50_ms`/`unmatched_p50_ms`: "
            "queries with and without a match (the latter take the closer second look); "
            "`open_s`: opening the gallery and loading its indexes (once per process); "
            "`rss_mib`: peak RSS of that process.\n\n" + C.table(rows, cols) + "\n")
    print(body)
    if not args.no_write:
        C.write_section(f"check latency: one core ({args.vote_index})", body)


if __name__ == "__main__":
    main()
