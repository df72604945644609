"""dedupe, index and check on a Ray cluster simulated on this machine
(``ray.cluster_utils.Cluster``: 3 nodes of 1 CPU each) give the one-machine
result, also when a worker or a shard actor dies during the run.

One cluster for the whole module (starting one takes seconds); Ray's
temporary files go under a fresh temporary folder, removed at the end."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from matchkit.jobs.check import check  # noqa: E402
from matchkit.jobs.dedupe import dedupe  # noqa: E402
from matchkit.distributed.ray_jobs import KILL_ONCE_ENV, shard_actors  # noqa: E402
from matchkit.match.edits import load_suite, write_edit  # noqa: E402
from matchkit.store.shards import ShardedGallery  # noqa: E402

# The sample photos sit beside the repository (``../shared/data``), also seen
# from a git worktree one level further down.
DATA = next((d for d in (p / "shared" / "data" / "imagenet-sample"
                         for p in Path(__file__).resolve().parents[1:4]) if d.is_dir()),
            Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-sample")
PHOTOS = 16  # x up to 3 files each


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Photos with two edits each (``transformed`` suite) and one byte copy."""
    if not DATA.is_dir():
        pytest.skip(f"no sample photos at {DATA}")
    out = tmp_path_factory.mktemp("images")
    edits = load_suite("transformed").edits
    for n, src in enumerate(sorted(DATA.iterdir())[:PHOTOS]):
        shutil.copy(src, out / src.name)
        for e in (edits[n % len(edits)], edits[(n * 7 + 3) % len(edits)]):
            write_edit(src, e, out, src.stem)
    first = sorted(out.iterdir())[0]
    shutil.copy(first, out / f"copy-of-{first.name}")
    return out


@pytest.fixture(scope="module")
def cluster():
    """Three simulated nodes of one CPU; the driver is connected to it."""
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="mkray-")  # short: Ray's socket paths must fit
    os.makedirs(os.path.join(temp, "ray"))
    kill_dir = os.path.join(temp, "kills")
    os.makedirs(kill_dir)
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", KILL_ONCE_ENV)}
    os.environ["RAY_TMPDIR"] = temp  # (Ray's own files; workers inherit the hook)
    os.environ[KILL_ONCE_ENV] = kill_dir
    c = None
    try:
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "temp_dir": os.path.join(temp, "ray"), "include_dashboard": False})
        for _ in range(2):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    except Exception as e:  # no Ray here (sandbox, no sockets...): say why
        reason = f"Ray cannot start: {type(e).__name__}: {e}".splitlines()[0]
        print(reason)
        if c is not None:
            c.shutdown()
        _restore(saved)
        shutil.rmtree(temp, ignore_errors=True)
        pytest.skip(reason)
    try:
        yield Path(kill_dir)
    finally:
        ray.shutdown()
        c.shutdown()
        _restore(saved)
        shutil.rmtree(temp, ignore_errors=True)


def _restore(saved: dict) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def reference(images):
    """The one-machine result."""
    return dedupe([images])


def _result(report):
    """Clusters, keepers and pair relations."""
    return sorted((c.keep, tuple(c.members), tuple((p.a, p.b, p.relation) for p in c.pairs))
                  for c in report.clusters)


def test_dedupe_on_three_nodes_equals_one_machine(images, cluster, reference, tmp_path):
    phases = []
    report = dedupe([images], gallery=tmp_path / "g", ray="auto",
                    on_progress=lambda phase, done, total: phases.append(phase))
    assert _result(report) == _result(reference)
    assert len(reference.clusters) >= PHOTOS
    work = report.stats["ray"]["work"]
    nodes = [n for n in work if n != "driver"]
    n_files = len(list(images.iterdir()))
    assert sum(work[n].get("images_extracted", 0) for n in nodes) == n_files
    assert sum(1 for n in nodes if work[n].get("images_extracted")) >= 2  # spread out
    # Each chunk ran on the node of the shard owning its files: no record
    # crossed a node boundary (only the listing, queries and pairs did).
    assert sum(work[n].get("records_bytes", 0) for n in nodes) > 0
    assert sum(work[n].get("records_bytes_across_nodes", 0) for n in nodes) == 0
    assert len(set(report.stats["ray"]["shard_nodes"])) == 3  # one shard per node
    assert sum(work[n].get("pairs_verified", 0) for n in nodes) > 0
    assert report.stats["ray"]["shards"] == 3
    # Each shard's node reports its actor's peak memory, and the nodes that
    # ran tasks their largest worker's (tens of MiB at least: Python, numpy).
    for node in report.stats["ray"]["shard_nodes"]:
        assert work[node]["actor_peak_rss_kib"] > 20_000
    assert all(work[n]["task_peak_rss_kib"] > 20_000 for n in nodes
               if work[n].get("images_extracted") or work[n].get("pairs_verified"))
    assert {"add", "match", "cluster"} <= set(phases)
    with ShardedGallery(tmp_path / "g", create=False) as g:  # the shards stay on disk
        assert len(g) == n_files and sum(1 for p in g.parts if len(p)) == 3


def test_killed_workers_change_nothing(images, cluster, reference, tmp_path):
    """Each kind of task (extraction after sending its records, verification)
    loses its worker once; Ray runs it again."""
    (cluster / "armed").touch()
    try:
        report = dedupe([images], gallery=tmp_path / "g", ray="auto")
    finally:
        (cluster / "armed").unlink()
    assert (cluster / "extract").exists() and (cluster / "verify").exists()  # they did die
    assert _result(report) == _result(reference)
    assert report.stats["added"] == len(list(images.iterdir()))


def test_killed_shard_actors_are_rebuilt_from_disk(images, cluster, reference, tmp_path):
    """One shard actor killed while files are being added (writes to it are
    retried), another after the files were added (before the candidate
    searches): each restarts, opens its shard from disk, answers as before."""
    killed = []

    def kill(phase, done, total):
        if (phase, len(killed)) in (("add", 0), ("match", 1)) and (done or phase == "match"):
            actor = shard_actors()[len(killed)]
            killed.append(phase)
            ray.kill(actor, no_restart=False)

    report = dedupe([images], gallery=tmp_path / "g", ray="auto", on_progress=kill)
    assert killed == ["add", "match"]
    assert report.stats["ray"]["actor_restarts"] == 2
    assert _result(report) == _result(reference)


def test_index_then_check_and_dedupe_on_the_cluster(images, cluster, reference, tmp_path):
    """``index --ray`` fills the shards; a later ``dedupe --ray`` (e.g. after
    the driver died) reads nothing again; ``check --ray`` answers as locally."""
    from click.testing import CliRunner

    from matchkit.cli.commands import cli

    out = CliRunner().invoke(cli, ["index", str(images), "--gallery", str(tmp_path / "g"),
                                   "--ray", "auto", "--shards", "2", "-q"])
    assert out.exit_code == 0, out.output
    again = dedupe([images], gallery=tmp_path / "g", ray="auto")
    assert again.stats["unchanged"] == len(list(images.iterdir())) and again.stats["added"] == 0
    assert _result(again) == _result(reference)
    queries = sorted(images.iterdir())[:6]
    local = check(tmp_path / "g", queries)
    remote = check(tmp_path / "g", queries, ray="auto")

    def matches(rep):
        return [(r.path, [(m.id, m.matched, m.kind, m.relation) for m in r.matches])
                for r in rep.results]
    assert matches(remote) == matches(local) and all(r.matched for r in local.results)


def test_look_ups_within_a_distance_ship_only_the_near_neighbours(images, cluster, tmp_path):
    """A search of the shard actors' indexes with ``max_distance`` (as the
    descriptor votes and the burstiness check ask) gives the full search cut
    at that distance (``index.within``), and the answers counted are the
    arrays the shards sent: only the near neighbours, ragged
    (``distributed._compact_within``), fewer bytes than full answers."""
    import numpy as np

    from matchkit.config import Settings
    from matchkit.distributed.ray_jobs import RayRun, _compact, _compact_within
    from matchkit.index.hamming import within

    limit = Settings().vote_max_distance
    asked = {}
    with RayRun("auto", tmp_path / "g", Settings(), shards=3) as run:
        run.add(sorted(images.iterdir())[:15])
        g = run.gallery
        queries = np.concatenate(
            [g.local_features(i)[0].desc[:40] for i in g.ids()[:6]]
            + [np.random.default_rng(0).integers(0, 256, (20, 32), dtype=np.uint8)])
        index, driver = g.orb_index, run.work.by_node["driver"]
        assert len(index.parts) == 3
        for k in (8, 64):
            start = driver["answer_bytes"]
            full = index.search(queries, k)
            middle = driver["answer_bytes"]
            near = index.search(queries, k, max_distance=limit)
            asked[k] = full, near, middle - start, driver["answer_bytes"] - middle
    with ShardedGallery(tmp_path / "g", create=False) as local:
        parts = [p.orb_index for p in local.parts]
        for k, (full, near, full_bytes, near_bytes) in asked.items():
            want = within(*full, limit, 256)
            assert np.array_equal(near[0], want[0]) and np.array_equal(near[1], want[1])
            rows = {"none" if n == 0 else "all" if n == k else "some"
                    for n in (near[0] >= 0).sum(1).tolist()}
            assert {"none", "some"} <= rows and (k > 8 or "all" in rows)
            assert full_bytes == sum(a.nbytes for p in parts for a in _compact(*p.search(queries, k)))
            assert near_bytes == sum(a.nbytes for p in parts for a in
                                     _compact_within(*p.search(queries, k, max_distance=limit)))
            assert near_bytes < full_bytes / 2


def test_ivf_queries_travel_encoded(images, cluster, tmp_path):
    """With IVF votes over the 4,096-word vocabulary (2 probes; the default 64k
    one sends the codes) the driver sends each query descriptor as the shards'
    indexes compare it (probed words and signature, ``ivf.EncodedQueries``:
    12 bytes against 32), and the answers equal those for the codes."""
    import numpy as np

    from matchkit.config import Settings
    from matchkit.distributed.ray_jobs import RayRun

    settings = Settings(vote_index="ivf", ivf_vocabulary="orb-4k", ivf_probes=2, ivf_nodes=2)
    with RayRun("auto", tmp_path / "g", settings, shards=3) as run:
        run.add(sorted(images.iterdir())[:15])
        g = run.gallery
        queries = np.concatenate([g.local_features(i)[0].desc[:40] for i in g.ids()[:6]])
        index, driver = g.orb_index, run.work.by_node["driver"]
        assert all(p.encoder is not None for p in index.parts)
        before = driver["query_bytes"]
        got = index.search(queries, 8, max_distance=settings.vote_max_distance)
        sent = driver["query_bytes"] - before
    assert sent == len(queries) * (2 * settings.ivf_probes + 8) < queries.nbytes / 2
    with ShardedGallery(tmp_path / "g", settings, create=False) as local:
        want = local.orb_index.search(queries, 8, max_distance=settings.vote_max_distance)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert (got[0] >= 0).any()


CRASH = "crash_me.png"


def test_a_file_that_kills_its_worker_is_skipped_as_on_one_machine(images, cluster, tmp_path,
                                                                   monkeypatch):
    """A decoder that kills its Ray worker on one file (SIGSEGV, through the
    test hook ``test_worker_crash.py`` uses) fails its chunk after Ray's
    retries; the chunk is halved down to that file, which is skipped with a
    reason and remembered; the rest equals the one-machine run, which skips
    it too."""
    from matchkit import features
    
    folder = tmp_path / "in"
    shutil.copytree(images, folder)
    # A byte copy of a photo: were it not skipped, it would join that photo's cluster.
    shutil.copy(sorted(images.iterdir())[1], folder / CRASH)
    (folder / "broken.jpg").write_bytes(b"not an image")  # a failure a task reports itself
    monkeypatch.setenv(features.CRASH_HOOK_ENV, CRASH)
    monkeypatch.setattr(features.pool, "EXTRACT_IN_WORKERS", True)  # one machine: in a worker too
    local = dedupe([folder])
    skipped = ["broken.jpg", CRASH]
    assert [Path(s.path).name for s in local.skipped] == skipped

    report = dedupe([folder], gallery=tmp_path / "g", ray="auto")
    assert [Path(s.path).name for s in report.skipped] == skipped
    assert "Ray worker process died" in report.skipped[1].reason
    assert _result(report) == _result(local)
    assert report.stats["added"] == len(list(images.iterdir()))
    again = dedupe([folder], gallery=tmp_path / "g", ray="auto")  # not handed to a decoder again
    assert again.stats["added"] == 0 and [Path(s.path).name for s in again.skipped] == skipped
    assert _result(again) == _result(local)


def test_only_worker_deaths_count_as_bad_input():
    """A dead worker or memory exhausted: the chunk is split and the file
    skipped; any other task failure is ours and ends the run as before."""
    from matchkit.distributed.ray_jobs import worker_death

    def raised(exc):
        try:
            raise exc
        except Exception as e:
            return ray.exceptions.RayTaskError("_extract_and_store", "traceback", e)

    assert "worker process died" in worker_death(ray.exceptions.WorkerCrashedError())
    assert "out of memory" in worker_death(ray.exceptions.OutOfMemoryError("node full"))
    assert worker_death(raised(MemoryError())) == "out of memory while processing"
    assert worker_death(raised(KeyError("bug"))) is None
    assert worker_death(ValueError("bug")) is None
