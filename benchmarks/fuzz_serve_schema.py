"""Schemathesis against the HTTP API's OpenAPI schema: no 5xx, no schema violations.

Serves a small gallery (photos from the shared sample, labelled by folder)
with an admin key, runs ``st run`` with every check over every operation,
and writes a RESULTS.md section. Needs ``pip install schemathesis``.

    python benchmarks/fuzz_serve_schema.py --photos 20 --max-examples 50
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import DEFAULT_PHOTOS, WORK, write_section  # noqa: E402
from _serve import build_gallery, free_port, start_server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--max-examples", type=int, default=50)
    ap.add_argument("--no-write", action="store_true", help="Do not touch RESULTS.md.")
    args = ap.parse_args()
    st = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    work = WORK / "fuzz-serve"
    shutil.rmtree(work, ignore_errors=True)
    # Copies: the fuzzer may apply dedupe moves, which must not touch the shared data.
    (work / "photos").mkdir(parents=True)
    photos = []
    for src in sorted(DEFAULT_PHOTOS.glob("*.JPEG"))[: args.photos]:
        photos.append(work / "photos" / src.name)
        shutil.copyfile(src, photos[-1])
    shutil.copyfile(photos[0], work / "photos" / "copy_of_first.jpg")  # one cluster
    photos.append(work / "photos" / "copy_of_first.jpg")
    gallery = build_gallery(work / "g", photos)
    from matchkit.serve.keys import KeyStore
    key, _ = KeyStore(gallery).add("admin", "fuzz")
    port = free_port()
    server = start_server(gallery, port, "--rate", "0")
    report = work / "report.json"
    start = time.perf_counter()
    try:
        run = subprocess.run(
            [st, "run", f"http://127.0.0.1:{port}/api/openapi.json", "--checks", "all",
             # An upload must be a decodable image: a rule no OpenAPI schema can state,
             # so random "valid" bytes are rightly refused (422), not a violation.
             "--exclude-checks", "positive_data_acceptance",
             "-H", f"Authorization: Bearer {key}", "--max-examples", str(args.max_examples),
             "--generation-deterministic", "--report", "ndjson",
             "--report-ndjson-path", str(report)],
            capture_output=True, text=True, cwd=work)  # (its cache folder goes there)
    finally:
        server.terminate()
        server.wait(timeout=30)
    seconds = time.perf_counter() - start
    tail = "\n".join(run.stdout.strip().splitlines()[-25:])
    print(run.stdout[-6000:], run.stderr[-2000:])
    body = (f"`python benchmarks/fuzz_serve_schema.py --photos {args.photos} --max-examples "
            f"{args.max_examples}`: schemathesis "
            f"{'passed' if run.returncode == 0 else f'FAILED (exit {run.returncode})'} "
            f"in {seconds:.0f} s (all checks but positive_data_acceptance, every operation, admin key).\n\n"
            f"```\n{tail}\n```\n")
    if not args.no_write:
        write_section("HTTP API schema fuzzing (schemathesis)", body)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
