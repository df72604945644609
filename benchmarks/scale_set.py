"""A collection of distinct synthetic pictures with a known 5% of edited copies.

Why: scale runs (10k, 100k, 1M) need recall and precision at every size, on
pictures that share no region unless the ground truth says so. The
collection is a stream of slots in blocks of 20: slots 0-18 of a block are
distinct pictures (``synth.render``), slot 19 is an edited copy of one
earlier picture (half the time from its own block, else from any earlier
block, so an incremental add also brings copies of pictures already in a
gallery). So the first N slots (N a multiple of 20) are a collection with
exactly 5% copies, every prefix is consistent with every larger one, and any
slot can be regenerated alone.

Files: ``ROOT/img/dNNNN/SSSSSSS.jpg`` (1,000 slots per folder), written
atomically; a build skips files that exist, so it resumes after an
interruption and can be run in parts (``--start``/``--size``). Ground truth:
``truth(seed, n)`` or ``ROOT/truth-N.json`` ({"groups": [[name, ...], ...]},
names relative to ``ROOT/img``).

    python benchmarks/scale_set.py --size 10000               # both cores
    nice -n 5 python benchmarks/scale_set.py --size 100000 &  # resumable
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as C  # noqa: E402
import synth  # noqa: E402

BLOCK = 20
PER_FOLDER = 1000
#: The copy edits: the copy-detection suite's edits that keep the picture a
#: copy (not its variants), minus those that add a region shared between
#: copies of *different* pictures: re-photographs (shared monitor setups) and
#: screenshots (one app frame; two screenshot copies of different pictures
#: were matched to each other through it in a 1,000-image trial). Those hard
#: negatives are measured by the hard and recapture sets, not here.
SUITE = "copy-detection"
SKIP_EDITS = {"monitor", "print", "screenshot"}


@dataclass(frozen=True)
class Slot:
    index: int
    #: For a copy, the slot it is an edited copy of; -1 for a distinct picture.
    source: int = -1
    edit: str = ""

    @property
    def name(self) -> str:
        return f"d{self.index // PER_FOLDER:04d}/{self.index:07d}.jpg"


def default_root(seed: int = 0) -> Path:
    return C.WORK / f"scale-distinct-s{seed}"


@functools.lru_cache(maxsize=1)
def _copy_edits() -> tuple:
    from matchkit.match.edits import load_suite

    return tuple(e for e in load_suite(SUITE).edits if not e.relation and e.name not in SKIP_EDITS)


def slot(seed: int, index: int) -> Slot:
    """What slot ``index`` of collection ``seed`` holds."""
    block, pos = divmod(index, BLOCK)
    if pos != BLOCK - 1:
        return Slot(index)
    rng = synth.rng_for(seed, block, salt=2)
    src_block = block if rng.random() < 0.5 else int(rng.integers(0, block + 1))
    edits = _copy_edits()
    return Slot(index, src_block * BLOCK + int(rng.integers(0, BLOCK - 1)),
                edits[int(rng.integers(len(edits)))].name)


def truth(seed: int, n: int) -> list[list[str]]:
    """The ground-truth groups (names under ``img/``) of the first ``n`` slots."""
    groups: dict[int, list[str]] = {}
    for i in range(BLOCK - 1, n, BLOCK):
        s = slot(seed, i)
        groups.setdefault(s.source, [Slot(s.source).name]).append(s.name)
    return [groups[k] for k in sorted(groups)]


def _encoded(seed: int, index: int) -> bytes:
    buf = io.BytesIO()
    synth.render(seed, index).save(buf, format="JPEG", quality=synth.jpeg_quality(seed, index))
    return buf.getvalue()


def make(seed: int, index: int, img_dir: Path) -> Path:
    """Write slot ``index`` (atomically); a copy is made from its source's JPEG
    as a user would edit a downloaded file."""
    from PIL import Image

    from matchkit.match.edits import apply_edit

    s = slot(seed, index)
    out = img_dir / s.name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if s.source < 0:
        tmp.write_bytes(_encoded(seed, index))
    else:
        edit = next(e for e in _copy_edits() if e.name == s.edit)
        with Image.open(io.BytesIO(_encoded(seed, s.source))) as im:
            im.load()
            edited, save = apply_edit(im, edit, s.name)
        save = {**save, "format": "JPEG"} if save.get("format") != "JPEG" else save
        edited.convert("RGB").save(tmp, **save)
    os.replace(tmp, out)
    return out


def _make_one(args: tuple[int, int, str]) -> int:
    seed, index, img_dir = args
    try:
        make(seed, index, Path(img_dir))
    except Exception as e:  # noqa: BLE001 - one bad slot must not stop a long build
        print(f"slot {index}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return -1
    return index


def missing(img_dir: Path, start: int, stop: int) -> list[int]:
    """Slots in [start, stop) whose file does not exist yet (one listing per folder)."""
    have: set[str] = set()
    for f in range(start // PER_FOLDER, (stop - 1) // PER_FOLDER + 1 if stop > start else 0):
        d = img_dir / f"d{f:04d}"
        if d.is_dir():
            have.update(f"d{f:04d}/{n}" for n in os.listdir(d) if not n.startswith("."))
    return [i for i in range(start, stop) if Slot(i).name not in have]


def build(seed: int, root: Path, size: int, start: int = 0, workers: int = 2,
          progress: bool = True) -> dict:
    """Make slots [start, size) that are missing; returns counts and timing."""
    img_dir = root / "img"
    todo = missing(img_dir, start, size)
    t0, done, failed = time.perf_counter(), 0, 0
    if todo:
        ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
        with ctx.Pool(max(1, workers)) as pool:
            for r in pool.imap_unordered(_make_one, [(seed, i, str(img_dir)) for i in todo],
                                         chunksize=8):
                done += 1
                failed += r < 0
                if progress and done % 500 == 0:
                    rate = done / (time.perf_counter() - t0)
                    print(f"  {done}/{len(todo)} made, {rate:.1f}/s, "
                          f"eta {(len(todo) - done) / rate / 60:.1f} min", flush=True)
    wall = time.perf_counter() - t0
    (root / f"truth-{size}.json").write_text(json.dumps(
        {"seed": seed, "size": size, "groups": truth(seed, size)}))
    return {"made": done, "failed": failed, "wall_s": wall,
            "s_per_1000": 1000 * wall / done if done else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, required=True, help="slots to have (multiple of 20)")
    ap.add_argument("--start", type=int, default=0, help="first slot to make (build in parts)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if args.size <= 0 or args.size % BLOCK or not 0 <= args.start <= args.size:
        ap.error(f"--size must be a positive multiple of {BLOCK}, 0 <= --start <= --size")
    root = args.root or default_root(args.seed)
    r = build(args.seed, root, args.size, args.start, args.workers)
    print(f"{root}: made {r['made']} ({r['failed']} failed) in {r['wall_s']:.0f} s, "
          f"{r['s_per_1000']:.0f} s per 1,000")


if __name__ == "__main__":
    main()
