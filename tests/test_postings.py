"""An IVF index's postings merged with new entries (``index.postings``): the
same arrays as sorting every entry again by (word, key)."""

from __future__ import annotations

import numpy as np
import pytest

from matchkit.index.postings import merge_postings


def _sorted_all(words, keys, sigs):
    order = np.lexsort((keys, words))
    offsets = np.zeros(WORDS + 1, np.int64)
    np.cumsum(np.bincount(words, minlength=WORDS), out=offsets[1:])
    return offsets, keys[order], sigs[order]


WORDS = 64


@pytest.mark.parametrize("old,new,sig_words", [(0, 5, 1), (300, 0, 1), (300, 40, 1),
                                               (1000, 400, 4), (5, 500, 4)])
def test_merging_equals_sorting_every_entry(old, new, sig_words):
    rng = np.random.default_rng(old + new)
    keys = rng.choice(1 << 46, old + new, replace=False).astype(np.int64)
    keys[: min(3, old + new)] = [(1 << 46) - 1, 0, 7][: min(3, old + new)]  # (the extremes)
    words = rng.integers(0, WORDS, old + new)
    words[:2] = [WORDS - 1, 0][: len(words[:2])]
    shape = (old + new,) if sig_words == 1 else (old + new, sig_words)
    sigs = rng.integers(0, 1 << 63, shape, dtype=np.uint64)
    base = _sorted_all(words[:old], keys[:old], sigs[:old])
    got = merge_postings(*base, words[old:], keys[old:], sigs[old:])
    want = _sorted_all(words, keys, sigs)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert got[1].dtype == np.int64 and got[2].dtype == np.uint64


def test_a_vocabulary_too_large_for_the_sort_code_is_sorted_in_full(monkeypatch):
    from matchkit.index import postings

    monkeypatch.setattr(postings, "KEY_BITS", 60)  # (words above 4: the other way)
    rng = np.random.default_rng(1)
    keys = rng.choice(1 << 40, 200, replace=False).astype(np.int64)
    words = rng.integers(0, WORDS, 200)
    sigs = rng.integers(0, 1 << 63, 200, dtype=np.uint64)
    got = merge_postings(*_sorted_all(words[:150], keys[:150], sigs[:150]),
                         words[150:], keys[150:], sigs[150:])
    for g, w in zip(got, _sorted_all(words, keys, sigs)):
        np.testing.assert_array_equal(g, w)
