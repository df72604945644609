"""The shortcuts taken for speed decide exactly what the slow path would.

Each shortcut (a verification cascade, a thumbnail check before a full-size
decode, whole-array evidence) is checked against the plain computation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import matchkit.match.content as C
import matchkit.match.pairs as M
import matchkit.match.verification as V
from matchkit import Gallery, Settings
from matchkit import dedupe
from matchkit.signals.colour import histogram_similarities, histogram_similarity
from matchkit.signals.hashing import dihedral_match, dihedral_match_many
from matchkit.util.arrays import SparseRows

from conftest import textured


def test_many_pair_evidence_equals_pair_by_pair():
    rng = np.random.default_rng(3)
    variants = rng.integers(0, 256, (40, 8, 32), dtype=np.uint8)
    plain = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    plain[5] = variants[5, 3]  # an exact dihedral match
    d, v = dihedral_match_many(variants, plain)
    assert [(int(a), int(b)) for a, b in zip(d, v)] == [
        dihedral_match(variants[i], plain[i]) for i in range(40)]
    assert (d[5], v[5]) == (0, 3)
    hists = rng.integers(0, 30, (12, 512))
    hists[7] = 0  # an empty histogram
    ra, rb = rng.integers(0, 12, 40), rng.integers(0, 12, 40)
    ra[0] = 7
    sims = histogram_similarities(hists, ra, rb, chunk=16)
    sparse = SparseRows(512, "<u2")
    sparse.append(hists[:5])
    sparse.append(hists[5:])
    for table in (hists, hists.astype(np.uint16), hists.astype(np.uint32), sparse):
        assert histogram_similarities(table, ra, rb, chunk=16).tolist() == [  # (bit for bit)
            histogram_similarity(hists[a], hists[b]) for a, b in zip(ra, rb)]
    assert sims[0] == 0.0
    assert histogram_similarities(hists, [], []).shape == (0,)


def _gallery_pair(tmp_path, a: Image.Image, b: Image.Image, names=("a.png", "b.png")):
    d = tmp_path / "imgs"
    d.mkdir(parents=True, exist_ok=True)
    a.save(d / names[0])
    b.save(d / names[1])
    g = Gallery(tmp_path / "g")
    ids = g.add([d / names[0], d / names[1]]).ids
    return g, ids


def test_thumbnails_prove_different_pixels_but_never_hide_identical_ones(tmp_path):
    base = textured(11)
    marked = base.copy()
    ImageDraw.Draw(marked).rectangle((40, 40, 200, 120), fill=(255, 0, 0))
    g, (a, b) = _gallery_pair(tmp_path, base, marked)
    with g:
        m = M.PairMatcher(g, [a, b], Settings())
        assert not m.may_share_pixels(a, b)
    # Same pixels in two containers (JPEG decoded, stored as PNG and BMP).
    d = tmp_path / "same"
    d.mkdir()
    big = textured(12, (1600, 1200))
    big.save(d / "x.jpg", quality=90)
    with Image.open(d / "x.jpg") as im:
        im.save(d / "x.png")
    with Gallery(tmp_path / "g2") as g2:
        ids = g2.add([d / "x.jpg", d / "x.png"]).ids
        assert M.PairMatcher(g2, ids, Settings()).may_share_pixels(*ids)
    report = dedupe([d])
    assert [p.kind for c in report.clusters for p in c.pairs] == ["exact"]


def _with_comment(jpeg: bytes, text: bytes) -> bytes:
    """The same coded picture with a COM segment after SOI: a lossless re-save."""
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def test_two_draft_decoded_jpegs_need_no_full_decode(tmp_path, monkeypatch):
    """Two JPEGs of one size decoded in draft mode: other hashes or another
    quality prove other pixels without decoding both files at full size; a
    lossless re-save (a comment added) is still an exact copy, and a PNG of
    the JPEG's pixels still needs (and gets) the full decode."""
    import io
    import matchkit.match.pixelchecks as PC
    calls: list[str] = []
    real = PC.full_pixel_digest
    monkeypatch.setattr(PC, "full_pixel_digest",
                        lambda path, settings: calls.append(str(path)) or real(path, settings))
    d = tmp_path / "jpegs"
    d.mkdir()
    big = textured(31, (1600, 1200))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    (d / "a.jpg").write_bytes(buf.getvalue())
    (d / "a-comment.jpg").write_bytes(_with_comment(buf.getvalue(), b"copied"))
    big.save(d / "a-q60.jpg", quality=60)
    report = dedupe([d], settings=Settings(local_features=False))
    kinds = sorted((sorted([Path(p.a).name, Path(p.b).name]), p.kind) for c in report.clusters for p in c.pairs)
    assert ["a-comment.jpg", "a.jpg"] in [names for names, kind in kinds if kind == "exact"]
    assert all(kind != "exact" for names, kind in kinds if "a-q60.jpg" in names)
    assert "a-q60.jpg" in {n for names, _ in kinds for n in names}  # still a near copy
    assert calls == []
    with Image.open(d / "a.jpg") as im:
        im.save(d / "a.png")
    report = dedupe([d], settings=Settings(local_features=False))
    assert calls  # the PNG's pixels are compared at full size
    exact = {n for c in report.clusters for p in c.pairs if p.kind == "exact"
             for n in (Path(p.a).name, Path(p.b).name)}
    assert {"a.jpg", "a-comment.jpg", "a.png"} <= exact


def test_verification_cascade_decides_like_full_matching(tmp_path, monkeypatch):
    img = textured(21)
    crop = img.crop((50, 30, 50 + 300, 30 + 230))
    calls = []
    real = V.verify
    monkeypatch.setattr(V, "verify", lambda a, b: calls.append((len(a), len(b))) or real(a, b))
    g, (a, b) = _gallery_pair(tmp_path, img, crop)
    with g:
        decisions = {}
        for n in (0, 300):
            s = Settings(verify_features=n)
            m = M.PairMatcher(g, [a, b], s)
            ev = m.evidence_between(a, b, reflect=False)
            calls.clear()
            m.verify([ev])
            decisions[n] = (ev.rule, list(calls))
        assert decisions[0][0] == decisions[300][0] == "local"
        assert all(max(c) > 300 for c in decisions[0][1])       # all keypoints
        assert decisions[300][1][0] == (300, 300)              # first look: the strongest 300
    # An unrelated pair with no votes is rejected by the first look alone.
    g2, (c, d) = _gallery_pair(tmp_path / "u", textured(31), textured(32))
    with g2:
        m = M.PairMatcher(g2, [c, d], Settings())
        ev = m.evidence_between(c, d, reflect=False)
        calls.clear()
        m.verify([ev])
        assert ev.rule == "" and calls == [(300, 300)]


def _mirror_outcomes(tmp_path, cases, crowd=None) -> dict:
    """Verify a mirrored-and-turned copy as each case (label, pHash distance,
    second hop) says, its hashes aligned best under a reflection: (rule,
    verified mirrored, mirrored look tried) by label. ``crowd``: the images'
    crowd distances, if known."""
    img = textured(23)
    rotated_flip = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(
        25, expand=True, fillcolor=(0, 0, 0))
    g, (a, b) = _gallery_pair(tmp_path, img, rotated_flip)
    outcomes = {}
    with g:
        m = M.PairMatcher(g, [a, b], Settings())
        if crowd is not None:
            m.crowd = {a: crowd[0], b: crowd[1]}
        for label, distance, hop in cases:
            ev = M.PairEvidence(a, b, distance, 0.5)
            ev.extra["reflect"] = True
            if hop:
                ev.extra["second_hop"] = True
            ev.pending = True
            m.verify([ev])
            outcomes[label] = (ev.rule, ev.verification.mirrored, "mirror_tried" in ev.extra)
        m.close()
    return outcomes


def test_mirrored_view_is_tried_only_when_the_hashes_mean_it(tmp_path):
    """A far-apart pair whose hashes happen to align best under a reflection
    is not verified mirrored in the first pass (chance); a close one is, and
    so is a second-hop pair that asks for it."""
    limit = Settings().mirror_max_distance
    outcomes = _mirror_outcomes(tmp_path, (("far", limit + 10, False), ("near", limit, False),
                                           ("hop", limit + 10, True)))
    assert outcomes["far"] == ("", False, False)
    assert outcomes["near"] == ("local", True, True)
    assert outcomes["hop"] == ("local", True, True)


def test_mirrored_view_is_not_tried_at_the_crowds_distance(tmp_path):
    """Where the images' unrelated neighbours sit as close as the pair's
    hashes (crowd distance), the alignment under a reflection is chance too:
    no mirrored look unless the pair is ``mirror_crowd_margin`` bits inside
    the closer crowd distance, or a second hop asks for it."""
    inside = 96 - Settings().mirror_crowd_margin  # a's 16th-nearest image is 96 bits away
    outcomes = _mirror_outcomes(tmp_path, (("at the crowd", inside + 1, False),
                                           ("inside it", inside, False), ("hop", 96, True)),
                                crowd=(96, 120))
    assert outcomes["at the crowd"] == ("", False, False)
    assert outcomes["inside it"] == ("local", True, True)
    assert outcomes["hop"] == ("local", True, True)


def test_a_hash_neighbour_at_the_crowds_distance_is_not_verified(tmp_path):
    """A pair that only the hash ranking made a candidate (no votes, one
    among the other's ``verify_top`` nearest) is verified only where its
    pHash distance is ``verify_crowd_margin`` bits inside its crowd distance:
    at the crowd's own distance it is as near as unrelated pictures. Votes
    still make it worth a look, as does a margin of 0 or an unknown crowd."""
    g, (a, b) = _gallery_pair(tmp_path, textured(41), textured(42))
    margin = Settings().verify_crowd_margin
    assert margin > 0

    def pending(distance, votes=0.0, crowd=(96, 110), settings=Settings()):
        m = M.PairMatcher(g, [a, b], settings)
        m.crowd = None if crowd is None else {a: crowd[0], b: crowd[1]}
        m.templated = {}
        try:
            ev, = m.global_evidence({(a, b): distance}, {(a, b): votes} if votes else {},
                                    {a: {b}}, None)
            return ev.extra["verifiable"], ev.pending
        finally:
            m.close()

    with g:
        assert pending(96 - margin) == (True, True)          # inside the crowd
        assert pending(96 - margin + 1) == (False, False)    # at the crowd's distance
        assert pending(96) == (False, False)
        assert pending(96 - margin + 1, votes=1.0) == (True, True)
        assert pending(96, crowd=None) == (True, True)
        assert pending(96, settings=Settings(verify_crowd_margin=0)) == (True, True)


def _border_box_line_by_line(thumb, tolerance=4.0):
    """``template.border_box`` as first written: one line at a time inwards."""
    t = thumb.astype(np.float32)
    h, w = t.shape[:2]

    def flat(line, ref):
        return float(line.std()) <= tolerance and abs(float(line.mean()) - ref) <= tolerance

    ref = float(np.median(np.concatenate([t[0], t[-1], t[:, 0], t[:, -1]])))
    top, bottom, left, right = 0, h, 0, w
    while top < bottom - 1 and flat(t[top], ref):
        top += 1
    while bottom - 1 > top and flat(t[bottom - 1], ref):
        bottom -= 1
    while left < right - 1 and flat(t[top:bottom, left], ref):
        left += 1
    while right - 1 > left and flat(t[top:bottom, right - 1], ref):
        right -= 1
    return top, bottom, left, right


def test_border_box_judges_all_lines_at_once_as_line_by_line():
    """Padded, letterboxed, flat, one-pixel, noisy-border and colour
    thumbnails: the whole-array border box equals the line-by-line one."""
    from matchkit.match.template import border_box

    rng = np.random.default_rng(11)
    seen = set()
    for _ in range(1500):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        a = np.full((h, w), int(rng.integers(0, 256)), np.uint8)
        if rng.random() < 0.8:  # a picture somewhere inside the fill
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            y1, x1 = int(rng.integers(y0, h + 1)), int(rng.integers(x0, w + 1))
            a[y0:y1, x0:x1] = rng.integers(0, 256, (y1 - y0, x1 - x0))
        if rng.random() < 0.3:  # fill that is nearly, not quite, flat
            a = np.clip(a.astype(int) + rng.integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
        if rng.random() < 0.1:
            a = np.stack([a, a // 2, a], -1)
        box = border_box(a)
        assert box == _border_box_line_by_line(a), (a.shape, box)
        seen.add(box == (0, h, 0, w))
    assert seen == {True, False}  # both bordered and borderless cases were met


def _distinctive_votes_one_by_one(images, dists, owner, keys, exclude, allowed, nbits,
                                  max_distance, ratio=0.8, min_votes=3):
    """The descriptor-by-descriptor reading of ``QueryMatcher._distinctive_votes``."""
    votes = {}
    for i, irow, drow in zip(owner.tolist(), images.tolist(), dists.tolist()):
        first, d1, d2 = -1, 0, 2 * nbits
        for g, d in zip(irow, drow):
            if g < 0 or g in exclude[i] or (allowed is not None and g not in allowed):
                continue
            if first < 0:
                first, d1 = g, d
            elif g != first:
                d2 = d
                break
        if first >= 0 and d1 <= max_distance and d1 <= ratio * d2:
            votes[(first, keys[i])] = votes.get((first, keys[i]), 0.0) + 1.0
    return {p: v for p, v in votes.items() if v >= min_votes}


def test_distinctive_votes_count_as_descriptor_by_descriptor():
    from types import SimpleNamespace

    from matchkit.store.gallery import ORB_KEY_STRIDE
    from matchkit.match.query import QueryMatcher

    rng = np.random.default_rng(11)
    voted = 0
    for trial in range(30):
        n_rec, k = int(rng.integers(1, 4)), 16
        sizes = rng.integers(0, 120, n_rec)
        total = int(sizes.sum())
        images = rng.integers(1, 9, (total, k))           # few images: repeats in a row
        images[rng.random((total, k)) < 0.1] = -1           # missing neighbours
        dists = np.sort(rng.integers(0, 90, (total, k)), axis=1)
        found = np.where(images >= 0, images * ORB_KEY_STRIDE + rng.integers(0, 50, images.shape),
                         -1)
        owner = np.repeat(np.arange(n_rec), sizes)
        keys = [100 + i for i in range(n_rec)]
        exclude = [set(rng.choice(8, int(rng.integers(0, 3)), replace=False).tolist())
                   if trial % 2 else set() for _ in range(n_rec)]
        allowed = set(range(1, 7)) if trial % 3 == 0 else None
        index = type("Index", (), {"nbits": 256, "__len__": lambda self: 5,
                                   "search": lambda self, codes, kk: (found, dists)})()
        fake = SimpleNamespace(settings=Settings(), gallery=SimpleNamespace(orb_index=index),
                               allowed=allowed)
        records = [SimpleNamespace(local=type("Local", (), {
            "desc": np.zeros((int(m), 32), np.uint8), "octave": None,
            "__len__": lambda self, m=int(m): m})())
            for m in sizes]
        got = QueryMatcher._distinctive_votes(fake, records, keys, exclude)
        want = _distinctive_votes_one_by_one(np.where(found >= 0, found // ORB_KEY_STRIDE, -1),
                                             dists, owner, keys, exclude, allowed, 256,
                                             Settings().vote_max_distance)
        assert got == want
        voted += bool(want)
    assert voted >= 20  # the data does cast votes


def test_thumbnail_looks_are_found_once_per_image_and_equal_a_fresh_look(monkeypatch):
    from matchkit.store.stored import thumb_features

    rng = np.random.default_rng(5)
    thumbs = [np.ascontiguousarray(
        np.kron(rng.integers(0, 256, (16, 12)), np.ones((8, 8))).astype(np.uint8))
        for _ in range(3)]
    calls = []
    monkeypatch.setattr(V, "thumb_features",
                        lambda *a, **kw: calls.append(1) or thumb_features(*a, **kw))
    looks = M.ThumbLooks(size=2)
    first = looks.features(thumbs[0], (384, 512), 500, mirror=True)
    again = looks.features(thumbs[0], (384, 512), 500, mirror=True)
    assert again is first and len(calls) == 1
    fresh = thumb_features(thumbs[0], (384, 512), 500, mirror=True)
    assert np.array_equal(first.xy, fresh.xy) and np.array_equal(first.desc, fresh.desc)
    looks.features(thumbs[0], (384, 512), 500)                 # not mirrored: its own entry
    assert len(calls) == 2
    looks.features(thumbs[1], (384, 512), 500)
    looks.features(thumbs[2], (384, 512), 500)                 # the mirrored entry dropped
    looks.features(thumbs[0], (384, 512), 500, mirror=True)
    assert len(calls) == 5
    looks.features(thumbs[2], (384, 512), 500)                 # still kept
    assert len(calls) == 5
    looks.features(thumbs[2].copy(), (384, 512), 500)          # equal, but another image's
    assert len(calls) == 6


def test_report_records_become_the_dicts_asdict_makes():
    from collections import namedtuple
    from dataclasses import asdict

    from matchkit.report.dedupe_report import ClusterResult, MemberRelation, PairResult, SkippedFile, plain

    Point = namedtuple("Point", "x y")
    cluster = ClusterResult(
        "a.jpg", ["a.jpg", "b.jpg", "c.jpg"],
        [PairResult("a.jpg", "b.jpg", 0.91, "near", {"inliers": 40, "transform": [[1.0, 0.0]],
                                                    "at": (1, 2), "p": Point(3, 4),
                                                    "tags": {"x"}, "n": np.float64(0.5)},
                    "crop"),
         PairResult("a.jpg", "c.jpg", 1.0, "exact")],
        "highest JPEG quality", ["a.jpg"], {"a.jpg": {"size": 10, "sha256": "ff"}},
        [MemberRelation("b.jpg", "c.jpg", "edited", "keeper")])
    for record in (cluster, SkippedFile("bad.jpg", "truncated")):
        got, want = plain(record), asdict(record)
        assert got == want and type(got) is dict
    got = plain(cluster)["pairs"][0]["evidence"]
    assert got["p"] == Point(3, 4) and type(got["p"]) is Point and type(got["at"]) is tuple
    assert got["tags"] is not cluster.pairs[0].evidence["tags"]  # copied, as asdict copies
    got["transform"][0][0] = 9.0
    assert cluster.pairs[0].evidence["transform"][0][0] == 1.0


def _tally_votes_pair_by_pair(owners, other, dists, *, max_distance, per_query, min_votes,
                              allowed, detail, drop_ties=True):
    """``candidates.tally_votes`` as a plain loop: each descriptor row gives
    one vote, shared equally by the distinct images it hit; per query image,
    its best ``per_query`` pairs of at least ``min_votes`` (ties: smaller id
    first; ``drop_ties``: none of the pairs whose votes equal those of the
    first pair left out)."""
    votes: dict[tuple[int, int], float] = {}
    for r in range(len(owners)):
        q = int(owners[r])
        hit = sorted({int(o) for o, d in zip(other[r], dists[r])
                      if o >= 0 and d <= max_distance and o != q
                      and (allowed is None or o in allowed)})
        for o in hit:
            votes[(q, o)] = votes.get((q, o), 0.0) + 1.0 / len(hit)
    for q, o in votes:
        detail.hits.setdefault(q, []).append(o)
    for hit in detail.hits.values():
        hit.sort()
    out: dict[tuple[int, int], float] = {}
    for q in sorted({q for q, _ in votes}):
        mine = sorted(((v, o) for (qq, o), v in votes.items() if qq == q),
                      key=lambda x: (-x[0], x[1]))
        mine = [x for x in mine if x[0] >= min_votes]
        chosen = mine[:per_query]
        if drop_ties and len(mine) > per_query:
            chosen = [x for x in chosen if round(x[0], 9) != round(mine[per_query][0], 9)]
        for v, o in chosen:
            pair = (min(q, o), max(q, o))
            out[pair] = max(out.get(pair, 0.0), v)
            detail.by_owner.setdefault(q, {})[o] = v
    return out


def test_vote_tally_counts_as_row_by_row():
    from matchkit.match.candidates import VoteDetail, tally_votes

    rng = np.random.default_rng(5)
    kept = kept_dropping = kept_first = 0
    for trial in range(40):
        n, k = int(rng.integers(1, 300)), int(rng.integers(1, 9))
        owners = rng.integers(0, 12, n)
        other = rng.integers(-1, 15, (n, k))
        dists = rng.integers(0, 100, (n, k))
        allowed = set(rng.choice(15, 10, replace=False).tolist()) if trial % 2 else None
        limits = dict(max_distance=int(rng.integers(20, 90)), per_query=int(rng.integers(0, 6)),
                      min_votes=float(rng.choice([0.0, 0.5, 1.0, 2.5])))
        limits["drop_ties"] = bool(trial % 3)
        got, want = VoteDetail(), VoteDetail()
        a = tally_votes(owners, other, dists, allowed=allowed, detail=got, **limits)
        b = _tally_votes_pair_by_pair(owners, other, dists, allowed=allowed, detail=want,
                                      **limits)
        assert a.keys() == b.keys() and all(abs(a[p] - b[p]) < 1e-9 for p in a)
        assert {q: h.tolist() for q, h in got.hits.items()} == want.hits
        assert all(h.dtype == np.int32 for h in got.hits.values())
        # the same kept pairs per query image, in the same order (best first)
        assert {q: list(d) for q, d in got.by_owner.items()} == \
               {q: list(d) for q, d in want.by_owner.items()}
        kept += len(a)
        if limits["drop_ties"]:
            kept_dropping += len(a)
            kept_first += len(tally_votes(owners, other, dists, allowed=allowed,
                                          **{**limits, "drop_ties": False}))
    assert kept > 200  # the data does keep pairs
    assert kept_dropping < kept_first  # and ties at the cut do occur in it


def test_votes_tied_at_the_cut_are_left_out_together():
    """Pairs whose votes tie with the first pair left out are all left out:
    picking some of them by image id would be arbitrary, and a later image
    that lowers a pair above them would let the next of them in (a 1% add to
    10,000 scale-set images verified 920 such pairs of stored images)."""
    from matchkit.match.candidates import tally_votes

    # Query 0: image 1 with 3 votes, images 2-5 with 1 vote each.
    owners = np.zeros(7, np.int64)
    other = np.array([[1], [1], [1], [2], [3], [4], [5]])
    dists = np.zeros((7, 1), np.int64)
    limits = dict(max_distance=10, per_query=3, min_votes=1.0)
    assert set(tally_votes(owners, other, dists, drop_ties=False, **limits)) == \
        {(0, 1), (0, 2), (0, 3)}
    assert set(tally_votes(owners, other, dists, **limits)) == {(0, 1)}
    # Room for all of them: nothing is left out, so nothing is tied at the cut.
    assert set(tally_votes(owners, other, dists, **{**limits, "per_query": 5})) == \
        {(0, 1), (0, 2), (0, 3), (0, 4), (0, 5)}
    # A new image (9) shares image 2's descriptor: 2 falls under min_votes; the
    # tied rest stay out, where the rule by id would now take image 4.
    other2 = np.array([[1, -1], [1, -1], [1, -1], [2, 9], [3, -1], [4, -1], [5, -1]])
    dists2 = np.zeros((7, 2), np.int64)
    assert set(tally_votes(owners, other2, dists2, drop_ties=False, **limits)) == \
        {(0, 1), (0, 3), (0, 4)}
    assert set(tally_votes(owners, other2, dists2, **limits)) == {(0, 1)}


def test_unique_by_sorting_equals_numpy_unique():
    from matchkit.util.arrays import unique

    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 7, 1000):
        for dtype in (np.int64, np.uint64, np.int32):
            x = rng.integers(0, max(2, n // 3), n).astype(dtype)
            got, want = unique(x), np.unique(x)
            assert got.dtype == want.dtype and np.array_equal(got, want)


def test_bit_sums_equal_numpy_bit_counts_up_to_every_bit_set():
    from matchkit.util.arrays import bit_sums

    rng = np.random.default_rng(5)
    for shape in [(7, 4), (3, 8, 5, 4), (6, 2), (9, 1)]:
        words = rng.integers(0, 2**64, shape, dtype=np.uint64)
        words[0] = np.iinfo(np.uint64).max  # every bit set: 256 for four words
        got = bit_sums(words)
        want = np.bitwise_count(words).sum(-1, dtype=np.int64)
        assert got.dtype == np.int64 and np.array_equal(got, want)
    assert bit_sums(np.full((1, 4), np.iinfo(np.uint64).max, np.uint64))[0] == 256


def test_cross_bit_distances_equal_the_xor_of_every_pair():
    """Word-at-a-time distances (an add's hash-search merge) are those of XORing
    every code of one set with every code of the other."""
    from matchkit.util.arrays import bit_sums, cross_bit_distances

    rng = np.random.default_rng(6)
    a = rng.integers(0, 2**64, (5, 8, 4), dtype=np.uint64)
    b = rng.integers(0, 2**64, (7, 4), dtype=np.uint64)
    a[0, 0], b[0] = np.iinfo(np.uint64).max, 0  # every bit differs: 256
    got = cross_bit_distances(a, b)
    assert got.shape == (5, 8, 7) and got.dtype == np.int64
    assert np.array_equal(got, bit_sums(a[:, :, None, :] ^ b[None, None]))
    assert got[0, 0, 0] == 256 and cross_bit_distances(a[:1, :1], a[0, :1])[0, 0, 0] == 0


def test_fewer_collections_raises_the_thresholds_and_the_last_block_restores_them():
    import gc

    from matchkit.util.gc import JOB_THRESHOLDS, fewer_collections

    before = gc.get_threshold()
    assert before != JOB_THRESHOLDS
    with fewer_collections():
        assert gc.get_threshold() == JOB_THRESHOLDS
        with fewer_collections():  # (another thread's job, say)
            assert gc.get_threshold() == JOB_THRESHOLDS
        assert gc.get_threshold() == JOB_THRESHOLDS
    assert gc.get_threshold() == before
    try:
        with fewer_collections():
            raise KeyError
    except KeyError:
        pass
    assert gc.get_threshold() == before


def test_transient_index_answers_as_a_fully_built_one():
    from matchkit.index.hamming import HammingIndex, transient_index

    rng = np.random.default_rng(8)
    codes = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    codes[1000:1040] = codes[7]           # many equal codes: ties at distance 0
    queries = codes[rng.integers(0, 3000, 300)].copy()
    queries[:, :2] ^= rng.integers(0, 256, (300, 2), dtype=np.uint8)
    keys = rng.permutation(10**6)[:3000]
    full = HammingIndex(256)
    full.add(keys, codes, replace=False)
    for k in (1, 5, 40):
        got, want = transient_index(keys, codes, 256).search(queries, k), full.search(queries, k)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_pixel_median_equals_numpy_median():
    """The template check's per-pixel median gives ``np.median``'s values
    exactly, for odd and even look-alike counts and tied values."""
    from matchkit.match.template import pixel_median

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 8, 16, 17):
        stack = rng.normal(100, 30, (n, 24, 32)).astype(np.float32)
        stack[:, :4] = np.round(stack[:, :4] / 20) * 20  # ties
        got, want = pixel_median(stack), np.median(stack, axis=0)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.array_equal(got, want)
    diff = np.abs(stack - np.median(stack, axis=0))
    assert np.array_equal(pixel_median(diff), np.median(diff, axis=0))


def test_template_check_reads_only_lookalikes_of_its_own_shape(tmp_path, monkeypatch):
    """``content_masks`` decodes only look-alikes whose stored thumbnail has
    the image's shape (``thumb_shapes``, read without decoding) and finds the
    same masks as a check over every look-alike's decoded thumbnail."""
    from matchkit.match.candidates import Candidates
    from matchkit.match.template import content_mask

    d = tmp_path / "imgs"
    d.mkdir()
    frame = textured(40, (480, 360))
    for i in range(12):  # one frame, a different picture in its slot
        shot = frame.copy()
        shot.paste(textured(100 + i, (200, 150)), (140, 100))
        shot.save(d / f"shot{i:02d}.png")
    for i in range(6):  # other shapes
        textured(200 + i, (360, 480)).save(d / f"tall{i}.png")
    with Gallery(tmp_path / "g") as g:
        ids = g.add(sorted(d.iterdir())).ids
        g.save()
        shapes = g.thumb_shapes(ids)
        assert shapes == {i: g.thumbnail(i).shape for i in ids}
        cache = M._LocalCache(g)
        cache.get(ids[0])  # one from the features cache, the rest read
        assert cache.thumb_shapes(ids) == shapes
        found = Candidates()
        found.nearest = {i: [(j, 10) for j in ids if j != i] for i in ids}
        decoded = []
        real_thumb = M._LocalCache.thumb
        monkeypatch.setattr(M._LocalCache, "thumb",
                            lambda self, i: decoded.append(i) or real_thumb(self, i))
        got = M.content_masks(ids, found, cache, Settings())
        assert len(got) == 12  # every screenshot: the frame is found
        tall = set(ids[12:])
        assert all(shapes[i] != shapes[ids[0]] for i in tall)
        assert decoded and not tall & set(decoded)  # (not decoded: their shape differs)
        for i, mask, _ in got:
            want = content_mask(g.thumbnail(i), [g.thumbnail(j) for j in ids if j != i])
            assert np.array_equal(mask, want)
        # Made on a pool, in parts (``MASK_PART``): the same masks, in order.
        from concurrent.futures import ThreadPoolExecutor
        monkeypatch.setattr(C, "MASK_PART", 5)
        with ThreadPoolExecutor(2) as pool:
            pooled = M.content_masks(ids, found, cache, Settings(), pool)
        assert [i for i, _, _ in pooled] == [i for i, _, _ in got]
        assert all(np.array_equal(a[1], b[1]) for a, b in zip(pooled, got))


def test_exhaustive_hamming_search_ranks_by_distance_then_key(monkeypatch):
    """Below ``EXACT_SEARCH_BELOW`` codes a search is exhaustive: every row's
    k nearest by (distance, key), ties (the same code under many keys) and
    all included, one row or many (split over threads), before and after
    the index changes (its codes are read again)."""
    from matchkit.index import hamming as H

    rng = np.random.default_rng(12)
    codes = rng.integers(0, 256, (700, 32), dtype=np.uint8)
    codes[400:460] = codes[0]  # (60 ties at distance 0 from a query of code 0)
    keys = rng.permutation(5000)[:700].astype(np.int64) * 3 + 1
    index = H.HammingIndex(256)
    index.add(keys, codes)

    def brute(q, k, keys, codes):
        d = np.unpackbits(q[:, None, :] ^ codes[None, :, :], axis=2).sum(2)
        order = np.lexsort((np.broadcast_to(keys, d.shape), d), axis=1)[:, :k]
        return np.take_along_axis(np.broadcast_to(keys, d.shape), order, 1), \
            np.take_along_axis(d, order, 1)

    queries = np.concatenate([codes[:1], codes[5:6] ^ 1, rng.integers(0, 256, (300, 32),
                                                                      dtype=np.uint8)])
    monkeypatch.setattr(H, "EXHAUSTIVE_PART_ROWS", 64)  # (parts on two threads, a short last)
    for rows in (queries[:1], queries[:3], queries):
        for k in (1, 16, 64, 700):
            got = index.search(rows, k)
            want = brute(rows, k, keys, codes)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    # More asked than held: the rest missing (key -1, distance nbits + 1).
    k, d = index.search(queries[:2], 710)
    assert (k[:, 700:] == -1).all() and (d[:, 700:] == 257).all()
    index.remove(keys[:100])
    index.add(np.array([2]), codes[:1])  # (keys are 1 mod 3: a new one)
    left_keys = np.concatenate([keys[100:], [2]])
    left = np.concatenate([codes[100:], codes[:1]])
    got = index.search(queries, 20)
    want = brute(queries, 20, left_keys, left)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_blank_check_shortcut_decides_like_the_median_rule():
    """``is_blank`` settles wide-spread pictures by their extremes; it must
    agree with the plain rule (every pixel within the limit of the median)."""
    from matchkit.signals.image import BLANK_SPREAD, is_blank
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(3000):
        h, w = rng.integers(1, 9, 2)
        spread = int(rng.integers(0, 2 * BLANK_SPREAD + 4))
        base = rng.integers(0, 256, 3)
        arr = np.clip(base + rng.integers(-spread, spread + 1, (h, w, 3)), 0, 255).astype(np.uint8)
        a = arr.reshape(-1, 3).astype(np.int16)
        plain = bool(np.abs(a - np.median(a, axis=0)).max() <= BLANK_SPREAD)
        assert is_blank(Image.fromarray(arr)) == plain
        seen.add(plain)
    assert seen == {True, False}


def test_hash_bits_threshold_at_numpys_median():
    """``bits_from_blocks`` takes the median from a partition; it must set the
    bits ``np.median`` would, ties and odd sizes included."""
    from matchkit.signals.hashing import bits_from_blocks
    rng = np.random.default_rng(8)
    for n in (1, 2, 3, 64, 256):
        for ties in (False, True):
            blocks = (rng.integers(-3, 3, (8, n)).astype(float) if ties
                      else rng.normal(size=(8, n)))
            plain = np.packbits(blocks > np.median(blocks, axis=1, keepdims=True), axis=1)
            assert np.array_equal(bits_from_blocks(blocks), plain)


def _crowd_plain(owners, keys, dists, k, nbits):
    """The crowd as a loop over every neighbour (what ``candidates._crowd``
    computed before it worked on whole arrays)."""
    nearest: dict[int, dict[int, int]] = {}
    for owner, krow, drow in zip(owners.tolist(), keys.tolist(), dists.tolist()):
        seen = nearest.setdefault(owner, {})
        for key, d in zip(krow, drow):
            if key >= 0 and key != owner and d < seen.get(key, nbits + 1):
                seen[key] = d
    crowd, order = {}, {}
    for owner, seen in nearest.items():
        ranked = sorted(seen.items(), key=lambda item: (item[1], item[0]))[:k]
        crowd[owner] = ranked[k - 1][1] if len(ranked) >= k else nbits
        order[owner] = ranked
    return crowd, order


def test_crowd_on_whole_arrays_equals_the_loop():
    from matchkit.match.candidates import _crowd
    rng = np.random.default_rng(13)
    for trial in range(40):
        n_img, n_var, k = int(rng.integers(1, 30)), 8, int(rng.integers(1, 12))
        ids = np.sort(rng.choice(1000, n_img, replace=False))
        owners = np.repeat(ids, n_var)
        keys = rng.choice(np.r_[ids, -1], (len(owners), k))  # repeats, -1, owner itself
        dists = rng.integers(0, 40 if trial % 2 else 4, (len(owners), k))  # many ties
        got = _crowd(owners, keys, dists, k, 256)
        assert got == _crowd_plain(owners, keys, dists, k, 256)
        assert list(got[1]) == list(dict.fromkeys(owners.tolist()))
    assert _crowd(np.array([], np.int64), np.zeros((0, 4), np.int64),
                  np.zeros((0, 4), np.int64), 4, 256) == ({}, {})
    from matchkit.match.candidates import _order_by
    for high in (1000, 2**40):  # a packed key, and one too wide to pack
        a, b, c = (rng.integers(0, high, 500), rng.integers(0, 3, 500), rng.integers(0, high, 500))
        assert np.array_equal(_order_by(a, b, c), np.lexsort((c, b, a)))


def _colour_evidence_plain(ev, colours) -> None:
    """Colour evidence of one pair, one image's hue arrays against the
    other's (what ``evidence.colour_evidence`` computed before it took one
    row of ``colour_evidence_many``)."""
    from matchkit.match.evidence import colour_facts
    from matchkit.relation import soft_hues_agree, soft_overlap
    ha, hb = colours.get(ev.a), colours.get(ev.b)
    if ha is None or hb is None:
        return
    (grey_a, hue_a, feat_a), (grey_b, hue_b, feat_b) = colour_facts(ha), colour_facts(hb)
    ev.extra["grey"] = (grey_a, grey_b)
    pale = (hue_a is None or hue_b is None) and not grey_a and not grey_b
    ev.extra["colour_agree"] = soft_hues_agree(*((feat_a, feat_b) if pale else (hue_a, hue_b)))
    ev.extra["hue_similarity"] = soft_overlap(feat_a, feat_b)


def test_colour_evidence_of_many_pairs_equals_pair_by_pair():
    """``colour_evidence_many`` (and ``colour_evidence``, one pair of it)
    must record what the per-pair computation records, bit for bit: grey,
    saturated, pale and colourless images, and images without a stored
    histogram."""
    from matchkit.match.evidence import PairEvidence, colour_evidence, colour_evidence_many
    from matchkit.signals.colour import BINS
    rng = np.random.default_rng(17)
    colours = {}
    for i in range(60):
        kind = i % 5
        h = np.zeros(BINS)
        if kind == 0:  # grey: mass on the diagonal cells
            h[[0, 73, 146, 219, 292, 365, 438, 511]] = rng.integers(1, 400, 8)
        elif kind == 1:  # one saturated colour: red, green or blue (R, G, B cells of 8 levels)
            h[[(7 * 8 + 0) * 8 + 0, (0 * 8 + 7) * 8 + 0, 7][(i // 5) % 3]] = rng.integers(50, 800)
            h[rng.integers(0, BINS, 2)] += rng.integers(1, 30, 2)
        elif kind == 2:  # pale: mostly grey, a little colour
            h[[0, 73, 146, 219, 292, 365, 438, 511]] = rng.integers(100, 400, 8)
            h[rng.integers(0, BINS, 3)] += rng.integers(1, 20, 3)
        elif kind == 3:
            h = rng.integers(0, 30, BINS).astype(float)
        if kind != 4 or i % 2:  # (some images have no stored histogram)
            colours[i] = h
    pairs = [(int(a), int(b)) for a, b in rng.integers(0, 60, (400, 2)) if a != b]
    many = colour_evidence_many(pairs, colours, {})
    seen = set()
    for (a, b), got in zip(pairs, many):
        ev, one = PairEvidence(a, b, 0, 0.0), PairEvidence(a, b, 0, 0.0)
        _colour_evidence_plain(ev, colours)
        colour_evidence(one, colours)
        assert one.extra == ev.extra
        if got is None:
            assert "grey" not in ev.extra
            continue
        want = (ev.extra["grey"], ev.extra["colour_agree"], ev.extra["hue_similarity"])
        assert got == want
        seen.add((got[1], got[2] is None))
    assert len(seen) >= 3  # agreeing, disagreeing, and too little colour to say


def test_the_steady_heap_settings_are_taken_on_glibc():
    import platform

    import pytest

    from matchkit.util.memory import steady_heap

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert steady_heap() is True
