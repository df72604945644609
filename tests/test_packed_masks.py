import numpy as np
import pytest

from matchkit.util.arrays import PackedMasks


def test_masks_read_back_as_stored_in_an_eighth_of_the_bytes():
    rng = np.random.default_rng(0)
    masks = PackedMasks()
    made = {i: rng.random((97 + i, 61 + 2 * i)) > 0.5 for i in range(5)}
    masks.update(made)
    masks[9] = None  # (content edge to edge)
    assert len(masks) == 6 and 9 in masks and 10 not in masks
    for i, m in made.items():
        back = masks[i]
        assert back.dtype == bool and back.shape == m.shape and np.array_equal(back, m)
        assert masks._packed[i][0].nbytes <= m.size // 8 + 1
    assert masks[9] is None and masks.get(10) is None


def test_a_mask_read_is_its_own_array():
    masks = PackedMasks({1: np.ones((4, 5), bool)})
    first = masks[1]
    first[0, 0] = False
    assert masks[1].all()  # (the stored mask is unchanged)
    del masks[1]
    assert 1 not in masks
    with pytest.raises(ValueError):
        masks[2] = np.ones(3, bool)


def test_near_lists_read_as_the_dict_of_lists_they_hold():
    """``NearLists`` (the pHash search's neighbour lists as arrays) gives
    back each key's list, keeps insertion order, and a key added again
    takes its new list, whether parts come as arrays, dicts or another
    ``NearLists``."""
    from matchkit.util.arrays import NearLists

    want = {7: [(3, 0), (9, 4)], 2: [], 5: [(7, 12)]}
    near = NearLists(want)
    assert near == want and list(near) == [7, 2, 5] and len(near) == 3
    assert near.get(2) == [] and near.get(4) is None and 5 in near and 4 not in near
    more = NearLists()
    more.add([5, 11], np.array([0, 1]), np.array([1, 3]), np.array([8, 1, 2]),
             np.array([1, 2, 3]))
    near.update(more)
    assert near[5] == [(8, 1)] and near[11] == [(1, 2), (2, 3)] and near[7] == want[7]
    assert all(type(x) is int for pair in near[11] for x in pair)
    assert {**near} == {7: [(3, 0), (9, 4)], 2: [], 5: [(8, 1)], 11: [(1, 2), (2, 3)]}


def test_sparse_rows_give_back_the_dense_rows():
    """``SparseRows`` keeps only non-zero entries yet gives back any rows,
    in any order and repeated, equal to the dense ones; widening keeps them."""
    import numpy as np

    from matchkit.util.arrays import SparseRows

    rng = np.random.default_rng(5)
    dense = rng.integers(0, 9, (60, 512)) * (rng.random((60, 512)) < 0.1)
    dense[[0, 17, 59]] = 0  # empty rows, first and last among them
    table = SparseRows(512, "<u2")
    for start in (0, 1, 25, 40):
        table.append(dense[start:{0: 1, 1: 25, 25: 40, 40: 60}[start]])
    asked = rng.integers(0, 60, 200)
    got = table.dense(asked)
    assert got.dtype == np.uint16 and np.array_equal(got, dense[asked])
    assert len(table) == 60 and table.dense([]).shape == (0, 512)
    assert table.nbytes < dense.astype(np.uint16).nbytes / 3
    grown = SparseRows(512, "<u2")  # (a value past 16 bits widens the table itself)
    grown.append(dense[:2])
    grown.append(np.full((1, 512), 70_000))
    assert grown.dtype == np.uint32 and grown.dense([2])[0, 0] == 70_000
    assert np.array_equal(grown.dense([1]), dense[[1]])
    table.widen("<u4")
    table.append(np.full((1, 512), 70_000))
    assert table.dense([60, 3]).dtype == np.uint32
    assert np.array_equal(table.dense([60, 3]), np.vstack([np.full(512, 70_000), dense[3]]))


@pytest.mark.parametrize("ids", [[3, 4, 5, 6], [9, 2, 40, 7], [0], []])
def test_id_positions_find_each_id_where_it_was_given(ids):
    from matchkit.util.arrays import IdPositions

    at = IdPositions(ids)
    assert len(at) == len(ids)
    assert [at.position(i) for i in ids] == list(range(len(ids)))
    for absent in (-1, 1, 8, 41, 10**12, None, "3", 3.0, True):
        if absent not in ids or isinstance(absent, (bool, float, str)):
            assert at.position(absent) is None
    if ids:
        assert at.positions(ids[::-1]).tolist() == list(range(len(ids)))[::-1]
    with pytest.raises(KeyError):
        at.positions([*ids, 1000])


def test_id_positions_refuse_repeated_ids():
    from matchkit.util.arrays import IdPositions

    with pytest.raises(ValueError):
        IdPositions([4, 2, 4])


def test_rows_by_id_read_as_the_dict_of_views_they_replace():
    from matchkit.util.arrays import RowsById

    rng = np.random.default_rng(3)
    ids = [12, 5, 30, 6]
    array = rng.integers(0, 255, (4, 8, 8), dtype=np.uint8)
    as_dict = {i: array[n] for n, i in enumerate(ids)}
    rows = RowsById(ids, array)
    assert list(rows) == ids and len(rows) == 4 and 7 not in rows and rows.get(7) is None
    for i in ids:
        assert i in rows and np.array_equal(rows[i], as_dict[i])
    with pytest.raises(KeyError):
        rows[7]
    with pytest.raises(ValueError):
        RowsById([1, 2], array)
