"""The text-in-images benchmark sets (benchmarks/ocr_set.py): deterministic,
truth that matches the files, different screens really differ."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import ocr_set  # noqa: E402


@pytest.fixture(scope="module")
def have_fonts():
    try:
        return ocr_set.fonts()
    except SystemExit as e:  # no TrueType fonts on this machine
        pytest.skip(str(e))


def test_screens_are_copies_within_a_group_and_differ_between(tmp_path, have_fonts):
    out = ocr_set.build_screens(3, tmp_path / "s")
    truth = json.loads((out / "truth.json").read_text())
    files = sorted(p.name for p in out.iterdir() if p.suffix != ".json")
    assert files == sorted(n for names in truth["groups"].values() for n in names)
    assert len(files) == 9 and set(truth["images"]) == set(files)
    a, b = (np.asarray(Image.open(out / f"screen000{i}__orig.png").convert("L"), np.int16)
            for i in (0, 1))
    assert a.shape == b.shape
    changed = np.abs(a - b) > 40
    # Same window chrome (top bar, sidebar), different document text.
    assert not changed[:32].any() and not changed[:, :200].any()
    assert changed[90:, 220:].mean() > 0.005
    assert truth["images"]["screen0000__orig.png"] != truth["images"]["screen0001__orig.png"]
    # Same seed, same files.
    again = ocr_set.build_screens(3, tmp_path / "t")
    assert (again / "screen0002__crop.jpg").read_bytes() == (out / "screen0002__crop.jpg").read_bytes()


def test_phrases_are_seeded_and_in_the_word_lists():
    import random

    p = ocr_set.phrase(random.Random(1), "de", 4)
    assert p == ocr_set.phrase(random.Random(1), "de", 4)
    words = set(ocr_set.WORDS["de"].split())
    assert all(w in words or w.isdigit() for w in p.split()) and len(p.split()) >= 4
