"""The ``recapture`` edit: reproducible, tilted, and shared frames per setup."""

import numpy as np
from PIL import Image

from matchkit.match.edits import Edit, apply_edit, load_suite


def _photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))


def _edit(**kw) -> Edit:
    return Edit("monitor", ({"op": "recapture", "kind": "monitor", "degrees": 25,
                             "noise": 0, **kw},))


def test_recapture_is_reproducible_and_is_a_new_photo():
    a, save = apply_edit(_photo(1), _edit(), "a.jpg")
    b, _ = apply_edit(_photo(1), _edit(), "a.jpg")
    assert save["format"] == "JPEG"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.size == (1024, 768)


def test_one_setup_gives_different_photos_the_same_frame():
    e = _edit(setup=3)
    a = np.asarray(apply_edit(_photo(1), e, "a.jpg")[0], dtype=np.int16)
    b = np.asarray(apply_edit(_photo(2), e, "b.jpg")[0], dtype=np.int16)
    # The background corner is the setup's; the centre shows each photo.
    assert np.abs(a[:40, :40] - b[:40, :40]).max() <= 2
    assert np.abs(a[330:430, 450:570] - b[330:430, 450:570]).mean() > 20
    # Without a setup, each photo gets its own pose and background.
    c = np.asarray(apply_edit(_photo(1), _edit(), "a.jpg")[0], dtype=np.int16)
    d = np.asarray(apply_edit(_photo(1), _edit(), "b.jpg")[0], dtype=np.int16)
    assert np.abs(c[:40, :40] - d[:40, :40]).mean() > 5


def test_recapture_suite_loads():
    suite = load_suite("recapture")
    assert {e.name for e in suite.edits} == {"monitor", "print"}


def test_recapture_set_negatives_are_photos_on_one_setup(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import sets

    stems = [f"p{i}" for i in range(20)]
    for s in stems:
        (tmp_path / f"{s}__orig.jpg").write_bytes(b"")
        (tmp_path / f"{s}__monitor.jpg").write_bytes(b"")
    neg = sets.hard_negatives("recapture", tmp_path)
    setup = {s: sets.recapture_setup(s) for s in stems}
    want = {frozenset((f"{a}__monitor.jpg", f"{b}__monitor.jpg"))
            for i, a in enumerate(stems) for b in stems[i + 1:] if setup[a] == setup[b]}
    assert neg == want and len(set(setup.values())) > 1
    assert sets.hard_negatives("hard", tmp_path) == set()
