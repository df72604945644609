"""How the members of a dedupe cluster relate, as the report names it.

Helpers of :func:`matchkit.jobs.dedupe_clusters.find_clusters` for its last
step: which matched pair puts each member class in its cluster, which pairs'
relations the report will name, and each two non-keeper members' relation
(``member_relations`` of a cluster). Apart from the clustering because they
only read its result. Also two facts the clustering asks of pairs and
classes: which blank images are the same picture, and whether a pair goes
through a mirror image.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

from matchkit.match.cluster import Star, UnionFind
from matchkit.match.pairs import PairEvidence
from matchkit.relation import compose
from matchkit.report.dedupe_report import MEMBER_RELATIONS_UP_TO, MemberRelation, PairResult
from matchkit.store.gallery import Gallery
from matchkit.store.image_table import ImageTable


def _member_edge(star: Star, r: int, class_edge: dict) -> PairEvidence:
    """The evidence that puts class ``r`` in ``star``: its pair with the
    keeper, or (a class joined with its cluster by ``join_clusters``, which
    need not match the keeper) its best pair in the cluster."""
    keep = star.keeper
    return class_edge.get((keep, r) if keep < r else (r, keep)) or max(
        (class_edge[(o, r) if o < r else (r, o)] for o in star.members
         if o != r and ((o, r) if o < r else (r, o)) in class_edge), key=PairEvidence.score)


def _reported_edges(stars: list[Star], classes: dict, class_edge: dict) -> list[PairEvidence]:
    """The pairs whose relations the report will name: each member class's
    ``_member_edge`` and, in clusters small enough for ``_member_relations``,
    every matched pair between two member classes."""
    out = []
    for s in stars:
        out += [_member_edge(s, r, class_edge) for r in s.members[1:]]
        if _relates_members(s, classes):
            out += [class_edge[k] for x, y in combinations(s.members[1:], 2)
                    if (k := (x, y) if x < y else (y, x)) in class_edge]
    return out


def _relates_members(star: Star, classes: dict) -> bool:
    """Whether the report relates the cluster's non-keeper members to each
    other: two or more of them, and no more than ``MEMBER_RELATIONS_UP_TO``
    members in all."""
    return 3 <= sum(len(classes[r]) for r in star.members) <= MEMBER_RELATIONS_UP_TO


def _member_relations(star, keep: int, classes: dict, images: dict, pairs: list[PairResult],
                      class_edge: dict, matcher) -> list[MemberRelation]:
    """How each two non-keeper members relate: same bytes or pixels inside one
    exact class; their own verified pair where the run accepted one between
    their classes; else composed through the keeper (``relation.compose``)."""
    if not _relates_members(star, classes):
        return []
    members = [(r, m) for r in star.members for m in classes[r] if m != keep]
    to_keeper = {p.b: p.relation for p in pairs}
    out = []
    for (ra, a), (rb, b) in combinations(members, 2):
        pa, pb = images[a].path, images[b].path
        if ra == rb:
            rel = "exact" if images[a].sha256 == images[b].sha256 else "same-pixels"
            out.append(MemberRelation(pa, pb, rel, "exact"))
            continue
        ev = class_edge.get((ra, rb) if ra < rb else (rb, ra))
        if ev is not None:
            out.append(MemberRelation(pa, pb, matcher.settle_relation(ev) or "edited",
                                      "verified"))
        else:
            out.append(MemberRelation(pa, pb, compose(to_keeper[pa], to_keeper[pb]), "keeper"))
    return out


def _union_same_pixel_blanks(gallery: Gallery, blank: list[int], images: ImageTable,
                             exact: UnionFind) -> None:
    """Blank images are the same picture only with the same size and pixels
    (byte copies are already joined): compared by full pixel digest, and
    only within groups of one size and one colour."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    if len(blank) < 2:
        return
    colours = gallery.colours(blank)
    for i in blank:
        groups[(*images.sizes[i], colours[i].tobytes())].append(i)
    for group in groups.values():
        by_digest: dict[str, int] = {}
        for i in group:
            if len(group) < 2:
                break
            digest = gallery.pixel_digest(i)
            if digest is not None:
                exact.union(by_digest.setdefault(digest, i), i)


def _mirrored(ev: PairEvidence) -> bool | None:
    """Whether a pair relates its images through a mirror image; None when
    not known yet. A pending pair's pHash variant says nothing: far apart
    hashes align best under a reflection half the time by chance."""
    if ev.rule == "local" and ev.verification is not None:
        return ev.verification.mirrored
    if ev.rule:
        return bool(ev.extra.get("reflect"))
    return None

