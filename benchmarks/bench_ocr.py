"""Text in images (issue 18): dedupe of app screenshots that differ only in text.

Builds (or reuses) the ``screens`` set of ``ocr_set.py``: N screens of one
made-up app, same window chrome, a different document on each, each saved
three ways (PNG, 75% JPEG, cropped JPEG q60). Copies of one screen are one
group; different screens must not match, although pHash and local features
see the same template. Runs each method in its own process and scores pairs.

    python benchmarks/bench_ocr.py                  # 120 screens, writes RESULTS.md
    python benchmarks/bench_ocr.py --count 40 --no-write

This is the "before" measurement of the OCR signal the issue asks for: the
table shows what default settings and ``--hash-only`` do today. Text search
recall (``search --contains``) joins the table once that command exists.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import ocr_set  # noqa: E402
import sets  # noqa: E402
from bench_dedupe import method_args, run_matchkit, truth_pairs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=120, help="different screens (default %(default)s)")
    ap.add_argument("--methods", default="matchkit,matchkit-hash-only")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    if args.count < 2:
        ap.error("--count must be at least 2")
    folder = C.WORK / f"ocr-screens-{args.count}"
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
    body = (f"Data: `benchmarks/ocr_set.py --set screens --count {args.count}` (seed 0): "
            f"{args.count} screens of one made-up app (same window, sidebar and toolbar; a "
            f"different document in English, German, French or Spanish words on each), each as "
            f"PNG, 75% JPEG q85 and 6-px-cropped JPEG q60: {n_images} images, {len(truth)} true "
            "pairs.\n"
            f"Command: `python benchmarks/bench_ocr.py --count {args.count}`\n"
            "Each method in its own process; a found pair is any two files in one cluster. "
            "No OCR signal exists yet: this is the baseline the OCR signal must beat "
            "(issue 18 target: precision >= 0.99).\n\n" + C.table(rows, cols) + "\n")
    print(body)
    if not args.no_write:
        C.write_section(f"text in images: app screenshots with different text ({args.count})",
                        body)


if __name__ == "__main__":
    main()
