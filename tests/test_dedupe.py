"""End-to-end dedupe through the Python API on generated photos and edits."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from PIL import Image

from matchkit import Gallery, Settings
from matchkit import dedupe

from conftest import make_photo


def _names(paths):
    return sorted(Path(p).name for p in paths)


def _by_keeper(report):
    return {Path(c.keep).name: _names(c.members) for c in report.clusters}


def test_finds_exact_and_near_groups(photo_dir):
    report = dedupe([photo_dir])
    clusters = _by_keeper(report)
    assert len(clusters) == 2
    a_group = next(v for v in clusters.values() if "a.jpg" in v)
    b_group = next(v for v in clusters.values() if "b.jpg" in v)
    assert a_group == ["a.jpg", "a.png", "a_copy.jpg", "a_flip.jpg", "a_small.jpg"]
    assert b_group == ["b.jpg", "b_rot90.jpg"]
    assert report.stats["images"] == 9 and report.skipped == []


def test_pair_kinds_and_keeper(photo_dir):
    report = dedupe([photo_dir])
    a = next(c for c in report.clusters if any(m.endswith("a_flip.jpg") for m in c.members))
    kinds = {Path(p.b).name: p.kind for p in a.pairs if Path(p.a).name == Path(a.keep).name}
    # The keeper is the original JPEG (the oldest of its byte copies), not the
    # bigger PNG re-save with the same pixels.
    full = [photo_dir / "a.jpg", photo_dir / "a.png", photo_dir / "sub" / "a_copy.jpg"]
    assert Path(a.keep).name == "a.jpg"
    expect_exact = {p.name for p in full} - {"a.jpg"}
    assert {n for n, k in kinds.items() if k == "exact"} == expect_exact
    assert {n for n, k in kinds.items() if k == "near"} == {"a_flip.jpg", "a_small.jpg"}
    for p in a.pairs:
        assert 0.0 <= p.score <= 1.0


def test_keeper_prefers_resolution_then_size_then_age(tmp_path):
    img = make_photo(7, (400, 300))
    img.save(tmp_path / "big.jpg", quality=60)
    img.resize((200, 150)).save(tmp_path / "small_but_heavy.png")
    img.save(tmp_path / "big_heavier.jpg", quality=95)
    report = dedupe([tmp_path])
    assert len(report.clusters) == 1
    assert Path(report.clusters[0].keep).name == "big_heavier.jpg"
    # Same pixels and bytes: the oldest wins.
    d = tmp_path / "ages"
    d.mkdir()
    for i, name in enumerate(["new.jpg", "old.jpg"]):
        (d / name).write_bytes((tmp_path / "big.jpg").read_bytes())
    os.utime(d / "old.jpg", (1_000_000, 1_000_000))
    report = dedupe([d])
    assert Path(report.clusters[0].keep).name == "old.jpg"


def test_unrelated_images_make_no_cluster(tmp_path):
    for i in range(12):
        make_photo(300 + i).save(tmp_path / f"{i}.jpg")
    assert dedupe([tmp_path]).clusters == []


def test_bad_files_are_skipped_with_reasons(photo_dir):
    (photo_dir / "empty.jpg").write_bytes(b"")
    (photo_dir / "text.png").write_text("not an image")
    data = (photo_dir / "c.jpg").read_bytes()
    (photo_dir / "truncated.jpg").write_bytes(data[: len(data) // 3])
    report = dedupe([photo_dir])
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) >= {"empty.jpg", "text.png"}
    assert all(reasons.values())
    assert report.stats["skipped"] == len(report.skipped)
    assert len(report.clusters) == 2  # the rest still completes


def test_json_shape_is_stable(photo_dir):
    data = json.loads(dedupe([photo_dir]).to_json())
    assert set(data) == {"clusters", "skipped", "blank", "roots", "stats"}
    assert data["roots"] == [str(Path(photo_dir).absolute())]
    c = data["clusters"][0]
    assert {"keep", "members", "pairs", "keep_reason", "references", "stamps"} <= set(c)
    # Each member as it was read, for `matchkit apply` to refuse changed files.
    assert set(c["stamps"]) == set(c["members"])
    keep = Path(c["keep"])
    assert c["stamps"][c["keep"]]["size"] == keep.stat().st_size
    assert c["stamps"][c["keep"]]["mtime_ns"] == keep.stat().st_mtime_ns
    assert c["stamps"][c["keep"]]["sha256"] == hashlib.sha256(keep.read_bytes()).hexdigest()
    assert c["members"][0] == c["keep"] and c["keep_reason"]
    assert {"a", "b", "score", "kind"} <= set(c["pairs"][0])


def test_no_chaining_through_a_middle_image(tmp_path):
    """A~B and B~C with A !~ C must not put A and C in one cluster."""
    from matchkit.features import extract
    from matchkit.signals.hashing import dihedral_distance

    a, c = make_photo(21), make_photo(22)
    b = Image.blend(a, c, 0.5)
    # a has the highest resolution, so it is the keeper; b is the bridge.
    for name, img in (("a.png", a.resize((640, 480))), ("b.png", b), ("c.png", c)):
        img.save(tmp_path / name)
    h = {n: extract(tmp_path / f"{n}.png").phashes for n in "abc"}
    ab, bc, ac = (dihedral_distance(h[x], h[y][0]) for x, y in ("ab", "bc", "ac"))
    limit = max(ab, bc)
    assert ac > limit, "precondition: the blend must sit between two unrelated images"
    settings = Settings(phash_max_distance=limit, colour_min_similarity=0.0)
    report = dedupe([tmp_path], settings=settings)
    assert report.clusters, "the blend should match at least one side"
    # A blend is no copy of either side; the thumbnail check may refuse one of
    # its pHash matches. Where a.png is clustered, it is the keeper.
    for cl in report.clusters:
        if "a.png" in {Path(m).name for m in cl.members}:
            assert Path(cl.keep).name == "a.png"
    for cl in report.clusters:
        names = {Path(m).name for m in cl.members}
        assert not {"a.png", "c.png"} <= names
        keeper_pairs = {Path(p.b).name for p in cl.pairs if p.a == cl.keep}
        assert keeper_pairs == names - {Path(cl.keep).name}


def test_gallery_is_reused_between_runs(photo_dir, tmp_path):
    gdir = tmp_path / "gallery"
    first = dedupe([photo_dir], gallery=gdir)
    second = dedupe([photo_dir], gallery=gdir)
    assert first.stats["added"] == 9 and second.stats["unchanged"] == 9
    assert _by_keeper(first) == _by_keeper(second)
    with Gallery(gdir) as g:
        assert len(g) == 9


def test_files_are_never_modified(photo_dir):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in photo_dir.rglob("*") if p.is_file()}
    dedupe([photo_dir])
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in photo_dir.rglob("*") if p.is_file()}
    assert before == after


def test_match_pairs_reports_evidence_for_every_candidate(photo_dir, tmp_path):
    from matchkit.match.pairs import match_pairs
    with Gallery(tmp_path / "g") as g:
        ids = g.add(sorted(p for p in photo_dir.rglob("*.jpg"))).ids
        evidence = match_pairs(g, ids, Settings())
        names = {i: Path(g.get(i).path).name for i in ids}
    matched = {frozenset((names[e.a], names[e.b])) for e in evidence if e.rule}
    assert frozenset(("b.jpg", "b_rot90.jpg")) in matched
    assert not any("c.jpg" in pair or "d.jpg" in pair for pair in matched)
    assert all(not e.pending for e in evidence)


def test_many_byte_identical_copies_are_one_cluster(tmp_path):
    src = tmp_path / "orig.jpg"
    make_photo(7).save(src, quality=90)
    data = src.read_bytes()
    for n in range(150):
        (tmp_path / f"copy{n:03d}.jpg").write_bytes(data)
    report = dedupe([tmp_path], settings=Settings(workers=1))
    assert len(report.clusters) == 1
    (cluster,) = report.clusters
    assert len(cluster.members) == 151
    assert {p.kind for p in cluster.pairs} == {"exact"} and len(cluster.pairs) == 150


def test_every_member_pair_of_a_small_cluster_has_a_relation(photo_dir):
    """Members other than the keeper relate to each other too: each pair of a
    small cluster appears once in ``member_relations``, with a relation no
    tighter than what their pairs with the keeper allow."""
    from itertools import combinations

    from matchkit.relation import KINDS, compose

    data = json.loads(dedupe([photo_dir]).to_json())
    c = next(c for c in data["clusters"] if len(c["members"]) == 5)  # group a
    rel = {frozenset((p["a"], p["b"])): p for p in c["member_relations"]}
    others = [m for m in c["members"] if m != c["keep"]]
    assert set(rel) == {frozenset(pair) for pair in combinations(others, 2)}
    assert not set(rel) & {frozenset((p["a"], p["b"])) for p in c["pairs"]}
    to_keeper = {p["b"]: p["relation"] for p in c["pairs"]}
    for pair, p in rel.items():
        assert p["relation"] in KINDS and p["via"] in {"exact", "verified", "keeper"}
        if p["via"] == "keeper":
            assert p["relation"] == compose(*(to_keeper[m] for m in pair))
    name = {Path(m).name: m for m in c["members"]}
    if "a.png" in name and "a_copy.jpg" in name and c["keep"] == name["a.jpg"]:
        assert rel[frozenset((name["a.png"], name["a_copy.jpg"]))]["relation"] == "same-pixels"
    flip_small = rel[frozenset((name["a_flip.jpg"], name["a_small.jpg"]))]
    assert flip_small["relation"] == "edited"  # a flipped copy is an edit of any copy


def test_relations_are_settled_once_each_on_any_number_of_workers(photo_dir, monkeypatch):
    """A report asks for a pair's relation as a keeper pair and again between
    members; the thumbnail comparison behind it runs once per pair, and on
    worker threads it gives what it gives on one thread."""
    from matchkit.match import settle
    
    calls = []
    real = settle.settle_global_relation

    def counted(ev, *a, **kw):
        calls.append(id(ev))
        return real(ev, *a, **kw)

    monkeypatch.setattr(settle, "settle_global_relation", counted)
    reports = {}
    for workers in (1, 2):
        calls.clear()
        data = json.loads(dedupe([photo_dir], settings=Settings(workers=workers)).to_json())
        assert calls and len(calls) == len(set(calls))
        reports[workers] = [(c["keep"], sorted((p["a"], p["b"], p["relation"]) for p in c["pairs"]),
                             sorted((p["a"], p["b"], p["relation"]) for p in c["member_relations"]))
                            for c in data["clusters"]]
    assert reports[1] == reports[2]


def test_relations_compose_to_the_looser_one():
    from matchkit.relation import compose

    assert compose("exact", "exact") == "exact"
    assert compose("exact", "same-pixels") == "same-pixels"
    assert compose("resized", "resized") == "resized"
    assert compose("crop", "resized") == compose("resized", "crop") == "crop"
    assert compose("edited", "crop") == "edited"
    assert compose("recapture", "edited") == "recapture"


class _TableMatcher:
    """A pair matcher whose decisions come from a table (for the clustering)."""

    def __init__(self, ids, matches, candidates):
        from matchkit.match.pairs import PairEvidence

        self.matches = {frozenset(p) for p in matches}
        self.evidence = [PairEvidence(min(a, b), max(a, b), 100, 0.5, pending=True)
                         for a, b in candidates]
        self.asked = []

    def verify(self, todo):
        for ev in todo:
            if ev.pending:
                ev.pending = False
                ev.rule = "local" if frozenset((ev.a, ev.b)) in self.matches else ""
                self.asked.append((ev.a, ev.b))

    def evidence_between(self, a, b, reflect):
        from matchkit.match.pairs import PairEvidence

        return PairEvidence(min(a, b), max(a, b), 100, 0.5, pending=True)

    def same_pixels(self, ev):
        return False

    def picture_share(self, image_id):
        return 1.0

    def rephotographed(self, ev):
        return None

    def settle_relation(self, ev):
        return "recapture"

    def settle_relations(self, evidence):
        pass

    def finish(self):
        pass

    def close(self):
        pass


def test_leftover_image_joins_a_cluster_it_matches_through_a_member(tmp_path):
    """An original and three photos of it. X is a candidate of one member
    only (after the keeper took that member, so nobody asked); it matches
    that member and, compared afresh, the keeper: it joins. Y matches the
    member only: one pair of three is no join (no chaining)."""
    from matchkit.jobs.dedupe import find_clusters

    sizes = {"k": (640, 480), "a": (320, 240), "b": (300, 225), "x": (280, 210),
             "y": (260, 195)}
    for n, (seed, size) in zip(sizes, enumerate(sizes.values(), 40)):
        make_photo(seed).resize(size).save(tmp_path / f"{n}.png")
    with Gallery(tmp_path / "g", Settings()) as g:
        added = g.add(sorted(str(p) for p in tmp_path.glob("*.png")))
        ids = {Path(img.path).stem: i for i, img in g.images(added.ids).items()}
        k, a, b, x, y = (ids[n] for n in "kabxy")
        made = []

        def make(visible, same, images=None):
            made.append(_TableMatcher(visible, [(k, a), (k, b), (x, a), (x, k), (y, a)],
                                      [(k, a), (k, b), (x, a), (y, a)]))
            return made[0]

        clusters, _, n_near = find_clusters(g, added.ids, Settings(), make_matcher=make)
    assert [(_names([c.keep]), _names(c.members)) for c in clusters] == [
        (["k.png"], ["a.png", "b.png", "k.png", "x.png"])]
    assert {Path(p.b).name for p in clusters[0].pairs if Path(p.a).name == "k.png"} == {
        "a.png", "b.png", "x.png"} and n_near == 3
    asked = {frozenset(p) for p in made[0].asked}
    assert {frozenset((x, k)), frozenset((y, k))} <= asked  # compared afresh


def _clusters_with(g, ids, cls):
    """Clusters (keeper, members, each pair's relation and evidence) that
    ``find_clusters`` makes of ``ids`` with matcher class ``cls``, and the
    matcher's evidence."""
    from matchkit.jobs.dedupe import find_clusters

    made = []

    def make(visible, same, images=None):
        made.append(cls(g, visible, Settings(), same))
        return made[-1]

    clusters, _, _ = find_clusters(g, ids, Settings(), make_matcher=make)
    return ([(c.keep, sorted(c.members), sorted((p.a, p.b, p.relation) for p in c.pairs),
              [p.evidence for p in c.pairs]) for c in clusters], made[0].evidence)


def test_a_matcher_dropping_refused_pairs_clusters_the_same(photo_dir):
    """``PairMatcher.keep_refused = False`` (the Ray driver's matcher) keeps
    only the pairs clustering can use; the clusters, keepers and relations
    are those of a matcher that keeps every pair."""
    from matchkit.match.pairs import PairMatcher

    for seed in range(5, 13):  # unrelated photos: candidates refused outright
        make_photo(seed).save(photo_dir / f"other{seed}.jpg", quality=90)

    class Dropping(PairMatcher):
        keep_refused = False

    with Gallery(photo_dir.parent / "g", Settings()) as g:
        added = g.add(sorted(str(p) for p in photo_dir.rglob("*.*")))
        kept, every = _clusters_with(g, added.ids, PairMatcher)
        dropped, few = _clusters_with(g, added.ids, Dropping)
    assert dropped == kept and len(kept) == 2
    assert 0 < len(few) < len(every)
    assert all(ev.rule or ev.pending or ev.extra.get("verifiable") for ev in few)


def test_a_matcher_forgetting_refused_pairs_clusters_the_same(photo_dir):
    """``evidence.forget_refused`` after each verification (what the Ray
    driver keeps of a pair its tasks verified and refused) leaves the
    clusters, keepers and relations as they were, and refused pairs hold
    only ``REFUSED_KEEPS``, no inlier points or transform."""
    from matchkit.match.evidence import REFUSED_KEEPS, forget_refused
    from matchkit.match.pairs import PairMatcher

    for seed in range(5, 13):
        make_photo(seed).save(photo_dir / f"other{seed}.jpg", quality=90)

    class Forgetting(PairMatcher):
        def verify(self, todo):
            todo = list(todo)
            super().verify(todo)
            for ev in todo:
                forget_refused(ev)

    with Gallery(photo_dir.parent / "g", Settings()) as g:
        added = g.add(sorted(str(p) for p in photo_dir.rglob("*.*")))
        kept, _ = _clusters_with(g, added.ids, PairMatcher)
        forgot, evidence = _clusters_with(g, added.ids, Forgetting)
    assert forgot == kept and len(kept) == 2
    refused = [ev for ev in evidence if ev.verification is not None and not ev.rule]
    assert refused and all(set(ev.extra) <= set(REFUSED_KEEPS) for ev in refused)
    assert all(not ev.verification.points and not ev.verification.transform for ev in refused)


def test_matcher_calls_between_steps_after_each_search_step(photo_dir):
    """``between_steps`` (where the Ray driver's matcher hands freed memory
    back) runs after the pHash, picture-hash, vote and whole local steps and
    after the global evidence; the matcher's pairs are the same."""
    from matchkit.match.pairs import PairMatcher

    calls = []

    class Counting(PairMatcher):
        def between_steps(self):
            calls.append(self.evidence if hasattr(self, "evidence") else None)

    with Gallery(photo_dir.parent / "g", Settings()) as g:
        ids = sorted(g.add(sorted(str(p) for p in photo_dir.rglob("*.*"))).ids)
        plain = PairMatcher(g, ids, Settings())
        counted = Counting(g, ids, Settings())
    assert len(calls) >= 5 and calls[-1] is counted.evidence and calls[0] is None
    assert [(e.a, e.b, e.rule) for e in counted.evidence] == [
        (e.a, e.b, e.rule) for e in plain.evidence]


def test_colour_table_holds_the_stored_histograms_read_in_parts(photo_dir, monkeypatch):
    """``pairs.colour_table`` (the global evidence's colour histograms, read
    a part of the images at a time) gives each image's stored histogram,
    whatever the part size."""
    import numpy as np

    from matchkit.match import pairs as pairs_mod

    with Gallery(photo_dir.parent / "g", Settings()) as g:
        ids = g.add(sorted(str(p) for p in photo_dir.rglob("*.*"))).ids
        want = g.colours(ids)
        for part in (1, 3, 4096):
            monkeypatch.setattr(pairs_mod, "COLOUR_PART", part)
            table, row = pairs_mod.colour_table(g, sorted(ids) + [10**6])  # (one without)
            assert sorted(row) == sorted(want) and len(table) == len(want)
            assert table.dtype == np.uint16  # (a hash thumbnail's counts fit 16 bits)
            assert all(np.array_equal(table.dense([row[i]])[0], want[i]) for i in want)
            assert table.nbytes < 512 * len(want)  # (sparse: under half of 16-bit dense)
            rows = pairs_mod._TableRows(table, row)
            assert all(rows[i].dtype == want[i].dtype and np.array_equal(rows[i], want[i])
                       for i in want) and 10**6 not in rows and len(rows) == len(want)


def test_colour_table_widens_to_32_bits_for_counts_past_16():
    """Counts past 65,535 (``hash_side`` above 255) make the table uint32,
    whichever part they come in, and no count is cut."""
    import numpy as np

    from matchkit.match import pairs as pairs_mod
    from matchkit.signals.colour import BINS

    big = np.zeros(BINS, "<u4")
    big[5] = 70_000
    small = np.arange(BINS, dtype="<u4")

    class Store:
        def colours(self, ids):
            return {i: (big if i == 3 else small) for i in ids}

    for part in (1, 2, 8):
        pairs_mod.COLOUR_PART, keep = part, pairs_mod.COLOUR_PART
        try:
            table, row = pairs_mod.colour_table(Store(), [1, 2, 3, 4])
        finally:
            pairs_mod.COLOUR_PART = keep
        assert table.dtype == np.uint32 and table.dense([row[3]])[0, 5] == 70_000
        assert all(np.array_equal(table.dense([row[i]])[0], small) for i in (1, 2, 4))


def test_pair_arrays_are_the_sorted_pairs_without_known_copies():
    """``pairs._pair_arrays`` gives the pairs in (a, b) order with their
    distances, dropping pairs of images ``same`` maps together."""
    import random

    from matchkit.match.pairs import _pair_arrays

    rng = random.Random(4)
    pairs = {}
    while len(pairs) < 300:
        a, b = sorted(rng.sample(range(1, 80), 2))
        pairs[(a, b)] = rng.randint(-1, 60)
    same = {i: i - i % 3 for i in range(1, 80, 2)}
    for known in (None, same, {}):
        first, second, dist = _pair_arrays(pairs, known)
        want = [(a, b, d) for (a, b), d in sorted(pairs.items())
                if known is None or known.get(a, a) != known.get(b, b)]
        assert list(zip(first.tolist(), second.tolist(), dist.tolist())) == want
        assert len(want) < len(pairs) if known else len(want) == len(pairs)
    assert [len(x) for x in _pair_arrays({}, same)] == [0, 0, 0]


def test_stats_tell_each_phases_seconds(photo_dir, tmp_path):
    """``stats["phase_seconds"]``: every phase the run went through, in order,
    summing to about the run's ``seconds`` (the time before the first
    report counts as "start"); "verify" counts as "cluster". Told whether or
    not the caller asked for progress, and the caller's ``on_progress``
    still sees every phase, "verify" included."""
    seen = []
    first = dedupe([photo_dir], gallery=tmp_path / "g",
                   on_progress=lambda phase, done, total: seen.append(phase))
    again = dedupe([photo_dir], gallery=tmp_path / "g")
    alone = dedupe([photo_dir])
    for report, stored in ((first, True), (again, True), (alone, False)):
        phases = report.stats["phase_seconds"]
        assert list(phases)[:2] == ["start", "add"]
        assert {"match", "cluster", "report"} <= set(phases) and "verify" not in phases
        assert ("stored" in phases) == stored  # (only a kept gallery has a stored state)
        assert all(v >= 0 for v in phases.values())
        assert abs(sum(phases.values()) - report.stats["seconds"]) < 0.05
    assert "verify" in seen and "add" in seen


def test_phase_times_count_each_span_for_the_phase_it_began_in(monkeypatch):
    from matchkit.jobs import dedupe as job

    clock = iter([0.0, 1.0, 3.0, 3.5, 6.0, 10.0])
    monkeypatch.setattr(job.time, "perf_counter", lambda: next(clock))
    times = job.PhaseTimes()                   # 0.0: start
    told = []
    report = times.wrap(lambda *a: told.append(a))
    report("add", 0, 5)                        # 1.0
    report("add", 5, 5)                        # (same phase: no clock read)
    report("cluster", 1, 9)                    # 3.0
    report("verify", 4, 10)                    # (counts as cluster)
    report("keepers", 2, 9)                    # 3.5
    report("cluster", 3, 9)                    # 6.0
    assert times.totals() == {"start": 1.0, "add": 2.0, "cluster": 0.5 + 4.0, "keepers": 2.5}
    assert [a[0] for a in told] == ["add", "add", "cluster", "verify", "keepers", "cluster"]
