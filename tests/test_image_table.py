"""The run's gallery rows as columns (``store.image_table``): read back equal
to the gallery's own rows."""

import pickle

import pytest

from matchkit.store.image_table import ImageTable, RowCache, Strings
from matchkit.store.records import StoredImage


def _rows():
    return [
        StoredImage(5, "/photos/a\udcffb.jpg", 1234, 10**18, "ab" * 32, None, 640, 480, "JPEG",
                    jpeg_quality=87),
        StoredImage(6, "/photos/ü/ß.png", 99, 5, "cd" * 32, "ef" * 32, 1, 2, None,
                    meta={"taken": "2020"}, labels=["cat"], blank=True),
        StoredImage(9, "", 0, 0, "", "", 0, 0, "PNG"),
    ]


def test_a_table_gives_back_each_row_equal():
    rows = _rows()
    table = ImageTable(rows)
    assert list(table) == [5, 6, 9] and len(table) == 3 and 7 not in table
    for r in rows:
        assert table[r.id] == r
        assert table.paths[r.id] == r.path and table.sizes[r.id] == (r.width, r.height)
        assert table.formats[r.id] == r.format and table.qualities[r.id] == r.jpeg_quality
        assert table.blank(r.id) == r.blank
    # "" is kept apart from None
    assert table[9].pixel_sha256 == "" and table[5].pixel_sha256 is None
    with pytest.raises(KeyError):
        table[7]
    with pytest.raises(KeyError):
        table.sizes[7]
    # a row's meta is its own: changing it leaves the table as it was
    table[6].meta["taken"] = "1999"
    assert table[6].meta == {"taken": "2020"}


def test_joined_and_subset_tables_keep_their_rows():
    rows = _rows()
    joined = ImageTable.joined([ImageTable(rows[:1]), ImageTable(rows[1:])])
    assert [joined[r.id] for r in rows] == rows
    part = joined.subset([9, 6])
    assert list(part) == [9, 6] and part[6] == rows[1] and part[9] == rows[2] and 5 not in part
    assert pickle.loads(pickle.dumps(part.sizes))[6] == (1, 2)
    assert [joined.formats[r.id] for r in rows] == ["JPEG", None, "PNG"]


def test_strings_join_without_remaking_them():
    a, b = Strings(["x", None, "\udc80"]), Strings(["", "yz"])
    out = Strings.joined([a, b])
    assert [out[p] for p in range(len(out))] == ["x", None, "\udc80", "", "yz"]


def test_a_table_read_in_parts_equals_the_gallery_rows(photo_dir, tmp_path):
    from matchkit.config import Settings
    from matchkit.store.gallery import Gallery

    with Gallery(tmp_path / "g", Settings()) as g:
        added = g.add(sorted(str(p) for p in photo_dir.iterdir()))
        want = g.images(added.ids)
        table = ImageTable.read(g, added.ids[::-1] + [10**6], part=2)
        assert len(want) > 2 and list(table) == sorted(want)
        assert len(ImageTable.read(g, [])) == 0 and len(ImageTable.read(g, [10**6])) == 0
        assert {i: table[i] for i in table} == want
        cache = RowCache(table)
        first = cache[added.ids[0]]
        assert cache[added.ids[0]] is first and first == want[added.ids[0]]


def test_a_matcher_refuses_a_table_of_other_rows(photo_dir, tmp_path):
    """``PairMatcher(images=)`` takes the caller's table instead of reading
    the rows: a table of other images than ``ids`` would pair one image's
    path and size with another's features, so it is refused."""
    from matchkit.config import Settings
    from matchkit.match.pairs import PairMatcher
    from matchkit.store.gallery import Gallery

    with Gallery(tmp_path / "g", Settings()) as g:
        ids = g.add(sorted(str(p) for p in photo_dir.iterdir())).ids
        table = ImageTable.read(g, ids)
        with pytest.raises(ValueError, match="exactly"):
            PairMatcher(g, ids[1:], Settings(), images=table)
        matcher = PairMatcher(g, ids[::-1], Settings(), images=table)  # (any order)
        try:
            assert matcher.paths[ids[0]] == table[ids[0]].path
        finally:
            matcher.close()
