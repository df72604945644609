"""The dedupe pipeline: files -> gallery -> candidates -> decisions -> clusters.

Exact copies (same bytes, or same pixels in another container) are merged
first. Remaining images are linked when their dihedral pHash distance is
within the configured limit; clusters are stars around a keeper so they never
chain. Nothing on disk except the gallery is ever written by this module.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
import time
from collections.abc import Iterable
from contextlib import ExitStack

from .cluster import Star, UnionFind, lazy_star_clusters
from .config import Settings
from .gallery import Gallery, StoredImage
from .hashing import hamming
from .io import iter_image_files
from .match import PairEvidence, PairMatcher
from .report import ClusterResult, DedupeReport, PairResult, SkippedFile


def keeper_priority(img: StoredImage) -> tuple:
    """Sort key, best first: highest resolution, then largest file, then oldest."""
    return (-img.pixels, -img.size, img.mtime_ns, img.path)


def dedupe(
    paths: Iterable[str | os.PathLike],
    *,
    gallery: Gallery | str | os.PathLike | None = None,
    settings: Settings = Settings(),
    progress: bool = False,
) -> DedupeReport:
    """Find exact and near-duplicate images among the files under ``paths``.

    ``gallery`` keeps features for later runs (a :class:`Gallery` or a folder);
    without one, a temporary gallery is used and removed afterwards. Raises
    ``FileNotFoundError`` if a path does not exist; unreadable files are
    reported in ``report.skipped``.
    """
    start = time.perf_counter()
    files = list(iter_image_files(paths))
    with ExitStack() as stack:
        if gallery is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="matchkit-"))
            gallery = stack.enter_context(Gallery(tmp, settings))
        elif not isinstance(gallery, Gallery):
            gallery = stack.enter_context(Gallery(gallery, settings))
        bar = _progress_bar(len(files), progress)
        added = gallery.add(files, progress=bar.update if bar else None)
        if bar:
            bar.close()
        gallery.save()
        clusters, n_exact, n_near = find_clusters(gallery, added.ids, settings)
        report = DedupeReport(
            clusters=clusters,
            skipped=[SkippedFile(s.path, s.reason) for s in added.skipped],
        )
        report.stats = {
            "files": len(files),
            "images": len(added.ids),
            "skipped": len(added.skipped),
            "added": added.added,
            "updated": added.updated,
            "unchanged": added.unchanged,
            "clusters": len(clusters),
            "duplicates": sum(len(c.members) - 1 for c in clusters),
            "exact_pairs": n_exact,
            "near_pairs": n_near,
            "phash_max_distance": settings.phash_max_distance,
            "colour_min_similarity": settings.colour_min_similarity,
            "seconds": round(time.perf_counter() - start, 3),
        }
    return report


def find_clusters(gallery: Gallery, ids: list[int], settings: Settings
                  ) -> tuple[list[ClusterResult], int, int]:
    """Cluster the given gallery images; returns clusters and pair counts."""
    ids = sorted(set(ids))
    if not ids:
        return [], 0, 0
    images = gallery.images(ids)
    exact = UnionFind()
    for i in ids:
        exact.find(i)
    by_sha: dict[str, int] = {}
    for i in ids:
        first = by_sha.setdefault(images[i].sha256, i)
        if first != i:
            exact.union(first, i)
    same_bytes = {(a, b) for g in exact.groups() for a in g for b in g if a < b}

    matcher = PairMatcher(gallery, ids, settings, exclude=same_bytes)
    variants = dict(zip(ids, gallery.phash_variants(ids)))
    possible: list[PairEvidence] = []
    for ev in matcher.evidence:
        a, b = ev.a, ev.b
        ia, ib = images[a], images[b]
        # Identical pixels need equal sizes and near-equal *unrotated* hashes;
        # only then is it worth decoding both files at full resolution.
        if (ev.phash_distance <= settings.exact_check_distance
                and (ia.width, ia.height) == (ib.width, ib.height)
                and exact.find(a) != exact.find(b)
                and hamming(variants[a][0], variants[b][0]) <= settings.exact_check_distance):
            pa, pb = gallery.pixel_digest(a), gallery.pixel_digest(b)
            if pa is not None and pa == pb:
                exact.union(a, b)
                continue
        if ev.rule or ev.pending:
            possible.append(ev)

    # Work on exact-copy classes; each class is represented by its best member.
    rep = {}
    classes = {}
    for group in exact.groups():
        group.sort(key=lambda i: keeper_priority(images[i]))
        for i in group:
            rep[i] = group[0]
        classes[group[0]] = group
    between: dict[tuple[int, int], list[PairEvidence]] = defaultdict(list)
    candidates: dict[int, set[int]] = defaultdict(set)
    for ev in possible:
        ra, rb = rep[ev.a], rep[ev.b]
        if ra != rb:
            between[(ra, rb) if ra < rb else (rb, ra)].append(ev)
            candidates[ra].add(rb)
            candidates[rb].add(ra)

    def confirm(center: int, others: list[int]) -> set[int]:
        """Verify (in one batch) only class pairs not already matched globally."""
        keys = [(center, o) if center < o else (o, center) for o in others]
        todo = [ev for k in keys if not any(e.rule for e in between[k])
                for ev in between[k] if ev.pending]
        matcher.verify(todo)
        return {o for o, k in zip(others, keys) if any(ev.rule for ev in between[k])}

    stars = lazy_star_clusters(classes.keys(), candidates,
                               lambda r: keeper_priority(images[r]), confirm)
    # Evidence between two classes: the strongest matched pair of their members.
    class_edge = {key: max((ev for ev in evs if ev.rule), key=PairEvidence.score)
                  for key, evs in between.items() if any(ev.rule for ev in evs)}
    in_star = {m for s in stars for m in s.members}
    # Exact classes with no near neighbour are clusters on their own.
    stars += [Star(r, [r]) for r, g in classes.items() if len(g) > 1 and r not in in_star]

    clusters: list[ClusterResult] = []
    n_exact = n_near = 0
    for s in stars:
        keep = s.keeper
        pairs: list[PairResult] = []
        members: list[int] = []
        for r in s.members:
            for m in classes[r]:
                members.append(m)
                if m == keep:
                    continue
                if r == keep:
                    pairs.append(PairResult(images[keep].path, images[m].path, 1.0, "exact"))
                    n_exact += 1
                else:
                    ev = class_edge[(keep, r) if keep < r else (r, keep)]
                    pairs.append(PairResult(images[keep].path, images[m].path, ev.score(),
                                            "near", ev.to_evidence()))
                    n_near += 1
        clusters.append(ClusterResult(images[keep].path, [images[m].path for m in members], pairs))
    clusters.sort(key=lambda c: (-len(c.members), c.keep))
    return clusters, n_exact, n_near


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    import sys

    import tqdm
    if not sys.stderr.isatty():
        return None
    tqdm.tqdm.monitor_interval = 0  # no monitor thread: worker processes can fork safely
    return tqdm.tqdm(total=total, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)
