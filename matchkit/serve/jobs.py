"""Dedupe jobs of a gallery: run in the background, reviewed, applied, undone.

A job runs ``matchkit.jobs.dedupe`` over every image of the gallery on the
gallery's writer queue (dedupe reads files again when they changed, which
writes), so reads go on meanwhile. Its record lives in
``G/serve/jobs/<id>.json`` (written atomically): state, parameters, the
report (the JSON of ``matchkit dedupe``), the review (keeper changes,
excluded members) and, once applied, the move manifest. ``apply`` moves the
non-keepers of the *reviewed* clusters into ``G/serve/jobs/<id>-moved/``
(a folder the server chooses; no client path reaches the file system) with a
manifest that ``undo`` replays backwards. The gallery's rows are left as
they are, as with ``matchkit dedupe --move-duplicates-to``.

While a job runs, its record shows ``progress``: the pipeline's phase
("add", "embed", "stored", "match", "cluster", "verify", "keepers", "report") with done
and total counts, as ``dedupe(on_progress=...)`` reports them (kept in
memory, stored when the run ends). Cancelling a queued job drops it; a running one is told through that
same callback, which raises at its next call, so the run stops at the next
checkpoint inside the phase (``matchkit.util.checkpoint``: about a second) and
frees the gallery's writer. ``stopped`` records when it did. A server that
is stopping interrupts its running jobs the same way (state "interrupted").
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from matchkit.util.fs import atomic_write_bytes
from matchkit.util.fspath import json_text
from matchkit.serve.errors import ApiError
from matchkit.serve.keys import SERVE_DIR

JOBS_DIR = "jobs"
#: Job states; "interrupted": the server stopped while it ran.
STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")


class Cancelled(Exception):
    """Raised inside a running dedupe (from its progress callback) to stop it."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Review:
    """A person's changes to a job's clusters, by cluster index."""

    keepers: dict[int, str] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)


def reviewed_report(report: dict, review: Review) -> dict:
    """The report as reviewed: other keepers, excluded members left out (a
    cluster left with one member is dropped). Refuses a review that names a
    cluster or member the report does not have (422)."""
    clusters = report.get("clusters", [])
    members = {m for c in clusters for m in c["members"]}
    for i, keep in review.keepers.items():
        if not 0 <= int(i) < len(clusters):
            raise ApiError(422, f"no cluster {i} in this job's result")
        if keep not in clusters[int(i)]["members"]:
            raise ApiError(422, f"keeper {keep!r} is not a member of cluster {i}")
        if keep in review.excluded:
            raise ApiError(422, f"keeper {keep!r} of cluster {i} is also excluded")
    unknown = [m for m in review.excluded if m not in members]
    if unknown:
        raise ApiError(422, f"not a member of any cluster: {unknown[0]!r}")
    out = []
    for i, c in enumerate(clusters):
        keep = review.keepers.get(i, c["keep"])
        if keep in review.excluded:
            continue  # its keeper left the cluster: nothing to move against
        kept = [m for m in c["members"] if m not in review.excluded]
        if len(kept) < 2:
            continue
        kept.remove(keep)
        out.append({**c, "keep": keep, "members": [keep, *kept],
                    "keep_reason": c["keep_reason"] if keep == c["keep"] else "chosen in review"})
    return {**report, "clusters": out}


class Jobs:
    """The dedupe jobs of one gallery (records on disk, futures in memory)."""

    def __init__(self, gallery: Path):
        self.folder = Path(gallery) / SERVE_DIR / JOBS_DIR
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()
        #: Progress of running jobs (phase, done, total), and jobs told to stop.
        self._progress: dict[str, dict] = {}
        self._stop: set[str] = set()
        #: Jobs stopped because the server is stopping.
        self._interrupted: set[str] = set()

    def _file(self, job_id: str) -> Path:
        if not (len(job_id) == 16 and all(c in "0123456789abcdef" for c in job_id)):
            raise ApiError(404, f"no dedupe job {job_id!r}")
        return self.folder / f"{job_id}.json"

    def load(self, job_id: str) -> dict:
        try:
            job = json.loads(self._file(job_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ApiError(404, f"no dedupe job {job_id!r}") from None
        if job["state"] in ("queued", "running") and job_id not in self._futures:
            job["state"] = "interrupted"  # left by a server that stopped
        if job_id in self._progress:
            job["progress"] = dict(self._progress[job_id])
        return job

    def save(self, job: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._file(job["id"]), json_text(job, indent=1).encode("utf-8"))

    def all(self) -> list[dict]:
        if not self.folder.is_dir():
            return []
        jobs = [self.load(p.stem) for p in sorted(self.folder.glob("*.json"))]
        return sorted(jobs, key=lambda j: j["created"], reverse=True)

    def start(self, params: dict, submit) -> dict:
        """Record a new job and queue ``run(job)`` with ``submit(fn) -> Future``."""
        job = {"id": secrets.token_hex(8), "state": "queued", "created": _now(),
               "started": None, "finished": None, "stopped": None, "progress": None,
               "params": params, "error": None, "report": None, "review": {"keepers": {}, "excluded": []}, "moves": None}
        with self._lock:  # registered before its record exists: never "interrupted"
            self._futures[job["id"]] = Future()
            self.save(job)
            fut = submit(lambda g: self._run(job["id"], g))
            self._futures[job["id"]] = fut
        fut.add_done_callback(lambda f: self._futures.pop(job["id"], None))
        return job

    def progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        """The run's ``on_progress``: records where it is, and raises
        ``Cancelled`` once the job was cancelled (the run stops there)."""
        self._progress[job_id] = {"phase": phase, "done": done, "total": total}
        if job_id in self._stop:
            raise Cancelled(job_id)

    def _run(self, job_id: str, gallery) -> None:
        from matchkit.config import Settings
        from matchkit.jobs.dedupe import dedupe

        with self._lock:  # a cancel sees either "queued" or "running", never both
            job = self.load(job_id)
            if job["state"] == "cancelled":
                return
            job.update(state="running", started=_now())
            self.save(job)
        report = error = None
        try:
            report = dedupe(list(gallery.paths().values()), gallery=gallery,
                            settings=Settings(), level=job["params"].get("level"),
                            prefer=job["params"].get("prefer") or (),
                            on_progress=lambda *a: self.progress(job_id, *a))
        except Cancelled:
            pass
        except Exception as e:  # the job fails, the server does not
            error = " ".join(str(e).split())
        with self._lock:
            job = self.load(job_id)
            self._stop.discard(job_id)
            job["progress"] = self._progress.pop(job_id, None)
            if job_id in self._interrupted and report is None:
                job.update(state="interrupted", stopped=_now())
            elif job["state"] == "cancelled" or report is None and error is None:
                job.update(state="cancelled", stopped=_now())
            elif error is not None:
                job.update(state="failed", finished=_now(), error=error)
            else:
                job.update(state="done", finished=_now(), report=report.to_dict())
            self.save(job)

    def cancel(self, job_id: str) -> dict:
        """Cancel a job: a queued one never runs, a running one stops at its next
        progress report (``stopped`` is set when it has)."""
        with self._lock:
            job = self.load(job_id)
            if job["state"] in ("queued", "running"):
                fut = self._futures.get(job_id)
                if fut is not None and not fut.cancel():
                    self._stop.add(job_id)  # running: it sees this at its next progress call
                job.update(state="cancelled", finished=_now())
                self.save(job)
        return job

    def interrupt(self) -> None:
        """Stop every running job at its next checkpoint (the server is stopping;
        queued ones are dropped with the writer's queue)."""
        with self._lock:
            running = list(self._futures)
        self._interrupted.update(running)
        self._stop.update(running)

    def set_review(self, job_id: str, review: Review) -> dict:
        job = self.done(job_id)
        if job["moves"]:
            raise ApiError(409, "this job's moves were applied; undo them before a new review")
        reviewed_report(job["report"], review)  # refuses what does not fit
        job["review"] = {"keepers": {str(k): v for k, v in review.keepers.items()},
                         "excluded": list(review.excluded)}
        self.save(job)
        return job

    def done(self, job_id: str) -> dict:
        job = self.load(job_id)
        if job["state"] != "done":
            raise ApiError(409, f"dedupe job {job_id} is {job['state']}, not done")
        return job

    def review_of(self, job: dict) -> Review:
        r = job.get("review") or {}
        return Review({int(k): v for k, v in r.get("keepers", {}).items()},
                      list(r.get("excluded", [])))

    def apply(self, job_id: str, dry_run: bool = False) -> dict:
        from matchkit.io.moves import MoveError, move_duplicates

        job = self.done(job_id)
        if job["moves"] and not dry_run:
            raise ApiError(409, "this job's moves were applied already (undo them first)")
        report = reviewed_report(job["report"], self.review_of(job))
        dest = self.folder / f"{job_id}-moved"
        try:
            result = move_duplicates(report, dest, dry_run=dry_run)
        except MoveError as e:
            raise ApiError(409, str(e)) from None
        out = result.to_dict()
        if not dry_run and result.manifest:
            job["moves"] = {"manifest": result.manifest, "applied": _now(),
                            "counts": result.counts()}
            self.save(job)
        return out

    def undo(self, job_id: str) -> dict:
        from matchkit.io.moves import MoveError, undo

        job = self.done(job_id)
        if not job["moves"]:
            raise ApiError(409, "nothing to undo: this job's moves were not applied")
        try:
            result = undo(job["moves"]["manifest"])
        except MoveError as e:
            raise ApiError(409, str(e)) from None
        if result.ok:
            job["moves"] = None
            self.save(job)
        return result.to_dict()
