"""Dedupe, index and check on a Ray cluster (``pip install 'matchkit[ray]'``).

The work splits along the lines of a sharded gallery (``store/shards.py``):

* **listing** happens on the driver (this process): which files, which of
  them the shards already hold unchanged;
* **extraction** runs in Ray tasks, a chunk of files each: a first pass of
  small tasks reads and hashes the files (the digest names the owning
  shard); then each chunk runs on the node of the actor that owns its files
  (shared storage: every node sees the same paths), decodes them and hands
  the records to that actor, so no record crosses a node boundary;
* **each shard is held by an actor** (:class:`ShardServer`) that writes its
  records and answers candidate queries (pHash neighbours, descriptor votes)
  against its own indexes; the driver merges the answers per query
  (``merged.MergedIndex``), exactly as one index would have answered;
* **verification** of candidate pairs runs in Ray tasks that read the two
  images' stored features from their shards (``verification.verify_stored``);
* the accepted pairs come back to the driver, which builds the clusters,
  keepers and report with the one-machine code (``dedupe_clusters.find_clusters``),
  so the result is the same as on one machine.

Shard actors are placed one per node (shard i on node i mod n). Each node
extracts the files of its own shards, one chunk per CPU in flight, a
finished chunk replaced by the next of that node's queue; per-node work is
then each shard's share of the images (rendezvous hashing: even but for
sampling noise). Verification chunks go to the node given the fewest pairs
so far. Candidate queries are put in the object store once per search (so
they reach each node once) and answered compactly (int32 keys, uint8
distances where they fit); searches whose callers count only neighbours
within a distance (descriptor votes, the burstiness check) are answered
with those alone.

Bytes are counted per node (``Work``): serialised (everything handed to
Ray) and across nodes (only what left the node it was made on).

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

This module is the driver (:class:`RayRun`, :class:`RayPairMatcher`). What
runs on the workers has its own modules, which Ray workers import by path:
the shard actors, their indexes as the driver sees them and the byte counts
in ``actors.py``; the listing, extraction and verification tasks in
``tasks.py``; joining Ray in ``connect.py``. Their names are imported back
here.
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from pathlib import Path

from matchkit.config import Settings
from matchkit.features import CRASH_HOOK_ENV
from matchkit.store.gallery import DB_NAME, AddReport, GalleryError
from matchkit.io.load import ImageLoadError
from matchkit.match.evidence import forget_refused
from matchkit.match.pairs import PairEvidence, PairMatcher
from matchkit.util.memory import release_memory, steady_heap
from matchkit.store.shards import (ShardedGallery, create_sharded, is_sharded, merge_report, plan_files,
                                   read_manifest, route, stat_files)
from matchkit.distributed.actors import (  # noqa: F401  (re-exported)
    RemoteIndex, ShardServer, Work, _compact, _compact_within, _encoder, _expand, _expand_within,
    _narrow)
from matchkit.distributed.connect import RayUnavailable, _node, _ray, connect  # noqa: F401  (re-exported)
from matchkit.distributed.tasks import (  # noqa: F401  (re-exported)
    KILL_ONCE_ENV, _CONNECTIONS, _extract_and_store, _kill_once, _owners, _shard_db, _verify_pairs,
    worker_death)

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
#: Logical memory a shard actor asks for (see ``RayRun.__init__``).
ACTOR_MEMORY = 1 << 20
#: Files per task that finds the owning shard of each (reads and hashes them).
OWNER_CHUNK = 256
#: The queue of extraction chunks any node may run.
ANY_NODE = "any"
#: Candidate pairs per verification task.
VERIFY_CHUNK = 32
#: Stored features the driver keeps in memory (``content._LocalCache``): it
#: reads each image's for its vote queries and thumbnail in order, once per
#: pass; verification runs in tasks. (The one-machine default, 4,096, held
#: 187 MB on the driver: about 45 KB an image.)
DRIVER_CACHE = 512


class RayPairMatcher(PairMatcher):
    """``PairMatcher`` whose local verification runs in Ray tasks. It holds
    less than a one-machine matcher: a small feature cache, no evidence of
    pairs refused outright (``PairMatcher.keep_refused``) and only what
    clustering reads of pairs verified and refused (``forget_refused``)."""

    keep_refused = False
    cache_size = DRIVER_CACHE

    def __init__(self, run: "RayRun", ids: list[int], settings: Settings,
                 same: dict[int, int] | None = None, calibrator=None, images=None):
        self.run = run
        # The driver's allocator from here on (for the rest of the process):
        # large transient arrays on pages of their own, two arenas
        # (``util.memory.steady_heap``; the same settings given through
        # glibc's environment variables: peak 280.3 -> 264.6 MiB at 10,000
        # images on 3 simulated nodes).
        steady_heap()
        super().__init__(run.gallery, ids, settings, same, calibrator, images=images)

    def between_steps(self) -> None:
        """Freed heap memory handed back after each search step and the
        global evidence (``util.memory``: glibc keeps the holes between
        what stays resident otherwise, and the next step's peak stood on
        them; one call is tens of milliseconds)."""
        release_memory()

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
        refs, sizes = [], []
        # One string per shard, so that a chunk's pickle names each shard's
        # file once (a string per image was about 100 bytes a pair).
        db_of = [str(run.gallery.path / name / DB_NAME) for name in run.names]
        for start in starts:
            chunk = todo[start:start + size]
            ids = {i for ev in chunk for i in (ev.a, ev.b)}
            dbs = {i: db_of[run.gallery.owner(i)] for i in ids}
            args = (chunk, dbs, {i: self._masks[i] for i in ids if i in self._masks},
                    {i: self.templated[i] for i in ids if i in self.templated},
                    self.settings, self.calibrator is None,
                    [self.pair_crowd(ev) for ev in chunk])
            node = min(run.node_ids, key=lambda n: run.verify_given[n])
            run.verify_given[node] += len(chunk)
            sizes.append(len(pickle.dumps(args, protocol=5)))
            refs.append(run.verify_task.options(
                max_retries=TASK_RETRIES, scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node, soft=True)).remote(*args))
        here = _node()
        for chunk_start, ref, sent in zip(starts, refs, sizes):
            done, node, read, peak = ray.get(ref)
            run.work.peak(node, "task_peak_rss_kib", peak)
            for ev, new in zip(todo[chunk_start:chunk_start + size], done):
                ev.take(new)
            run.work.add(node, "pairs_verified", len(done))
            run.work.add(node, "features_read_bytes", read)
            shipped = sent + len(pickle.dumps(done, protocol=5))
            run.work.add(node, "verify_bytes", shipped)
            if node != here:
                run.work.add(node, "verify_bytes_across_nodes", shipped)
        if self.calibrator is not None:
            for start in range(0, len(todo), 512):
                self.decide(todo[start:start + 512], "local")
            for ev in todo:
                forget_refused(ev)


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
        self.node_cpus = {n["NodeID"]: max(1, int(n["Resources"]["CPU"])) for n in ray.nodes()
                          if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0}
        self.node_ids = sorted(self.node_cpus)
        if not self.node_ids:
            raise RayUnavailable("no node of the Ray cluster has a CPU for tasks")
        # Shard i on node i mod n (of those with CPUs), as its images are
        # extracted there (SPREAD alone put two shards on one node and left
        # another without work); soft: a restarted actor goes elsewhere if
        # its node is gone. The actor asks for 1 MiB of (logical) memory: with
        # no resource request at all, Ray 2.x picks a random node despite a
        # soft node affinity (ray-project/ray#25360 fixed only the hard case;
        # measured here: 3 actors aimed at 3 nodes landed on 2).
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        server = ray.remote(ShardServer)
        self.actors = [server.options(
            name=f"matchkit-shard-{self.token}-{name}", num_cpus=0, memory=ACTOR_MEMORY,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=TASK_RETRIES, scheduling_strategy=NodeAffinitySchedulingStrategy(
                self.node_ids[i % len(self.node_ids)], soft=True)).remote(
                str(path / name), settings) for i, name in enumerate(self.names)]
        self.extract_task = ray.remote(_extract_and_store)  # (retries set per chunk)
        self.owner_task = ray.remote(_owners)
        self.verify_task = ray.remote(_verify_pairs)  # (to a node chosen per chunk)
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
        sent: dict = {}
        here = _node()
        encoder = _encoder({info[3] for info in infos}, self.settings)
        return [RemoteIndex(a, name, nbits, size, self.work, node, here, sent, by_key, encoder)
                for a, (nbits, size, by_key, _), node in zip(self.actors, infos,
                                                                self.shard_nodes)]

    def add(self, paths: Iterable[str | os.PathLike],
            progress: Callable[[int], None] | None = None, chunk: int | None = None) -> AddReport:
        """``Gallery.add`` on the cluster: files listed here, read in tasks."""
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        report = AddReport()
        stats = stat_files(paths)
        files = [(k, *s) for k, s in stats if isinstance(s, tuple)]
        answers = ray.get([a.plan_add.remote(files) for a in self.actors])
        if files:  # (the listing goes to every shard; each answers for every file)
            here = _node()
            asked = len(pickle.dumps(files, protocol=5))
            for answer, node in zip(answers, self.shard_nodes):
                shipped = asked + len(pickle.dumps(answer, protocol=5))
                self.work.add("driver", "listing_bytes", shipped)
                if node != here:
                    self.work.add("driver", "listing_bytes_across_nodes", shipped)
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
        # Each file's owning shard first (its digest: a cheap read, any
        # node), then its extraction on the node of that shard's actor, so the
        # record is written without crossing nodes. Chunks of files whose
        # shard sits on a node without CPUs for tasks go to any free node.
        owner = self._owners(todo, where)
        by_node: dict[str, list[str]] = defaultdict(list)
        for p in todo:
            node = self.shard_nodes[owner[p]]
            by_node[node if node in self.node_cpus else ANY_NODE].append(p)
        slots = [n for n in self.node_ids for _ in range(self.node_cpus[n])]
        size = chunk or max(1, min(EXTRACT_CHUNK,
                                   -(-len(todo) // (CHUNKS_PER_CPU * len(slots)))))
        queues = {n: deque((files[s:s + size], TASK_RETRIES) for s in range(0, len(files), size))
                  for n, files in by_node.items()}
        crash_on = os.environ.get(CRASH_HOOK_ENV) or None
        running: dict = {}  # task -> (its files, the queue it came from, its slot)
        changed = []
        while any(queues.values()) or running:
            for slot in list(slots):  # each free slot takes its node's next chunk
                queue = queues.get(slot) or queues.get(ANY_NODE)
                if not queue:
                    continue
                slots.remove(slot)
                part, retries = queue.popleft()
                home = slot if queue is queues.get(slot) else ANY_NODE
                ref = self.extract_task.options(
                    max_retries=retries, scheduling_strategy=NodeAffinitySchedulingStrategy(
                        slot, soft=True)).remote(
                    part, {p: ids[p] for p in part}, {p: where[p] for p in part if p in where},
                    self.names, self.actors, self.shard_nodes, self.settings, crash_on)
                running[ref] = part, home, slot
            if not running:  # (cannot happen: every queue's node has slots)
                raise RuntimeError("extraction chunks left with no node to run them")
            done, _ = ray.wait(list(running), num_returns=1)
            part, home, slot = running.pop(done[0])
            slots.append(slot)
            try:
                result = ray.get(done[0])
            except Exception as e:
                reason = worker_death(e)
                if reason is None:
                    raise
                if len(part) > 1:  # halves first, before the rest of the queue
                    half = (len(part) + 1) // 2
                    queues[home].extendleft([(part[half:], SPLIT_RETRIES),
                                             (part[:half], SPLIT_RETRIES)])
                    continue
                result = (self._record_failure(part[0], reason, dict(stats), where),
                          "driver", 1, 0, 0, 0.0, 0)  # (no node extracted it)
            part_report, node, n, sent, across, seconds, peak = result
            changed += part_report.changed
            part_report.added = part_report.updated = 0  # (counted below: a retried task re-writes)
            merge_report(report, part_report)
            if node != "driver":
                self.work.add(node, "images_extracted", n)
                self.work.add(node, "records_bytes", sent)
                self.work.add(node, "records_bytes_across_nodes", across)
                self.work.add(node, "extract_ms", 1000 * seconds)
                self.work.peak(node, "task_peak_rss_kib", peak)
            if progress:
                progress(n)
        report.added = sum(1 for i in changed if i >= first_new)
        report.updated = len(changed) - report.added
        ray.get([a.save.remote() for a in self.actors])
        self.gallery.changed()
        return report

    def _owners(self, todo: list[str], where: dict) -> dict[str, int]:
        """The shard owning each file of ``todo`` (``_owners`` tasks, chunks
        spread over the nodes, a bounded number in flight)."""
        ray = _ray()
        size = OWNER_CHUNK
        chunks = deque(todo[s:s + size] for s in range(0, len(todo), size))
        most = 2 * sum(self.node_cpus.values())
        here = _node()
        running: dict = {}
        out: dict[str, int] = {}
        while chunks or running:
            while chunks and len(running) < most:
                part = chunks.popleft()
                ref = self.owner_task.options(max_retries=TASK_RETRIES,
                                              scheduling_strategy="SPREAD").remote(
                    part, {p: where[p] for p in part if p in where}, self.names)
                running[ref] = part
            done, _ = ray.wait(list(running), num_returns=1)
            part = running.pop(done[0])
            owners, node = ray.get(done[0])
            out.update(zip(part, owners.tolist()))
            shipped = owners.nbytes + sum(len(p) for p in part)  # (paths out, owners back)
            self.work.add(node, "listing_bytes", shipped)
            if node != here:
                self.work.add(node, "listing_bytes_across_nodes", shipped)
        return out

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
        """A ``make_matcher`` for ``dedupe_clusters.find_clusters``."""
        def make(ids: list[int], same: dict[int, int], images=None) -> RayPairMatcher:
            return RayPairMatcher(self, ids, self.settings, same, calibrator, images)
        return make

    def stats(self) -> dict:
        ray = _ray()
        now = ray.get([a.process.remote() for a in self.actors])  # (pid, peak) each
        for node, (_, peak) in zip(self.shard_nodes, now):
            self.work.peak(node, "actor_peak_rss_kib", peak)
        return {"shards": len(self.names), "shard_nodes": self.shard_nodes,
                "actor_restarts": sum(pid != old for (pid, _), old in zip(now, self.shard_pids)),
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
