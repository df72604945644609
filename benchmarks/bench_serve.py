"""Load test of the HTTP API: concurrent clients mixing search, check, label and add.

Builds (or reuses) a gallery of sample photos, labelled by name, embedded
with ``--model`` (default: the tiny random CLIP the tests build, so search
measures the API's plumbing, not a real model), starts ``matchkit serve``
with an admin key, warms every endpoint up once (the first label calibrates),
then runs the full load for ``--warmup`` seconds (not counted), then for
``--seconds``: ``--clients`` threads, each picking an operation by the
``--mix`` weights and sending a photo (check/label/search: a gallery photo,
re-encoded; add: a random crop of one, so new content). Reports per endpoint
requests, errors (non-2xx or transport errors), p50/p99 latency, and the
server's resident memory (RSS, sampled every second): its level after
warm-up, then at 25/50/75/100% of the run. The RSS of a loaded server
swings by a few hundred MiB (after each save of the writer the readers load
the new index files while still answering from the old ones), so the level
after warm-up is the highest sample of the warm-up's second half, and memory
is called flat when no sample of the run exceeds it by ``FLAT_GROWTH`` (10%)
or more: the run needs no memory the warm-up did not.

    python benchmarks/bench_serve.py --clients 32 --seconds 60
    python benchmarks/bench_serve.py --images 10000 --clients 32 --seconds 60
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import DEFAULT_PHOTOS, ROOT, WORK, table, write_section  # noqa: E402
from _serve import build_gallery, free_port, start_server  # noqa: E402


#: Benchmark sets whose edits fill a gallery beyond the sample photos, in order
#: (each a ``sets.build`` folder; the hard builders need AugLy). Calib then eval
#: halves of each; ``hard-b``/``hard-c`` are further seeded rounds of hard edits.
FILL_SETS = [("hard", "calib"), ("hard", "eval"), ("transformed", "calib"),
             ("transformed", "eval"), ("hard-b", "calib"), ("hard-b", "eval"),
             ("hard-c", "calib"), ("hard-c", "eval")]


def photos_for(n: int) -> list[Path]:
    """``n`` photo files: the sample photos when they are enough, else the edits the
    benchmark set builders make of them (``sets.build``, reused when built), in
    ``FILL_SETS`` order, so a 10k gallery holds realistic near-duplicate groups."""
    import sets

    base = sorted(DEFAULT_PHOTOS.glob("*.JPEG"))
    if n <= len(base):
        return base[:n]
    out: list[Path] = []
    for kind, split in FILL_SETS:
        half = sets.photos(DEFAULT_PHOTOS, split)
        folder = sets.build(kind, half, WORK / f"{kind}-{split}-{len(half)}")
        out += sorted(p for p in folder.iterdir() if p.suffix.lower() in sets.EXTS)
        if len(out) >= n:
            return out[:n]
    raise SystemExit(f"the benchmark sets hold only {len(out)} images, fewer than {n}")


def jpeg_bytes(path: Path, rng: random.Random, crop: bool) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((512, 512))
        if crop:
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.5, 0.9)), int(h * rng.uniform(0.5, 0.9))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            im = im.crop((x, y, x + cw, y + ch))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=rng.randint(70, 92))
        return buf.getvalue()


#: Largest growth of the server's RSS over its value after warm-up still called flat.
FLAT_GROWTH = 0.10


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=706)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=30,
                    help="Seconds of full load before the measured run (not counted).")
    ap.add_argument("--mix", default="search=3,check=3,label=2,add=1")
    ap.add_argument("--model", default=None, help="Embedding model (default: tiny random CLIP).")
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--no-write", action="store_true", help="Do not touch RESULTS.md.")
    ap.add_argument("--build-only", action="store_true",
                    help="Build (or check) the gallery, then stop before the load test.")
    args = ap.parse_args()
    import httpx

    from matchkit.embed import load_embedder
    from matchkit.store.gallery import DB_NAME, Gallery
    from matchkit.serve.keys import KeyStore

    work = WORK / "serve-bench"
    model = args.model
    if model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_clip import build_tiny_clip
        model = str(build_tiny_clip(work / "tiny-clip"))
    photos = photos_for(args.images)
    gallery = work / f"g{args.images}"
    fresh = not (gallery / DB_NAME).exists()
    if not fresh:
        with Gallery(gallery, create=False) as g:
            fresh = len(g) < args.images
    t0 = time.perf_counter()
    if fresh:
        shutil.rmtree(gallery, ignore_errors=True)
        build_gallery(gallery, photos)
        with Gallery(gallery) as g:
            g.embed(load_embedder(model))
            g.save()
    build_s = time.perf_counter() - t0
    if args.build_only:
        print(f"gallery {gallery} ready ({'built' if fresh else 'reused'} in {build_s:.0f} s)")
        return 0
    with Gallery(gallery, create=False) as g:
        n_start = len(g)  # a reused gallery also holds earlier runs' adds
    key, _ = KeyStore(gallery).add("admin", "bench")
    port = free_port()
    server = start_server(gallery, port, "--rate", "0", "--readers", str(args.readers),
                          "--timeout", "120")
    base = f"http://127.0.0.1:{port}/api/galleries/{gallery.name}"
    headers = {"Authorization": f"Bearer {key}"}
    weights = {k: float(v) for k, v in (p.split("=") for p in args.mix.split(","))}
    queries = photos[::max(1, len(photos) // 200)][:200]  # spread over the groups

    def request(c: httpx.Client, op: str, rng: random.Random) -> int:
        photo = rng.choice(queries)
        files = {"file": ("q.jpg", jpeg_bytes(photo, rng, crop=op == "add"), "image/jpeg")}
        url = f"{base}/images" if op == "add" else f"{base}/{op}"
        data = {"k": "5"} if op != "add" else {}
        return c.post(url, files=files, data=data, headers=headers).status_code

    warm = {}
    with httpx.Client(timeout=600) as c:
        for op in weights:
            t = time.perf_counter()
            code = request(c, op, random.Random(1))
            warm[op] = (code, time.perf_counter() - t)
    lat: dict[str, list[float]] = {op: [] for op in weights}
    errors: dict[str, int] = {op: 0 for op in weights}
    lock = threading.Lock()

    def load(seconds: float, seed: int, record: bool) -> list[tuple[float, float]]:
        """``args.clients`` clients for ``seconds``; the server's RSS each second
        as (seconds since start, MiB)."""
        stop = time.monotonic() + seconds

        def client(n: int) -> None:
            rng = random.Random(seed + n)
            ops, w = list(weights), list(weights.values())
            with httpx.Client(timeout=300) as c:
                while time.monotonic() < stop:
                    op = rng.choices(ops, w)[0]
                    t = time.perf_counter()
                    try:
                        ok = 200 <= request(c, op, rng) < 300
                    except httpx.HTTPError:
                        ok = False
                    if record:
                        with lock:
                            lat[op].append(time.perf_counter() - t)
                            errors[op] += not ok

        threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        samples = []
        while any(t.is_alive() for t in threads):
            samples.append((time.monotonic() - t0, rss_mib(server.pid)))
            time.sleep(1)
        for t in threads:
            t.join()
        return samples

    # Seeds from the gallery's size: a reused gallery gets crops it does not
    # hold yet, so every add really writes (the same crops again are "unchanged").
    seed = 1000 * n_start
    warm_samples = load(args.warmup, seed + 500, record=False)
    rss_warm = max([m for t, m in warm_samples if t >= args.warmup / 2]
                   or [rss_mib(server.pid)])
    load_start = os.getloadavg()[0]
    samples = load(args.seconds, seed, record=True)
    rss_end = rss_mib(server.pid)
    samples.append((args.seconds, rss_end))
    load_end = os.getloadavg()[0]
    server.terminate()  # a graceful stop finishes the requests still queued
    t = time.perf_counter()
    try:
        server.wait(timeout=300)
        stop_note = f"It stopped {time.perf_counter() - t:.0f} s after SIGTERM."
    except subprocess.TimeoutExpired:
        server.kill()
        stop_note = "It did not stop within 300 s of SIGTERM and was killed."
    with Gallery(gallery, create=False) as g:
        n_end = len(g)
    rows = [{"endpoint": op, "requests": len(lat[op]), "errors": errors[op],
             "req/s": round(len(lat[op]) / args.seconds, 2),
             "p50 ms": round(1000 * percentile(lat[op], 0.5)),
             "p99 ms": round(1000 * percentile(lat[op], 0.99)),
             "warm-up s": round(warm[op][1], 2)} for op in weights]
    total_err = sum(errors.values())
    def rss_at(share: float) -> float:  # the last sample at or before that share of the run
        return [m for t, m in samples if t <= share * args.seconds + 0.5][-1]
    trend = {f"{int(100 * q)}%": rss_at(q) for q in (0.25, 0.5, 0.75, 1.0)}
    peak = max(m for _, m in samples)
    growth = peak / rss_warm - 1
    flat = growth < FLAT_GROWTH
    body = (f"`python benchmarks/bench_serve.py --images {args.images} --clients {args.clients} "
            f"--seconds {args.seconds:g} --mix {args.mix}`: gallery of {n_start} images "
            f"(built in {build_s:.0f} s{'' if fresh else ', reused'}), model "
            f"{'tiny random CLIP (plumbing only)' if args.model is None else args.model}, "
            f"{args.readers} reader threads, loopback, after {args.warmup:g} s of the same load "
            f"as warm-up (not counted); the adds put {n_end - n_start} new images into the "
            f"gallery (warm-up included). Errors: {total_err}. Server RSS after warm-up "
            f"{rss_warm:.0f} MiB (highest sample of its second half); during the run "
            + ", ".join(f"{k} {v:.0f}" for k, v in trend.items())
            + f" MiB (at that share of the run); peak {peak:.0f} MiB, {100 * growth:+.1f}% over "
            f"the RSS after warm-up: memory {'flat' if flat else 'NOT flat'} (flat: every "
            f"sample less than {100 * FLAT_GROWTH:.0f}% above it). Machine load average "
            f"(1 min, {os.cpu_count()} cores, shared with other jobs) {load_start:.1f} at the "
            f"start of the run, {load_end:.1f} at its end; benchmark and server at "
            f"niceness {os.nice(0)}. {stop_note}\n\n"
            + table(rows, list(rows[0])) + "\n")
    print(body)
    if not args.no_write:
        write_section("HTTP API load test", body)
    return 0 if total_err == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
