"""benchmarks/ivf_scan_share.py: the share of postings a query scans."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from matchkit.index.ivf import Vocabulary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import ivf_scan_share  # noqa: E402


def test_scan_share_counts_the_postings_of_the_probed_words():
    rng = np.random.default_rng(3)
    vocab = Vocabulary(rng.integers(0, 256, (3, 32), dtype=np.uint8),
                       rng.integers(0, 256, (3, 5, 32), dtype=np.uint8), np.arange(64))
    entries = rng.integers(0, 256, (400, 32), dtype=np.uint8)
    queries = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    share, occupancy = ivf_scan_share.scan_share(vocab, entries, queries, probes=4, nodes=2)
    filed = vocab.assign(entries, 1)[:, 0]
    probed = vocab.assign(queries, 4, 2)
    scanned = [np.isin(filed, row).sum() for row in probed]
    assert share == pytest.approx(np.mean(scanned) / len(entries), rel=1e-12)
    counts = np.bincount(filed, minlength=vocab.words)
    assert occupancy == pytest.approx(counts.max() / counts.mean(), rel=1e-12)
    # More probes never scan less; every word probed scans everything.
    assert ivf_scan_share.scan_share(vocab, entries, queries, 8, 2)[0] >= share
    assert ivf_scan_share.scan_share(vocab, entries, queries, 15, 3)[0] == 1.0
