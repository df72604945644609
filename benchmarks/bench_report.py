"""HTML review page: size on disk and time to render in headless Chromium.

Builds the dedupe report for the first N images (default 4,000) of the hard
set (all photos, photo by photo so duplicate groups stay whole; the split
does not matter here: nothing is tuned or scored), writes the review page
with thumbnails and keypoint pictures, and opens it in headless Chromium
(chromedriver, cold browser each run). Render time is measured by the page
itself: ``performance`` mark ``mk-ready`` (set when the first page of cards
and its eager thumbnails have loaded), relative to navigation start. The
wall time of the whole browser invocation (start, load, ready, quit) is
reported too. A synthetic 10,000-cluster page checks that very large reports
open and paginate.

    python benchmarks/bench_report.py                  # 4000 images, writes RESULTS.md
    python benchmarks/bench_report.py --images 1000 --no-write

The dedupe JSON is kept in benchmarks/_work and reused on the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

import _chromium  # noqa: E402
import _common as C  # noqa: E402
import sets  # noqa: E402

READY = ('return document.documentElement.getAttribute("data-mk-ready") === "1" '
         '&& document.getElementById("mk-state").textContent')
MARK = ('var m = performance.getEntriesByName("mk-ready");'
        'return m.length ? m[0].startTime : null')


def collection(photos: Path, n: int) -> Path:
    """A folder of symbolic links to the first ``n`` hard-set images, in photo order."""
    base = sets.photos(photos)
    folder = sets.build("hard", base, C.WORK / f"hard-all-{len(base)}")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files.sort(key=lambda p: (sets.group_of(p.name), p.name))
    if n > len(files):
        raise SystemExit(f"only {len(files)} images in the hard set")
    out = C.WORK / f"report-hard-{n}"
    stamp = out / ".complete"
    want = "\n".join(p.name for p in files[:n])
    if stamp.exists() and stamp.read_text() == want:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i, p in enumerate(files[:n]):
        os.symlink(p, out / f"{i:05d}_{p.name}")
    stamp.write_text(want)
    return out


def dedupe_json(folder: Path, n: int) -> tuple[Path, float | None]:
    out = C.WORK / f"report-hard-{n}.json"
    if out.exists():
        return out, None
    cmd = [sys.executable, "-m", "matchkit.cli", "dedupe", str(folder), "--json", str(out), "-q"]
    wall, _, rc = C.run_measured(cmd, cwd=HERE.parent)
    if rc:
        raise SystemExit(f"dedupe failed: {' '.join(cmd)}")
    return out, wall


def open_in_chromium(url: str, runs: int) -> dict:
    """Cold browser per run; medians of page-measured ready time and invocation wall time."""
    ready, wall, states = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        with _chromium.Chromium(1280, 1000) as b:
            b.get(url)
            states.append(json.loads(b.wait(READY, timeout=120)))
            ready.append(b.run(MARK) / 1000.0)
        wall.append(time.perf_counter() - t0)
    return {"ready_s": statistics.median(ready), "ready_max_s": max(ready),
            "browser_wall_s": statistics.median(wall), "state": states[-1]}


def synthetic_page(folder: Path, n: int = 10_000) -> Path:
    """``n`` clusters of 2-5 images; thumbnails from a pool of 24 real ones."""
    from matchkit.report.html import Card, ImageEntry, PairEntry, render_html
    from matchkit.report.thumbs import make_thumb

    assets = folder / "big_files"
    assets.mkdir(parents=True)
    src = sorted(sets.photos(C.DEFAULT_PHOTOS))[:24]
    pool = [make_thumb(p, assets) for p in src]
    cards, images = [], {}
    for i in range(n):
        members = [f"/photos/{i % 300:03d}/img{i:05d}_{j}.jpg" for j in range(2 + i % 4)]
        for j, m in enumerate(members):
            t = pool[(i * 3 + j) % len(pool)]
            images[m] = ImageEntry(m, f"big_files/{t.name}", t.width, t.height, 50_000 + j)
        cards.append(Card(members, members[0], [
            PairEntry(members[0], m, round(0.6 + ((i * 7 + j) % 400) / 1000, 4), "near", "phash",
                      {"phash_distance": (i * 7 + j) % 90, "colour_similarity": 0.95})
            for j, m in enumerate(members[1:])], title=f"Cluster {i + 1}"))
    page = folder / "big.html"
    page.write_text(render_html(cards, images, summary=[("clusters", n)]))
    return page


def paginate(url: str) -> dict:
    with _chromium.Chromium(1280, 1000) as b:
        b.get(url)
        state = json.loads(b.wait(READY, timeout=120))
        ready = b.run(MARK) / 1000.0
        turns = []
        for _ in range(10):
            t = time.perf_counter()
            b.run('document.getElementById("mk-next").click()')
            b.wait(READY, timeout=60)
            turns.append(time.perf_counter() - t)
        t = time.perf_counter()
        b.run("window.mkReport.go(1e9)")  # to the last page
        last = json.loads(b.wait(READY, timeout=60))
        jump = time.perf_counter() - t
        t = time.perf_counter()
        b.run('var o=document.getElementById("mk-sort");o.value="weak";'
              'o.dispatchEvent(new Event("change"))')
        b.wait(READY, timeout=60)
        resort = time.perf_counter() - t
        count = b.run('return document.getElementById("mk-count").textContent')
    return {"ready_s": ready, "total": state["total"], "pages": state["pages"],
            "page_turn_s": statistics.median(turns), "last_page": last["page"],
            "jump_s": jump, "resort_s": resort, "count_text": count}


def size_of(html: Path, assets: Path) -> tuple[int, int, int]:
    files = [f for f in assets.iterdir() if f.is_file()]
    return (html.stat().st_size, sum(f.stat().st_size for f in files), len(files))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--photos", type=Path, default=C.DEFAULT_PHOTOS)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=3, help="cold browser runs (median reported)")
    ap.add_argument("--evidence-limit", type=int, default=None)
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    if not _chromium.available():
        raise SystemExit("needs chromium and chromedriver (apt-get install chromium chromium-driver)")

    from matchkit.report.html import DEFAULT_EVIDENCE_LIMIT, write_html_report

    limit = DEFAULT_EVIDENCE_LIMIT if args.evidence_limit is None else args.evidence_limit
    folder = collection(args.photos, args.images)
    jpath, dedupe_s = dedupe_json(folder, args.images)
    report = json.loads(jpath.read_text())
    print(f"{args.images} images, {len(report['clusters'])} clusters, "
          f"{len(report['skipped'])} skipped (dedupe JSON {jpath.name}"
          f"{'' if dedupe_s is None else f', made in {dedupe_s:.0f} s'})", flush=True)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        info = write_html_report(report, tmp / "hard" / "review.html", evidence_limit=limit)
        build_s = time.perf_counter() - t
        html_b, assets_b, n_files = size_of(Path(info.path), Path(info.assets))
        r = open_in_chromium(Path(info.path).as_uri(), args.runs)
        with _chromium.Chromium(1280, 1000) as b:  # a screenshot for people to look at
            b.get(Path(info.path).as_uri())
            b.wait(READY, timeout=120)
            b.screenshot(C.WORK / f"report-hard-{args.images}.png")
        rows.append({"page": f"hard set, {args.images} images", "clusters": info.cards,
                     "thumbnails": info.thumbnails, "keypoint_pictures": info.pictures,
                     "local_pairs": info.local_pairs, "build_s": build_s,
                     "html_mb": html_b / 2**20, "total_mb": (html_b + assets_b) / 2**20,
                     "files": n_files + 1, "ready_s": r["ready_s"], "ready_max_s": r["ready_max_s"],
                     "browser_wall_s": r["browser_wall_s"]})
        print(rows[-1], r["state"], flush=True)

        t = time.perf_counter()
        big = synthetic_page(tmp / "big")
        big_build = time.perf_counter() - t
        html_b, assets_b, n_files = size_of(big, tmp / "big" / "big_files")
        rb = open_in_chromium(big.as_uri(), args.runs)
        p = paginate(big.as_uri())
        rows.append({"page": "synthetic, 10,000 clusters", "clusters": p["total"],
                     "thumbnails": n_files, "keypoint_pictures": 0, "local_pairs": 0,
                     "build_s": big_build, "html_mb": html_b / 2**20,
                     "total_mb": (html_b + assets_b) / 2**20, "files": n_files + 1,
                     "ready_s": rb["ready_s"], "ready_max_s": rb["ready_max_s"],
                     "browser_wall_s": rb["browser_wall_s"]})
        print(rows[-1], p, flush=True)
        if p["last_page"] != p["pages"]:
            raise SystemExit(f"pagination did not reach the last page: {p}")

    cols = ["page", "clusters", "thumbnails", "keypoint_pictures", "local_pairs", "build_s",
            "html_mb", "total_mb", "ready_s", "ready_max_s", "browser_wall_s"]
    text = C.table(rows, cols)
    extra = (f"10,000-cluster page: {p['pages']} pages of 50; next page {p['page_turn_s']:.3f} s "
             f"(median of 10, WebDriver round trips included), jump to page {p['last_page']} "
             f"{p['jump_s']:.3f} s, re-sort all clusters {p['resort_s']:.3f} s; "
             f"pager after re-sort: \"{p['count_text']}\".")
    print(text)
    print(extra)
    target = ("targets: ready < 5 s and total < 50 MB for the hard-set page: "
              f"{'met' if rows[0]['ready_max_s'] < 5 and rows[0]['total_mb'] < 50 else 'NOT met'}")
    print(target)
    if not args.no_write:
        C.write_section("report: HTML review page", (
            f"Data: first {args.images} images of the hard set built from all "
            f"{len(sets.photos(args.photos))} photos of `{args.photos.name}` (photo order, groups "
            "whole; nothing is tuned or scored here), its default dedupe JSON, and a synthetic "
            "page of 10,000 clusters (2-5 images each, thumbnails from a pool of 24).\n"
            f"Command: `python benchmarks/bench_report.py --images {args.images}`\n"
            f"`build_s`: thumbnails (JPEG, 200 px) and keypoint pictures (at most {limit} "
            "local-feature pairs, weakest first) written from scratch, plus the HTML. "
            "`total_mb`: HTML plus its `_files` folder. `ready_s`: performance mark set by the "
            "page when the first page of 50 cards and its first 8 cards' thumbnails have loaded, "
            "from navigation start (median of "
            f"{args.runs} cold headless-Chromium runs; `ready_max_s` the slowest). "
            "`browser_wall_s`: the whole invocation (chromedriver and browser start, load, "
            "ready, quit). Load average (1 min) at start / end: "
            f"{load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; with other "
            "jobs on the machine the times are noisy and need a quiet re-run.\n\n"
            f"{text}\n\n{extra}\n\n{target}\n"))


if __name__ == "__main__":
    main()
