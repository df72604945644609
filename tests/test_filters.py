"""--where filters: parsing, typed matching over meta JSON, safety, CLI errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from matchkit import Gallery, Settings
from matchkit.cli.commands import cli
from matchkit.jobs.filters import FilterError, allowed_ids, compile_where, parse

from conftest import make_photo

META = {
    "a": {"year": 2018, "place": "Paris, France", "tags": ["beach", "dog"], "rating": 4.5,
          "camera": {"make": "Canon"}, "zip": "02139", "flag": True},
    "b": {"year": 2019, "place": "Lyon", "tags": ["city"], "rating": 3.0, "flag": False},
    "c": {"year": 2020, "place": "Nice", "tags": [], "rating": 2, "camera": {"make": "Nikon"}},
    "d": {"year": "2021", "place": "Lyon"},         # a year stored as text
    "e": {"place": "Paris"},                         # no year at all
    "f": {},
}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("filters")
    photos = root / "photos"
    photos.mkdir()
    for i, name in enumerate(META):
        make_photo(300 + i, (64, 48)).save(photos / f"{name}.png")
    g = Gallery(root / "g", Settings(local_features=False))
    g.add(sorted(photos.glob("*.png")))
    for name, meta in META.items():
        g.update(photos / f"{name}.png", meta=meta)
    g.save()
    yield g
    g.close()


def names(g: Gallery, *exprs: str) -> set[str]:
    ids = allowed_ids(g, exprs)
    return {g.get(int(i)).path.rsplit("/", 1)[1][:-4] for i in ids}


@pytest.mark.parametrize("expr, expected", [
    ("year=2019", {"b"}),
    ("year==2019", {"b"}),
    ("year=2021", {"d"}),                # the number also matches the text "2021"
    ("place=Lyon", {"b", "d"}),
    ("place = Lyon", {"b", "d"}),
    ("place=Paris, France", {"a"}),      # = takes the whole rest, commas included
    ('place="Paris, France"', {"a"}),
    ("place=paris", set()),              # case-sensitive
    ("place!=Lyon", {"a", "c", "e", "f"}),  # images without the key are kept
    ("year in 2018,2020", {"a", "c"}),
    ("year in 2018, 2021", {"a", "d"}),
    ("place in Lyon,Nice", {"b", "c", "d"}),
    ('place in "Paris, France",Nice', {"a", "c"}),
    ("place IN Lyon", {"b", "d"}),
    ("place not in Lyon,Nice", {"a", "e", "f"}),
    ("year>=2019", {"b", "c"}),          # numeric: the text "2021" is not a number
    ("year>2019", {"c"}),
    ("year<2019", {"a"}),
    ("year<=2019", {"a", "b"}),
    ("2018<=year<=2019", {"a", "b"}),
    ("2018<year<=2020", {"b", "c"}),
    ("2018 <= year < 2020", {"a", "b"}),
    ("rating>=3", {"a", "b"}),
    ("rating<2.5", {"c"}),
    ("rating=3", {"b"}),                 # 3 matches the float 3.0
    ("tags=dog", {"a"}),                 # a list matches when any element does
    ("tags in city,dog", {"a", "b"}),
    ("tags!=dog", {"b", "c", "d", "e", "f"}),
    ("camera.make=Canon", {"a"}),
    ("camera.make in Canon,Nikon", {"a", "c"}),
    ("zip=02139", {"a"}),                # leading zeros: the text still matches
    ("flag=true", {"a"}),
    ("flag=false", {"b"}),
    ("place>=M", {"a", "c", "e"}),       # text bounds compare text
    ('place="=x"', set()),
    ("nosuchkey=1", set()),
    ("nosuchkey!=1", set(META)),
])
def test_expressions_select_the_right_images(gallery, expr, expected):
    assert names(gallery, expr) == expected


def test_expressions_are_anded(gallery):
    assert names(gallery, "place in Lyon,Nice", "year>=2019") == {"b", "c"}
    assert names(gallery, "year>=2019", "year<2020", "place=Lyon") == {"b"}


def test_no_expression_means_no_restriction(gallery):
    assert allowed_ids(gallery, []) is None
    assert compile_where([]) == ("1", [])


@pytest.mark.parametrize("bad", [
    "", "   ", "year", "=2019", "year=", "year>=", "year in", "year in a,,b", "year in a,",
    "2018<=year<=Paris", 'place="Lyon', "place in \"Lyon", "year=>2019", "year=<2019", "year!==1",
    "bad key=1", "year) OR 1=1 --=1", "$.year=1", "a..b=1", "1year=2",
])
def test_bad_expressions_are_one_line_errors(bad):
    with pytest.raises(FilterError) as e:
        parse(bad)
    assert "\n" not in str(e.value) and str(e.value)


def test_user_text_is_bound_not_spliced(gallery):
    # A value that would change the query if it were formatted into the SQL.
    assert names(gallery, "place=Lyon' OR '1'='1") == set()
    sql, params = compile_where(["place=Lyon' OR '1'='1", "year in 1,2"])
    assert "Lyon" not in sql and "1'='1" not in sql
    assert "Lyon' OR '1'='1" in params


def test_parse_shapes():
    c = parse("2019<=year<2021")
    assert (c.key, c.op, c.lo, c.hi, c.lo_inclusive, c.hi_inclusive) == (
        "year", "range", 2019, 2021, True, False)
    assert parse("year in 1, 2 ,3").values == ("1", "2", "3")
    assert parse("k in 'a, b' , c").values == ("a, b", "c")
    assert parse("x>1.5e3").lo == 1500.0


def test_search_cli_rejects_a_bad_filter(tmp_path, gallery):
    r = CliRunner().invoke(cli, ["search", "--gallery", str(gallery.path), "--text", "x",
                                 "--where", "year=>"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matchkit: error:") and "year=>" in lines[0]
