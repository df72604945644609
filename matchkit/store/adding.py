"""Adding files to a gallery of one or more shards: which files changed,
extraction in path order, and which shard each record goes to.

This is the one place the add pipeline lives (list -> stat -> plan ->
extract -> place -> write). ``Gallery.add`` is its one-shard case and
``ShardedGallery.add`` its many-shard case; the Ray tasks use :func:`place`.
A store here is anything with ``plan_add``, ``last_id``, ``write_records``
and ``remove`` (a ``Gallery``), so this module needs no gallery import.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from matchkit.config import Settings
from matchkit.features import extract_many
from matchkit.io.load import ImageLoadError
from matchkit.util.memory import release_memory

#: Records written per shard transaction.
BATCH = 256


@dataclass
class Skipped:
    """A file left out of a run, and why."""

    path: str
    reason: str


@dataclass
class AddReport:
    """What ``Gallery.add`` did: ids of every readable file asked for, and the rest.

    ``changed`` lists the ids that were added or updated (decoded this run).
    """

    ids: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)


def _key(path: str | bytes | os.PathLike) -> str:
    """The absolute path an image is stored under (surrogate-escaped when its
    name is not UTF-8; ``fspath.to_db`` makes the SQLite value)."""
    return str(Path(os.fsdecode(path)).resolve())


def shard_of(digest: str, names: Sequence[str]) -> int:
    """Index of the shard (by name) that owns ``digest``: rendezvous hashing."""
    if len(names) == 1:
        return 0
    return max(range(len(names)), key=lambda i: (_weight(names[i], digest), i))


def _weight(name: str, digest: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{name}\0{digest}".encode("utf-8", "surrogateescape"),
                                          digest_size=8).digest(), "big")


def shard_names(n: int) -> list[str]:
    """Folder names of ``n`` new shards."""
    return [f"shard-{i:03d}" for i in range(n)]


class Store(Protocol):
    """What :func:`add_files` needs of a shard (``Gallery`` has it)."""

    def plan_add(self, files: Sequence[tuple[str, int, int]]) -> list[tuple[str, object]]: ...
    def last_id(self) -> int: ...
    def write_records(self, records: list, ids: dict[str, int]) -> "AddReport": ...
    def remove(self, ids: Sequence[int]) -> object: ...


def stat_files(paths: Iterable[str | os.PathLike]) -> list[tuple[str, object]]:
    """Each distinct file's key with ``(size, mtime_ns)``, or a ``Skipped``."""
    out: list[tuple[str, object]] = []
    seen: set[str] = set()
    folders: dict[str, str] = {}  # folder as given -> resolved

    def resolved(text: str, hops: int = 0) -> tuple[str, os.stat_result | None]:
        # Resolving each path in full (``_key``) checks every folder on the
        # way for a link: 0.5 s of a 5,000-file re-run. Here a folder is
        # resolved once, and a link to a file is followed by hand.
        folder, name = os.path.split(text)
        folder = folder or os.curdir
        try:
            st = os.lstat(text) if name not in ("", ".", "..") and hops < 8 else None
        except OSError:
            st = None
        if st is None:
            return _key(text), None
        if stat.S_ISLNK(st.st_mode):
            return resolved(os.path.join(folder, os.readlink(text)), hops + 1)
        if folder not in folders:
            folders[folder] = _key(folder)
        return os.path.join(folders[folder], name), st

    for p in paths:
        text = os.fsdecode(p)
        try:
            key, st = resolved(text)
        except (OSError, RuntimeError) as e:  # (a loop of links: Path.resolve's error)
            key = os.path.abspath(text)
            if key not in seen:
                seen.add(key)
                out.append((key, Skipped(key, f"cannot read file: {e}")))
            continue
        if key in seen:
            continue
        seen.add(key)
        try:
            st = st or os.stat(key)
        except OSError as e:
            reason = f"cannot read file: {e.strerror or e}"
            if os.path.islink(text):  # (named as the user has it, not by its target)
                key, reason = os.path.abspath(text), f"{reason} (a broken link to {key})"
            out.append((key, Skipped(key, reason)))
            continue
        out.append((key, (st.st_size, st.st_mtime_ns)))
    return out


def plan_files(answers: list[list[tuple[str, object]]], stats: list[tuple[str, object]],
               report: AddReport) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Merge what each shard holds of the files (``Gallery.plan_add`` answers,
    one list per shard, for the files of ``stats`` that exist) into ``report``
    (unchanged ids, skipped files, in the order given); returns the files to
    extract, in path order, and where each one that some shard holds lives
    (key -> (shard, id))."""
    todo: list[str] = []
    where: dict[str, tuple[int, int]] = {}
    row = 0
    for key, info in stats:
        if isinstance(info, Skipped):
            report.skipped.append(info)
            continue
        found = [shard[row] for shard in answers]
        row += 1
        unchanged = [v for what, v in found if what == "unchanged"]
        failed = [v for what, v in found if what == "failed"]
        if unchanged:
            report.ids.append(unchanged[0])
            report.unchanged += 1
        elif failed:
            report.skipped.append(Skipped(key, failed[0]))
        else:
            todo.append(key)
            for shard, (what, v) in enumerate(found):
                if what == "changed":
                    where[key] = (shard, v)
    # New images get ids in path order, not in the order the caller listed
    # them: ids break ties and orient pairs (a < b), so the same files must
    # get the same ids however they were given (extract_many keeps order).
    todo.sort()
    return todo, where


def merge_report(into: AddReport, part: AddReport) -> None:
    into.ids += part.ids
    into.changed += part.changed
    into.added += part.added
    into.updated += part.updated
    into.skipped += part.skipped


def route(path: str, rec, where: dict[str, tuple[int, int]], names: Sequence[str]) -> int:
    """The shard a record (or a failure) of ``path`` is written to."""
    if isinstance(rec, ImageLoadError):
        old = where.get(path)
        return old[0] if old else shard_of(path, names)  # (drops the old row there)
    return shard_of(rec.sha256, names)


def place(path: str, rec, where: dict[str, tuple[int, int]],
          names: Sequence[str]) -> tuple[int, tuple[int, int] | None]:
    """Where the record (or failure) of ``path`` goes: its shard, and the
    ``(shard, id)`` it must leave when its new bytes hash to another shard
    than the one holding it (None when it stays or is new). The one rule of
    moving images between shards, for ``add_files`` and the Ray tasks."""
    shard = route(path, rec, where, names)
    old = where.get(path)
    return shard, (old if old and old[0] != shard else None)


def add_files(stores: Sequence[Store], paths: Iterable[str | os.PathLike], settings: Settings,
              progress: Callable[[int], None] | None = None,
              names: Sequence[str] | None = None, extract=extract_many) -> AddReport:
    """Add image files to the shards ``stores`` (named ``names`` for hashing),
    skipping unchanged ones; what ``Gallery.add`` does, for any number of shards.

    Files are decoded in path order (``extract_many``) and new images get ids
    in that order, counting on from the largest id of any shard. An image
    whose new bytes belong to another shard leaves its old one. ``extract``:
    ``features.extract_many`` or a stand-in with its signature."""
    names = names or shard_names(len(stores))
    report = AddReport()
    stats = stat_files(paths)
    files = [(k, *s) for k, s in stats if not isinstance(s, Skipped)]
    todo, where = plan_files([s.plan_add(files) for s in stores], stats, report)
    if progress and (report.unchanged or report.skipped):
        progress(report.unchanged + len(report.skipped))
    if todo:  # (a store may start loading its indexes while the files decode)
        for s in stores:
            prefetch = getattr(s, "prefetch_indexes", None)
            if prefetch is not None:
                prefetch()
    next_id = max(s.last_id() for s in stores) + 1
    pending: list[list] = [[] for _ in stores]
    ids: dict[str, int] = {}

    def flush(shard: int) -> None:
        merge_report(report, stores[shard].write_records(pending[shard], ids))
        pending[shard] = []
        # The batch's features are freed now, between the index's allocations
        # that stay: hand the holes back (``_memory``), or an add of 10,000
        # images holds twice the memory it uses.
        release_memory()

    on_done = (lambda: progress(1)) if progress else None
    for path, rec in extract(todo, settings, on_done=on_done):
        shard, leaves = place(path, rec, where, names)
        if not isinstance(rec, ImageLoadError):
            if path in where:
                ids[path] = where[path][1]
            else:
                ids[path], next_id = next_id, next_id + 1
        if leaves:
            stores[leaves[0]].remove([leaves[1]])
        pending[shard].append((path, rec))
        if len(pending[shard]) >= BATCH:
            flush(shard)
    for shard in range(len(stores)):
        if pending[shard]:
            flush(shard)
    return report
