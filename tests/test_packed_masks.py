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
