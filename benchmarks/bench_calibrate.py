"""Calibrated decisions benchmark: calibrate on one half of the photos, evaluate on the other.

(a) time ``matchkit calibrate`` on all photos (``--timing``);
(b) calibrate on the calib half (even sorted positions) with an edit suite,
    then run ``matchkit dedupe`` with that profile and with the hand-set rules
    on the transformed and hard sets built from the eval half (odd
    positions), scoring pairs like bench_dedupe.py (every pair inside a
    predicted cluster vs every pair made from the same photo).

    python benchmarks/bench_calibrate.py                      # (b), writes RESULTS.md
    python benchmarks/bench_calibrate.py --timing --sets ""   # (a) only, own RESULTS.md section
    python benchmarks/bench_calibrate.py --profile configs/default.toml   # reuse a profile
    python benchmarks/bench_calibrate.py --split calib --no-write         # check on calib halves

A reused profile must have been calibrated on calib-half photos only
(configs/default.toml was: see its [data] table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import sets  # noqa: E402
from bench_dedupe import truth_pairs  # noqa: E402


def calibrate(photos: list[Path], out: Path, suite: str, target: float) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "matchkit.cli", "calibrate", *map(str, photos), "--out",
           str(out), "--edits", suite, "--target-precision", str(target), "-q"]
    wall, rss, rc = C.run_measured(cmd)
    if rc:
        raise SystemExit(f"calibrate failed ({rc})")
    return wall, rss


def dedupe(folder: Path, tmp: Path, extra: list[str]) -> dict:
    out = tmp / "dedupe.json"
    cmd = [sys.executable, "-m", "matchkit.cli", "dedupe", str(folder), "--json", str(out), "-q",
           "--gallery", str(tmp / f"gallery-{folder.name}"), *extra]
    wall, rss, rc = C.run_measured(cmd)
    if rc:
        raise SystemExit(f"dedupe failed ({rc}): {' '.join(cmd)}")
    stats = json.loads(out.read_text())["stats"]
    return {"wall_s": wall, "clusters": C.clusters_from_json(out), "stats": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--photos", type=Path, default=C.DEFAULT_PHOTOS)
    ap.add_argument("--edits", default="copy-detection")
    ap.add_argument("--target-precision", type=float, default=0.99)
    ap.add_argument("--profile", type=Path, default=None,
                    help="use this profile (calibrated on the calib half) instead of calibrating")
    ap.add_argument("--split", default="eval", choices=["eval", "calib"],
                    help="sets to evaluate on (calib: for decisions; never written as results)")
    ap.add_argument("--sets", default="transformed,hard")
    ap.add_argument("--timing", action="store_true", help="also time calibrate on all photos")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.timing:
            everything = sets.photos(args.photos, "all")
            load = os.getloadavg()[0]
            wall, rss = calibrate(everything, tmp / "all.toml", args.edits, args.target_precision)
            data = _profile_data(tmp / "all.toml")
            timing = (f"Calibrating on all {len(everything)} photos ({data['images']} images, "
                      f"{args.edits} edits, target {args.target_precision}): {wall:.0f} s wall, "
                      f"peak RSS {rss:.0f} MiB (one run; load average {load:.1f} on "
                      f"{os.cpu_count()} cores when it started).")
            print(timing, flush=True)
            if not args.no_write:
                C.write_section("calibrate: time on all photos", (
                    f"Command: `python benchmarks/bench_calibrate.py --timing --sets \"\"`\n\n"
                    f"{timing}\n"))
        if not args.sets:
            return
        if args.profile is None:
            calib = sets.photos(args.photos, "calib")
            profile = tmp / "calib-half.toml"
            wall, _ = calibrate(calib, profile, args.edits, args.target_precision)
            notes.append(f"Profile: calibrated in this run on the calib half ({len(calib)} photos, "
                         f"{args.edits} edits) in {wall:.0f} s.")
        else:
            profile = args.profile
            d = _profile_data(profile)
            notes.append(f"Profile: `{profile}` ({d['source']}; {d['photos']} photos, "
                         f"{d['edits']} edits).")
        print(notes[-1], flush=True)
        target = _target(profile)
        for name in args.sets.split(","):
            base = sets.photos(args.photos, args.split)
            folder = sets.build(name, base, C.WORK / f"{name}-{args.split}-{len(base)}")
            truth = truth_pairs(folder)
            for method, extra in (("hand-set rules", []), ("calibrated", ["--profile",
                                                                          str(profile)])):
                r = dedupe(folder, tmp, extra)
                pred = C.pairs_from_groups(r["clusters"])
                rows.append({"set": f"{name}-{args.split}", "decision": method,
                             "target_precision": target if extra else "",
                             **C.score(pred, truth), "wall_s": r["wall_s"]})
                print(C.table(rows[-1:], list(rows[-1])), flush=True)
    cols = ["set", "decision", "target_precision", "pairs_found", "tp", "precision", "recall",
            "wall_s"]
    text = C.table(rows, cols)
    print(text)
    if not args.no_write and args.split == "eval":
        cmd = "python benchmarks/bench_calibrate.py" + (
            f" --profile {args.profile}" if args.profile else "")
        body = ("Calibrated pair decisions vs the hand-set rules. The profile saw only "
                "calib-half photos (even sorted positions of "
                f"`{args.photos.name}`); the sets are built from the eval half (odd "
                "positions).\n"
                f"Command: `{cmd}`\n\n" + "\n".join(f"{n}\n" for n in notes) +
                "\nScoring: every pair inside a predicted cluster vs every pair of files made "
                "from the same photo. Each set is added to one gallery, reused by the second "
                "run, so wall_s of the second (calibrated) run excludes decoding.\n\n"
                f"{text}\n")
        C.write_section("calibrated decisions (eval split)", body)


def _profile_data(path: Path) -> dict:
    sys.path.insert(0, str(C.ROOT))
    from matchkit.match.profiles import load_profile
    return load_profile(path).data


def _target(path: Path) -> float:
    from matchkit.match.profiles import load_profile
    return load_profile(path).target_precision


if __name__ == "__main__":
    main()
