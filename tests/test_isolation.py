"""One odd file never ends a run: extreme sizes, any exception while reading
one file, file names that are not UTF-8, and failures stamped at read time."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import make_photo
from matchkit import features
from matchkit.store import gallery as gallery_mod
from matchkit.jobs.check import check
from matchkit.cli.commands import cli
from matchkit.config import Settings
from matchkit.jobs.dedupe import dedupe
from matchkit.features import extract
from matchkit.util.fspath import display, from_db, json_text, to_db
from matchkit.store.gallery import Gallery
from matchkit.report.thumbs import make_thumb

ODD = b"caf\xe9.jpg"  # Latin-1 e-acute: not valid UTF-8


def _odd_names_supported(folder: Path) -> bool:
    try:
        (Path(os.fsencode(folder) + b"/" + ODD.decode("latin-1").encode("latin-1"))).touch()
    except Exception:
        return False
    return True


@pytest.fixture
def odd_dir(tmp_path: Path) -> Path:
    """a.jpg, its smaller copy under a non-UTF-8 name, and an unrelated photo."""
    d = tmp_path / "photos"
    d.mkdir()
    a = make_photo(11)
    a.save(d / "a.jpg", quality=92)
    odd = os.path.join(os.fsencode(d), ODD)
    try:
        a.resize((160, 120)).save(odd, "JPEG", quality=80)
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    make_photo(12).save(d / "c.jpg", quality=90)
    return d


def odd_path(folder: Path) -> str:
    return os.fsdecode(os.path.join(os.fsencode(folder), ODD))


# -- extreme sizes ------------------------------------------------------------

@pytest.mark.parametrize("size", [(8000, 3), (3, 8000), (1, 500), (500, 1), (1, 1), (2, 2),
                                  (2000, 1), (30, 4000)])
def test_extreme_sizes_are_extracted_and_thumbnailed(tmp_path, size):
    rng = np.random.default_rng(0)
    w, h = size
    p = tmp_path / f"x{w}x{h}.png"
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(p)
    rec = extract(p, Settings())
    assert (rec.width, rec.height) == size
    assert rec.local is not None  # empty features are fine, a crash is not
    (tmp_path / "thumbs").mkdir(exist_ok=True)
    t = make_thumb(p, tmp_path / "thumbs")
    assert t.error is None and (tmp_path / "thumbs" / t.name).exists()


def test_dedupe_survives_an_8000x3_png(tmp_path):
    """OpenCV 5's ORB failed `inv_scale_x > 0 in function 'resize'` and ended the run."""
    d = tmp_path / "in"
    d.mkdir()
    make_photo(1).save(d / "a.jpg", quality=92)
    make_photo(1).resize((160, 120)).save(d / "a_small.jpg", quality=85)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((3, 8000, 3)) * 255).astype(np.uint8)).save(d / "wide.png")
    report = dedupe([d])
    assert report.stats["images"] == 3 and not report.skipped
    assert [sorted(Path(m).name for m in c.members) for c in report.clusters] == [
        ["a.jpg", "a_small.jpg"]]


# -- any exception while reading one file -------------------------------------

def test_any_exception_in_one_file_skips_that_file_only(tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        make_photo(20 + i).save(d / f"p{i}.jpg")
    from matchkit.signals import local_signal  # (the module that calls it)
    real = local_signal.extract_local

    def flaky(grey, n):
        if grey.shape == (384, 512) and flaky.calls == 1:  # the second file
            flaky.calls += 1
            raise np.linalg.LinAlgError("boom from numpy")
        flaky.calls += 1
        return real(grey, n)

    flaky.calls = 0
    monkeypatch.setattr(local_signal, "extract_local", flaky)
    report = dedupe([d])
    assert report.stats["images"] == 2
    assert len(report.skipped) == 1
    assert "LinAlgError: boom from numpy" in report.skipped[0].reason


def test_query_files_are_isolated_too(tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    make_photo(30).save(d / "g.jpg")
    g = tmp_path / "g"
    with Gallery(g) as gal:
        gal.add([d / "g.jpg"])
        gal.save()
    (tmp_path / "q").mkdir()
    make_photo(30).resize((200, 150)).save(tmp_path / "q" / "q1.jpg")
    make_photo(31).save(tmp_path / "q" / "q2.jpg")
    real = features.record.file_digest

    def bad_digest(path):
        if str(path).endswith("q2.jpg"):
            raise RuntimeError("decoder bug")
        return real(path)

    monkeypatch.setattr(features.record, "file_digest", bad_digest)
    report = check(g, [tmp_path / "q"])
    assert [Path(r.path).name for r in report.results] == ["q1.jpg"]
    assert report.results[0].matched
    assert [Path(s.path).name for s in report.skipped] == ["q2.jpg"]
    assert "RuntimeError: decoder bug" in report.skipped[0].reason


# -- file names that are not UTF-8 --------------------------------------------

def test_fspath_helpers_round_trip():
    p = os.fsdecode(b"/x/" + ODD)
    assert from_db(to_db(p)) == p and isinstance(to_db(p), bytes)
    assert to_db("/x/café.jpg") == "/x/café.jpg"
    assert display(p) == "/x/caf\\xe9.jpg"
    text = json_text({"p": p, "q": "é"})
    text.encode("utf-8")  # no surrogates left
    assert os.fsencode(json.loads(text)["p"]) == b"/x/" + ODD and json.loads(text)["q"] == "é"


def test_gallery_stores_non_utf8_names_losslessly(odd_dir, tmp_path):
    with Gallery(tmp_path / "g") as g:
        report = g.add(sorted(str(p) for p in odd_dir.iterdir()))
        g.save()
        assert report.added == 3 and not report.skipped
        rec = g.find(odd_path(odd_dir))
        assert rec is not None and os.fsencode(rec.path).endswith(b"/" + ODD)
        assert odd_path(odd_dir) in g.paths().values()
    with Gallery(tmp_path / "g") as g:  # reopened: nothing decoded again
        again = g.add(sorted(str(p) for p in odd_dir.iterdir()))
        assert again.unchanged == 3 and again.added == 0


def test_dedupe_json_csv_html_round_trip_non_utf8_names(odd_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "dedupe", str(odd_dir), "--json", str(out / "r.json"), "--csv", str(out / "r.csv"),
        "--html", str(out / "r.html")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "r.json").read_text(encoding="utf-8"))
    members = [m for c in data["clusters"] for m in c["members"]]
    assert odd_path(odd_dir) in members
    assert os.path.exists(os.fsencode(odd_path(odd_dir)))
    with open(out / "r.csv", encoding="utf-8", errors="surrogateescape", newline="") as f:
        rows = list(csv.DictReader(f))
    assert odd_path(odd_dir) in [r["path"] for r in rows]
    page = (out / "r.html").read_text(encoding="utf-8")
    assert "caf\\\\xe9.jpg" in page  # shown escaped (inside the page's JSON)
    assert "caf%E9.jpg" in page      # the link keeps the exact bytes
    # No lone surrogate reaches what the page shows; the review data alone
    # keeps the exact name (as the JSON escape the report uses), so that a
    # saved review moves the right file.
    start = page.index('"paths":[', page.index('"review":'))
    paths_json = page[start + len('"paths":'):page.index("]", start) + 1]
    assert odd_path(odd_dir) in json.loads(paths_json)
    assert "udce9" not in page.replace(paths_json, "")
    stdout = CliRunner().invoke(cli, ["dedupe", str(odd_dir), "--json", "-"])
    assert stdout.exit_code == 0
    text = stdout.output[stdout.output.index("{"):]
    data, _ = json.JSONDecoder().raw_decode(text)  # the summary follows on stderr
    assert odd_path(odd_dir) in data["clusters"][0]["members"]


def test_index_then_check_csv_with_non_utf8_names(odd_dir, tmp_path):
    g = str(tmp_path / "g")
    r = CliRunner().invoke(cli, ["index", str(odd_dir), "--gallery", g], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["check", str(odd_dir), "--gallery", g, "--csv",
                                 str(tmp_path / "c.csv"), "--json", str(tmp_path / "c.json"),
                                 "--html", str(tmp_path / "c.html")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    page = (tmp_path / "c.html").read_text(encoding="utf-8")
    assert "caf\\\\xe9.jpg" in page and "udce9" not in page  # card titles too
    raw = (tmp_path / "c.csv").read_bytes()
    assert b"/" + ODD in raw
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8", "surrogateescape"))))
    assert any(row[0] == odd_path(odd_dir) and row[2] == odd_path(odd_dir) for row in rows)
    data = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    assert odd_path(odd_dir) in [q["path"] for q in data["results"]]


def test_move_and_undo_a_non_utf8_name(odd_dir, tmp_path):
    dest = tmp_path / "dupes"
    r = CliRunner().invoke(cli, ["dedupe", str(odd_dir), "--move-duplicates-to", str(dest),
                                 "--json", str(tmp_path / "r.json")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert not os.path.exists(os.fsencode(odd_path(odd_dir)))
    moved = [p for p in os.listdir(os.fsencode(dest)) if p == ODD]
    assert moved, os.listdir(os.fsencode(dest))
    manifest = next(dest.glob("matchkit-moves-*.json"))
    r = CliRunner().invoke(cli, ["undo", str(manifest)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert os.path.exists(os.fsencode(odd_path(odd_dir)))


# -- failures are stamped with the file as it was read -----------------------

def test_file_caught_mid_copy_is_read_again_once_complete(tmp_path, monkeypatch):
    """The failure used to be stamped with the size/mtime of the finished file
    (stat-ed when the batch was written), so it stayed skipped forever."""
    d = tmp_path / "in"
    d.mkdir()
    full = tmp_path / "full.jpg"
    make_photo(40).save(full, quality=90)
    data = full.read_bytes()
    target = d / "copying.jpg"
    target.write_bytes(data[: len(data) // 3])  # the copy is under way
    real = gallery_mod.extract_many

    def copy_finishes_after_read(paths, settings, on_done=None):
        for item in real(paths, settings, on_done=on_done):
            target.write_bytes(data)  # ... and finishes before the batch is written
            st = target.stat()
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
            yield item

    with Gallery(tmp_path / "g") as g:
        monkeypatch.setattr(gallery_mod, "extract_many", copy_finishes_after_read)
        first = g.add([target])
        assert len(first.skipped) == 1  # the partial file could not be read
        monkeypatch.setattr(gallery_mod, "extract_many", real)
        second = g.add([target])
    assert second.added == 1 and not second.skipped


def test_unchanged_bad_file_is_not_read_again(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with Gallery(tmp_path / "g") as g:
        assert len(g.add([bad]).skipped) == 1
        monkeypatch.setattr(gallery_mod, "extract_many",
                            lambda paths, *a, **k: pytest.fail("read again") if paths else iter(()))
        again = g.add([bad])
    assert len(again.skipped) == 1 and again.skipped[0].reason


# -- embedding: one image the model fails on ----------------------------------

class _PickyEmbedder:
    """Fails on any batch holding a narrow image (a model bug stand-in)."""

    name, dim, batch_size, has_text = "picky", 4, 8, False

    def embed_images(self, images):
        if any(min(im.size) < 8 for im in images):
            raise RuntimeError("picky model")
        return np.array([[1.0, im.size[0] % 7 + 1, 0, 0] for im in images], np.float32)


def _photos_and_strip(folder: Path, strip: Path) -> Path:
    """Three photos in ``folder`` and a 900x5 strip the picky model fails on."""
    folder.mkdir()
    for i in range(3):
        make_photo(50 + i).save(folder / f"p{i}.jpg")
    Image.new("RGB", (900, 5), "blue").save(strip)
    return folder


def test_embedding_failure_skips_only_that_image(tmp_path):
    d = _photos_and_strip(tmp_path / "in", tmp_path / "in" / "strip.png")
    with Gallery(tmp_path / "g") as g:
        g.add(sorted(d.iterdir()))
        report = g.embed(_PickyEmbedder())
    assert report.embedded == 3
    assert [Path(s.path).name for s in report.skipped] == ["strip.png"]
    assert "RuntimeError: picky model" in report.skipped[0].reason


def test_extreme_strips_are_cut_before_embedding():
    from matchkit.embed.base import MAX_ASPECT, as_rgb

    assert as_rgb(Image.new("RGB", (1024, 1))).size == (MAX_ASPECT, 1)
    assert as_rgb(Image.new("L", (3, 900))).size == (3, 3 * MAX_ASPECT)
    assert as_rgb(Image.new("RGB", (640, 100))).size == (640, 100)


def test_strict_utf8_terminal_gets_escaped_names(odd_dir, tmp_path):
    """With a strict UTF-8 stdout (most desktop locales), printing a
    surrogate-escaped name used to raise UnicodeEncodeError."""
    import subprocess

    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = subprocess.run([sys.executable, "-m", "matchkit.cli", "dedupe", str(odd_dir),
                          "--move-duplicates-to", str(tmp_path / "d"), "--dry-run"],
                         capture_output=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-1500:]
    assert b"caf\\xe9.jpg" in run.stdout + run.stderr
    run = subprocess.run([sys.executable, "-m", "matchkit.cli", "dedupe", str(odd_dir),
                          "--json", "-", "--quiet"], capture_output=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-1500:]
    members = json.loads(run.stdout)["clusters"][0]["members"]
    assert odd_path(odd_dir) in members


def test_search_query_the_model_fails_on_is_a_one_line_error(tmp_path):
    from matchkit.jobs.search import SearchError, search

    d = _photos_and_strip(tmp_path / "in", tmp_path / "strip.png")
    with Gallery(tmp_path / "g") as g:
        g.add(sorted(d.iterdir()))
        g.embed(_PickyEmbedder())
        hits = search(g, image=d / "p0.jpg", model=_PickyEmbedder(), k=2)
        assert len(hits) == 2
        with pytest.raises(SearchError, match="picky model"):
            search(g, image=tmp_path / "strip.png", model=_PickyEmbedder())
