"""Clustering for dedupe: gallery images -> exact classes -> stars -> joined clusters.

:func:`find_clusters` merges exact copies, verifies candidate pairs as the
clustering asks for them, places stars around keepers (again when a keeper
turns out to re-photograph another member), joins clusters that match
densely and writes each cluster up with its pairs and keeper reason. The
run around it (files, gallery, progress, report stats) is
:func:`matchkit.jobs.dedupe.dedupe`.

``find_clusters`` alone is about 370 lines, one function whose steps
(``confirm``, ``dense``, ``join_clusters``...) share its state (classes,
evidence between them, keeper ranks) as closures, so it cannot be cut
without rewriting it; its helpers that only read a result are in
:mod:`matchkit.jobs.dedupe_relations`.
"""

from __future__ import annotations

import bisect

import numpy as np

from matchkit.config import Settings
from matchkit.jobs.dedupe_relations import (_member_edge, _member_relations, _mirrored,
                                             _reported_edges, _union_same_pixel_blanks)
from matchkit.match.burst import bursting
from matchkit.match.cluster import Star, UnionFind, lazy_star_clusters
from matchkit.match.keeper import (GREY_MASS, Candidate, KeeperPolicy, explain, grey_shares,
                                   near_criteria, same_pixels_criteria, sort_key)
from matchkit.match.pairlists import Neighbours, PairLists
from matchkit.match.pairs import PairEvidence, PairMatcher
from matchkit.match.picture import dense_picture
from matchkit.report.dedupe_report import ClusterResult, PairResult
from matchkit.signals import vetoing
from matchkit.store.gallery import ORB_KEY_STRIDE, Gallery
from matchkit.store.image_table import ImageTable, RowCache
from matchkit.util.cvthreads import single_opencv_thread

#: Colour histograms read at once for the keepers' grey test (the next ones
#: by id after the image asked for among those clustering ranks).
GREY_BATCH = 1024

#: Joining two clusters (``find_clusters``): at least this many pairs across
#: them match, and at least half of all pairs across (more than half when
#: one side is a single image) ...
JOIN_MIN_PAIRS = 2
#: ... among at most this many pairs across (larger joins are not tried).
JOIN_MAX_PAIRS = 32
#: Between clusters with at most this many pairs across, every candidate pair
#: is verified before joining (between larger ones: only those the local
#: descriptors voted for). Recapture calib half: 383 pairs verified, 10 more
#: pairs found than with the votes alone.
JOIN_ASK_ALL = 4

#: Clustering passes at most: each pass may find keepers that re-photograph
#: another member (one per pass in a group of an original and its photos).
KEEPER_PASSES = 5


@single_opencv_thread
def find_clusters(gallery: Gallery, ids: list[int], settings: Settings, calibrator=None,
                  policy: KeeperPolicy = KeeperPolicy(), make_matcher=None, progress=None,
                  burst_memo: str | None = None, images: ImageTable | None = None
                  ) -> tuple[list[ClusterResult], int, int]:
    """Cluster the given gallery images; returns clusters and pair counts.

    ``calibrator`` (a fitted ``calibrate.PairCalibrator``) decides pairs
    instead of the hand-set rules; exact copies and clustering are unchanged.
    ``policy`` carries the user's reference folders and preferences.
    ``progress(phase, done, total)``: see ``dedupe``.
    Blank images (one flat colour, e.g. fully transparent) take part in
    exact matching only: same bytes, or same size and pixels.
    ``make_matcher(visible_ids, same, images)`` builds the pair matcher instead of a
    fresh ``PairMatcher`` (an incremental one reusing stored decisions).
    ``burst_memo``: keep the burstiness check's measurements in the gallery
    folder under this base key (``burst.bursting``). ``images``: the rows
    of ``ids`` (``ImageTable.read``) when the caller has read them."""
    ids = sorted(set(ids))
    if not ids:
        return [], 0, 0
    if progress:
        progress("match", 0, len(ids))
    # The rows as columns (``ImageTable``): a dict of row objects held for
    # the run cost about 1 KB an image.
    images = ImageTable.read(gallery, ids) if images is None else images
    ids = images.ids  # (ids without a row are left out, as gallery.images does)
    exact = UnionFind()
    for i in ids:
        exact.find(i)
    by_sha: dict[str, int] = {}
    digests = images.column("sha256")
    for i in ids:
        first = by_sha.setdefault(digests[i], i)
        if first != i:
            exact.union(first, i)
    del by_sha
    _union_same_pixel_blanks(gallery, [i for i in ids if images.blank(i)], images, exact)
    visible = [i for i in ids if not images.blank(i)]
    # Byte-identical files are one class up front; pairs inside it are never
    # examined (a map, not a pair set: 1,000 copies of one file stay cheap).
    same = {i: exact.find(i) for i in visible}
    shown = images if len(visible) == len(ids) else images.subset(visible)
    matcher = (PairMatcher(gallery, visible, settings, same=same, calibrator=calibrator,
                           images=shown)
               if make_matcher is None else make_matcher(visible, same, shown))
    del shown, same  # (the matcher's now; the classes are ``exact``'s)
    sizes = images.sizes
    matcher = vetoing(matcher, gallery, settings)  # the extra signals' say (``signals``)
    matcher = bursting(matcher, gallery, settings, ORB_KEY_STRIDE,  # shared stickers, logos
                       memo_base=burst_memo)
    possible: list[PairEvidence] = []
    for ev in matcher.evidence:
        a, b = ev.a, ev.b
        # Identical pixels need equal sizes and near-equal hashes.
        if (ev.phash_distance <= settings.exact_check_distance
                and sizes[a] == sizes[b]
                and exact.find(a) != exact.find(b) and matcher.same_pixels(ev)):
            exact.union(a, b)
            continue
        if ev.rule or ev.pending:
            possible.append(ev)

    near_order, same_order = near_criteria(policy), same_pixels_criteria(policy)
    #: Verifications asked for so far, of at least this many (pending pairs).
    checked = [0, sum(1 for ev in possible if ev.pending)]
    #: Clustering pass (the first, then keeper passes).
    passes = [0]
    #: Image -> (picture share, grey, re-photographed) as the pass first saw it.
    facts: dict[int, tuple[float, bool, bool]] = {}

    #: Class representative -> share of its frame that the picture it
    #: re-photographs takes (learnt from verified pairs; see below).
    rephotos: dict[int, float] = {}

    #: Whether each image is grey (for keepers), read in batches as asked for.
    greys: dict[int, bool] = {}
    groups = exact.groups()
    del exact  # (its map of every image is not read again)
    #: The images a keeper may be chosen among (in a possible pair or an
    #: exact class; clustering ranks no other): batches are read from these.
    ranked = sorted({i for ev in possible for i in (ev.a, ev.b)}
                    | {i for g in groups if len(g) > 1 for i in g})

    def grey(i: int) -> bool:
        if i not in greys:
            at = bisect.bisect_left(ranked, i)  # (sorted)
            part = [j for j in ranked[at:at + GREY_BATCH] if j not in greys]
            part = part if i in part else [i]
            got = gallery.colours(part)
            shares = grey_shares(np.stack(list(got.values()))) if got else []
            greys.update(zip(got, (bool(x) for x in np.asarray(shares) >= GREY_MASS)))
        return greys[i]

    def candidate(i: int) -> Candidate:
        # (What the pass learnt is kept, the row is made again when asked:
        # candidates holding rows cost about 1 KB an image.)
        if i not in facts:
            share = (matcher.picture_share(i) if settings.local_features
                     and not images.blank(i) else 1.0)
            facts[i] = (min(share, rephotos.get(i, 1.0)), grey(i), i in rephotos)
        share, is_grey, rephotographed = facts[i]
        return Candidate(images[i], share, grey=is_grey, rephotographed=rephotographed)

    ranks: dict[int, tuple] = {}

    def priority(i: int) -> tuple:
        if i not in ranks:  # asked for many times by the clustering; compute once
            ranks[i] = sort_key(near_order, candidate(i))
        return ranks[i]

    # Work on exact-copy classes; each class is represented by its best member:
    # among the same pixels, the source file, not the biggest re-save.
    rep = {}
    classes = {}
    for group in groups:
        if len(group) > 1:  # (a key for every image alone: 0.3 s at 5,000 images)
            group.sort(key=lambda i: sort_key(same_order, candidate(i)))
        for i in group:
            rep[i] = group[0]
        classes[group[0]] = group
    def key(x: int, y: int) -> tuple[int, int]:
        return (x, y) if x < y else (y, x)

    between = PairLists()  # (pair of classes -> their pairs' evidence)
    for ev in possible:
        if rep[ev.a] != rep[ev.b]:
            between.add(key(rep[ev.a], rep[ev.b]), ev)
    candidates = Neighbours((rep[ev.a], rep[ev.b]) for ev in possible  # (class -> classes)
                            if rep[ev.a] != rep[ev.b])

    def matched(x: int, y: int) -> PairEvidence | None:
        # (A plain loop: asked ~200,000 times in a 5,000-image run, where a
        # generator per call cost 0.5 s.)
        for ev in between[(x, y) if x < y else (y, x)]:
            if ev.rule:
                return ev
        return None

    def told(n: int, hop: bool = False) -> None:
        """Count ``n`` more verifications (second looks raise the total too)."""
        checked[0] += n
        if hop:
            checked[1] += n
        if progress and n:
            progress("verify", checked[0], max(checked))

    def confirm(center: int, others: list[int], taken: set[int]) -> set[int]:
        """Verify (in one batch) only class pairs not already matched globally;
        then look one hop further: images matched to a new member are checked
        against the keeper directly (a flipped copy of the original found via
        the original). An edge still needs its own verification: no chaining."""
        if progress:
            progress("cluster" if passes[0] == 0 else "keepers", len(taken), len(classes))
        todo = [ev for o in others if not matched(center, o)
                for ev in between[key(center, o)] if ev.pending]
        matcher.verify(todo)
        told(len(todo))
        ok = {o for o in others if matched(center, o)}
        hop: dict[int, bool] = {}
        for m in ok:
            via = matched(center, m)
            for x in candidates[m]:
                if x == center or x in taken or x in ok:
                    continue
                # A matched edge, or a pending one the local descriptors voted for.
                second = matched(m, x) or next(
                    (ev for ev in between[key(m, x)] if ev.pending and ev.votes >= 3.0), None)
                if second is None:
                    continue
                # Mirror image of the keeper? Known only if both steps are
                # (None: try both ways).
                steps = (_mirrored(via), _mirrored(second))
                mirror = None if None in steps else steps[0] != steps[1]
                # Already compared with the keeper? Only worth redoing if the
                # path may mean "mirror image" and that was not tried.
                tried = between.get(key(center, x), [])
                if not tried or (mirror is not False
                                 and not any(ev.extra.get("mirror_tried") for ev in tried)):
                    # Any path that may mean "mirror" asks for the mirrored
                    # look, whichever path is met first (no order dependence).
                    hop[x] = hop.get(x, False) or mirror is not False
        if hop:
            fresh = [matcher.evidence_between(center, x, reflect=r) for x, r in hop.items()]
            asked = sum(1 for ev in fresh if ev.pending)
            matcher.verify(fresh)
            told(asked, hop=True)
            for ev in fresh:
                between.add(key(ev.a, ev.b), ev)
                other = ev.b if ev.a == center else ev.a
                candidates.add(center, other)
                if ev.rule:
                    ok.add(other)
        return ok

    def link(x: int, y: int, via: list[PairEvidence]) -> PairEvidence:
        """Fresh evidence between ``x`` and ``y``, found through the matched
        pairs ``via`` (a mirror image look when the path may mean one)."""
        steps = [_mirrored(ev) for ev in via]
        mirror = None if None in steps else sum(steps) % 2 == 1
        ev = matcher.evidence_between(x, y, reflect=mirror is not False)
        between.add(key(ev.a, ev.b), ev)
        candidates.add(x, y)
        return ev

    def dense(g: list[int], h: list[int]) -> bool:
        """Whether at least ``JOIN_MIN_PAIRS`` and half of the pairs between
        the classes ``g`` and ``h`` match (more than half when one of them is
        a single image: on the real dev set, one screenshot matched its own
        page and that page's translation, 2 of 4); once one pair matches,
        pairs that ``supports`` count too. Pairs not decided yet are verified
        (pending ones), or compared afresh where a matched path of two steps
        joins them, as few as settle it."""
        pairs = [(x, y) for x in g for y in h]
        half = len(pairs) // 2 + 1 if min(len(g), len(h)) == 1 else -(-len(pairs) // 2)
        need = max(JOIN_MIN_PAIRS, half)
        hits = sum(1 for x, y in pairs if matched(x, y))
        if hits >= need:
            return True
        todo: list[PairEvidence] = []
        paths = []
        backed = 0
        for x, y in pairs:
            evs = between.get(key(x, y), [])
            if matched(x, y) or (evs and not any(ev.pending for ev in evs)):
                backed += not matched(x, y) and supports(x, y)
                continue  # matched, or compared and refused
            if evs:
                todo += [ev for ev in evs if ev.pending]
                continue
            via = next(((matched(x, z), matched(z, y)) for z in g + h
                        if z != x and z != y and matched(x, z) and matched(z, y)), None)
            if via is not None:
                paths.append((x, y, via))
        if hits + backed + len({key(ev.a, ev.b) for ev in todo}) + len(paths) < need:
            return False
        todo += [link(x, y, list(via)) for x, y, via in paths]
        matcher.verify(todo)
        hits = sum(1 for x, y in pairs if matched(x, y))
        return hits >= need or hits >= 1 and hits + sum(
            1 for x, y in pairs if not matched(x, y) and supports(x, y)) >= need

    def supports(x: int, y: int) -> bool:
        """A pair refused as sharing a part only (``evidence.relation_of``: no
        relation), whose many inliers crowd on a part of the picture that
        agrees (``picture.dense_picture``): too small to prove a copy (a
        shared sticker looks the same), but next to a matched pair across
        two clusters it counts for their join. Two photos of one print or
        screen, their keypoints on its one textured part (recapture calib
        half: recall 0.9684 -> 0.9816, the 2+2 and 3+1 splits of a picture's
        four images). A pair that the evidence calls a variant (a b/w and a
        colour layout of one template, real dev set) never counts."""
        return any(ev.verification is not None and not ev.pending
                   and "relation" in ev.extra and ev.extra["relation"] is None
                   and dense_picture(ev.extra.get("picture"), ev.inliers)
                   for ev in between.get(key(x, y), []))

    def join_clusters(stars: list[Star]) -> list[Star]:
        """Join clusters (and leftover images) whose images match each other
        densely (``dense``), the one with the better keeper first; the joined
        cluster keeps the better keeper. A star's keeper can miss a member that matches
        the rest (an original and its re-photographs: two photos of one
        print match each other, not always the original), which leaves that
        image alone or in a second star of the same picture; one matched pair
        across (a shared sticker, a look-alike) is never enough.

        Across a leftover image and a star, candidate pairs not verified yet
        are verified; once one pair across matches, pairs across that a
        matched path of two steps joins are compared directly (``dense``)."""
        groups = [list(s.members) for s in stars]
        placed = {m for g in groups for m in g}
        groups += [[r] for r in sorted(classes, key=priority)
                   if r not in placed and candidates.get(r)]
        owner = {m: gi for gi, g in enumerate(groups) for m in g}
        # Pairs across not verified yet: a leftover image's candidates among
        # star members (taken before the leftover's turn came, so never
        # asked), and between two stars the pairs the local descriptors voted
        # for (as for the clustering's second hop).
        todo = [ev for x in owner for y in candidates[x] if x < y and y in owner
                and owner[x] != owner[y]
                for ev in between[key(x, y)] if ev.pending and (
                    len(groups[owner[x]]) * len(groups[owner[y]]) <= JOIN_ASK_ALL
                    or ev.votes >= 3.0)]
        matcher.verify(todo)
        order = sorted(range(len(groups)), key=lambda gi: priority(groups[gi][0]))
        for gi in order:
            grown = True
            while grown and groups[gi]:
                grown = False
                g = groups[gi]
                linked = {owner[y] for m in g for y in candidates[m]
                          if y in owner and owner[y] != gi and matched(m, y)}
                for hj in sorted(linked, key=lambda j: priority(groups[j][0])):
                    h = groups[hj]
                    if len(g) * len(h) > JOIN_MAX_PAIRS:
                        continue
                    if dense(g, h):
                        g.extend(h)
                        g.sort(key=priority)
                        for m in h:
                            owner[m] = gi
                        groups[hj] = []
                        grown = True
                        break
        return [Star(g[0], g) for g in groups if len(g) > 1]

    try:
        # Whether a member is a re-photograph of another (a print or a screen
        # photographed) is known only once their pair is verified, and a
        # keeper that turns out to be one must give way to the original it
        # shows: cluster again with what was learnt (verified pairs are kept,
        # so a pass costs only the pairs the new keepers need).
        for passes[0] in range(KEEPER_PASSES):
            stars = lazy_star_clusters(classes.keys(), candidates, priority, confirm)
            if progress:
                progress("cluster" if passes[0] == 0 else "keepers", len(classes), len(classes))
            new = {}
            for evs in between.values():
                for ev in evs:
                    found = matcher.rephotographed(ev) if ev.rule else None
                    if found is not None and rep[found[0]] not in rephotos:
                        r = rep[found[0]]
                        new[r] = min(new.get(r, 1.0), found[1])
            rephotos.update(new)
            if not any(s.keeper in new for s in stars):
                break
            facts.clear()
            ranks.clear()
        stars = join_clusters(stars)
        # Evidence between two classes: the strongest matched pair of their members.
        class_edge = {k: max((ev for ev in evs if ev.rule), key=PairEvidence.score)
                      for k, evs in between.items() if any(ev.rule for ev in evs)}
        matcher.settle_relations(_reported_edges(stars, classes, class_edge))
        matcher.finish()
    finally:
        matcher.close()
    in_star = {m for s in stars for m in s.members}
    # Exact classes with no near neighbour are clusters on their own.
    stars += [Star(r, [r]) for r, g in classes.items() if len(g) > 1 and r not in in_star]

    clusters: list[ClusterResult] = []
    n_exact = n_near = 0
    for n, s in enumerate(stars):
        if progress and n % 256 == 0:
            progress("report", n, len(stars))
        keep = s.keeper
        pairs: list[PairResult] = []
        members: list[int] = []
        rows = RowCache(images)  # (each row made once per cluster)
        for r in s.members:
            for m in classes[r]:
                members.append(m)
                if m == keep:
                    continue
                if r == keep:
                    same = rows[keep].sha256 == rows[m].sha256
                    pairs.append(PairResult(rows[keep].path, rows[m].path, 1.0, "exact",
                                            relation="exact" if same else "same-pixels"))
                    n_exact += 1
                else:
                    ev = _member_edge(s, r, class_edge)
                    near = rows[keep] if ev is class_edge.get(key(keep, r)) else rows[
                        rep[ev.a] if rep[ev.a] != r else rep[ev.b]]
                    pairs.append(PairResult(near.path, rows[m].path, ev.score(),
                                            "near", ev.to_evidence(),
                                            relation=matcher.settle_relation(ev) or "edited"))
                    n_near += 1
        member_relations = _member_relations(s, keep, classes, rows, pairs, class_edge,
                                             matcher)
        # Why this picture (against the other pictures), and why this file
        # (against its exact copies).
        reason = [explain(near_order, policy, candidate(keep),
                          [candidate(r) for r in s.members[1:]]),
                  explain(same_order, policy, candidate(keep),
                          [candidate(m) for m in classes[keep][1:]])]
        clusters.append(ClusterResult(
            rows[keep].path, [rows[m].path for m in members], pairs,
            keep_reason="; ".join(dict.fromkeys(r for r in reason if r)),
            references=[rows[m].path for m in members if policy.reference(rows[m].path)],
            stamps={rows[m].path: {"size": rows[m].size, "mtime_ns": rows[m].mtime_ns,
                                   "sha256": rows[m].sha256} for m in members},
            member_relations=member_relations))
    if progress:
        progress("report", len(stars), len(stars))
    clusters.sort(key=lambda c: (-len(c.members), c.keep))
    return clusters, n_exact, n_near
