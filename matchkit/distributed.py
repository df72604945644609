"""Dedupe, index and check on a Ray cluster (``pip install 'matchkit[ray]'``).

The work splits along the lines of a sharded gallery (``shards.py``):

* **listing** happens on the driver (this process): which files, which of
  them the shards already hold unchanged;
* **extraction** runs in Ray tasks, a chunk of files each: a task reads and
  decodes its files (shared storage: every node sees the same paths) and
  sends each record to the actor of the shard its digest hashes to;
* **each shard is held by an actor** (:class:`ShardServer`) that writes its
  records and answers candidate queries (pHash neighbours, descriptor votes)
  against its own indexes; the driver merges the answers per query
  (``shards.MergedIndex``), exactly as one index would have answered;
* **verification** of candidate pairs runs in Ray tasks that read the two
  images' stored features from their shards (``match.verify_stored``);
* the accepted pairs come back to the driver, which builds the clusters,
  keepers and report with the one-machine code (``dedupe.find_clusters``),
  so the result is the same as on one machine.

Extraction is scheduled dynamically: small chunks, one per CPU in flight,
each finished one replaced by the next on the node that ran it (``ray.wait``,
soft node affinity), so a node that is faster or less loaded takes more
chunks and all nodes finish together (submitting every chunk up front with
SPREAD queued a fixed share on each node). Verification chunks go to the node
given the fewest pairs so far.

Faults: tasks are retried by Ray (``max_retries``); writing a record again is
harmless (the same path, the same id). A chunk whose task still fails after
its retries because its worker died (a decoder's segfault or ``os._exit``, an
OOM kill, a ``MemoryError``) is split in two and each half tried again, down to
one file: the file that still kills its worker is skipped with a reason and
recorded as failed in its shard, as ``extract_many`` does on one machine.
A shard actor that dies is restarted by Ray (``max_restarts``) and opens its
shard again from disk, where every committed record is (the index files are
rebuilt from SQLite when stale); calls it missed are retried
(``max_task_retries``).

Still read on the driver: the stored rows, hashes and thumbnails the global
evidence uses (``PairMatcher``), the descriptors images vote with, the
files of templated and icon-like images, and full-resolution pixels when
two images may be identical (``Gallery.pixel_digest``).
"""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .config import Settings
from .features import CRASH_HOOK_ENV, extract_many
from .gallery import DB_NAME, AddReport, Gallery, GalleryError, read_local_features
from .io import ImageLoadError
from .match import PairEvidence, PairMatcher, thumb_content_mask, verify_stored
from .shards import (ShardedGallery, create_sharded, is_sharded, merge_report, plan_files,
                     read_manifest, route, stat_files)

#: How often Ray retries a task whose worker died, and restarts a dead shard actor.
TASK_RETRIES = 4
ACTOR_RESTARTS = 4
#: Retries of the halves of a chunk whose worker kept dying: one, for a worker
#: lost to something else; the file that kills every worker is found by
#: halving, not by retrying (each retry costs a new worker process).
SPLIT_RETRIES = 1
#: Files per extraction task at most, and chunks per CPU at least: many small
#: chunks, each sent to the first node free, even out the work per node (a
#: chunk takes 0.2-1 s on a loaded node).
EXTRACT_CHUNK = 16
CHUNKS_PER_CPU = 16
#: Candidate pairs per verification task.
VERIFY_CHUNK = 32
#: Test hook: a folder; while it holds a file ``armed``, each kind of task
#: ("extract", "verify") kills its own worker once, after its work is sent
#: but before it returns (a marker file in the folder records that it happened).
KILL_ONCE_ENV = "MATCHKIT_TEST_RAY_KILL_ONCE"


class RayUnavailable(RuntimeError):
    """Ray is not installed, or no cluster could be joined."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'matchkit[ray]'") from None
    return ray


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` ("auto": the one this machine
    belongs to; "local" or None: start one in this process) unless joined."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=None if address in (None, "local") else address,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayUnavailable(f"cannot join Ray cluster {address!r}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                 ) from None


def _node() -> str:
    return _ray().get_runtime_context().get_node_id()


def _kill_once(kind: str) -> None:
    folder = os.environ.get(KILL_ONCE_ENV)
    if folder and os.path.exists(os.path.join(folder, "armed")):
        marker = Path(folder) / kind
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return
        os._exit(1)


class ShardServer:
    """One shard of a gallery, held in a Ray actor: writes its records,
    answers index searches. Opening the shard is all its state, so a
    restarted actor is the same shard again."""

    def __init__(self, path: str, settings: Settings):
        self.gallery = Gallery(path, settings)

    def node(self) -> str:
        return _node()

    def pid(self) -> int:
        return os.getpid()

    def plan_add(self, files):
        return self.gallery.plan_add(files)

    def last_id(self) -> int:
        return self.gallery.last_id()

    def write_records(self, batch, ids) -> AddReport:
        return self.gallery.write_records(batch, ids)

    def remove(self, ids) -> int:
        return self.gallery.remove(ids)

    def save(self) -> None:
        self.gallery.save()

    def index_info(self, name: str) -> tuple[int, int]:
        index = getattr(self.gallery, f"{name}_index")
        return index.nbits, len(index)

    def search(self, name: str, codes, k: int):
        """k nearest of each code; distances as uint16 (they are at most
        nbits + 1), a quarter of the bytes to ship back."""
        keys, dists = getattr(self.gallery, f"{name}_index").search(codes, k)
        return keys, dists.astype(np.uint16)


class RemoteIndex:
    """A shard's index held by its actor (a part of ``shards.MergedIndex``)."""

    def __init__(self, actor, name: str, nbits: int, size: int, stats: "Work"):
        self.actor, self.name, self.nbits, self.size, self.stats = actor, name, nbits, size, stats

    def __len__(self) -> int:
        return self.size

    def search_async(self, codes, k: int):
        ref = self.actor.search.remote(self.name, codes, k)
        self.stats.add("driver", "queries", len(codes))

        def result():
            keys, dists = _ray().get(ref)
            self.stats.add("driver", "bytes_shipped", codes.nbytes + keys.nbytes + dists.nbytes)
            return keys, dists.astype(np.int64)
        return result


class Work:
    """Per-node counts of the work done (images extracted and the task time
    it took, pairs verified, bytes shipped between processes), for
    ``report.stats["ray"]``."""

    def __init__(self):
        self.by_node: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, node: str, what: str, n: int) -> None:
        self.by_node[node][what] += int(n)

    def to_dict(self) -> dict:
        return {node: dict(sorted(v.items())) for node, v in sorted(self.by_node.items())}


def _extract_and_store(paths: list[str], ids: dict[str, int], where: dict,
                       names: list[str], actors: list, settings: Settings,
                       crash_on: str | None = None) -> tuple:
    """Ray task: extract a chunk of files, send each record to its shard's actor.

    ``crash_on`` (tests only, ``features.CRASH_HOOK_ENV`` on the driver): a
    file name on which this worker kills itself, standing in for a decoder
    that segfaults."""
    start = time.perf_counter()
    ray = _ray()
    if crash_on is not None and any(os.path.basename(p) == crash_on for p in paths):
        os.kill(os.getpid(), signal.SIGSEGV)
    per_shard: dict[int, list] = defaultdict(list)
    for path, rec in extract_many(paths, settings.with_(workers=1)):
        shard = route(path, rec, where, names)
        old = where.get(path)
        if old and old[0] != shard:
            ray.get(actors[old[0]].remove.remote([old[1]]))
        per_shard[shard].append((path, rec))
    sent = sum(len(pickle.dumps(b, protocol=5)) for b in per_shard.values())
    reports = ray.get([actors[s].write_records.remote(b, ids) for s, b in per_shard.items()])
    _kill_once("extract")
    report = AddReport()
    for r in reports:
        merge_report(report, r)
    return report, _node(), len(paths), sent, time.perf_counter() - start


_CONNECTIONS: dict[str, sqlite3.Connection] = {}


def _shard_db(path: str) -> sqlite3.Connection:
    """A read-only connection to a shard's database, kept per worker process."""
    if path not in _CONNECTIONS:
        _CONNECTIONS[path] = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                             check_same_thread=False, timeout=60.0)
    return _CONNECTIONS[path]


def _verify_pairs(evidence: list[PairEvidence], dbs: dict[int, str], masks: dict, templated: dict,
                  settings: Settings, hand_rules: bool) -> tuple:
    """Ray task: verify candidate pairs from their images' stored features."""
    feats = {i: read_local_features(_shard_db(db), i) for i, db in dbs.items()}
    read = sum(len(f[0].desc.tobytes()) + f[1].nbytes for f in feats.values() if f is not None)

    def mask(i: int):
        if i not in masks:
            masks[i] = thumb_content_mask(feats[i][1] if feats[i] is not None else None)
        return masks[i]

    for ev in evidence:
        verify_stored(ev, feats[ev.a], feats[ev.b], mask(ev.a), mask(ev.b), templated, settings,
                      hand_rules)
    _kill_once("verify")
    return evidence, _node(), read


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


class RayPairMatcher(PairMatcher):
    """``PairMatcher`` whose local verification runs in Ray tasks."""

    def __init__(self, run: "RayRun", ids: list[int], settings: Settings,
                 same: dict[int, int] | None = None, calibrator=None):
        self.run = run
        super().__init__(run.gallery, ids, settings, same, calibrator)

    def verify(self, todo: list[PairEvidence]) -> None:
        ray, run = _ray(), self.run
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        todo = [ev for ev in todo if ev.pending]
        if not todo:
            return
        # At least one chunk per node, each to the node given the fewest pairs
        # so far (soft: elsewhere if it is gone); most calls bring a handful of
        # pairs, which SPREAD sent mostly to one node.
        size = min(VERIFY_CHUNK, -(-len(todo) // len(run.node_ids)))
        starts = range(0, len(todo), size)
        refs = []
        for start in starts:
            chunk = todo[start:start + size]
            ids = {i for ev in chunk for i in (ev.a, ev.b)}
            dbs = {i: str(run.gallery.path / run.names[run.gallery.owner(i)] / DB_NAME)
                   for i in ids}
            args = (chunk, dbs, {i: self._masks[i] for i in ids if i in self._masks},
                    {i: self.templated[i] for i in ids if i in self.templated},
                    self.settings, self.calibrator is None)
            node = min(run.node_ids, key=lambda n: run.verify_given[n])
            run.verify_given[node] += len(chunk)
            refs.append(run.verify_task.options(
                max_retries=TASK_RETRIES, scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node, soft=True)).remote(*args))
        for chunk_start, ref in zip(starts, refs):
            done, node, read = ray.get(ref)
            for ev, new in zip(todo[chunk_start:chunk_start + size], done):
                ev.__dict__.update(new.__dict__)
            run.work.add(node, "pairs_verified", len(done))
            run.work.add(node, "bytes_read", read)
        if self.calibrator is not None:
            for start in range(0, len(todo), 512):
                self.decide(todo[start:start + 512], "local")


class RayRun:
    """A sharded gallery worked on by a Ray cluster: one actor per shard.

    ``gallery`` (a :class:`ShardedGallery` whose indexes are the actors')
    is what matching reads; ``add`` extracts files in tasks."""

    def __init__(self, address: str | None, path: str | os.PathLike, settings: Settings,
                 shards: int | None = None, create: bool = True):
        ray = _ray()
        path = Path(path).resolve()
        if not create and not is_sharded(path):
            raise GalleryError(f"no sharded gallery at {path} (--ray needs one: "
                               "matchkit index --shards N)")
        connect(address)
        if not is_sharded(path):
            if (path / DB_NAME).exists():
                raise GalleryError(f"{path} is a one-machine gallery; --ray needs a sharded "
                                   "one (matchkit index --shards N) or a new folder")
            alive = sum(1 for n in ray.nodes() if n.get("Alive"))
            create_sharded(path, shards or max(1, alive))
        self.names = read_manifest(path)
        self.settings = settings
        self.work = Work()
        self.token = uuid.uuid4().hex[:8]
        server = ray.remote(ShardServer)
        self.actors = [server.options(
            name=f"matchkit-shard-{self.token}-{name}", num_cpus=0, max_restarts=ACTOR_RESTARTS,
            max_task_retries=TASK_RETRIES, scheduling_strategy="SPREAD").remote(
                str(path / name), settings) for name in self.names]
        self.extract_task = ray.remote(_extract_and_store)  # (retries set per chunk)
        self.verify_task = ray.remote(_verify_pairs)  # (to a node chosen per chunk)
        self.node_cpus = {n["NodeID"]: max(1, int(n["Resources"]["CPU"])) for n in ray.nodes()
                          if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0}
        self.node_ids = sorted(self.node_cpus)
        if not self.node_ids:
            raise RayUnavailable("no node of the Ray cluster has a CPU for tasks")
        self.verify_given = dict.fromkeys(self.node_ids, 0)
        self.gallery = None
        try:
            self.shard_nodes = ray.get([a.node.remote() for a in self.actors])
            self.shard_pids = ray.get([a.pid.remote() for a in self.actors])
            self.gallery = ShardedGallery(path, settings, create=False, indexes=self._indexes)
        except BaseException:
            self.close()
            raise

    def _indexes(self, name: str) -> list[RemoteIndex]:
        infos = _ray().get([a.index_info.remote(name) for a in self.actors])
        return [RemoteIndex(a, name, nbits, size, self.work)
                for a, (nbits, size) in zip(self.actors, infos)]

    def add(self, paths: Iterable[str | os.PathLike],
            progress: Callable[[int], None] | None = None, chunk: int | None = None) -> AddReport:
        """``Gallery.add`` on the cluster: files listed here, read in tasks."""
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        report = AddReport()
        stats = stat_files(paths)
        files = [(k, *s) for k, s in stats if isinstance(s, tuple)]
        answers = ray.get([a.plan_add.remote(files) for a in self.actors])
        todo, where = plan_files(answers, stats, report)
        if progress and (report.unchanged or report.skipped):
            progress(report.unchanged + len(report.skipped))
        first_new = max(ray.get([a.last_id.remote() for a in self.actors])) + 1
        ids, next_id = {}, first_new
        for p in todo:  # (in path order; a file that turns out unreadable leaves a gap)
            if p in where:
                ids[p] = where[p][1]
            else:
                ids[p], next_id = next_id, next_id + 1
        # One chunk in flight per CPU slot of each node; a finished chunk's
        # next one goes to the node that ran it (soft: elsewhere if it died).
        # SPREAD alone sent it round the nodes, so a free node could idle
        # while the next chunk waited behind a busy one.
        slots = [n for n in self.node_ids for _ in range(self.node_cpus[n])]
        size = chunk or max(1, min(EXTRACT_CHUNK,
                                   -(-len(todo) // (CHUNKS_PER_CPU * len(slots)))))
        queue = deque((todo[s:s + size], TASK_RETRIES) for s in range(0, len(todo), size))
        crash_on = os.environ.get(CRASH_HOOK_ENV) or None
        running: dict = {}  # task -> (its files, the node it was sent to)
        changed = []
        while queue or running:
            while queue and slots:
                (part, retries), node = queue.popleft(), slots.pop()
                ref = self.extract_task.options(
                    max_retries=retries, scheduling_strategy=NodeAffinitySchedulingStrategy(
                        node, soft=True)).remote(
                    part, {p: ids[p] for p in part}, {p: where[p] for p in part if p in where},
                    self.names, self.actors, self.settings, crash_on)
                running[ref] = part, node
            done, _ = ray.wait(list(running), num_returns=1)
            part, slot = running.pop(done[0])
            slots.append(slot)
            try:
                result = ray.get(done[0])
            except Exception as e:
                reason = worker_death(e)
                if reason is None:
                    raise
                if len(part) > 1:  # halves first, before the rest of the queue
                    half = (len(part) + 1) // 2
                    queue.extendleft([(part[half:], SPLIT_RETRIES), (part[:half], SPLIT_RETRIES)])
                    continue
                result = (self._record_failure(part[0], reason, dict(stats), where),
                          "driver", 1, 0, 0.0)  # (no node extracted it)
            part_report, node, n, sent, seconds = result
            changed += part_report.changed
            part_report.added = part_report.updated = 0  # (counted below: a retried task re-writes)
            merge_report(report, part_report)
            if node != "driver":
                self.work.add(node, "images_extracted", n)
                self.work.add(node, "bytes_shipped", sent)
                self.work.add(node, "extract_ms", 1000 * seconds)
            if progress:
                progress(n)
        report.added = sum(1 for i in changed if i >= first_new)
        report.updated = len(changed) - report.added
        ray.get([a.save.remote() for a in self.actors])
        self.gallery.changed()
        return report

    def _record_failure(self, path: str, reason: str, stats: dict, where: dict) -> AddReport:
        """Skip ``path``, whose worker died however small its chunk: record the
        failure in its shard (stamped with the size and mtime listed), so an
        unchanged file is not handed to a decoder again, as on one machine."""
        stat = stats.get(path)
        err = ImageLoadError(path, reason, size=stat[0] if isinstance(stat, tuple) else None,
                             mtime_ns=stat[1] if isinstance(stat, tuple) else None)
        shard = route(path, err, where, self.names)
        return _ray().get(self.actors[shard].write_records.remote([(path, err)], {}))

    def matcher(self, calibrator=None):
        """A ``make_matcher`` for ``dedupe.find_clusters``."""
        def make(ids: list[int], same: dict[int, int]) -> RayPairMatcher:
            return RayPairMatcher(self, ids, self.settings, same, calibrator)
        return make

    def stats(self) -> dict:
        pids = _ray().get([a.pid.remote() for a in self.actors])
        return {"shards": len(self.names), "shard_nodes": self.shard_nodes,
                "actor_restarts": sum(a != b for a, b in zip(pids, self.shard_pids)),
                "work": self.work.to_dict()}

    def close(self) -> None:
        ray = _ray()
        if self.gallery is not None:
            self.gallery.close()
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass

    def __enter__(self) -> "RayRun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shard_actors(prefix: str = "matchkit-shard-") -> list:
    """Handles of the live shard actors (for tests that kill one)."""
    ray = _ray()
    from ray.util import list_named_actors

    return [ray.get_actor(n) for n in list_named_actors() if n.startswith(prefix)]
