"""Settings that steer the pipeline, as one plain dataclass.

Later profiles (``configs/*.toml``) override these fields; keeping them in one
place means every command and the Python API agree on the defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from .io import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Settings:
    #: Longest side of the thumbnail that perceptual hashes are computed from.
    #: pHash looks at 32x32 anyway; decoding JPEGs this small is ~2x faster.
    hash_side: int = 64
    #: Files with more pixels than this are skipped, not decoded.
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Largest dihedral pHash distance (of 256 bits) accepted as a near duplicate.
    phash_max_distance: int = 90
    #: Pairs at most this far apart match without further evidence.
    phash_strong_distance: int = 40
    #: Smallest colour-histogram intersection for matches beyond the strong distance.
    colour_min_similarity: float = 0.9
    #: ... which must also be this much closer than either image's crowd distance
    #: (distance to its ``neighbours``-th nearest image).
    crowd_margin: int = 5
    #: Pairs this close with equal dimensions get their full pixels compared.
    exact_check_distance: int = 16
    #: Neighbours fetched per hash variant when looking for candidates.
    neighbours: int = 16
    #: Worker processes for decoding and feature extraction (0: one per core).
    workers: int = 0

    def decode_side(self) -> int:
        """Longest side to decode: what the most demanding enabled feature needs."""
        return self.hash_side

    def n_workers(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    def with_(self, **changes) -> "Settings":
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
