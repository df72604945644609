"""The compiled word choice (``index/compiled.py``) gives the words of
``Vocabulary.assign``'s NumPy form, in the same order, ties included."""

import numpy as np
import pytest

from matchkit.index import compiled
from matchkit.index.vocabulary import Vocabulary, named_vocabulary


def _near(vocab: Vocabulary, n: int, flip: float, seed: int) -> np.ndarray:
    """Codes near the vocabulary's leaves (as real descriptors are), with
    ``flip`` of their bits changed."""
    rng = np.random.default_rng(seed)
    leaves = vocab.leaves.reshape(-1, 32)
    codes = leaves[rng.integers(0, len(leaves), n)]
    bits = np.unpackbits(codes, axis=1) ^ (rng.random((n, 256)) < flip)
    return np.packbits(bits, axis=1)


def _both(vocab: Vocabulary, codes: np.ndarray, probes: int, nodes: int):
    """(compiled words, NumPy words) of ``codes``."""
    fast = vocab.assign(codes, probes, nodes)
    was, compiled.AVAILABLE = compiled.AVAILABLE, False
    try:
        plain = vocab.assign(codes, probes, nodes)
    finally:
        compiled.AVAILABLE = was
    return fast, plain


def test_numba_is_installed_and_used():
    # numba is a dependency: a silent fallback would cost 5x in every IVF search.
    assert compiled.AVAILABLE
    out = np.zeros((1, 1), np.int64)
    assert compiled.assign_words(np.zeros((1, 4), np.uint64), np.zeros((1, 4), np.uint64),
                                 np.zeros((1, 1, 4), np.uint64), 1, 1, out)


@pytest.mark.parametrize("name", ["orb-4k", "orb-16k", "orb-64k"])
@pytest.mark.parametrize("probes,nodes", [(1, 1), (2, 2), (16, 8), (5, 3)])
def test_same_words_as_numpy(name, probes, nodes):
    vocab = named_vocabulary(name)
    codes = np.concatenate([_near(vocab, 600, 0.12, 1), _near(vocab, 200, 0.4, 2),
                            np.random.default_rng(3).integers(0, 256, (200, 32), np.uint8)])
    fast, plain = _both(vocab, codes, probes, nodes)
    assert fast.shape == (len(codes), probes)
    np.testing.assert_array_equal(fast, plain)


def test_ties_go_by_number_as_in_numpy():
    # A vocabulary of repeated centroids: every distance ties with others, so
    # only the tie rule (node number, then word number) decides the order.
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (4, 32), np.uint8)
    top = base[[0, 1, 0, 1, 2, 2, 3, 0]]                        # 8 nodes, tied in pairs
    leaves = np.stack([base[rng.integers(0, 4, 16)] for _ in range(8)])   # 8 x 16 leaves
    vocab = Vocabulary(top, leaves, np.arange(64))
    codes = np.concatenate([base, top, leaves.reshape(-1, 32),
                            rng.integers(0, 256, (64, 32), np.uint8)])
    for probes, nodes in [(1, 1), (4, 3), (16, 8), (12, 2)]:
        fast, plain = _both(vocab, codes, probes, nodes)
        np.testing.assert_array_equal(fast, plain)
    # The descent's word comes first and no word repeats in a row.
    words = vocab.assign(codes, 16, 8)
    np.testing.assert_array_equal(words[:, 0], vocab.assign(codes, 1)[:, 0])
    assert all(len(set(r)) == 16 for r in words.tolist())


def test_empty_input():
    vocab = named_vocabulary("orb-64k")
    assert vocab.assign(np.zeros((0, 32), np.uint8), 16, 8).shape == (0, 16)


def test_a_numba_that_cannot_load_falls_back_to_numpy(monkeypatch):
    # (e.g. a Numba release that refuses this NumPy: its import raises)
    import sys

    vocab = named_vocabulary("orb-16k")
    codes = _near(vocab, 300, 0.12, 4)
    want = vocab.assign(codes, 16, 8)
    monkeypatch.setattr(compiled, "AVAILABLE", True)
    monkeypatch.setitem(sys.modules, "matchkit.index._compiled", None)  # (import fails)
    with pytest.warns(RuntimeWarning, match="Numba cannot be used"):
        got = vocab.assign(codes, 16, 8)
    np.testing.assert_array_equal(got, want)
    assert compiled.AVAILABLE is False
    assert compiled.near_pairs(np.zeros((1, 4), np.uint64), np.zeros((1, 1), np.int64),
                               np.zeros(2, np.int64), np.zeros((0, 4), np.uint64), 1, 1) is None
