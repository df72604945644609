"""An IVF index's postings, sorted by (word, key), with new entries merged in.

The postings are arrays sorted by word and, within a word, by key
(``IVFIndex``: word w holds rows ``offsets[w]:offsets[w + 1]``). Sorting them
all again whenever entries are added made every add cost what the index
holds: 5.9 s of a 1% add to 100,000 images (10M postings). The entries
already there are in order, so only the new ones are sorted, and each is put
in its place (a binary search and one copy of the arrays).
"""

from __future__ import annotations

import numpy as np

#: Bits of a key in the (word, key) sort code (``ivf.MAX_KEY`` is ``1 << 46``).
KEY_BITS = 46


def merge_postings(offsets: np.ndarray, keys: np.ndarray, sigs: np.ndarray,
                   new_words: np.ndarray, new_keys: np.ndarray, new_sigs: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, keys, signatures) of the postings ``offsets``/``keys``/``sigs``
    with the entries (``new_words``, ``new_keys``, ``new_sigs``, in any
    order; keys not among ``keys``) merged in, sorted by (word, key) as
    sorting them all would leave them."""
    new_words = np.asarray(new_words, np.int64)
    new_keys = np.asarray(new_keys, np.int64)
    order = np.lexsort((new_keys, new_words))
    new_words, new_keys, new_sigs = new_words[order], new_keys[order], new_sigs[order]
    words = len(offsets) - 1
    out = np.zeros(words + 1, np.int64)
    np.cumsum(np.bincount(new_words, minlength=words), out=out[1:])
    out += offsets
    if not len(keys):
        return out, np.ascontiguousarray(new_keys), np.ascontiguousarray(new_sigs, np.uint64)
    if words > 1 << (62 - KEY_BITS):  # (the sort code would not fit in 63 bits)
        old = np.repeat(np.arange(words), np.diff(offsets))
        all_words = np.concatenate([old, new_words])
        order = np.lexsort((np.concatenate([keys, new_keys]), all_words))
        return (out, np.concatenate([keys, new_keys])[order],
                np.ascontiguousarray(np.concatenate([sigs, new_sigs])[order], np.uint64))
    code = np.repeat(np.arange(words, dtype=np.int64) << KEY_BITS, np.diff(offsets))
    code |= keys
    at = np.searchsorted(code, (new_words << KEY_BITS) | new_keys)
    del code
    return (out, np.insert(np.asarray(keys, np.int64), at, new_keys),
            np.ascontiguousarray(np.insert(sigs, at, new_sigs, axis=0), np.uint64))
