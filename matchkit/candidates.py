"""Candidate pairs from the hash index: k-nearest-neighbour queries, never all pairs.

Each query image asks the pHash index for neighbours of all 8 of its dihedral
hash variants (the index holds one hash per image), so a flipped or rotated
copy is found at the distance of its best-aligned variant. The number of
neighbours grows only for queries whose whole neighbour list was within the
distance limit (many copies of one picture), so the cost per image stays a
bounded number of kNN queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .index import HammingIndex

_MAX_NEIGHBOURS = 1024


@dataclass
class Candidates:
    """Candidate pairs and how crowded each query's neighbourhood is."""

    #: (a, b) with a < b -> smallest dihedral pHash distance.
    pairs: dict[tuple[int, int], int] = field(default_factory=dict)
    #: id -> distance to its ``neighbours``-th nearest other image (the
    #: "crowd" distance). Small for images in dense regions of hash space:
    #: document scans, screenshots, photos padded onto the same canvas.
    crowd: dict[int, int] = field(default_factory=dict)


def phash_candidates(
    index: HammingIndex,
    ids: Sequence[int],
    variants: np.ndarray,
    max_distance: int,
    neighbours: int = 16,
    allowed: set[int] | None = None,
) -> Candidates:
    """Pairs ``(a, b)`` with ``a < b`` whose dihedral pHash distance is within limit.

    ``variants`` has shape (len(ids), 8, nbytes). Only pairs whose other side
    is in ``allowed`` (default: ``ids``) are returned; the value is the
    smallest distance over the 8 variants.
    """
    ids = np.asarray(ids, dtype=np.int64)
    allowed = set(ids.tolist()) if allowed is None else allowed
    n_var = variants.shape[1]
    queries = variants.reshape(len(ids) * n_var, -1)
    owners = np.repeat(ids, n_var)
    out = Candidates()
    best = out.pairs
    rows = np.arange(len(queries))
    k = max(1, neighbours)
    first = True
    while len(rows):
        keys, dists = index.search(queries[rows], k)
        if first:
            out.crowd = _crowd(owners, keys, dists, k, index.nbits)
            first = False
        for owner, krow, drow in zip(owners[rows].tolist(), keys.tolist(), dists.tolist()):
            for key, d in zip(krow, drow):
                if d > max_distance:
                    break
                if key < 0 or key == owner or key not in allowed:
                    continue
                pair = (owner, key) if owner < key else (key, owner)
                if d < best.get(pair, max_distance + 1):
                    best[pair] = d
        # Rows whose k-th neighbour is still within the limit may have more.
        saturated = dists[:, -1] <= max_distance
        if k >= min(_MAX_NEIGHBOURS, len(index)) or not saturated.any():
            break
        rows = rows[saturated]
        k = min(k * 4, _MAX_NEIGHBOURS)
    return out


def _crowd(owners: np.ndarray, keys: np.ndarray, dists: np.ndarray, k: int,
           nbits: int) -> dict[int, int]:
    """Distance from each owner to its k-th nearest other image, over all variants."""
    nearest: dict[int, dict[int, int]] = {}
    for owner, krow, drow in zip(owners.tolist(), keys.tolist(), dists.tolist()):
        seen = nearest.setdefault(owner, {})
        for key, d in zip(krow, drow):
            if key >= 0 and key != owner and d < seen.get(key, nbits + 1):
                seen[key] = d
    out = {}
    for owner, seen in nearest.items():
        ds = sorted(seen.values())
        out[owner] = ds[k - 1] if len(ds) >= k else nbits
    return out
