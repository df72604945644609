"""Bytes per image of a gallery on disk: by file, table and stored blob.

Indexes a benchmark set with ``matchkit index`` (the matchkit on PYTHONPATH,
so the same script measures another checkout: ``--label`` names it) and
divides the sizes of the SQLite file and the index files, SQLite's pages per
table (``dbstat``) and the average length of each stored blob by the number
of images. Rows of several runs (``--label before`` with an older checkout,
then ``--label after``) accumulate in a JSON file and the section of
RESULTS.md shows them side by side.

    PYTHONPATH=/work/main python benchmarks/bench_stored.py --set hard --label before
    PYTHONPATH=$PWD python benchmarks/bench_stored.py --set hard --label after

``--dedupe`` makes the gallery with ``matchkit dedupe --gallery`` instead, so
the stored matching state (``match_pairs``, the candidate-search records) is
measured too.

``--measure GALLERY`` prints the same table for a gallery folder made by
other means (e.g. ``matchkit dedupe --gallery`` of a scale-set collection).

``--speed CHECKOUT [CHECKOUT ...]`` instead runs ``matchkit dedupe`` on the set
with each checkout in turn (back to back) and prints pairs, precision,
recall, wall and CPU seconds (user + system, workers included): on a shared
machine CPU seconds are the comparable measure.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from bench_dedupe import add_set_arguments, load_set  # noqa: E402

#: (table, column) blobs reported; a column an older gallery lacks is skipped.
BLOBS = [("local_features", "descriptors"), ("local_features", "xy"),
         ("local_features", "thumb"), ("images", "colour"), ("images", "phash"),
         ("images", "path"), ("images", "pixel_sha256"), ("images", "icon"),
         ("match_pairs", "before"), ("match_pairs", "after"), ("match_records", "record"),
         ("match_images", "record")]


def measure(gallery: Path) -> dict:
    """Bytes per image of each file, table and blob column of ``gallery``."""
    db = sqlite3.connect(gallery / "gallery.sqlite")
    n = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    out = {"images": n}
    for f in sorted(gallery.iterdir()):
        if f.suffix in (".sqlite", ".usearch"):
            out[f"file {f.name}"] = f.stat().st_size / n
    try:
        for name, size in db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            if size / n >= 10:
                out[f"table {name}"] = size / n
    except sqlite3.OperationalError:  # SQLite built without dbstat
        pass
    for table, column in BLOBS:
        try:
            avg = db.execute(f"SELECT AVG(LENGTH({column})) FROM {table}").fetchone()[0]
        except sqlite3.OperationalError:  # no such column in this version
            continue
        total = db.execute(f"SELECT SUM(LENGTH({column})) FROM {table}").fetchone()[0] or 0
        out[f"blob {table}.{column}"] = total / n if avg is not None else 0.0
    out["total"] = sum(v for k, v in out.items() if k.startswith("file "))
    db.close()
    return out


def speed(folder: Path, truth: set, checkouts: list[str]) -> None:
    """``matchkit dedupe`` of ``folder`` with each checkout, back to back."""
    import os

    rows = []
    for root in checkouts:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.json"
            m = C.run_measured_cpu([sys.executable, "-m", "matchkit.cli", "dedupe",
                                    str(folder.resolve()), "--json", str(out), "-q"],
                                   cwd=tmp, env={**os.environ, "PYTHONPATH": root})
            if m["rc"]:
                raise SystemExit(f"matchkit ({root}) failed: {m['rc']}")
            score = C.score(C.pairs_from_groups(C.clusters_from_json(out)), truth)
        rows.append({"checkout": root, **score, "wall_s": m["wall_s"], "cpu_s": m["cpu_s"],
                     "peak_rss_mib": m["peak_rss_mib"]})
        print(C.table(rows[-1:], list(rows[-1])), flush=True)
    print(C.table(rows, list(rows[0])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_set_arguments(ap, default="hard")
    ap.add_argument("--label", help="name of this run's column (e.g. before)")
    ap.add_argument("--dedupe", action="store_true",
                    help="make the gallery with dedupe --gallery (matching state included)")
    ap.add_argument("--measure", type=Path, metavar="GALLERY",
                    help="print the bytes per image of this gallery folder and stop")
    ap.add_argument("--speed", nargs="+", metavar="CHECKOUT",
                    help="compare dedupe recall and time of these checkouts instead")
    ap.add_argument("--rows", type=Path, default=None,
                    help="JSON file the runs accumulate in (default: one per set and mode)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    if args.measure:
        row = measure(args.measure)
        print(C.table([{"bytes per image": k, "value": round(v)} for k, v in row.items()],
                      ["bytes per image", "value"]))
        return
    if not args.speed and not args.label:
        ap.error("--label or --speed is required")
    _, folder, n_images, truth = load_set(args)
    if args.speed:
        speed(folder, truth, args.speed)
        return
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "g"
        # (run from the temp folder: ``-m`` puts the working directory first
        # on sys.path, which would shadow the matchkit PYTHONPATH names)
        command = ["dedupe", "--json", str(Path(tmp) / "out.json")] if args.dedupe else ["index"]
        subprocess.run([sys.executable, "-m", "matchkit.cli", command[0], str(folder.resolve()),
                        *command[1:], "--gallery", str(gallery), "-q"], check=True,
                       stdout=subprocess.DEVNULL, cwd=tmp)
        row = measure(gallery)
    if args.rows is None:
        args.rows = C.WORK / f"stored-bytes{'-dedupe' if args.dedupe else ''}-{args.set}.json"
    runs = json.loads(args.rows.read_text()) if args.rows.exists() else {}
    runs[args.label] = row
    args.rows.write_text(json.dumps(runs, indent=1))
    keys = list(dict.fromkeys(k for r in runs.values() for k in r if k != "images"))
    labels = list(runs)
    rows = [{"bytes per image": k, **{lab: round(runs[lab].get(k, 0.0)) for lab in labels}}
            for k in keys]
    text = C.table(rows, ["bytes per image", *labels])
    print(text)
    if not args.no_write and args.split == "eval":
        how = "dedupe --gallery" if args.dedupe else "index"
        C.write_section(
            f"Stored bytes per image ({args.set}, {args.split}{', dedupe' if args.dedupe else ''})",
            f"`matchkit {how}` of the {args.set} {args.split} half ({n_images} images); "
            "bytes per image by file, by SQLite table (dbstat pages) and by stored blob.\n"
            "Reproduce: `PYTHONPATH=<checkout> python benchmarks/bench_stored.py "
            f"--set {args.set}{' --dedupe' if args.dedupe else ''} --label <name>` "
            "for each checkout.\n\n" + text)


if __name__ == "__main__":
    main()
