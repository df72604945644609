"""The dedupe pipeline: files -> gallery -> candidates -> decisions -> clusters.

Exact copies (same bytes, or same pixels in another container) are merged
first. Remaining images are linked when their dihedral pHash distance is
within the configured limit; clusters are stars around a keeper so they never
chain, and two of them join only where half or more of the pairs across
match (``find_clusters``). Nothing on disk except the gallery is ever
written by this module.

This module runs the pipeline (:func:`dedupe`); the clustering is
:mod:`~matchkit.jobs.dedupe_clusters` and the relations between a cluster's
members :mod:`~matchkit.jobs.dedupe_relations`. ``find_clusters`` and the
other names moved there can still be imported from here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import ExitStack

from matchkit.util.checkpoint import watching
from matchkit.config import Settings
from matchkit.store.gallery import Gallery
from matchkit.store.shards import ShardedGallery, open_gallery
from matchkit.io.load import iter_image_files
from matchkit.match.keeper import KeeperPolicy
from matchkit.match.incremental import IncrementalMatcher, settings_key
from matchkit.util.gc import with_fewer_collections
from matchkit.relation import check_level
from matchkit.signals import configured as configured_signals, shown as signals_shown
from matchkit.report.dedupe_report import DedupeReport, SkippedFile
from matchkit.store.image_table import ImageTable
from matchkit.jobs.dedupe_clusters import (  # noqa: F401  (re-exported)
    GREY_BATCH, JOIN_ASK_ALL, JOIN_MAX_PAIRS, JOIN_MIN_PAIRS, KEEPER_PASSES, find_clusters)
from matchkit.jobs.dedupe_relations import (  # noqa: F401  (re-exported)
    _member_edge, _member_relations, _mirrored, _relates_members, _reported_edges,
    _union_same_pixel_blanks)


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

    With a ``gallery``, matching is incremental (``match/incremental.py``): candidate
    searches and pair decisions are stored there, and a later run redoes only
    what new, changed or removed images affect, with the same result as a run
    from scratch. ``rematch`` ignores (and replaces) what is stored. Runs with a
    learned ``model`` always match from scratch. A folder holding a shard
    manifest (``store/shards.py``) is a sharded gallery; it keeps the same state
    across its shards (with ``ray``, matching starts from scratch).

    ``ray`` (an address, or "auto"/"local") runs the work on a Ray cluster
    (``distributed/ray_jobs.py``): files are read on its workers, each shard of the
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
    # As text: a list of Path objects held for the run cost about 330 bytes
    # a file (its parts and their strings), a third of that as ``str``.
    files = [os.fspath(f) for f in iter_image_files(paths + [f for f in policy.keep_in
                                                             if not _inside_any(f, paths)])]
    gallery_given = gallery is not None
    phases = PhaseTimes(since=start)  # ("start": listing the files and the rest up to "add")
    with ExitStack() as stack:
        on_progress = _watched(phases.wrap(on_progress), stack)
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
        # (``Gallery.index_in_background``), then writes the index files
        # (``save_ahead``); their stamps are recorded after matching, or when
        # it stops.
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
        else:  # (the files are written on the index worker while matching goes on)
            gallery.save_ahead()
        if embedder is not None:
            if on_progress:
                on_progress("embed", 0, len(added.ids))
            gallery.embed(embedder, added.ids, progress=progress)
        incremental = (gallery_given and not settings.model and run is None
                       and isinstance(gallery, (Gallery, ShardedGallery)))
        calibrator = profile.calibrator if profile else None
        made: list[IncrementalMatcher] = []

        def make_matcher(visible: list[int], same: dict[int, int],
                         images=None) -> IncrementalMatcher:
            made.append(IncrementalMatcher(gallery, visible, settings, same, calibrator,
                                           rematch=rematch, images=images))
            return made[-1]

        if run is not None:
            make_matcher = run.matcher(calibrator)
        # A re-run on the same images keeps the burstiness check's
        # measurements (``burst.BurstMemo``; only a plain gallery has one folder).
        memo_base = (f"{settings_key(settings)}:{gallery.generation}"
                     if incremental and isinstance(gallery, Gallery) else None)
        # The rows as columns (~200 bytes an image), read once: clustering
        # and the report below both read them.
        rows = ImageTable.read(gallery, added.ids)
        clusters, n_exact, n_near = find_clusters(
            gallery, added.ids, settings, calibrator=calibrator, policy=policy,
            make_matcher=make_matcher if incremental or run else None, progress=on_progress,
            burst_memo=memo_base, images=rows)
        for m in made:
            m.save()
        if behind:
            _save_behind(gallery)
        blank = sorted(rows.paths[i] for i in rows if rows.blank(i))
        report = DedupeReport(
            clusters=clusters,
            skipped=[SkippedFile(s.path, s.reason)  # in path order, as given or not
                     for s in sorted(added.skipped, key=lambda s: s.path)],
            blank=blank,
            roots=[os.path.abspath(p) for p in paths],
        )
        if settings.signals and clusters:  # what each signal shows of the members
            ids = {path: i for i, path in rows.paths.items()}
            member_ids = [ids[m] for c in clusters for m in c.members if m in ids]
            by_id = signals_shown(gallery, settings.signals, member_ids)
            report.shown = {rows.paths[i]: v for i, v in sorted(by_id.items())}
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
            "phase_seconds": phases.totals(),
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


class PhaseTimes:
    """Wall seconds of each phase a run reports (``on_progress``), for
    ``stats["phase_seconds"]``: where a run's time went, by the user's
    machine and collection (a 1% add to 10,000 images spends it all over:
    reading the stored state, patching votes, clustering again, saving).

    The time from one report to the next counts for the phase of the first;
    "verify" (told between "cluster" reports, as clustering asks for pairs)
    counts as "cluster"; the time from ``since`` (default: now; ``dedupe``
    gives its own start, so the phases add up to its ``seconds``) to the
    first report as "start", and after the last, to when ``totals`` is
    asked, for the last phase. Phases in the order first seen."""

    #: Reported phases counted under another's name.
    SAME_AS = {"verify": "cluster"}

    def __init__(self, since: float | None = None):
        self._seconds: dict[str, float] = {}
        self._phase = "start"
        self._since = time.perf_counter() if since is None else since

    def mark(self, phase: str) -> None:
        phase = self.SAME_AS.get(phase, phase)
        if phase != self._phase:
            now = time.perf_counter()
            self._seconds[self._phase] = self._seconds.get(self._phase, 0.0) + now - self._since
            self._phase, self._since = phase, now

    def wrap(self, on_progress: Callable[[str, int, int], None] | None
             ) -> Callable[[str, int, int], None]:
        """``on_progress`` (or nothing) with each report marked here first."""
        def report(phase: str, done: int, total: int) -> None:
            self.mark(phase)
            if on_progress is not None:
                on_progress(phase, done, total)
        return report

    def totals(self) -> dict[str, float]:
        seconds = dict(self._seconds)
        seconds[self._phase] = seconds.get(self._phase, 0.0) + time.perf_counter() - self._since
        return {k: round(v, 3) for k, v in seconds.items()}


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
