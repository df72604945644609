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
