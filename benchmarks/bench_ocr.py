"""Text in images (issue 18): dedupe of app screenshots that differ only in text.

Builds (or reuses) the ``screens`` set of ``ocr_set.py``: N screens of one
made-up app, same window chrome, a different document on each, each saved
three ways (PNG, 75% JPEG, cropped JPEG q60). Copies of one screen are one
group; different screens must not match, although pHash and local features
see the same template. Runs each method in its own process and scores pairs.

    python benchmarks/bench_ocr.py                  # 120 screens, writes RESULTS.md
    python benchmarks/bench_ocr.py --count 40 --no-write
    python benchmarks/bench_ocr.py --methods matchkit-ocr          # the OCR signal only
    python benchmarks/bench_ocr.py --folder benchmarks/_work/ocr-screens-dev-40 --no-write
    python benchmarks/bench_ocr.py --search benchmarks/_work/ocr-text-eval-353

Methods: ``matchkit`` (default settings), ``matchkit-hash-only`` (the
baseline of issue 18) and ``matchkit-ocr`` (``dedupe --signal ocr``: a pair
whose texts differ is refused). ``--search SET`` (a ``--set text`` folder)
instead indexes that set with ``--signal ocr`` (in this process, one worker,
so the OCR time of each image is measured) and asks every query of its
``truth.json`` (2-4 words) with ``search --contains``: recall@10 is the
share of an query's right images among its first 10 hits, averaged over
queries; OCR cost is reported per image with text and without.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import ocr_set  # noqa: E402
import sets  # noqa: E402
from bench_dedupe import method_args as _method_args, run_matchkit, truth_pairs  # noqa: E402


def method_args(method: str) -> list[str]:
    if method == "matchkit-ocr":  # the OCR signal (matchkit/signals/ocr.py)
        return ["--signal", "ocr"]
    return _method_args(method)


def search_bench(folder: Path, k: int = 10, keep: Path | None = None,
                 index_only: bool = False) -> dict:
    """Index ``folder`` with the ocr signal, time each image's OCR, ask every query.
    ``keep``: the gallery folder to index into and keep (with the OCR times
    in ``ocr_cost.json``); one indexed already is searched as it is."""
    import time

    import numpy as np

    from matchkit import signals
    from matchkit.config import Settings
    from matchkit.store.gallery import Gallery
    from matchkit.jobs.search import search

    truth = json.loads((folder / "truth.json").read_text())
    sig = signals.get("ocr")
    cost: dict[str, float] = {}
    read: dict[str, bool] = {}
    plain_extract = type(sig).extract

    def timed(self, image, path):
        t = time.perf_counter()
        out = plain_extract(self, image, path)
        cost[Path(path).name] = time.perf_counter() - t
        read[Path(path).name] = out is not None
        return out

    type(sig).extract = timed
    try:
        with tempfile.TemporaryDirectory() as tmp:
            where = keep if keep is not None else Path(tmp) / "g"
            costs = where / "ocr_cost.json"
            settings = Settings(workers=1, local_features=False, signals=("ocr",))
            with Gallery(where, settings) as g:
                if costs.exists():
                    saved = json.loads(costs.read_text())
                    cost, read, index_s = saved["cost"], saved["read"], saved["index_s"]
                else:
                    t0 = time.perf_counter()
                    g.add(sorted(p for p in folder.iterdir() if p.suffix.lower() in sets.EXTS))
                    g.save()
                    index_s = time.perf_counter() - t0
                    costs.write_text(json.dumps({"cost": cost, "read": read, "index_s": index_s}))
                if index_only:
                    return {"indexed": str(where), "index_s": round(index_s, 1)}
                recalls, misses, t0 = [], [], time.perf_counter()
                for q, right in sorted(truth["queries"].items()):
                    if len(q.split()) < 2 or not right:
                        continue
                    hits = [Path(h.path).name for h in search(g, contains=q, k=k)]
                    r = len(set(hits) & set(right)) / len(right)
                    recalls.append(r)
                    if r < 1:
                        misses.append(q)
                search_s = time.perf_counter() - t0
    finally:
        type(sig).extract = plain_extract
    with_text = [cost[n] for n, lines in truth["images"].items() if lines and n in cost]
    without = [cost[n] for n, lines in truth["images"].items() if not lines and n in cost]
    texts = [n for n, lines in truth["images"].items() if lines]
    plains = [n for n, lines in truth["images"].items() if not lines]
    return {
        "images": len(truth["images"]), "queries": len(recalls),
        f"recall@{k}": round(float(np.mean(recalls)), 4),
        "queries_all_found": sum(1 for r in recalls if r == 1),
        "ocr_s_per_text_image": round(float(np.mean(with_text)), 3),
        "ocr_s_per_plain_image": round(float(np.mean(without)), 3),
        "text_images_read": f"{sum(read.get(n, False) for n in texts)}/{len(texts)}",
        "plain_images_with_text_found": f"{sum(read.get(n, False) for n in plains)}/{len(plains)}",
        "index_s": round(index_s, 1), "search_ms_per_query": round(1000 * search_s / max(1, len(recalls)), 1),
        "missed_examples": misses[:8],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=120, help="different screens (default %(default)s)")
    ap.add_argument("--methods", default="matchkit,matchkit-hash-only,matchkit-ocr")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--folder", type=Path, default=None,
                    help="a screens set built elsewhere (a dev set: another --seed)")
    ap.add_argument("--search", type=Path, default=None, metavar="TEXT_SET",
                    help="measure text search on this --set text folder instead")
    ap.add_argument("--gallery", type=Path, default=None,
                    help="with --search: index into this gallery folder and keep it (with "
                         "the OCR times); a gallery indexed before is searched as it is")
    ap.add_argument("--index-only", action="store_true",
                    help="with --search --gallery: index, ask no query")
    args = ap.parse_args()
    if args.count < 2:
        ap.error("--count must be at least 2")
    if args.search is not None:
        r = search_bench(args.search, keep=args.gallery, index_only=args.index_only)
        print(r, flush=True)
        if args.index_only:
            return
        cols = ["images", "queries", "recall@10", "queries_all_found", "text_images_read",
                "plain_images_with_text_found", "ocr_s_per_text_image",
                "ocr_s_per_plain_image", "index_s", "search_ms_per_query"]
        body = (f"Data: `{args.search.relative_to(C.ROOT) if args.search.is_absolute() else args.search}` "
                "(`benchmarks/ocr_set.py --set text`): photos with one to three lines of "
                "text in eight fonts and several sizes (English, German, French, Spanish "
                "words), pages of text, and photos without text (a fifth). Queries: every "
                "2-4-word phrase of `truth.json`; right answers: every image whose text holds "
                "it.\n"
                f"Command: `python benchmarks/bench_ocr.py --search {args.search}`\n"
                "The set is indexed with `Settings(signals=('ocr',), local_features=False, "
                "workers=1)` in this process; each image's OCR (text gate + Tesseract reads) "
                "is timed; OCR seconds are measured under load (2 cores shared). Queries run "
                "through `matchkit.jobs.search.search(gallery, contains=q, k=10)`. Thresholds were "
                "chosen on the calib half only.\n\n" + C.table([r], cols) + "\n\n"
                f"Some queries not fully found: {r['missed_examples']}\n")
        print(body)
        if not args.no_write:
            C.write_section(f"text in images: search --contains ({args.search.name})", body)
        return
    folder = args.folder or C.WORK / f"ocr-screens-{args.count}"
    if not (folder / "truth.json").exists():
        ocr_set.build_screens(args.count, folder)
    truth = truth_pairs(folder)
    n_images = sum(1 for p in folder.iterdir() if p.suffix.lower() in sets.EXTS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            r = run_matchkit(folder, Path(tmp), method_args(method))
            pred = C.pairs_from_groups(r["clusters"])
            s = C.score(pred, truth)
            rows.append({"method": method, **s, "clusters": len(r["clusters"]),
                         "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"]})
            print(rows[-1], flush=True)
    cols = ["method", "pairs_found", "tp", "precision", "recall", "clusters", "wall_s",
            "peak_rss_mib"]
    built = json.loads((folder / "truth.json").read_text())
    n_screens = len(built["groups"])
    made = (f"`benchmarks/ocr_set.py --set screens --count {n_screens}"
            + (f" --seed {built['seed']}" if built.get("seed") else "") + f"` (`{folder.name}`)")
    body = (f"Data: {made}: "
            f"{n_screens} screens of one made-up app (same window, sidebar and toolbar; a "
            f"different document in English, German, French or Spanish words on each), each as "
            f"PNG, 75% JPEG q85 and 6-px-cropped JPEG q60: {n_images} images, {len(truth)} true "
            "pairs.\n"
            f"Command: `python benchmarks/bench_ocr.py "
            + (f"--folder {folder} " if args.folder else f"--count {args.count} ")
            + f"--methods {args.methods}`\n"
            "Each method in its own process; a found pair is any two files in one cluster. "
            "`matchkit-ocr` is `dedupe --signal ocr`: a pair whose texts share less than "
            "half of their word pairs (both with at least 5 words) is refused; that threshold "
            "was chosen on a dev set (`ocr_set.py --set screens --count 40 --seed 1`), where "
            "copies shared at least 0.82 and different screens at most 0.18. Wall times are "
            "measured under load. Issue 18 target: precision >= 0.99.\n\n"
            + C.table(rows, cols) + "\n")
    print(body)
    if not args.no_write:
        name = f"text in images: app screenshots with different text ({args.count})"
        if args.folder is not None or args.methods == "matchkit-ocr":
            name = f"text in images: dedupe --signal ocr ({folder.name})"
        C.write_section(name, body)


if __name__ == "__main__":
    main()
