"""Gallery check: does `matchkit check` find edited copies, and not unrelated photos?

The reference gallery holds the originals of the hard set's eval half (353
photos). Queries: one edited copy per original, the edit kind taken in turn
(50% crop, text, emoji, blur + JPEG q15, padding + grey, colour jitter +
rotation, screenshot overlay, 25% downscale), plus the originals of the calib
half, which are other photos and must match nothing. Reported: per edit kind
the share of queries whose best match is their original (recall), queries
matched to a wrong gallery image, unrelated photos matched (false alarms),
queries per second (end to end, `matchkit check` process), and the size of
the `--html` page with its build time and time to open in headless Chromium.

    python benchmarks/bench_check.py                    # writes RESULTS.md
    python benchmarks/bench_check.py --unrelated 50 --no-write

Needs benchmarks/_work/hard-eval-353 and hard-calib-353 (bench_dedupe.py
builds them); the gallery is built in a temporary folder each run (seconds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _common as C  # noqa: E402
import sets  # noqa: E402
from bench_report import _chromium, open_in_chromium  # noqa: E402


def _edit(name: str) -> str:
    return Path(name).stem.split("__", 1)[1]


def one_copy_each(files: list[Path], originals: list[Path]) -> list[Path]:
    """One edited copy (among ``files``) of each of ``originals``, the edit
    kinds taken in turn; an original without that kind's copy gets none."""
    edits = sorted({_edit(p.name) for p in files} - {"orig"})
    by_group = {(sets.group_of(p.name), _edit(p.name)): p for p in files}
    copies = []
    for i, o in enumerate(originals):
        q = by_group.get((sets.group_of(o.name), edits[i % len(edits)]))
        if q is not None:
            copies.append(q)
    return copies


def hard_check_set(unrelated: int) -> tuple[list[Path], list[Path], list[Path]]:
    """(gallery originals, edited copies, unrelated photos): the originals of
    the hard eval half, one edited copy of each (edit kinds in turn) and the
    first ``unrelated`` originals of the calib half."""
    eval_set, calib_set = C.WORK / "hard-eval-353", C.WORK / "hard-calib-353"
    if not eval_set.is_dir() or not calib_set.is_dir():
        raise SystemExit("needs benchmarks/_work/hard-eval-353 and hard-calib-353 "
                         "(python benchmarks/bench_dedupe.py builds them)")
    files = sorted(p for p in eval_set.iterdir() if p.suffix.lower() in sets.EXTS)
    originals = [p for p in files if _edit(p.name) == "orig"]
    queries = one_copy_each(files, originals)
    others = sorted(p for p in calib_set.iterdir()
                    if p.suffix.lower() in sets.EXTS and _edit(p.name) == "orig")
    return originals, queries, others[:unrelated]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--unrelated", type=int, default=100, help="calib-half originals as queries")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    originals, queries, unrelated = hard_check_set(args.unrelated)

    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        tmp = Path(tmp)
        gallery = tmp / "gallery"
        index_s, _, rc = C.run_measured([sys.executable, "-m", "matchkit.cli", "index",
                                         *map(str, originals), "--gallery", str(gallery),
                                         "--no-embed", "-q"], cwd=HERE.parent,
                                        stdout=subprocess.DEVNULL)
        if rc:
            raise SystemExit("matchkit index failed")
        print(f"gallery: {len(originals)} originals indexed in {index_s:.0f} s", flush=True)
        out = tmp / "check.json"
        names = [*map(str, queries), *map(str, unrelated)]
        wall, rss, rc = C.run_measured(
            [sys.executable, "-m", "matchkit.cli", "check", "--gallery", str(gallery), *names,
             "--json", str(out), "-q"], cwd=HERE.parent)
        if rc:
            raise SystemExit("matchkit check failed")
        data = json.loads(out.read_text())
        from matchkit.report.pages import write_check_html
        t = time.perf_counter()
        page = write_check_html(data, tmp / "page" / "check.html")
        page_s = time.perf_counter() - t
        ready = None
        if _chromium.available():
            ready = open_in_chromium(Path(page.path).as_uri(), 1)["ready_s"]

    truth = {str(q): sets.group_of(q.name) for q in queries}
    found, wrong, by_edit, alarms = Counter(), Counter(), Counter(), 0
    for r in data["results"]:
        hits = [m for m in r["matches"] if m["matched"]]
        if r["path"] not in truth:
            alarms += bool(hits)
            continue
        edit = _edit(r["path"])
        by_edit[edit] += 1
        if hits and sets.group_of(hits[0]["path"]) == truth[r["path"]]:
            found[edit] += 1
        wrong[edit] += sum(sets.group_of(m["path"]) != truth[r["path"]] for m in hits)
    skipped = len(data["skipped"])
    rows = [{"edit": e, "queries": by_edit[e], "found": found[e],
             "recall": found[e] / by_edit[e] if by_edit[e] else 0.0, "wrong_matches": wrong[e]}
            for e in sorted(by_edit)]
    n_edit = sum(by_edit.values())
    rows.append({"edit": "all edits", "queries": n_edit, "found": sum(found.values()),
                 "recall": sum(found.values()) / max(1, n_edit),
                 "wrong_matches": sum(wrong.values())})
    n = len(names)
    summary = (f"- gallery: {len(originals)} originals (hard set, eval half); queries: "
               f"{n_edit} edited copies (one per photo, edit kinds in turn) + {len(unrelated)} "
               f"unrelated photos (calib-half originals); {skipped} unreadable\n"
               f"- unrelated photos matched to something (false alarms): {alarms} of "
               f"{len(unrelated)}\n"
               f"- `matchkit check` end to end: {wall:.1f} s for {n} queries "
               f"({n / wall:.1f} queries/s, peak RSS {rss:.0f} MiB)\n"
               f"- `--html` page: {page.cards} cards, {page.thumbnails} thumbnails, "
               f"{page.pictures} keypoint pictures, {page.bytes / 2**20:.1f} MB, "
               f"built in {page_s:.1f} s"
               + ("" if ready is None else f", ready in headless Chromium in {ready:.2f} s")
               + f"\n- gallery build (`matchkit index`, {len(originals)} files): {index_s:.1f} s"
               "\n\n")
    body = summary + C.table(rows, ["edit", "queries", "found", "recall", "wrong_matches"]) + (
        "\n\n`found`: the best match is the query's original. `wrong_matches`: matches "
        "to any other gallery image.\n\nReproduce: `python benchmarks/bench_check.py`\n")
    print(body)
    if not args.no_write:
        C.write_section("check: hard-set edits against a gallery of originals", body)


if __name__ == "__main__":
    main()
