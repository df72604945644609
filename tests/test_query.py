"""Query images that are not in the gallery: candidates, evidence, decisions."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from conftest import make_photo
from matchkit import Gallery, Settings
from matchkit.features import extract
from matchkit.match.query import QueryMatcher, match_strength, query


@pytest.fixture
def gallery(tmp_path: Path):
    d = tmp_path / "gal"
    d.mkdir()
    for seed in range(1, 7):
        make_photo(seed, (480, 360)).save(d / f"p{seed}.jpg", quality=92)
    with Gallery(tmp_path / "g") as g:
        g.add(sorted(d.iterdir()))
        g.save()
        yield g


def _cluttered_frame(photo: Image.Image, seed: int = 0) -> Image.Image:
    """The photo shown small inside a big busy frame (a screenshot-like page)."""
    rng = random.Random(seed)
    page = Image.new("RGB", (1400, 1000), (235, 235, 235))
    draw = ImageDraw.Draw(page)
    for _ in range(100):  # bits of "text" and icons all over the page
        x, y = rng.randrange(0, 1380), rng.randrange(0, 990)
        draw.rectangle((x, y, x + rng.randrange(3, 20), y + rng.randrange(3, 10)),
                       fill=tuple(rng.randrange(0, 120) for _ in range(3)))
    page.paste(photo.resize((300, 225)), (900, 80))
    return page


def test_edited_query_finds_its_original_with_evidence(gallery, tmp_path):
    src = make_photo(3, (480, 360))
    edits = {
        "crop": src.crop((60, 40, 420, 320)),
        "rot": src.rotate(12, expand=True, fillcolor=(0, 0, 0)),
        "flip": src.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "small": src.resize((160, 120)),
    }
    for name, im in edits.items():
        im.save(tmp_path / f"{name}.jpg", quality=80)
    make_photo(99, (480, 360)).save(tmp_path / "other.jpg")
    results = query(gallery, [tmp_path / f"{n}.jpg" for n in edits] + [tmp_path / "other.jpg"])
    target = gallery.find(gallery.path.parent / "gal" / "p3.jpg").id
    for r in results[:-1]:
        best = r.matches[0]
        assert best.id == target, r.path
        assert [m.id for m in r.matches] == [target]  # and nothing else
        ev = best.to_dict()["evidence"]
        assert ev["rule"] in ("phash", "phash+colour", "local")
        assert best.score >= 0.5
    rot = results[1].matches[0].to_dict()["evidence"]
    assert rot["rule"] == "local" and rot["inliers"] >= 12 and rot["overlap_correlation"] > 0.5
    assert results[-1].matches == []  # an unrelated photo matches nothing
    assert all(n.score < 0.5 for n in results[-1].neighbours)


def test_exclude_leaves_images_out(gallery, tmp_path):
    make_photo(2, (480, 360)).crop((0, 0, 400, 300)).save(tmp_path / "q.jpg")
    rec = extract(tmp_path / "q.jpg")
    target = gallery.find(gallery.path.parent / "gal" / "p2.jpg").id
    with QueryMatcher(gallery) as m:
        plain, without = m.match_records([rec, rec], [set(), {target}])
    assert plain[0].id == target and plain[0].matched
    assert target not in {n.id for n in without}
    assert not any(n.matched for n in without)


def test_zoom_finds_a_photo_shown_small_in_a_busy_frame(gallery, tmp_path):
    _cluttered_frame(make_photo(5, (480, 360))).save(tmp_path / "page.jpg", quality=90)
    target = gallery.find(gallery.path.parent / "gal" / "p5.jpg").id
    rec = extract(tmp_path / "page.jpg")
    with QueryMatcher(gallery, zoom=False) as m:
        assert not any(n.matched for n in m.match_records([rec])[0])
    with QueryMatcher(gallery) as m:
        found = m.match_records([rec])[0]
    assert found[0].id == target and found[0].matched
    assert found[0].evidence.extra.get("zoom") is True
    assert [n.id for n in found if n.matched] == [target]


def test_unreadable_query_is_reported_and_others_complete(gallery, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    make_photo(1, (480, 360)).save(tmp_path / "good.jpg", quality=70)
    bad, good = query(gallery, [tmp_path / "bad.jpg", tmp_path / "good.jpg"])
    assert bad.error and "corrupt" in bad.error or "not an image" in bad.error
    assert bad.to_dict()["error"] == bad.error
    assert good.error is None and good.matches


def test_match_strength_orders_evidence():
    from matchkit.signals.local import Verification
    from matchkit.match.pairs import PairEvidence

    s = Settings()
    exact = PairEvidence(1, 2, 0, 1.0, rule="phash")
    near = PairEvidence(1, 2, 35, 1.0, rule="phash")
    local = PairEvidence(1, 2, 120, 0.5, verification=Verification(40, 30), rule="local",
                         overlap_correlation=0.9)
    weak = PairEvidence(1, 2, 120, 0.5, verification=Verification(12, 8), overlap_correlation=0.4)
    nothing = PairEvidence(1, 2, 128, 0.5)
    scores = [match_strength(e, s) for e in (exact, near, local, weak, nothing)]
    assert scores[0] == 1.0 and scores[0] > scores[1] >= 0.75
    assert 0.5 <= scores[2] < 1.0
    assert 0 < scores[3] < 0.5 and scores[4] == 0.0


def test_the_mirrored_look_is_taken_only_where_the_hashes_mean_it(gallery, tmp_path,
                                                                   monkeypatch):
    import matchkit.match.pairs as M
    import matchkit.match.verification as V

    make_photo(4, (480, 360)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop(
        (12, 9, 468, 351)).rotate(3).save(tmp_path / "flip.jpg", quality=85)
    for i in range(6):
        make_photo(300 + i, (480, 360)).save(tmp_path / f"other{i}.jpg", quality=85)
    recs = [extract(p) for p in sorted(tmp_path.glob("*.jpg"))]
    looked = []
    real = V.mirrored_look
    monkeypatch.setattr(V, "mirrored_look", lambda fa, fb, s, looks=None: looked.append(
        s.mirror_max_distance) or real(fa, fb, s, looks))
    distances = []
    real_verify = M._verify_pair

    def verify(ev, *a, **kw):
        if kw.get("mirror") and ev.extra.get("reflect"):
            distances.append(ev.phash_distance)
        return real_verify(ev, *a, **kw)

    import matchkit.match.query as Q
    monkeypatch.setattr(Q, "_verify_pair", verify)
    for limit in (256, 100):
        looked.clear()
        distances.clear()
        with QueryMatcher(gallery, gallery.settings.with_(mirror_max_distance=limit)) as m:
            found = m.match_records(recs)
        flip = [n for n in found[0] if n.matched]  # found by its mirrored look
        assert flip and flip[0].path.endswith("p4.jpg") and flip[0].evidence.rule == "local"
        assert all(d <= limit for d in distances)
        if limit == 256:
            tried_all = len(looked)
    assert tried_all > len(looked)  # farther reflections were looked at before, not now


def test_the_zoomed_look_votes_with_its_finest_pyramid_levels_only(gallery, tmp_path,
                                                                   monkeypatch):
    """The closer look's keypoints carry their ORB pyramid level; only levels
    below ``ZOOM_VOTE_LEVELS`` vote (the coarser ones repeat the first look's
    scales); the usual look's query features vote whatever their level."""
    import numpy as np

    from matchkit.match import burst
    
    from matchkit.signals.local import extract_local, working_grey
    from matchkit.match.query import ZOOM_VOTE_LEVELS

    page = _cluttered_frame(make_photo(5, (480, 360)))
    grey = working_grey(page, 1024)
    plain, levelled = extract_local(grey, 2000), extract_local(grey, 2000, octaves=True)
    assert plain.octave is None
    assert np.array_equal(plain.desc, levelled.desc) and np.array_equal(plain.xy, levelled.xy)
    assert levelled.octave.min() == 0 and levelled.octave.max() >= ZOOM_VOTE_LEVELS
    assert np.array_equal(levelled.head(10).octave, levelled.octave[:10])

    searched = []
    index = gallery.orb_index
    real = index.search
    # (k = burst.K: the burstiness check's look-up of matched inliers, not a vote)
    monkeypatch.setattr(index, "search", lambda codes, k, **kw: real(codes, k, **kw)
                        if k == burst.K else searched.append(len(codes)) or real(codes, k, **kw))
    page.save(tmp_path / "page.jpg", quality=90)
    rec = extract(tmp_path / "page.jpg")
    with QueryMatcher(gallery) as m:
        found = m.match_records([rec])[0]
        zoomed = m._zoomed(rec)
    assert found[0].evidence.extra.get("zoom") is True  # (the closer look was taken)
    fine = int((zoomed.local.octave < ZOOM_VOTE_LEVELS).sum())
    assert 0 < fine < len(zoomed.local)
    assert searched[-1] == fine  # the closer look's vote search: fine levels only
    # the first look's: its usual query descriptors, whatever their level
    assert searched[0] == min(len(rec.local), gallery.settings.query_features)
