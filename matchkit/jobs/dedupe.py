"""The dedupe pipeline: files -> gallery -> candidates -> decisions -> clusters.

Exact copies (same bytes, or same pixels in another container) are merged
first. Remaining images are linked when their dihedral pHash distance is
within the configured limit; clusters are stars around a keeper so they never
chain, and two of them join only where half or more of the pairs across
match (``find_clusters``). Nothing on disk except the gallery is ever
written by this module.
"""

from __future__ import annotations

import bisect
import os
import tempfile
from pathlib import Path
from collections import defaultdict
from itertools import combinations
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import ExitStack

from matchkit.util.checkpoint import watching
from matchkit.match.cluster import Star, UnionFind, lazy_star_clusters
from matchkit.config import Settings
from matchkit.store.gallery import ORB_KEY_STRIDE, Gallery, StoredImage
from matchkit.store.shards import ShardedGallery, open_gallery
from matchkit.io.load import iter_image_files
from matchkit.match.keeper import (GREY_MASS, Candidate, KeeperPolicy, explain, grey_share, near_criteria,
                                   same_pixels_criteria, sort_key)
from matchkit.match.incremental import IncrementalMatcher, settings_key
from matchkit.match.pairs import PairEvidence, PairMatcher
from matchkit.util.cvthreads import single_opencv_thread
from matchkit.util.gc import with_fewer_collections
from matchkit.match.picture import dense_picture
from matchkit.relation import check_level, compose
from matchkit.match.burst import bursting
from matchkit.signals import configured as configured_signals, shown as signals_shown, vetoing
from matchkit.report.dedupe_report import (MEMBER_RELATIONS_UP_TO, ClusterResult, DedupeReport, MemberRelation,
                                           PairResult, SkippedFile)


@with_fewer_collections
def dedupe(
    paths: Iterable[str | os.PathLike],
    *,
    gallery: Gallery | str | os.PathLike | None = None,
    settings: Settings = Settings(),
    progress: bool = False,
    profile=None,
    keep_in: Iterable[str | os.PathLike] = (),
    prefer: Iterable[str] = (),
    level: str | None = None,
    rematch: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
    ray: str | None = None,
    shards: int | None = None,
) -> DedupeReport:
    """Find exact and near-duplicate images among the files under ``paths``.

    ``gallery`` keeps features for later runs (a :class:`Gallery` or a folder);
    without one, a temporary gallery is used and removed afterwards. Raises
    ``FileNotFoundError`` if a path does not exist; unreadable files are
    reported in ``report.skipped``. With a ``profile`` (``profiles.Profile``)
    its calibrated decision replaces the hand-set rules and its settings
    overrides apply. ``level`` (``relation.LEVELS``: "copies", "variants" or
    "similar"; default ``settings.level``) chooses which relations form clusters.
    ``on_progress(phase, done, total)`` is told of each phase as it goes:
    "add" (files read), "embed", "stored" (with a gallery: steps of bringing
    its stored matching up to date, ``incremental.UPDATE_STEPS``), "match"
    (images whose candidates were searched), "cluster" (exact-copy classes placed in clusters), "verify"
    (candidate pairs verified or looked up so far, of those pending: told
    between "cluster" calls, as clustering asks for them), "keepers" (classes
    placed again in a further keeper pass) and "report" (clusters written
    up); an exception it raises stops the run there
    (how the server cancels a job). Inside a phase it is called again with
    the last values every half second or so from the long loops
    (``checkpoint``), so such a stop takes effect within about a second.

    With a ``gallery``, matching is incremental (``incremental.py``): candidate
    searches and pair decisions are stored there, and a later run redoes only
    what new, changed or removed images affect, with the same result as a run
    from scratch. ``rematch`` ignores (and replaces) what is stored. Runs with a
    learned ``model`` always match from scratch. A folder holding a shard
    manifest (``shards.py``) is a sharded gallery; it keeps the same state
    across its shards (with ``ray``, matching starts from scratch).

    ``ray`` (an address, or "auto"/"local") runs the work on a Ray cluster
    (``distributed.py``): files are read on its workers, each shard of the
    gallery is held by an actor, pairs are verified in tasks; clusters and
    report are built here as on one machine, with the same result.
    ``shards`` makes a new ``gallery`` folder a sharded gallery of that many
    shards (with ``ray``, the default is one per node).

    ``keep_in`` names reference folders: they are scanned too, their files
    are always keepers and are listed under each cluster's ``references``
    (``moves`` never moves them). ``prefer`` rules (``oldest``, ``newest``,
    ``largest``, ``smallest``, ``format:FMT``, ``path:GLOB``) choose keepers
    in order before the built-in rule (``keeper``); a malformed one raises
    ``ValueError`` before any file is read.
    """
    start = time.perf_counter()
    policy = KeeperPolicy.make(keep_in, prefer)
    for folder in policy.keep_in:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such reference folder: {folder}")
    if profile is not None:
        settings = profile.apply(settings, level)
    if level is not None:
        settings = settings.with_(level=check_level(level))
    configured_signals(settings)  # a signal that cannot run here fails before any work
    embedder = None
    if settings.model:
        from matchkit.embed import load_embedder  # torch/onnxruntime only when asked for
        embedder = load_embedder(settings.model)  # a missing model fails before any work
        settings = settings.with_(model=embedder.name)
    paths = list(paths)
    files = list(iter_image_files(paths + [f for f in policy.keep_in
                                           if not _inside_any(f, paths)]))
    gallery_given = gallery is not None
    with ExitStack() as stack:
        if on_progress is not None:
            on_progress = _watched(on_progress, stack)
        run = None
        if ray is not None:
            from matchkit.distributed.ray_jobs import RayRun

            if settings.model:
                raise ValueError("--model is not supported with --ray yet")
            if settings.signals:
                raise ValueError("--signal is not supported with --ray yet")
            if isinstance(gallery, (Gallery, ShardedGallery)):
                gallery = gallery.path  # (the run opens its shards itself)
            if gallery is None:
                gallery = stack.enter_context(tempfile.TemporaryDirectory(prefix="matchkit-"))
            run = stack.enter_context(RayRun(ray, gallery, settings, shards=shards))
            gallery = run.gallery
        elif gallery is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="matchkit-"))
            gallery = stack.enter_context(Gallery(tmp, settings))
        elif not isinstance(gallery, (Gallery, ShardedGallery)):
            gallery = stack.enter_context(open_gallery(gallery, settings, shards=shards))
        bar = _progress_bar(len(files), progress)
        count = _counter(bar, on_progress, "add", len(files))
        # With a gallery kept between runs, its descriptor index takes the new
        # images on a worker thread while the matcher reads the stored state
        # (``Gallery.index_in_background``); the index files are saved after
        # matching, or when it stops.
        behind = (gallery_given and not settings.model and run is None
                  and isinstance(gallery, Gallery))
        if behind:
            gallery.index_in_background = True
            stack.callback(_save_behind, gallery, stopped=True)
        added = (run or gallery).add(files, progress=count)
        if bar:
            bar.close()
        if not behind:
            gallery.save()
        if embedder is not None:
            if on_progress:
                on_progress("embed", 0, len(added.ids))
            gallery.embed(embedder, added.ids, progress=progress)
        incremental = (gallery_given and not settings.model and run is None
                       and isinstance(gallery, (Gallery, ShardedGallery)))
        calibrator = profile.calibrator if profile else None
        made: list[IncrementalMatcher] = []

        def make_matcher(visible: list[int], same: dict[int, int]) -> IncrementalMatcher:
            made.append(IncrementalMatcher(gallery, visible, settings, same, calibrator,
                                           rematch=rematch))
            return made[-1]

        if run is not None:
            make_matcher = run.matcher(calibrator)
        # A re-run on the same images keeps the burstiness check's
        # measurements (``burst.BurstMemo``; only a plain gallery has one folder).
        memo_base = (f"{settings_key(settings)}:{gallery.generation}"
                     if incremental and isinstance(gallery, Gallery) else None)
        clusters, n_exact, n_near = find_clusters(
            gallery, added.ids, settings, calibrator=calibrator, policy=policy,
            make_matcher=make_matcher if incremental or run else None, progress=on_progress,
            burst_memo=memo_base)
        for m in made:
            m.save()
        if behind:
            _save_behind(gallery)
        rows = gallery.images(added.ids)
        blank = sorted(img.path for img in rows.values() if img.blank)
        report = DedupeReport(
            clusters=clusters,
            skipped=[SkippedFile(s.path, s.reason)  # in path order, as given or not
                     for s in sorted(added.skipped, key=lambda s: s.path)],
            blank=blank,
            roots=[os.path.abspath(p) for p in paths],
        )
        if settings.signals and clusters:  # what each signal shows of the members
            ids = {img.path: i for i, img in rows.items()}
            member_ids = [ids[m] for c in clusters for m in c.members if m in ids]
            by_id = signals_shown(gallery, settings.signals, member_ids)
            report.shown = {rows[i].path: v for i, v in sorted(by_id.items())}
        report.stats = {
            "files": len(files),
            "images": len(added.ids),
            "skipped": len(added.skipped),
            "added": added.added,
            "updated": added.updated,
            "unchanged": added.unchanged,
            "blank": len(blank),
            "clusters": len(clusters),
            "duplicates": sum(len(c.members) - 1 for c in clusters),
            "exact_pairs": n_exact,
            "near_pairs": n_near,
            "phash_max_distance": settings.phash_max_distance,
            "colour_min_similarity": settings.colour_min_similarity,
            "model": settings.model,
            "level": settings.level,
            "profile": profile.name if profile else None,
            "target_precision": profile.target_precision if profile else None,
            # Pair scores are the profile's P(duplicate); it accepts from here.
            "score_threshold": (round(profile.calibrator.probability_threshold_, 4)
                                if profile else None),
            "seconds": round(time.perf_counter() - start, 3),
        }
        if run is not None:
            report.stats["ray"] = run.stats()
        if incremental:  # what the stored decisions saved
            report.stats.update(
                images_searched=sum(len(m.searched) for m in made),
                pairs_reused=sum(m.reused for m in made),
                pairs_verified=sum(m.verified for m in made),
                rematch=rematch)
    return report


def _save_behind(gallery: Gallery, stopped: bool = False) -> None:
    """Turn ``index_in_background`` off again and save the index files (once:
    after matching, or when the run stops part way, ``stopped``: the images
    are in the database by then, and rebuilding an unsaved graph costs
    minutes; a failure to save is then a warning, not a second error)."""
    if not gallery.index_in_background:
        return
    gallery.index_in_background = False
    if not stopped:
        gallery.save()
        return
    try:
        gallery.save()
    except Exception as e:
        warnings.warn(f"gallery {gallery.path}: index files not saved ({e}); "
                      "the next open rebuilds them", RuntimeWarning, stacklevel=2)


def _inside_any(folder: str, paths: list) -> bool:
    """Whether ``folder`` is one of ``paths`` or inside one of them."""
    for p in paths:
        p = str(Path(p).resolve())
        if folder == p or folder.startswith(p.rstrip(os.sep) + os.sep):
            return True
    return False


#: Colour histograms read at once for the keepers' grey test (the next ones
#: by id after the image asked for: a run asks for nearly all of them).
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
                  burst_memo: str | None = None) -> tuple[list[ClusterResult], int, int]:
    """Cluster the given gallery images; returns clusters and pair counts.

    ``calibrator`` (a fitted ``calibrate.PairCalibrator``) decides pairs
    instead of the hand-set rules; exact copies and clustering are unchanged.
    ``policy`` carries the user's reference folders and preferences.
    ``progress(phase, done, total)``: see ``dedupe``.
    Blank images (one flat colour, e.g. fully transparent) take part in
    exact matching only: same bytes, or same size and pixels.
    ``make_matcher(visible_ids, same)`` builds the pair matcher instead of a
    fresh ``PairMatcher`` (an incremental one reusing stored decisions).
    ``burst_memo``: keep the burstiness check's measurements in the gallery
    folder under this base key (``burst.bursting``)."""
    ids = sorted(set(ids))
    if not ids:
        return [], 0, 0
    if progress:
        progress("match", 0, len(ids))
    images = gallery.images(ids)
    exact = UnionFind()
    for i in ids:
        exact.find(i)
    by_sha: dict[str, int] = {}
    for i in ids:
        first = by_sha.setdefault(images[i].sha256, i)
        if first != i:
            exact.union(first, i)
    _union_same_pixel_blanks(gallery, [i for i in ids if images[i].blank], images, exact)
    visible = [i for i in ids if not images[i].blank]
    # Byte-identical files are one class up front; pairs inside it are never
    # examined (a map, not a pair set: 1,000 copies of one file stay cheap).
    same = {i: exact.find(i) for i in visible}
    matcher = (PairMatcher(gallery, visible, settings, same=same, calibrator=calibrator)
               if make_matcher is None else make_matcher(visible, same))
    matcher = vetoing(matcher, gallery, settings)  # the extra signals' say (``signals``)
    matcher = bursting(matcher, gallery, settings, ORB_KEY_STRIDE,  # shared stickers, logos
                       memo_base=burst_memo)
    possible: list[PairEvidence] = []
    for ev in matcher.evidence:
        a, b = ev.a, ev.b
        ia, ib = images[a], images[b]
        # Identical pixels need equal sizes and near-equal hashes.
        if (ev.phash_distance <= settings.exact_check_distance
                and (ia.width, ia.height) == (ib.width, ib.height)
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
    facts: dict[int, Candidate] = {}

    #: Class representative -> share of its frame that the picture it
    #: re-photographs takes (learnt from verified pairs; see below).
    rephotos: dict[int, float] = {}

    #: Whether each image is grey (for keepers), read in batches as asked for.
    greys: dict[int, bool] = {}

    def grey(i: int) -> bool:
        if i not in greys:
            at = bisect.bisect_left(ids, i)  # (ids are sorted)
            part = [j for j in ids[at:at + GREY_BATCH] if j not in greys] or [i]
            greys.update((j, grey_share(h) >= GREY_MASS) for j, h in gallery.colours(part).items())
        return greys[i]

    def candidate(i: int) -> Candidate:
        if i not in facts:
            share = (matcher.picture_share(i) if settings.local_features
                     and not images[i].blank else 1.0)
            facts[i] = Candidate(images[i], min(share, rephotos.get(i, 1.0)), grey=grey(i),
                                 rephotographed=i in rephotos)
        return facts[i]

    ranks: dict[int, tuple] = {}

    def priority(i: int) -> tuple:
        if i not in ranks:  # asked for many times by the clustering; compute once
            ranks[i] = sort_key(near_order, candidate(i))
        return ranks[i]

    # Work on exact-copy classes; each class is represented by its best member:
    # among the same pixels, the source file, not the biggest re-save.
    rep = {}
    classes = {}
    for group in exact.groups():
        if len(group) > 1:  # (a key for every image alone: 0.3 s at 5,000 images)
            group.sort(key=lambda i: sort_key(same_order, candidate(i)))
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

    def key(x: int, y: int) -> tuple[int, int]:
        return (x, y) if x < y else (y, x)

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
                between.setdefault(key(ev.a, ev.b), []).append(ev)
                other = ev.b if ev.a == center else ev.a
                candidates[center].add(other)
                candidates[other].add(center)
                if ev.rule:
                    ok.add(other)
        return ok

    def link(x: int, y: int, via: list[PairEvidence]) -> PairEvidence:
        """Fresh evidence between ``x`` and ``y``, found through the matched
        pairs ``via`` (a mirror image look when the path may mean one)."""
        steps = [_mirrored(ev) for ev in via]
        mirror = None if None in steps else sum(steps) % 2 == 1
        ev = matcher.evidence_between(x, y, reflect=mirror is not False)
        between.setdefault(key(ev.a, ev.b), []).append(ev)
        candidates[x].add(y)
        candidates[y].add(x)
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
        """A pair refused as sharing a part only (``match.relation_of``: no
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
        for r in s.members:
            for m in classes[r]:
                members.append(m)
                if m == keep:
                    continue
                if r == keep:
                    same = images[keep].sha256 == images[m].sha256
                    pairs.append(PairResult(images[keep].path, images[m].path, 1.0, "exact",
                                            relation="exact" if same else "same-pixels"))
                    n_exact += 1
                else:
                    ev = _member_edge(s, r, class_edge)
                    near = images[keep] if ev is class_edge.get(key(keep, r)) else images[
                        rep[ev.a] if rep[ev.a] != r else rep[ev.b]]
                    pairs.append(PairResult(near.path, images[m].path, ev.score(),
                                            "near", ev.to_evidence(),
                                            relation=matcher.settle_relation(ev) or "edited"))
                    n_near += 1
        member_relations = _member_relations(s, keep, classes, images, pairs, class_edge,
                                             matcher)
        # Why this picture (against the other pictures), and why this file
        # (against its exact copies).
        reason = [explain(near_order, policy, candidate(keep),
                          [candidate(r) for r in s.members[1:]]),
                  explain(same_order, policy, candidate(keep),
                          [candidate(m) for m in classes[keep][1:]])]
        clusters.append(ClusterResult(
            images[keep].path, [images[m].path for m in members], pairs,
            keep_reason="; ".join(dict.fromkeys(r for r in reason if r)),
            references=[images[m].path for m in members if policy.reference(images[m].path)],
            stamps={images[m].path: {"size": images[m].size, "mtime_ns": images[m].mtime_ns,
                                     "sha256": images[m].sha256} for m in members},
            member_relations=member_relations))
    if progress:
        progress("report", len(stars), len(stars))
    clusters.sort(key=lambda c: (-len(c.members), c.keep))
    return clusters, n_exact, n_near


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


def _union_same_pixel_blanks(gallery: Gallery, blank: list[int], images: dict,
                             exact: UnionFind) -> None:
    """Blank images are the same picture only with the same size and pixels
    (byte copies are already joined): compared by full pixel digest, and
    only within groups of one size and one colour."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    if len(blank) < 2:
        return
    colours = gallery.colours(blank)
    for i in blank:
        groups[(images[i].width, images[i].height, colours[i].tobytes())].append(i)
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


def _watched(on_progress: Callable[[str, int, int], None], stack: ExitStack):
    """``on_progress``, also called with its last values from this thread's
    ``checkpoint``s while the run is inside a phase."""
    last = ["start", 0, 0]

    def report(phase: str, done: int, total: int) -> None:
        last[:] = [phase, done, total]
        on_progress(phase, done, total)
    stack.enter_context(watching(lambda: on_progress(*last), on_progress=report))
    return report


def _counter(bar, on_progress, phase: str, total: int):
    """A ``progress(n)`` for ``Gallery.add`` feeding the bar and ``on_progress``."""
    if on_progress is None:
        return bar.update if bar else None
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if bar:
            bar.update(n)
        on_progress(phase, done, total)
    on_progress(phase, 0, total)
    return step


def _progress_bar(total: int, enabled: bool):
    from matchkit.util.progress import progress_bar

    return progress_bar(total, enabled)
