"""The compiled loops behind ``compiled`` (this module imports Numba, so it
is loaded only on first use)."""

import numba
import numpy as np

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@numba.njit(cache=True, nogil=True, inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return np.int64((x * _H01) >> np.uint64(56))


@numba.njit(cache=True, nogil=True, inline="always")
def _distance(q, i, table, j, words):
    """Differing bits of codes ``q[i]`` and ``table[j]``: their first ``words``
    words (uint64; uint32 in a narrowed saved index). A literal ``words``
    lets the loop unroll: the word choice passes 4, 30% faster than a shape."""
    d = 0
    for w in range(words):
        d += _popcount(q[i, w] ^ np.uint64(table[j, w]))
    return d


@numba.njit(cache=True, nogil=True, inline="always")
def _keep(buf, size, filled, value):
    """Insert ``value`` into the ascending ``buf[:filled]`` holding at most
    ``size`` values; returns the new fill."""
    if filled == size:
        if value >= buf[size - 1]:
            return filled
        at = size - 1
    else:
        at = filled
        filled += 1
    while at > 0 and buf[at - 1] > value:
        buf[at] = buf[at - 1]
        at -= 1
    buf[at] = value
    return filled


@numba.njit(cache=True, nogil=True)
def assign_words(q, top, leaves, probes, nodes, out):
    """``Vocabulary.assign`` of queries ``q`` (n, 4) uint64 against ``top``
    (K1, 4) and ``leaves`` (K1, K2, 4) uint64, into ``out`` (n, probes) int64."""
    k1 = top.shape[0]
    k2 = leaves.shape[1]
    words = k1 * k2
    best = np.empty(nodes, np.int64)
    ranked = np.empty(max(probes - 1, 1), np.int64)
    for i in range(q.shape[0]):
        filled = 0
        for j in range(k1):
            filled = _keep(best, nodes, filled, _distance(q, i, top, j, 4) * k1 + j)
        filled = 0
        first = -1
        first_score = np.int64(0)
        for s in range(nodes):
            node = best[s] % k1
            leaf_rows = leaves[node]
            base = node * k2
            if s == 0:
                # The descent's leaf first: the best leaf of the best node.
                for leaf in range(k2):
                    score = _distance(q, i, leaf_rows, leaf, 4) * words + base + leaf
                    if first < 0 or score < first_score:
                        first, first_score = leaf, score
                out[i, 0] = base + first
                if probes == 1:
                    break
            for leaf in range(k2):
                if s == 0 and leaf == first:
                    continue
                filled = _keep(ranked, probes - 1, filled,
                               _distance(q, i, leaf_rows, leaf, 4) * words + base + leaf)
        for p in range(probes - 1):
            out[i, p + 1] = ranked[p] % words


@numba.njit(cache=True, nogil=True)
def _count_or_fill(qsigs, probed, first, esigs, limits, scale, qi, ei, dist):
    """One pass over every (query, probed word, entry filed there): counts
    the pairs within the query's ``limits[q]`` (``qi`` empty) or writes them."""
    n = 0
    fill = len(qi) > 0
    for q in range(qsigs.shape[0]):
        limit = limits[q]
        for p in range(probed.shape[1]):
            w = np.int64(probed[q, p])
            for e in range(first[w], first[w + 1]):
                d = _distance(qsigs, q, esigs, e, qsigs.shape[1]) * scale
                if d <= limit:
                    if fill:
                        qi[n] = q
                        ei[n] = e
                        dist[n] = d
                    n += 1
    return n


@numba.njit(cache=True, nogil=True)
def near_pairs(qsigs, probed, first, esigs, limits, scale):
    """(query rows, entry rows, distances) of every entry filed under a word
    a query probed and within ``limits`` of it (per query; signature
    distance x ``scale``), by query, then probe, then entry."""
    none = np.zeros(0, np.int64)
    n = _count_or_fill(qsigs, probed, first, esigs, limits, scale, none, none, none)
    qi = np.empty(n, np.int64)
    ei = np.empty(n, np.int64)
    dist = np.empty(n, np.int64)
    if n:
        _count_or_fill(qsigs, probed, first, esigs, limits, scale, qi, ei, dist)
    return qi, ei, dist


@numba.njit(cache=True, nogil=True)
def search_postings(qsigs, words, offsets, pkeys, psigs, k, scale, keys, dists):
    """For each query (signature ``qsigs[i]``, probed words ``words[i]``): the
    ``k`` postings of those words nearest by (distance, key), into ``keys``
    and ``dists`` (distance x ``scale``; rows left as they are past what
    was found). A posting is packed as distance << 46 | key (keys < 2**46),
    so one sorted buffer of int64 orders by distance, then key."""
    best = np.empty(k, np.int64)
    low = np.int64((1 << 46) - 1)
    for i in range(qsigs.shape[0]):
        filled = 0
        for p in range(words.shape[1]):
            w = np.int64(words[i, p])
            for e in range(offsets[w], offsets[w + 1]):
                d = _distance(qsigs, i, psigs, e, qsigs.shape[1])
                filled = _keep(best, k, filled, (np.int64(d) << 46) | np.int64(pkeys[e]))
        for c in range(filled):
            keys[i, c] = best[c] & low
            dists[i, c] = (best[c] >> 46) * scale
