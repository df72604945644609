"""Same files and settings, same report: whatever the number of workers, the
order in which work finishes, or the order the input paths were given in."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
from PIL import Image, ImageDraw

import matchkit.features
import matchkit.index.hamming
from conftest import textured
from matchkit import Settings
from matchkit.jobs.dedupe import dedupe
from matchkit.index.hamming import HammingIndex


def _edits(img: Image.Image, seed: int) -> dict[str, Image.Image]:
    """A few copies that need local features (crop, rotation, overlay) and
    some the hashes catch (resize, flip)."""
    w, h = img.size
    rng = np.random.default_rng(seed)
    x, y = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
    over = img.copy()
    ImageDraw.Draw(over).rectangle((w // 3, h // 3, w // 2, h // 2), fill=(255, 0, 0))
    return {"orig": img, "crop": img.crop((x, y, x + w * 2 // 3, y + h * 2 // 3)),
            "rot": img.rotate(12, expand=True, fillcolor=(255, 255, 255)),
            "small": img.resize((w // 3, h // 3)), "flip": img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            "over": over}


@pytest.fixture(scope="module")
def edited_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("determinism")
    for seed in range(14):
        for name, im in _edits(textured(100 + seed), seed).items():
            im.save(folder / f"p{seed:02d}_{name}.jpg", quality=88)
    (folder / "z_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "a_empty.png").write_bytes(b"")
    return folder


def _content(report) -> dict:
    """The report without timings: clusters, keepers, pair scores and evidence."""
    d = report.to_dict()
    return {"clusters": d["clusters"], "skipped": d["skipped"]}


def test_same_report_whatever_workers_order_and_completion(edited_set, monkeypatch):
    # Small sets are searched exhaustively; use the HNSW graphs as large sets do.
    monkeypatch.setattr(matchkit.index.hamming, "EXACT_SEARCH_BELOW", 0)
    files = sorted(edited_set.iterdir())
    reference = _content(dedupe(files, settings=Settings(workers=1)))
    assert sum(len(c["members"]) for c in reference["clusters"]) >= 30  # it found copies
    assert len(reference["skipped"]) == 2

    # Two workers: extraction in worker processes (the pool forced on for a
    # small set; forkserver, so workers never inherit the test process's
    # threads), verification and searches on threads, the input paths in
    # reverse order; twice.
    monkeypatch.setattr(matchkit.features.pool, "PROCESS_POOL_MIN_FILES", 0)
    monkeypatch.setattr(matchkit.features.pool, "_pool_context",
                        lambda: multiprocessing.get_context("forkserver"))
    for _ in range(2):
        assert _content(dedupe(files[::-1], settings=Settings(workers=2))) == reference


def test_hamming_index_graph_does_not_depend_on_threads():
    """Concurrent HNSW insertion gives a graph (hence neighbours) that depends
    on thread scheduling; the same codes added in the same order must give the
    same graph."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (12_000, 32), dtype=np.uint8)
    graphs = []
    for _ in range(2):
        idx = HammingIndex(256, connectivity=8, expansion_add=32)
        for start in range(0, len(codes), 4000):
            idx.add(np.arange(start, start + 4000), codes[start:start + 4000], replace=False)
        graphs.append(bytes(idx._index.save()))
    assert graphs[0] == graphs[1]


def test_gallery_vector_index_graph_does_not_depend_on_threads(tmp_path):
    """The gallery's embedding index is built with single-threaded adds."""
    from matchkit import Gallery
    
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(6000, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    graphs = []
    for n in range(2):
        with Gallery(tmp_path / f"g{n}") as g:
            idx = g._load_or_rebuild_vectors({"name": "m", "dim": 16, "file": "m.usearch",
                                              "generation": 0, "index_generation": None})
            for start in range(0, len(vecs), 2000):
                idx.add(np.arange(start, start + 2000), vecs[start:start + 2000])
            graphs.append(bytes(idx._index.save()))
    assert graphs[0] == graphs[1]


def test_worker_processes_settle_relations_and_hash_pictures_as_threads_do(edited_set,
                                                                           monkeypatch):
    """Large runs settle relations and hash the pictures inside frames in
    worker processes (forced on here for a small set): the same report."""
    import matchkit.match.pairs as M
    from matchkit.match import pools, searches, settle

    files = sorted(edited_set.iterdir())
    reference = _content(dedupe(files, settings=Settings(workers=2)))
    monkeypatch.setattr(pools, "PROCESSES_FROM", 0)
    monkeypatch.setattr(searches, "PROCESS_BATCH", 1)  # (hashing pictures inside frames)
    monkeypatch.setattr(settle, "PROCESS_BATCH", 1)  # (settling relations)
    used = []
    real = M.PairMatcher._in_processes

    def spy(self, fn, items):
        used.append((fn.__name__, len(items), self._processes is not None))
        return real(self, fn, items)

    monkeypatch.setattr(M.PairMatcher, "_in_processes", spy)
    assert _content(dedupe(files, settings=Settings(workers=2))) == reference
    assert {name for name, n, procs in used if procs and n} == {"_settle_many",
                                                                "_picture_hashes_many"}


def test_a_dead_worker_process_leaves_its_part_to_the_main_process(edited_set, monkeypatch):
    """A worker process that dies (a broken pool) costs its part a second
    run here, and later batches stay here: the same report."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    import matchkit.match.pairs as M
    from matchkit.match import pools, searches, settle

    files = sorted(edited_set.iterdir())
    reference = _content(dedupe(files, settings=Settings(workers=2)))

    class Broken:
        submitted = 0

        def submit(self, fn, *args):
            Broken.submitted += 1
            f = Future()
            f.set_exception(BrokenProcessPool("a worker died"))
            return f

        def shutdown(self, **kw):
            pass

    monkeypatch.setattr(pools, "PROCESSES_FROM", 0)
    monkeypatch.setattr(searches, "PROCESS_BATCH", 1)  # (hashing pictures inside frames)
    monkeypatch.setattr(settle, "PROCESS_BATCH", 1)  # (settling relations)
    monkeypatch.setattr(M.PairMatcher, "_procs", Broken(), raising=False)
    broken = []
    real = M.PairMatcher._in_processes

    def spy(self, fn, items):
        out = real(self, fn, items)
        broken.append(getattr(self, "_processes_broken", False))
        return out

    monkeypatch.setattr(M.PairMatcher, "_in_processes", spy)
    assert _content(dedupe(files, settings=Settings(workers=2))) == reference
    assert Broken.submitted >= 1 and broken and all(broken)
