"""Nearest-neighbour indexes, each a plain data structure over keys and codes:
:mod:`.hamming` (binary codes in a USearch HNSW graph, or exact below a size),
:mod:`.ivf` (an inverted file of binary visual words, memory-mapped),
:mod:`.vectors` (float embeddings), :mod:`.pictures` (the frame-picture hashes)
and :mod:`.cache` (indexes kept open between requests of the service)."""

from matchkit.index.hamming import EXACT_SEARCH_BELOW, HammingIndex, transient_index, within
from matchkit.util.moved import forward as _forward

__all__ = ["EXACT_SEARCH_BELOW", "HammingIndex", "transient_index", "within"]
__getattr__ = _forward("matchkit.index", "matchkit.index.hamming")
