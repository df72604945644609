"""Hash-only throughput: decode + hash + index (+ SQLite) per second, vs imagehash.

Adds the base photos (default ../shared/data/imagenet-sample, ~500x375 JPEGs)
to a fresh temporary gallery and times it. The peer is imagehash's pHash on
the same files (open + hash, one thread, as imagehash is used). Each number
is the median of --repeats runs after one warm-up run (page cache warm).

    python benchmarks/bench_throughput.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import sets  # noqa: E402


def time_matchkit(files, workers: int, local: bool = False) -> float:
    from matchkit import Gallery, Settings
    settings = Settings(workers=workers, local_features=local)
    with tempfile.TemporaryDirectory() as tmp, Gallery(tmp, settings) as g:
        t = time.perf_counter()
        report = g.add(files)
        g.save()
        dt = time.perf_counter() - t
        assert len(report.ids) == len(files), report.skipped[:3]
    return dt


def time_imagehash(files) -> float:
    import imagehash
    from PIL import Image
    t = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            imagehash.phash(im)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--photos", type=Path, default=C.DEFAULT_PHOTOS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    files = sets.photos(args.photos)
    from PIL import Image
    sizes = sorted(Image.open(f).size for f in files)
    median_size = "x".join(map(str, sizes[len(sizes) // 2]))

    runs = {
        "matchkit add, hash-only, 2 processes": lambda: time_matchkit(files, 2),
        "matchkit add, hash-only, 1 process": lambda: time_matchkit(files, 1),
        "matchkit add, default (+ORB), 2 processes": lambda: time_matchkit(files, 2, True),
        "imagehash phash, 1 thread": lambda: time_imagehash(files),
    }
    rows = []
    for name, fn in runs.items():
        fn()  # warm-up
        times = [fn() for _ in range(args.repeats)]
        dt = statistics.median(times)
        rows.append({"method": name, "images": len(files), "seconds": dt,
                     "images_per_s": len(files) / dt})
    base = rows[-1]["images_per_s"]
    for r in rows:
        r["vs_imagehash"] = f"{r['images_per_s'] / base:.2f}x"
    text = C.table(rows, ["method", "images", "seconds", "images_per_s", "vs_imagehash"])
    print(text)
    if not args.no_write:
        C.write_section("throughput: hash-only add", (
            f"Data: {len(files)} JPEG photos from `{args.photos.name}` (median size "
            f"{median_size}).\nCommand: `python benchmarks/bench_throughput.py`\n"
            "Hash-only (`--hash-only`): decode (JPEG draft), 256-bit dihedral pHash, colour "
            "histogram, file digest, SQLite rows and USearch index, saved. Default adds ORB "
            "features, a grey thumbnail and the descriptor index. Median of "
            f"{args.repeats} runs after a warm-up.\n\n{text}\n"))


if __name__ == "__main__":
    main()
