"""Metadata import: CSV/TSV/JSONL reading, typing, path matching, reports, CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from matchkit import Gallery, Settings
from matchkit.cli.commands import cli
from matchkit.jobs.filters import allowed_ids
from matchkit.jobs.metadata import MetadataError, import_metadata, parse_cell, read_metadata

from conftest import make_photo


@pytest.fixture
def small(tmp_path):
    """photos/{a,b,c}.png and photos/sub/a.png in a hash-only gallery."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i, rel in enumerate(["a.png", "b.png", "c.png", "sub/a.png"]):
        make_photo(400 + i, (64, 48)).save(photos / rel)
    g = Gallery(tmp_path / "g", Settings(local_features=False))
    g.add(sorted(photos.rglob("*.png")))
    yield g, photos
    g.close()


@pytest.mark.parametrize("cell, value", [
    ("2019", 2019), ("-3", -3), ("0", 0), ("2.5", 2.5), ("1e3", 1000.0), (".5", 0.5),
    ("02139", "02139"), ("007.5", "007.5"), ("nan", "nan"), ("inf", "inf"), ("1e999", "1e999"),
    ("Paris", "Paris"), (" 42 ", 42), ("1,5", "1,5"), ("+", "+"), (".", "."), ("e5", "e5"),
    ("true", "true"),
])
def test_csv_cells_are_typed(cell, value):
    got = parse_cell(cell)
    assert got == value and type(got) is type(value)


def test_csv_import_matches_paths_and_types_values(small, tmp_path):
    g, photos = small
    meta = tmp_path / "meta.csv"
    meta.write_text(
        "path,year,rating,place,zip,empty\n"
        "photos/a.png,2019,4.5,\"Paris, France\",02139,\n"      # relative to the CSV
        f"{photos / 'b.png'},2020,3,Lyon,,\n"                    # absolute
        "c.png,2021,,Nice,,\n"                                   # relative to an indexed dir
        "photos/missing.png,2022,,,,\n"                          # no such image
        "\n"                                                     # blank lines are skipped
        "photos/a.png,2018,,,,\n",                               # later rows win
        encoding="utf-8")
    report = import_metadata(g, meta, roots=[photos])
    assert (report.rows, report.matched, report.images) == (5, 4, 3)
    assert [(u.line, u.path) for u in report.unmatched] == [(5, "photos/missing.png")]
    assert "no gallery image" in report.unmatched[0].reason
    assert g.find(photos / "a.png").meta == {"year": 2018, "rating": 4.5,
                                             "place": "Paris, France", "zip": "02139"}
    assert g.find(photos / "b.png").meta == {"year": 2020, "rating": 3, "place": "Lyon"}
    assert g.find(photos / "c.png").meta == {"year": 2021, "place": "Nice"}
    assert g.find(photos / "sub/a.png").meta == {}
    # Typed values make numeric filters work.
    assert len(allowed_ids(g, ["year>=2019"])) == 2


def test_suffix_match_only_when_unique(small, tmp_path):
    g, photos = small
    meta = tmp_path / "elsewhere" / "m.jsonl"
    meta.parent.mkdir()
    meta.write_text(json.dumps({"path": "sub/a.png", "k": 1}) + "\n"
                    + json.dumps({"path": "a.png", "k": 2}) + "\n"       # photos/a.png or sub/a.png
                    + json.dumps({"path": "../b.png", "k": 3}) + "\n")
    report = import_metadata(g, meta)                                  # no roots given
    assert report.matched == 1 and g.find(photos / "sub/a.png").meta == {"k": 1}
    reasons = {u.path: u.reason for u in report.unmatched}
    assert reasons["a.png"].startswith("ambiguous: 2 gallery images")
    assert "no gallery image" in reasons["../b.png"]


def test_jsonl_keeps_json_types_and_reports_bad_lines(small, tmp_path):
    g, photos = small
    meta = tmp_path / "meta.jsonl"
    meta.write_text("\n".join([
        json.dumps({"path": "photos/a.png", "tags": ["beach", "dog"], "year": "2019",
                    "camera": {"make": "Canon"}, "flag": True}),
        "{not json",
        json.dumps(["photos/b.png"]),
        json.dumps({"file": "photos/b.png"}),
        json.dumps({"path": "photos/b.png", "year": 2020}),
        json.dumps({"path": "photos/nope.png"}),
    ]) + "\n")
    report = import_metadata(g, meta)
    assert (report.rows, report.matched, report.images) == (6, 2, 2)
    assert [p.line for p in report.invalid] == [2, 3, 4]
    assert [u.line for u in report.unmatched] == [6]
    assert g.find(photos / "a.png").meta == {"tags": ["beach", "dog"], "year": "2019",
                                             "camera": {"make": "Canon"}, "flag": True}
    assert len(allowed_ids(g, ["tags=dog", "camera.make=Canon"])) == 1


def test_import_merges_unless_replace(small, tmp_path):
    g, photos = small
    g.update(photos / "a.png", meta={"keep": 1})
    m = tmp_path / "m.csv"
    m.write_text("path,year\nphotos/a.png,2019\n")
    import_metadata(g, m)
    assert g.find(photos / "a.png").meta == {"keep": 1, "year": 2019}
    import_metadata(g, m, replace=True)
    assert g.find(photos / "a.png").meta == {"year": 2019}


def test_tsv_quoted_multiline_and_ragged_rows(small, tmp_path):
    g, photos = small
    m = tmp_path / "m.tsv"
    m.write_text("Path\tnote\tn\nphotos/a.png\t\"two\nlines\"\t1\nphotos/b.png\tx\t2\textra\n"
                 "\tno path\t3\n")
    rows, problems = read_metadata(m)
    assert [(r.path, r.fields, r.line) for r in rows] == [
        ("photos/a.png", {"note": "two\nlines", "n": 1}, 3)]
    assert [(p.line, p.reason) for p in problems] == [
        (4, "4 cells but 3 columns"), (5, "empty path")]


@pytest.mark.parametrize("name, content, message", [
    ("m.txt", "path\nx\n", "must end in"),
    ("m.csv", "", "is empty"),
    ("m.csv", "file,year\na.png,1\n", "no 'path' column"),
    ("missing.csv", None, "no such metadata file"),
])
def test_unusable_files_are_errors(tmp_path, name, content, message):
    f = tmp_path / name
    if content is not None:
        f.write_text(content)
    with pytest.raises(MetadataError, match=message):
        read_metadata(f)


def test_cli_index_with_meta_reports_unmatched_rows(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        make_photo(500 + i, (64, 48)).save(photos / f"p{i}.png")
    meta = tmp_path / "meta.csv"
    meta.write_text("path,year\np0.png,2019\np1.png,2020\nghost.png,2021\n")
    r = CliRunner().invoke(cli, ["index", str(photos), "--gallery", str(tmp_path / "g"),
                                 "--meta", str(meta), "--hash-only", "-q"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["added"] == 3 and out["skipped"] == []
    assert out["metadata"]["matched"] == 2 and out["metadata"]["images"] == 2
    assert [u["path"] for u in out["metadata"]["unmatched"]] == ["ghost.png"]
    with Gallery(tmp_path / "g") as g:
        assert g.find(photos / "p1.png").meta == {"year": 2020}


@pytest.mark.parametrize("content", ["file,year\nx,1\n", None])
def test_cli_index_bad_meta_file_is_one_line_exit_2(tmp_path, content):
    photos = tmp_path / "photos"
    photos.mkdir()
    make_photo(1, (64, 48)).save(photos / "p.png")
    meta = tmp_path / "meta.csv"
    if content is not None:
        meta.write_text(content)
    r = CliRunner().invoke(cli, ["index", str(photos), "--gallery", str(tmp_path / "g"),
                                 "--meta", str(meta), "-q"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matchkit: error:")
    assert not (tmp_path / "g").exists()  # refused before any work


def _jpeg_with_exif(path, seed, **tags):
    from PIL import Image
    exif = Image.Exif()
    if "original" in tags:
        exif.get_ifd(0x8769)[36867] = tags["original"]
    if "datetime" in tags:
        exif[306] = tags["datetime"]
    make_photo(seed, (64, 48)).save(path, exif=exif, quality=90)


@pytest.mark.parametrize("raw, expected", [
    ("2019:05:03 12:34:56", "2019-05-03T12:34:56"), (b"2020:02:29 10:11:12\x00", "2020-02-29T10:11:12"),
    ("2021-07-01", "2021-07-01T00:00:00"), ("0000:00:00 00:00:00", None), ("2019:13:01 00:00:00", None),
    ("    :  :     :  :  ", None), ("", None), (None, None), (20190503, None),
])
def test_exif_datetime_parsing(raw, expected):
    from matchkit.jobs.metadata import parse_exif_datetime
    got = parse_exif_datetime(raw)
    assert (got.isoformat() if got else None) == expected


def test_cli_index_records_exif_dates_without_overriding_user_metadata(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _jpeg_with_exif(photos / "orig.jpg", 1, original="2019:05:03 12:34:56",
                    datetime="2023:01:01 00:00:00")
    _jpeg_with_exif(photos / "edited.jpg", 2, datetime="2018:11:30 08:00:00")
    _jpeg_with_exif(photos / "user.jpg", 3, original="2017:01:01 00:00:00")
    _jpeg_with_exif(photos / "none.jpg", 4)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    gdir = tmp_path / "g"
    with Gallery(gdir, Settings(local_features=False)) as g:  # user metadata first
        g.add([photos / "user.jpg"])
        g.update(photos / "user.jpg", meta={"year": 1999})
    r = CliRunner().invoke(cli, ["index", str(photos), "--gallery", str(gdir), "--hash-only",
                                 "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["exif_dated"] == 2
    with Gallery(gdir) as g:
        assert g.find(photos / "orig.jpg").meta == {"taken": "2019-05-03T12:34:56", "year": 2019,
                                                    "month": 5}
        assert g.find(photos / "edited.jpg").meta["taken"] == "2018-11-30T08:00:00"
        assert g.find(photos / "user.jpg").meta == {"year": 1999}
        assert g.find(photos / "none.jpg").meta == {}
    _jpeg_with_exif(photos / "later.jpg", 9, original="2022:02:02 02:02:02")
    r = CliRunner().invoke(cli, ["index", str(photos), "--gallery", str(gdir), "--hash-only",
                                 "--no-exif-dates", "-q"])
    assert r.exit_code == 0 and "exif_dated" not in json.loads(r.stdout)
    with Gallery(gdir) as g:
        assert g.find(photos / "later.jpg").meta == {}
