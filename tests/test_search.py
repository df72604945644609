"""Gallery search by image, crop or text with a tiny random CLIP.

The tiny CLIP (tests/tiny_clip.py) has random weights, so these tests check
mechanics only: the right vectors are stored, incremental updates keep them
in step with the images, scores are the cosines brute force gives, filters
restrict results without losing any, and wrong models are refused. They
never check that a result "means" the query.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from matchkit import Gallery, GalleryError, Settings  # noqa: E402
from matchkit.cli.commands import cli  # noqa: E402
from matchkit.embed import load_embedder  # noqa: E402
from matchkit.jobs.filters import allowed_ids  # noqa: E402
from matchkit.store.gallery import vector_file_name  # noqa: E402
from matchkit.jobs.search import SearchError, search, validate_crop  # noqa: E402
from matchkit.index.vectors import VectorIndex  # noqa: E402

import tiny_clip  # noqa: E402
from conftest import make_photo  # noqa: E402

N = 12
#: Scores come from half-precision vectors in the index: compare loosely.
TOL = 2e-3


def _one_line_exit_2(r):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matchkit: error:"), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def embedder(tiny_clip_dir):
    return load_embedder(str(tiny_clip_dir), batch_size=5)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, embedder):
    """N photos with metadata, added hash-only and embedded with the tiny CLIP."""
    root = tmp_path_factory.mktemp("search")
    photos = root / "photos"
    photos.mkdir()
    for i in range(N):
        make_photo(600 + i, (96, 72)).save(photos / f"p{i:02d}.jpg", quality=90)
    gdir = root / "g"
    with Gallery(gdir, Settings(local_features=False)) as g:
        g.add(sorted(photos.glob("*.jpg")))
        for i in range(N):
            g.update(photos / f"p{i:02d}.jpg",
                     meta={"year": 2015 + i % 6, "place": ["Paris", "Lyon", "Nice"][i % 3]})
        report = g.embed(embedder)
        assert (report.embedded, report.unchanged, report.skipped) == (N, 0, [])
    return gdir, photos


def brute_force(g: Gallery, model: str, query: np.ndarray, allowed=None):
    ids = g.embedded_ids(model) if allowed is None else np.asarray(allowed)
    vecs = g.vectors(model, ids.tolist())
    scores = vecs @ query.reshape(-1)
    return ids, scores


def assert_right_hits(hits, ids, scores, k):
    """Hits are the k best by brute force (up to half-precision ties), best first."""
    assert len(hits) == min(k, len(ids))
    got = [h.id for h in hits]
    assert len(set(got)) == len(got) and set(got) <= set(ids.tolist())
    by_id = dict(zip(ids.tolist(), scores.tolist()))
    for h in hits:
        assert abs(h.score - by_id[h.id]) < TOL
        assert -1 - TOL <= h.score <= 1 + TOL
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    rest = [s for i, s in by_id.items() if i not in set(got)]
    if rest:
        assert hits[-1].score >= max(rest) - TOL


# -- storage -----------------------------------------------------------------------------------

def test_vectors_are_stored_per_model_and_persisted(indexed, embedder):
    gdir, photos = indexed
    with Gallery(gdir, create=False) as g:
        assert g.models() == {embedder.name: tiny_clip.PROJECTION_DIM}
        assert len(g.embedded_ids(embedder.name)) == N
        f = gdir / vector_file_name(embedder.name)
        assert f.exists() and f.name.startswith("vectors-") and "/" not in f.name
        idx = g.vector_index(embedder.name)
        assert len(idx) == N and idx.model == embedder.name
        # The stored vector is the model's embedding of the decoded file.
        rec = g.find(photos / "p03.jpg")
        from matchkit.io.load import load_image
        fresh = embedder.embed_images([load_image(rec.path).image])[0]
        np.testing.assert_allclose(g.vectors(embedder.name, [rec.id])[0], fresh, atol=1e-5)
    # The saved index file is used as it is (no rebuild) when its stamp is current.
    with Gallery(gdir, create=False) as g:
        g.vector_index(embedder.name)
        assert not g._dirty


def test_file_names_are_safe_and_distinct():
    names = ["clip-vit-b32", "/tmp/x/clip", "a/b", "a-b", "../../etc/passwd", "x" * 300, "é"]
    files = [vector_file_name(n) for n in names]
    assert len(set(files)) == len(files)
    for f in files:
        assert "/" not in f and not f.startswith(".") and len(f) < 100


def test_embed_is_incremental_and_follows_changes(tmp_path, embedder):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        make_photo(700 + i, (64, 48)).save(photos / f"q{i}.png")
    gdir = tmp_path / "g"
    name = embedder.name
    with Gallery(gdir, Settings(local_features=False)) as g:
        g.add(sorted(photos.glob("*.png")))
        assert g.embed(embedder).embedded == 5
        again = g.embed(embedder)
        assert (again.embedded, again.unchanged) == (0, 5)

        # A changed file loses its vector in the same transaction and is re-embedded.
        changed = g.find(photos / "q1.png")
        old_vec = g.vectors(name, [changed.id])[0]
        make_photo(799, (64, 48)).save(photos / "q1.png")
        os.utime(photos / "q1.png", ns=(time.time_ns(), time.time_ns() + 10**9))
        g.add(sorted(photos.glob("*.png")))
        assert changed.id not in set(g.embedded_ids(name).tolist())
        assert changed.id not in g.vector_index(name)
        r = g.embed(embedder)
        assert (r.embedded, r.unchanged) == (1, 4)
        assert not np.allclose(g.vectors(name, [changed.id])[0], old_vec, atol=1e-3)
        g.save()

    # Decoding again for features an image lacked (same bytes) keeps its vectors.
    with Gallery(gdir, Settings(local_features=True)) as g:
        assert g.add(sorted(photos.glob("*.png"))).updated == 5
        assert len(g.embedded_ids(name)) == 5 and len(g.vector_index(name)) == 5
        g.save()

    with Gallery(gdir, Settings(local_features=False)) as g:
        # Removal drops vectors from SQLite and from the index.
        gone = g.find(photos / "q2.png").id
        g.remove([photos / "q2.png"])
        assert gone not in set(g.embedded_ids(name).tolist()) and gone not in g.vector_index(name)

        # A file that became unreadable is reported; the rest completes.
        make_photo(800, (64, 48)).save(photos / "q5.png")
        make_photo(801, (64, 48)).save(photos / "q6.png")
        g.add([photos / "q5.png", photos / "q6.png"])
        (photos / "q5.png").unlink()
        r = g.embed(embedder)
        assert r.embedded == 1 and [Path(s.path).name for s in r.skipped] == ["q5.png"]
        assert "cannot read" in r.skipped[0].reason
        g.save()
        expected = g.embedded_ids(name).tolist()
    with Gallery(gdir) as g:  # the saved index reflects all of it
        idx = g.vector_index(name)
        assert sorted(idx.keys().tolist()) == expected and not g._dirty


def test_stale_or_broken_vector_file_is_rebuilt(indexed, embedder, tmp_path):
    import shutil

    gdir = tmp_path / "g"
    shutil.copytree(indexed[0], gdir)
    f = gdir / vector_file_name(embedder.name)
    f.write_bytes(b"garbage")
    with Gallery(gdir) as g:
        idx = g.vector_index(embedder.name)
        assert len(idx) == N
        hits = search(g, image=indexed[1] / "p05.jpg", k=1, model=embedder)
        assert hits[0].path.endswith("p05.jpg")
        g.save()
    with Gallery(gdir) as g:
        assert len(g.vector_index(embedder.name)) == N and not g._dirty


def test_dimension_change_under_the_same_name_is_refused(indexed, embedder, tmp_path,
                                                          monkeypatch):
    gdir = indexed[0]
    moved = tmp_path / "clip"  # same path, rebuilt with another vector size
    tiny_clip.build_tiny_clip(moved)
    with Gallery(tmp_path / "g2", Settings(local_features=False)) as g:
        g.add([indexed[1] / "p00.jpg"])
        g.embed(load_embedder(str(moved)))
        monkeypatch.setattr(tiny_clip, "PROJECTION_DIM", 8)
        tiny_clip.build_tiny_clip(moved)
        other = load_embedder(str(moved))
        assert other.dim == 8 and other.name == g.models().popitem()[0]
        with pytest.raises(GalleryError, match="16-d vectors"):
            g.embed(other)
        with pytest.raises(GalleryError, match="8-d vectors"):
            search(g, text="x", model=other)
    assert gdir.exists()


# -- search ------------------------------------------------------------------------------------

def test_image_query_finds_itself_first(indexed, embedder):
    gdir, photos = indexed
    with Gallery(gdir, create=False) as g:
        for i in (0, 7):
            hits = search(g, image=photos / f"p{i:02d}.jpg", k=5)  # default model: the gallery's
            assert hits[0].path == str((photos / f"p{i:02d}.jpg").resolve())
            assert hits[0].score > 1 - TOL
            assert hits[0].meta == {"year": 2015 + i % 6, "place": ["Paris", "Lyon", "Nice"][i % 3]}
        from PIL import Image
        with Image.open(photos / "p07.jpg") as im:
            pil_hits = search(g, image=im.copy(), k=5, model=embedder)
        assert [h.id for h in pil_hits] == [h.id for h in hits]


def test_crop_query(indexed, embedder):
    gdir, photos = indexed
    src = photos / "p04.jpg"
    from matchkit.io.load import load_image
    full = load_image(src).image
    with Gallery(gdir, create=False) as g:
        hits = search(g, image=src, crop=(10, 5, 50, 40), k=4, model=embedder)
        q = embedder.embed_images([full.crop((10, 5, 60, 45))])[0]
        ids, scores = brute_force(g, embedder.name, q)
        assert_right_hits(hits, ids, scores, 4)
        # The whole image as a crop is the image query.
        whole = search(g, image=src, crop=(0, 0, full.width, full.height), k=1, model=embedder)
        assert whole[0].path.endswith("p04.jpg") and whole[0].score > 1 - TOL


@pytest.mark.parametrize("crop, message", [
    ((0, 0, 0, 10), "positive"), ((0, 0, 10, -1), "positive"), ((-1, 0, 10, 10), "not inside"),
    ((90, 0, 10, 10), "not inside"), ((0, 70, 10, 5), "not inside"), ((0, 0, 10), "four"),
    ((0.5, 0, 10, 10), "four"), ("1,2,3,4", "four"),
])
def test_bad_crops_are_refused(indexed, embedder, crop, message):
    gdir, photos = indexed
    with pytest.raises(SearchError, match=message):
        search(gdir, image=photos / "p00.jpg", crop=crop, model=embedder)


def test_validate_crop_accepts_edges():
    assert validate_crop((0, 0, 96, 72), 96, 72) == (0, 0, 96, 72)
    assert validate_crop([95.0, 71, 1, 1], 96, 72) == (95, 71, 1, 1)


def test_text_query_returns_k_valid_hits(indexed, embedder):
    gdir, _ = indexed
    with Gallery(gdir, create=False) as g:
        hits = search(g, text="a red bicycle", k=5)
        q = embedder.embed_texts(["a red bicycle"])[0]
        ids, scores = brute_force(g, embedder.name, q)
        assert_right_hits(hits, ids, scores, 5)
        assert len(search(g, text="x", k=50)) == N


@pytest.mark.parametrize("where, k", [
    (["place=Lyon"], 3),
    (["place in Paris,Nice"], 5),
    (["2016<=year<=2018"], 10),       # 6 images: fewer than k
    (["year>=2019", "place!=Paris"], 2),
    (["year=2015", "place=Paris"], 4),  # exactly 2 images
    (["place=Atlantis"], 3),
])
def test_filters_restrict_results_without_losing_any(indexed, embedder, where, k):
    gdir, photos = indexed
    with Gallery(gdir, create=False) as g:
        allowed = allowed_ids(g, where)
        hits = search(g, image=photos / "p01.jpg", where=where, k=k, model=embedder)
        q = g.vectors(embedder.name, [g.find(photos / "p01.jpg").id])[0]  # the query's vector
        ids, scores = brute_force(g, embedder.name, q, allowed)
        assert_right_hits(hits, ids, scores, k)
        assert len(hits) == min(k, len(allowed))


@pytest.mark.parametrize("n, n_allowed, k", [(1000, 1, 5), (1000, 3, 10), (5000, 5, 3)])
def test_selective_filters_match_brute_force(n, n_allowed, k):
    """0.1%-selective filters on a larger index still give the exact top k."""
    rng = np.random.default_rng(n + n_allowed)
    vecs = rng.normal(size=(n, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = rng.choice(10 * n, size=n, replace=False)
    idx = VectorIndex("random", 32)
    idx.add(ids, vecs)
    allowed = rng.choice(ids, size=n_allowed, replace=False)
    queries = rng.normal(size=(8, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    got_ids, got_scores = idx.search(queries, k, allowed=allowed)
    stored = idx.get(allowed)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    for qi, q in enumerate(queries):
        sims = stored @ q
        order = np.argsort(-sims)[:k]
        m = min(k, n_allowed)
        assert (got_ids[qi, m:] == -1).all()
        np.testing.assert_allclose(got_scores[qi, :m], sims[order], atol=1e-4)
        assert set(got_ids[qi, :m].tolist()) <= set(allowed.tolist())


def test_query_needs_exactly_one_of_image_and_text(indexed, embedder):
    gdir, photos = indexed
    for kw in ({}, {"image": photos / "p00.jpg", "text": "x"}, {"text": "x", "crop": (0, 0, 1, 1)},
               {"text": "   "}, {"text": "x", "k": 0}):
        with pytest.raises(SearchError):
            search(gdir, model=embedder, **kw)
    with pytest.raises(SearchError, match="cannot use query image"):
        search(gdir, image=photos / "nope.jpg", model=embedder)


def test_text_query_needs_a_text_encoder(indexed, embedder, monkeypatch):
    gdir, _ = indexed
    monkeypatch.setattr(embedder, "has_text", False)
    with pytest.raises(SearchError, match="no text encoder"):
        search(gdir, text="x", model=embedder)


def test_another_model_is_refused(indexed, tmp_path):
    gdir, photos = indexed
    other_dir = tiny_clip.build_tiny_clip(tmp_path / "other-clip", seed=1)
    with pytest.raises(GalleryError, match="does not match this gallery"):
        search(gdir, image=photos / "p00.jpg", model=str(other_dir))
    r = CliRunner().invoke(cli, ["search", "--gallery", str(gdir), "--text", "x",
                                 "--model", str(other_dir)])
    assert "was indexed with" in _one_line_exit_2(r)


def test_gallery_without_embeddings_says_how_to_index(tmp_path):
    photos = tmp_path / "p"
    photos.mkdir()
    make_photo(1, (64, 48)).save(photos / "a.png")
    with Gallery(tmp_path / "g", Settings(local_features=False)) as g:
        g.add([photos / "a.png"])
    with pytest.raises(GalleryError, match="no embeddings yet.*matchkit index"):
        search(tmp_path / "g", text="x")
    with pytest.raises(GalleryError, match="no gallery"):
        search(tmp_path / "nowhere", text="x")


# -- CLI ---------------------------------------------------------------------------------------

def test_cli_index_then_search(tmp_path, tiny_clip_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        make_photo(900 + i, (64, 48)).save(photos / f"c{i}.png")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    meta = tmp_path / "m.jsonl"
    meta.write_text("".join(json.dumps({"path": f"c{i}.png", "n": i}) + "\n" for i in range(4)))
    gdir = tmp_path / "g"
    run = CliRunner().invoke
    r = run(cli, ["index", str(photos), "--gallery", str(gdir), "--model", str(tiny_clip_dir),
                  "--meta", str(meta), "--hash-only", "--batch-size", "3", "-q"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["added"] == 4 and [Path(s["path"]).name for s in out["skipped"]] == ["broken.png"]
    [emb] = out["embeddings"]
    assert emb["embedded"] == 4 and emb["dim"] == 16
    assert out["metadata"]["matched"] == 4
    r = run(cli, ["index", str(photos), "--gallery", str(gdir), "--model", str(tiny_clip_dir),
                  "--hash-only", "-q"])
    assert json.loads(r.stdout)["embeddings"] == [{
        "model": str(Path(tiny_clip_dir).resolve()), "dim": 16, "embedded": 0, "unchanged": 4,
        "skipped": []}]
    # Without --model, new images are embedded with the model(s) the gallery holds ...
    make_photo(905, (64, 48)).save(photos / "c5.png")
    r = run(cli, ["index", str(photos), "--gallery", str(gdir), "--hash-only", "-q"])
    out = json.loads(r.stdout)
    assert out["added"] == 1 and [e["embedded"] for e in out["embeddings"]] == [1]
    # ... unless asked not to.
    make_photo(906, (64, 48)).save(photos / "c6.png")
    r = run(cli, ["index", str(photos), "--gallery", str(gdir), "--hash-only", "--no-embed",
                  "-q"])
    assert json.loads(r.stdout)["embeddings"] == []

    r = run(cli, ["search", "--gallery", str(gdir), "--image", str(photos / "c2.png"), "-k", "3"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert len(hits) == 3 and hits[0]["path"].endswith("c2.png") and hits[0]["score"] > 1 - TOL
    assert hits[0]["meta"] == {"n": 2} and set(hits[0]) == {"id", "path", "score", "meta"}

    r = run(cli, ["search", "--gallery", str(gdir), "--text", "a cat", "--where", "n>=1",
                  "--where", "n in 1,3", "-k", "5", "--table"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["#", "score", "path", "meta"] and len(lines) == 3
    assert {Path(line.split()[2]).name for line in lines[1:]} == {"c1.png", "c3.png"}

    r = run(cli, ["search", "--gallery", str(gdir), "--image", str(photos / "c0.png"),
                  "--crop", "5,5,20,20", "-k", "2"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 2


@pytest.mark.parametrize("args, message", [
    (["--image", "{photos}/p00.jpg", "--crop", "0,0,999,10"], "not inside"),
    (["--image", "{photos}/p00.jpg", "--crop", "1,2,3"], "four whole numbers"),
    (["--text", "x", "--crop", "1,2,3,4"], "--crop needs --image"),
    ([], "exactly one of --image or --text"),
    (["--image", "{photos}/p00.jpg", "--text", "x"], "exactly one"),
    (["--image", "{photos}/nope.png"], "cannot use query image"),
    (["--text", "x", "--model", "/definitely/not/a/model"], "unknown model"),
    (["--text", "x", "--where", "year in"], "cannot parse"),
])
def test_cli_search_errors_are_one_line(tmp_path, indexed, args, message):
    gdir, photos = indexed
    args = [a.replace("{photos}", str(photos)) for a in args]
    r = CliRunner().invoke(cli, ["search", "--gallery", str(gdir), *args])
    assert message in _one_line_exit_2(r)


def test_cli_missing_model_is_one_line_exit_2_before_any_work(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    make_photo(1, (64, 48)).save(photos / "a.png")
    for model in ["/definitely/not/a/model", "no-such-model"]:
        r = CliRunner().invoke(cli, ["index", str(photos), "--gallery", str(tmp_path / "g"),
                                     "--model", model, "-q"])
        line = _one_line_exit_2(r)
        assert "unknown model" in line and "huggingface-cli download" in line
    assert not (tmp_path / "g").exists()


def test_cli_help_for_index_and_search():
    for cmd in ("index", "search"):
        r = CliRunner().invoke(cli, [cmd, "--help"])
        assert r.exit_code == 0 and "Example" in r.output and "--gallery" in r.output


# -- interrupted runs ---------------------------------------------------------------------------

def test_interrupted_embed_keeps_committed_batches(tmp_path, embedder, monkeypatch):
    """A run stopped after two committed batches, before its index file was
    saved (what a kill at that moment leaves; SQLite commits themselves are
    kill-safe, see test_gallery's SIGKILL tests): reopening rebuilds the
    index from SQLite and the next run embeds only the rest."""
    import matchkit.store.gallery as gm

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(7):
        make_photo(950 + i, (64, 48)).save(photos / f"k{i}.png")
    gdir = tmp_path / "g"
    small = load_embedder(embedder.source, batch_size=2)
    real = gm.Gallery._store_vectors
    calls = []

    def store_then_stop(self, *a):
        real(self, *a)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(gm.Gallery, "_store_vectors", store_then_stop)
    g = Gallery(gdir, Settings(local_features=False))
    g.add(sorted(photos.glob("*.png")))
    g.save()
    with pytest.raises(KeyboardInterrupt):
        g.embed(small)
    g.close(save=False)  # what a kill leaves: the index file is not saved
    monkeypatch.setattr(gm.Gallery, "_store_vectors", real)
    name = embedder.name
    with Gallery(gdir, Settings(local_features=False)) as g:
        assert len(g.embedded_ids(name)) == 4  # two batches of two
        assert sorted(g.vector_index(name).keys().tolist()) == g.embedded_ids(name).tolist()
        assert g._dirty  # rebuilt from SQLite, not read from a stale file
        r = g.embed(embedder)
        assert (r.embedded, r.unchanged) == (3, 4)
        hits = search(g, image=photos / "k6.png", k=1, model=embedder)
        assert hits[0].path.endswith("k6.png")


def test_search_and_filters_on_a_sharded_gallery(indexed, embedder, tmp_path):
    """``index --shards 3 --model`` embeds each image in its shard; ``search``
    (CLI and Python, with a filter) merges the shards' answers into the one
    gallery's ranking."""
    from matchkit.store.shards import ShardedGallery

    gdir, photos = indexed
    sdir = tmp_path / "sharded"
    r = CliRunner().invoke(cli, ["index", str(photos), "--gallery", str(sdir), "--shards", "3",
                                 "--hash-only", "--model", str(embedder.name), "-q"])
    assert r.exit_code == 0, r.output
    with ShardedGallery(sdir, create=False) as sg, Gallery(gdir, create=False) as g:
        assert sum(1 for p in sg.parts if len(p)) >= 2
        assert sg.models() == g.models()
        assert len(sg.embedded_ids(embedder.name)) == N
        for i in range(N):
            p = photos / f"p{i:02d}.jpg"
            sg.update_meta({sg.find(p).id: {"year": 2015 + i % 6}})
    query = photos / "p03.jpg"
    one = search(gdir, image=query, k=5)
    many = search(sdir, image=query, k=5)
    assert [Path(h.path).name for h in many] == [Path(h.path).name for h in one]
    assert np.allclose([h.score for h in many], [h.score for h in one], atol=TOL)
    older = search(sdir, image=query, k=N, where=["year<2017"])
    assert older and all(h.meta["year"] < 2017 for h in older)
    assert len(older) == sum(1 for i in range(N) if 2015 + i % 6 < 2017)
    r = CliRunner().invoke(cli, ["search", "--gallery", str(sdir), "--image", str(query),
                                 "-k", "3"])
    assert r.exit_code == 0, r.output
    assert [h["path"] for h in json.loads(r.output)] == [h.path for h in many[:3]]
