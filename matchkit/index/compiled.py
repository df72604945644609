"""The index's inner loops compiled with Numba: the same results, in the same
order, as their NumPy forms, at a fraction of the time.

- :func:`assign_words`: the word choice of ``Vocabulary.assign``. Choosing 16
  of 65,536 words for a query descriptor compares it with 256 first-level
  centroids and the 2,048 leaves of its 8 best nodes. NumPy does that in
  passes over (queries x leaves) temporaries, one per 64-bit word and
  operation: about 45-60 us a descriptor on this machine, 5 ms an image in
  the IVF votes of a run, more than ORB extraction; compiled, about 10 us.
  Identical by construction: candidates are ranked by the same integer
  score as the NumPy form (distance, then word number; nodes by distance,
  then node number), whose values are distinct, so any correct selection
  gives the same words in the same order.
- :func:`search_postings`: an IVF search's comparisons of each query with
  the postings of its probed words, the k nearest kept in a small sorted
  buffer (no gathered candidates, no sort).
- :func:`near_pairs`: the (stored query, new entry) comparisons of an
  incremental IVF add (``ivf_probed.reached``), one pass without the
  (pairs x signature words) temporaries.

``tests/test_compiled.py`` checks both against the NumPy forms, ties
included. Without Numba (``AVAILABLE`` False) the NumPy forms run. Numba is
imported on first use (``_compiled``), so commands that never choose words
skip its import (0.2 s, and about 115 MB of its shared library mapped).
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings

import numpy as np

#: Whether the compiled forms may be used here: Numba is installed. Set to
#: False (with one warning) when importing it fails, e.g. a Numba release
#: that does not support this NumPy yet; the NumPy forms then run.
AVAILABLE = importlib.util.find_spec("numba") is not None


def _kernels():
    """The compiled module; None when ``AVAILABLE`` is False or it cannot load
    (then ``AVAILABLE`` becomes False, so the import is not tried again)."""
    global AVAILABLE
    if not AVAILABLE:
        return None
    try:
        kernels = importlib.import_module("matchkit.index._compiled")
    except Exception as e:  # (ImportError, or Numba refusing this NumPy)
        warnings.warn(f"matchkit: Numba cannot be used ({e}); the NumPy forms run instead "
                      "(the same results, slower)", RuntimeWarning, stacklevel=3)
        AVAILABLE = False
        return None
    return kernels


def warm() -> None:
    """Load the compiled forms now (Numba's import and its cached machine code,
    about 0.6 s once per process) rather than in the first search: a gallery
    opened for queries pays it at open, not in its first query's latency."""
    if _kernels() is not None:
        out = np.zeros((1, 1), np.int64)
        assign_words(np.zeros((1, 4), np.uint64), np.zeros((1, 4), np.uint64),
                     np.zeros((1, 1, 4), np.uint64), 1, 1, out)


def assign_words(q: np.ndarray, top: np.ndarray, leaves: np.ndarray, probes: int,
                 nodes: int, out: np.ndarray) -> bool:
    """``Vocabulary.assign`` of queries ``q`` (n, 4) uint64 against ``top``
    (K1, 4) and ``leaves`` (K1, K2, 4) uint64, into ``out`` (n, probes) int64;
    False (nothing done) when the compiled form cannot load."""
    kernels = _kernels()
    if kernels is None:
        return False
    kernels.assign_words(q, top, leaves, probes, nodes, out)
    return True


def near_pairs(qsigs: np.ndarray, probed: np.ndarray, first: np.ndarray, esigs: np.ndarray,
               limit: int | np.ndarray, scale: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(query rows, entry rows, distances), int64, of every entry filed under
    a word a query probed and within ``limit`` of it (one for all, or one
    per query): query signatures
    ``qsigs`` (n, words) uint64, their probed words ``probed`` (n, probes),
    entries ``esigs`` (m, words) filed by word (word w holds rows
    ``first[w]:first[w + 1]``); distance = differing signature bits x
    ``scale``. In order of query, then probe, then entry. None when the
    compiled form cannot load."""
    kernels = _kernels()
    if kernels is None:
        return None
    limits = np.ascontiguousarray(np.broadcast_to(np.asarray(limit, np.int64), (len(qsigs),)))
    return kernels.near_pairs(np.ascontiguousarray(qsigs, np.uint64), np.ascontiguousarray(probed),
                              np.ascontiguousarray(first, np.int64),
                              np.ascontiguousarray(esigs, np.uint64), limits, int(scale))


def search_postings(qsigs: np.ndarray, words: np.ndarray, offsets: np.ndarray,
                    pkeys: np.ndarray, psigs: np.ndarray, k: int, scale: int,
                    keys: np.ndarray, dists: np.ndarray) -> bool:
    """``IVFIndex._search_chunk``: for each query (signature ``qsigs[i]``,
    (n, words) uint64; probed words ``words[i]``) the ``k`` postings of those
    words nearest by (distance, key), into ``keys`` and ``dists`` (n, k)
    int64, which come filled with the "nothing found" values; False
    (nothing done) when the compiled form cannot load."""
    kernels = _kernels()
    if kernels is None:
        return False
    kernels.search_postings(np.ascontiguousarray(qsigs, np.uint64), np.ascontiguousarray(words),
                            np.ascontiguousarray(offsets, np.int64), pkeys, psigs, int(k),
                            int(scale), keys, dists)
    return True
