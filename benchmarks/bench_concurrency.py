"""Gallery integrity under concurrent writers and damaged cache files.

Part 1, concurrent writers: each round makes a fresh gallery from a random
sample of the imagenet-sample photos (a base set, indexed and embedded with a
small ONNX model first, so later runs embed too), then starts two writers at
the same moment on it:

- index + index: ``matchkit index A`` and ``matchkit index B`` (A and B overlap
  by half; both also embed their new images with the gallery's model),
- index + embed: ``matchkit index NEW`` (adds and embeds new photos) and
  ``matchkit index BASE --model M`` (only embeds: the base photos get vectors),
- dedupe + index: ``matchkit dedupe A --gallery G --model M`` and
  ``matchkit index B``.

Afterwards every photo of the round must be found by ``matchkit check`` (a
match whose path is the photo itself) and by ``search`` (the photo itself
among its 3 nearest vectors), and ``matchkit verify`` must report no
difference between database rows and index keys.

Part 2, damaged cache files: a gallery of N photos with pHash, ORB and vector
index files; each file gets 20 random damages (even trials: 8 flipped bits,
odd trials: truncated at a random length), one at a time on a fresh copy.
Each damaged gallery is queried in a subprocess (so a segfault would show as
a negative exit code): ``check`` and ``search`` answers for a sample of the
photos must equal the clean gallery's, and ``verify`` must list the file as
stale (rebuilt from the database) with no difference.

The embedding model is built here (no download): an ONNX graph that
average-pools a 32x32 picture to 8x8 per channel and projects the 192 values
to 64-d with fixed random weights. Its vectors mean nothing semantically, but
each photo's own vector is its nearest, which is what "found by search" needs.

    python benchmarks/bench_concurrency.py                   # writes RESULTS.md
    python benchmarks/bench_concurrency.py --rounds 2 --per-writer 24 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

import _common as C  # noqa: E402

SCENARIOS = ("index+index", "index+embed", "dedupe+index")
_ENV = {**os.environ, "PYTHONPATH": str(C.ROOT)}


def build_model(path: Path, seed: int = 0) -> Path:
    """The 32x32 -> 8x8 average-pool + random 192->64 projection ONNX model."""
    from test_embed import FLOAT, _field, _node, _value_info

    w = np.random.default_rng(seed).standard_normal((192, 64)).astype(np.float32)
    nodes = [_node("AveragePool", ["pixels"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
             _node("Flatten", ["pooled"], ["flat"], axis=1),
             _node("MatMul", ["flat", "W"], ["embedding"])]
    init = (b"".join(_field(1, d) for d in w.shape) + _field(2, FLOAT) + _field(8, "W")
            + _field(9, w.tobytes()))
    graph = (b"".join(_field(1, n) for n in nodes) + _field(2, "g") + _field(5, init)
             + _field(11, _value_info("pixels", FLOAT, ["batch", 3, 32, 32]))
             + _field(12, _value_info("embedding", FLOAT, ["batch", 64])))
    model = (_field(1, 7) + _field(2, "matchkit-bench") + _field(7, graph)
             + _field(8, _field(1, "") + _field(2, 13)))
    if not path.exists() or path.read_bytes() != model:  # (parallel runs share it)
        from matchkit.util.fs import atomic_write_bytes
        atomic_write_bytes(path, model)
    return path


def cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "matchkit.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)


def finish(proc: subprocess.Popen, what: str) -> tuple[str, str]:
    out, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}: {err[-800:]}")
    return out, err


_ANSWERS = r"""
import json, sys
from matchkit import Gallery
from matchkit.jobs.check import check
from matchkit.jobs.search import search
gdir, model, files = sys.argv[1], sys.argv[2], sys.argv[3:]
rep = check(gdir, files, k=3).to_dict()
found = {r["path"]: sorted(m["path"] for m in r["matches"] if m["matched"]) for r in rep["results"]}
near = {f: [h.path for h in search(gdir, image=f, k=3, model=model)] for f in files}
with Gallery(gdir, create=False) as g:
    verify = g.verify().to_dict()
print(json.dumps({"check": found, "search": near, "verify": verify}))
"""


def answers(gdir: Path, model: Path, files: list[str]) -> tuple[dict | None, int, str]:
    """Check/search/verify answers from a fresh process: (answers, exit code, stderr)."""
    proc = subprocess.run([sys.executable, "-c", _ANSWERS, str(gdir), str(model), *files],
                          capture_output=True, text=True, env=_ENV, timeout=1800)
    if proc.returncode != 0:
        return None, proc.returncode, proc.stderr[-600:]
    return json.loads(proc.stdout), 0, ""


def writers_round(scenario: str, rnd: int, photos: list[Path], model: Path, per: int,
                  work: Path) -> dict:
    rng = random.Random(rnd * 7919 + SCENARIOS.index(scenario))
    sample = rng.sample(photos, per * 3)
    base, a_only, b_only = sample[:per], sample[per: 2 * per], sample[2 * per:]
    root = work / f"{scenario}-{rnd}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    gdir = root / "g"
    # The base set, embedded with the model (one photo only for index+embed, so
    # that its second writer has the rest of the base to embed).
    if scenario == "index+embed":
        finish(cli("index", *base, "--gallery", gdir, "--no-embed", "-q"), "base index")
        finish(cli("index", base[0], "--gallery", gdir, "--model", model, "-q"), "base embed")
    else:
        finish(cli("index", *base, "--gallery", gdir, "--model", model, "-q"), "base index")
    half = per // 2
    set_a = base[:half] + a_only
    set_b = a_only[:half] + b_only
    t = time.perf_counter()
    if scenario == "index+index":
        procs = [cli("index", *set_a, "--gallery", gdir, "-q"),
                 cli("index", *set_b, "--gallery", gdir, "-q")]
    elif scenario == "index+embed":
        procs = [cli("index", *set_b, "--gallery", gdir, "-q"),
                 cli("index", *base, "--gallery", gdir, "--model", model, "-q")]
    else:
        procs = [cli("dedupe", *set_a, "--gallery", gdir, "--model", model, "-q",
                     "--json", root / "dupes.json"),
                 cli("index", *set_b, "--gallery", gdir, "-q")]
    errs = [finish(p, f"{scenario} writer {i}")[1] for i, p in enumerate(procs)]
    seconds = time.perf_counter() - t
    indexed = base + set_b + (set_a if scenario != "index+embed" else [])
    everything = sorted({str(p) for p in indexed})
    got, code, err = answers(gdir, model, everything)
    if got is None:
        raise RuntimeError(f"{scenario} round {rnd}: answers exited {code}: {err}")
    in_gallery = _gallery_paths(gdir)
    check_found = sum(f in got["check"].get(f, []) for f in everything)
    search_found = sum(f in got["search"].get(f, []) for f in everything)
    return {"scenario": scenario, "round": rnd, "images": len(in_gallery),
            "expected": len(everything), "waited": sum("waiting for another" in e for e in errs),
            "check_found": check_found, "search_found": search_found,
            "differences": len(got["verify"]["differences"]),
            "stale": len(got["verify"]["stale"]), "seconds": seconds}


def _gallery_paths(gdir: Path) -> set[str]:
    from matchkit import Gallery
    with Gallery(gdir, create=False) as g:
        return set(g.paths().values())


def damage(path: Path, trial: int, rng: np.random.Generator) -> str:
    data = bytearray(path.read_bytes())
    if trial % 2 == 0:
        for pos in rng.integers(0, len(data) * 8, 8):
            data[pos // 8] ^= 1 << (pos % 8)
        path.write_bytes(bytes(data))
        return "8 bits flipped"
    cut = int(rng.integers(0, len(data)))
    path.write_bytes(bytes(data[:cut]))
    return f"truncated to {cut} of {len(data)} bytes"


def cache_trials(photos: list[Path], model: Path, n: int, queries: int, trials: int,
                 work: Path, seed: int) -> list[dict]:
    root = work / "damaged"
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    chosen = [photos[i] for i in sorted(rng.choice(len(photos), n, replace=False))]
    pristine = root / "pristine"
    finish(cli("index", *chosen, "--gallery", pristine, "--model", model, "-q"), "cache gallery")
    files = [str(p) for p in chosen[:: max(1, n // queries)][:queries]]
    clean, code, err = answers(pristine, model, files)
    if clean is None or clean["verify"]["stale"] or clean["verify"]["differences"]:
        raise RuntimeError(f"clean gallery not clean: {code} {err} {clean and clean['verify']}")
    caches = sorted(p.name for p in pristine.glob("*.usearch"))
    rows = []
    for name in caches:
        row = {"file": "vectors (model)" if name.startswith("vectors-") else name, "trials": 0, "crashes": 0, "equal": 0, "rebuilt": 0,
               "differences": 0}
        for trial in range(trials):
            g = root / "g"
            shutil.rmtree(g, ignore_errors=True)
            shutil.copytree(pristine, g)
            damage(g / name, trial, rng)
            got, code, _ = answers(g, model, files)
            row["trials"] += 1
            if got is None:
                row["crashes"] += 1
                continue
            row["equal"] += (got["check"], got["search"]) == (clean["check"], clean["search"])
            row["rebuilt"] += any(s.startswith(name) for s in got["verify"]["stale"])
            row["differences"] += len(got["verify"]["differences"])
        rows.append(row)
        print(C.table([row], list(row)), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--photos", type=Path, default=C.DEFAULT_PHOTOS)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-writer", type=int, default=12,
                    help="photos in the base set and new photos per writer, each round")
    ap.add_argument("--cache-photos", type=int, default=100)
    ap.add_argument("--cache-queries", type=int, default=12)
    ap.add_argument("--cache-trials", type=int, default=20)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated subset of " + ", ".join(SCENARIOS) + " (run "
                         "separately, e.g. in parallel; the RESULTS.md section shows every "
                         "scenario's last run)")
    ap.add_argument("--skip-writers", action="store_true")
    ap.add_argument("--skip-caches", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    photos = sorted(p.resolve() for p in args.photos.iterdir()
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    work = C.WORK / "concurrency"
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work / "pool8-proj64.onnx")
    started = time.perf_counter()
    summary, rows = [], []
    if not args.skip_writers:
        for scenario in [x.strip() for x in args.scenarios.split(",") if x.strip()]:
            if scenario not in SCENARIOS:
                raise SystemExit(f"unknown scenario {scenario!r}")
            for rnd in range(args.rounds):
                row = writers_round(scenario, rnd, photos, model, args.per_writer, work)
                rows.append(row)
                print(C.table([row], list(row)), flush=True)
            mine = [r for r in rows if r["scenario"] == scenario]
            summary.append({
                "scenario": scenario, "rounds": len(mine),
                "images": sum(r["expected"] for r in mine),
                "in gallery": sum(r["images"] for r in mine),
                "found by check": sum(r["check_found"] for r in mine),
                "found by search": sum(r["search_found"] for r in mine),
                "verify differences": sum(r["differences"] for r in mine),
                "stale files after": sum(r["stale"] for r in mine),
                "rounds a writer waited": sum(r["waited"] > 0 for r in mine),
                "per-writer": args.per_writer})
            (work / f"summary-{scenario}.json").write_text(json.dumps(summary[-1]))
        print(C.table(summary, list(summary[0])))
        # Scenarios run by separate invocations are reported together.
        summary = [json.loads((work / f"summary-{s}.json").read_text())
                   for s in SCENARIOS if (work / f"summary-{s}.json").exists()]
    cache_rows = []
    if not args.skip_caches:
        cache_rows = cache_trials(photos, model, args.cache_photos, args.cache_queries,
                                  args.cache_trials, work, seed=11)
        print(C.table(cache_rows, list(cache_rows[0])))
    minutes = (time.perf_counter() - started) / 60
    if args.no_write:
        return
    command = (f"Command: `python benchmarks/bench_concurrency.py --rounds {args.rounds} "
               f"--per-writer {args.per_writer} --cache-photos {args.cache_photos} "
               f"--cache-queries {args.cache_queries} --cache-trials {args.cache_trials}"
               f"{' --skip-caches' if args.skip_caches else ''}"
               f"{'' if args.scenarios == ','.join(SCENARIOS) else ' --scenarios ' + args.scenarios}"
               f"{' --skip-writers' if args.skip_writers else ''}` on "
               f"{args.photos.name} ({len(photos)} photos), {minutes:.0f} min on a shared, "
               "busy machine.")
    if summary:
        C.write_section("Concurrency: two writers on one gallery", "\n".join([
            command, "",
            "Two writers started together on a fresh gallery per round (a base set of "
            f"{args.per_writer} photos indexed and embedded first, then {args.per_writer} new "
            "photos per writer, the writers' sets overlapping by half). \"images\": photos "
            "that should be in the gallery afterwards, summed over rounds; \"found by "
            "check\": a `check` match is the photo itself; \"found by search\": the photo "
            "is among its 3 nearest vectors; \"verify differences\": index files stamped "
            "current whose keys differ from the database rows; \"rounds a writer waited\": "
            "the second writer printed the waiting message.", "",
            C.table(summary, list(summary[0]))]))
    if cache_rows:
        C.write_section("Concurrency: damaged cache files", "\n".join([
            command, "",
            f"A gallery of {args.cache_photos} photos; per cache file {args.cache_trials} "
            "trials (even: 8 flipped bits, odd: truncated at a random length), each on a "
            f"fresh copy, queried in a fresh process ({args.cache_queries} photos through "
            "`check` and `search`). \"crashes\": non-zero exits (a segfault included); "
            "\"equal\": answers identical to the undamaged gallery's; \"rebuilt\": "
            "`verify` named the file as stale (rebuilt from SQLite); \"differences\": "
            "files loaded as current whose keys differ from the database.", "",
            C.table(cache_rows, list(cache_rows[0]))]))


if __name__ == "__main__":
    main()
