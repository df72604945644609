"""The Ray tasks of a run: finding the shard that owns each file, extracting
a chunk of files into their shards' actors, verifying candidate pairs from
their images' stored features; and telling a task that failed because its
worker died (:func:`worker_death`) from one that failed for another reason.

Separate from the driver (``ray_jobs.py``), which schedules them: a Ray
worker imports this module by its path to run a task, and nothing here
needs the driver.
"""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from matchkit.config import Settings
from matchkit.features import extract_many
from matchkit.store.gallery import AddReport, read_local_features
from matchkit.io.load import ImageLoadError
from matchkit.signals.hashing import file_digest
from matchkit.match.evidence import forget_refused
from matchkit.match.pairs import PairEvidence, thumb_content_mask, verify_stored
from matchkit.store.shards import merge_report, place, route, shard_of
from matchkit.distributed.connect import _node, _ray, peak_rss_kib

#: Test hook: a folder; while it holds a file ``armed``, each kind of task
#: ("extract", "verify") kills its own worker once, after its work is sent
#: but before it returns (a marker file in the folder records that it happened).
KILL_ONCE_ENV = "MATCHKIT_TEST_RAY_KILL_ONCE"


def _kill_once(kind: str) -> None:
    folder = os.environ.get(KILL_ONCE_ENV)
    if folder and os.path.exists(os.path.join(folder, "armed")):
        marker = Path(folder) / kind
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return
        os._exit(1)


def _owners(paths: list[str], where: dict, names: list[str]) -> tuple:
    """Ray task: the shard that owns each file (its bytes' digest hashed over
    the shard names; a file that cannot be read: the shard its failure goes
    to), as int32, so that its extraction can run on that shard's node."""
    owners = np.empty(len(paths), np.int32)
    for n, path in enumerate(paths):
        try:
            owners[n] = shard_of(file_digest(path), names)
        except OSError:
            owners[n] = route(path, ImageLoadError(path, "unreadable"), where, names)
    return owners, _node()


def _extract_and_store(paths: list[str], ids: dict[str, int], where: dict,
                       names: list[str], actors: list, shard_nodes: list[str],
                       settings: Settings, crash_on: str | None = None) -> tuple:
    """Ray task: extract a chunk of files, send each record to its shard's actor
    (``adding.place``: the same rule as on one machine). The driver runs a
    chunk on the node of the actor that owns its files, so a record normally
    crosses no node boundary; ``shard_nodes`` (each actor's node) tells which
    bytes did.

    ``crash_on`` (tests only, ``features.CRASH_HOOK_ENV`` on the driver): a
    file name on which this worker kills itself, standing in for a decoder
    that segfaults."""
    start = time.perf_counter()
    ray = _ray()
    if crash_on is not None and any(os.path.basename(p) == crash_on for p in paths):
        os.kill(os.getpid(), signal.SIGSEGV)
    node = _node()
    per_shard: dict[int, list] = defaultdict(list)
    for path, rec in extract_many(paths, settings.with_(workers=1)):
        shard, leaves = place(path, rec, where, names)
        if leaves:
            ray.get(actors[leaves[0]].remove.remote([leaves[1]]))
        per_shard[shard].append((path, rec))
    sizes = {s: len(pickle.dumps(b, protocol=5)) for s, b in per_shard.items()}
    sent = sum(sizes.values())
    across = sum(n for s, n in sizes.items() if shard_nodes[s] != node)
    reports = ray.get([actors[s].write_records.remote(b, ids) for s, b in per_shard.items()])
    _kill_once("extract")
    report = AddReport()
    for r in reports:
        merge_report(report, r)
    return (report, node, len(paths), sent, across, time.perf_counter() - start,
            peak_rss_kib())


_CONNECTIONS: dict[str, sqlite3.Connection] = {}


def _shard_db(path: str) -> sqlite3.Connection:
    """A read-only connection to a shard's database, kept per worker process."""
    if path not in _CONNECTIONS:
        _CONNECTIONS[path] = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                             check_same_thread=False, timeout=60.0)
    return _CONNECTIONS[path]


def _verify_pairs(evidence: list[PairEvidence], dbs: dict[int, str], masks: dict, templated: dict,
                  settings: Settings, hand_rules: bool, crowds: list | None = None) -> tuple:
    """Ray task: verify candidate pairs from their images' stored features
    (``crowds``: each pair's closer crowd distance, as on one machine)."""
    feats = {i: read_local_features(_shard_db(db), i) for i, db in dbs.items()}
    read = sum(len(f[0].desc.tobytes()) + f[1].nbytes for f in feats.values() if f is not None)

    def mask(i: int):
        if i not in masks:
            masks[i] = thumb_content_mask(feats[i][1] if feats[i] is not None else None)
        return masks[i]

    for n, ev in enumerate(evidence):
        verify_stored(ev, feats[ev.a], feats[ev.b], mask(ev.a), mask(ev.b), templated, settings,
                      hand_rules, crowd=None if crowds is None else crowds[n])
        if hand_rules:  # (a refused pair's details are neither sent back nor held)
            forget_refused(ev)
    _kill_once("verify")
    return evidence, _node(), read, peak_rss_kib()


def worker_death(e: BaseException) -> str | None:
    """Why a task failed for good if its worker process died or ran out of
    memory (what a decoder can do to it on bad input); None for anything else,
    a fault of ours, which must not be taken for bad input."""
    ray = _ray()
    if isinstance(e, ray.exceptions.OutOfMemoryError):
        return "out of memory while processing (Ray killed its worker)"
    if isinstance(e, ray.exceptions.WorkerCrashedError):
        return "the decoder crashed on this file (its Ray worker process died)"
    if isinstance(e, ray.exceptions.RayTaskError) and isinstance(e.cause, MemoryError):
        return "out of memory while processing"
    return None
