"""Move duplicates out of the way, with a manifest that ``undo`` can always finish.

Nothing here deletes a user's file. Non-keepers are moved to a folder of the
user's choice, keeping their paths relative to the folders that were scanned;
every move is recorded in a JSON manifest, and :func:`undo` puts everything
back byte for byte.

Crash safety does not depend on the manifest being up to date:

1. The manifest is written (atomically) *before* the first move, listing every
   planned move with its final destination and the source's SHA-256.
2. A move never overwrites: within one filesystem it is a hard link to the
   destination followed by unlinking the source; across filesystems a copy to
   a temporary name, fsync, a hash check, a no-overwrite link into place, and
   only then the source is unlinked. So at every instant the file exists
   completely at the source, or at the destination, or (briefly) at both.
3. ``undo`` looks at the disk, not at recorded states: a file only at the
   destination (with the recorded hash) goes back; a file at both places
   with equal content loses its destination copy; a file only at the source
   was never moved. A file that *reappeared* at the original path with other
   content is never overwritten: that entry is reported and left alone.

States in the manifest are updated as moves happen (throttled; always at the
end) so people can read progress, but recovery never needs them.

A manifest is data, not a list of commands. Anyone can edit the JSON, so
:func:`undo` checks all of it before touching anything and refuses the whole
manifest (:class:`MoveError`) if one entry breaks a rule: every path absolute
and normalised (no ``..``, nothing relative to the current folder); every
source under one of the scanned folders recorded at move time (``roots``,
with symbolic links resolved) and outside the destination; every destination
inside the recorded destination, which lies in the manifest's own folder;
every entry with a SHA-256 that the file must still match; no path twice.
Refusing the whole file, rather than skipping bad entries, is deliberate: a
manifest with one forged entry cannot be trusted for the others either.
Undo never deletes a file; what it removes is a second name (or a
byte-identical copy, checked against the recorded hash) that an interrupted
move left in the destination while the original is still in place, and its
own partial copies (``.NAME.matchkit-part``) there.

Moves never follow a symbolic link out of the scanned folders: sources are
compared with the roots after resolving the folders on their path, so a
link inside a scanned folder whose target lies elsewhere is skipped with a
reason, and a root given through a link keeps its layout. Files already in
the destination (an earlier run's moves, when the destination lies inside a
scanned folder) are never moved again.

This module plans, moves and undoes; the manifest's format and rules are
:mod:`~matchkit.io.move_manifest`, and moving one file on disk is
:mod:`~matchkit.io.relocate`. Their names can still be imported from here.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from matchkit.util.fs import fsync_dir
from matchkit.io.move_manifest import (  # noqa: F401  (re-exported)
    MANIFEST_VERSION, STATES, _SHA256, Move, MoveError, _Checked, _Throttle, _abspath,
    _check_entry, _check_manifest, _clean_path, _free_name, _load_manifest, _manifest_dict,
    _shown, _under, _write_manifest, default_manifest_path, read_manifest)
from matchkit.io.relocate import (  # noqa: F401  (re-exported)
    PART_SUFFIX, _cleanup, _copy_file, _copy_then_remove, _identity, _makedirs, _place, _reason,
    _relocate, _same_filesystem)


@dataclass
class MoveResult:
    """Outcome of :func:`move_files` or :func:`undo` (JSON-ready via ``to_dict``)."""

    moves: list[Move]
    manifest: str | None = None
    dry_run: bool = False
    action: str = "move"  # "move" | "undo"
    removed_dirs: list[str] = field(default_factory=list)
    #: Undo only: states of the entries an earlier undo finished (not looked at again).
    already: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.moves:
            out[m.state] = out.get(m.state, 0) + 1
        return out

    @property
    def problems(self) -> list[Move]:
        """Entries this action could not carry out (a failed move is not an
        undo problem: that file never left its original path)."""
        bad = "failed" if self.action == "move" else "undo_failed"
        return [m for m in self.moves if m.state == bad]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        out = {"action": self.action, "dry_run": self.dry_run, "manifest": self.manifest,
               "counts": self.counts(), "moves": [asdict(m) for m in self.moves]}
        if self.action == "undo":
            out["already"] = dict(self.already)
        return out


# ---------------------------------------------------------------- planning

def _real_folders(p: str | os.PathLike) -> str:
    """``p`` absolute, with every folder on its path resolved but the last name
    kept: where the entry really is, without following it if it is a link."""
    p = _abspath(p)
    return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))


def real_roots(roots: Iterable[str | os.PathLike]) -> list[str]:
    """The scanned folders (or files) with symbolic links resolved, as recorded
    in a manifest: a file reached through a link into one of them is in them."""
    return sorted({os.path.realpath(_abspath(r)) for r in roots})


def _base_folder(roots: list[str]) -> str:
    dirs = [r if os.path.isdir(r) else os.path.dirname(r) for r in roots]
    if not dirs:
        raise MoveError("nothing to move")
    return os.path.commonpath(dirs)


def plan_moves(report, dest: str | os.PathLike,
               roots: Iterable[str | os.PathLike] | None = None) -> list[Move]:
    """Where each non-keeper of a dedupe report would go (nothing is touched).

    ``report`` is a :class:`~matchkit.report.dedupe_report.DedupeReport` or its JSON dict. Paths are
    kept relative to the common folder of ``roots`` (the scanned paths;
    default: the folders of all clustered files), links resolved, so a root
    given through a symbolic link keeps its layout. A name already used in
    ``dest`` (or twice in the plan) gets ``~1``, ``~2``... before its suffix.

    Members that must not move come back with state ``skipped`` and the
    reason: a file outside every root (reached through a symbolic link), a
    file already in ``dest`` (moved by an earlier run), and the members of a
    cluster whose keeper is in ``dest``. Keepers and the files a cluster
    lists under ``references`` (reference folders) are never moved.
    """
    dest = os.path.realpath(_abspath(dest))
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise MoveError(f"destination is not a folder: {dest}")
    if hasattr(report, "to_dict"):
        report = report.to_dict()
    clusters = report.get("clusters", [])
    keepers = {_real_folders(c["keep"]) for c in clusters}
    # Files in a reference folder (--keep-in) stay, even when not the keeper.
    keepers |= {_real_folders(r) for c in clusters for r in c.get("references") or ()}
    if roots is None:
        roots = [os.path.dirname(_abspath(m)) for c in clusters for m in c["members"]]
    roots = real_roots(roots)
    if not roots:
        return []
    base = _base_folder(roots)
    moves: list[Move] = []
    taken: set[str] = set()
    seen: set[str] = set()
    for i, c in enumerate(clusters):
        keeper_moved = _under(_real_folders(c["keep"]), dest)
        for m in c["members"]:
            src = _real_folders(m)
            if src in keepers or src in seen:
                continue  # a keeper is never moved, whatever else the report says
            seen.add(src)
            why = ("already in the destination folder" if _under(src, dest)
                   else "its cluster's keeper is in the destination folder" if keeper_moved
                   else "outside the scanned folders (reached through a symbolic link)"
                   if not any(_under(src, r) for r in roots) else "")
            if why:
                moves.append(Move(src, "", cluster=i, state="skipped", error=why))
                continue
            dst = _free_name(os.path.join(dest, os.path.relpath(src, base)), taken)
            taken.add(dst)
            moves.append(Move(src, dst, cluster=i))
    return moves


# ---------------------------------------------------------------- move / undo

def move_files(moves: list[Move], dest: str | os.PathLike, *,
               roots: Iterable[str | os.PathLike] | None = None,
               manifest: str | os.PathLike | None = None, dry_run: bool = False,
               progress: Callable[[int], None] | None = None) -> MoveResult:
    """Carry out planned moves (see :func:`plan_moves`); never deletes a file.

    ``roots`` are the scanned folders, recorded in the manifest so that
    :func:`undo` only ever puts files back under them (default: the folders
    of the planned sources). A plan that its own undo would refuse (a source
    outside the roots, a destination outside ``dest``, the manifest outside
    the folder that holds ``dest``) raises :class:`MoveError` before anything
    is written. Every failure of one file (unreadable or read-only source,
    name taken meanwhile, disk full during a copy) leaves that file at its
    original path, is recorded with its reason, and the other moves go on.
    Entries in state ``skipped`` are listed, never moved. With ``dry_run``,
    or when nothing is planned, nothing is written, not even the manifest.
    """
    dest = os.path.realpath(_abspath(dest))
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise MoveError(f"destination is not a folder: {dest}")
    planned = [m for m in moves if m.state == "planned"]
    roots = real_roots(roots if roots is not None
                       else {os.path.dirname(m.src) for m in planned} or [dest])
    manifest = (_abspath(manifest) if manifest
                else default_manifest_path(dest, {m.dst for m in moves}))
    try:
        _check_manifest({"matchkit_manifest": MANIFEST_VERSION, "roots": roots, "dest": dest,
                         "moves": [asdict(m) for m in planned]}, manifest, hashes=False)
    except MoveError as e:
        raise MoveError(f"refusing to move: {e}") from None
    if dry_run:
        return MoveResult(moves, None, True)
    if not planned:  # nothing to move, so nothing to undo: no manifest, no folder
        return MoveResult(moves, None, False)
    created: list[str] = []
    try:
        _makedirs(dest, created)
    except OSError as e:
        raise MoveError(f"cannot create destination {dest}: {_reason(e)}") from None
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    # Identity of every file before anything moves: undo checks it later.
    for m in planned:
        try:
            m.size, m.sha256 = _identity(m.src)
        except OSError as e:
            m.state, m.error = "failed", f"cannot read: {_reason(e)}"

    def save(status: str = "moving") -> None:
        _write_manifest(manifest, _manifest_dict(moves, dest=dest, roots=roots, status=status,
                                                 created=created, started=started))

    try:
        save()
    except OSError as e:
        raise MoveError(f"cannot write manifest {manifest}: {_reason(e)}") from None
    throttle = _Throttle(save)
    for m in moves:
        if m.state == "planned":
            try:
                _relocate(m.src, m.dst, m.sha256, created)
                m.state = "moved"
            except (OSError, ValueError) as e:
                m.state = "failed"
                m.error = (_reason(e) if isinstance(e, OSError) else str(e)) + \
                    "; the file was left at its original path"
            throttle.tick()
        if progress:
            progress(1)
    throttle.fn = lambda: save("moved")
    throttle.flush()
    return MoveResult(moves, manifest, False)


def move_duplicates(report, dest: str | os.PathLike, *,
                    roots: Iterable[str | os.PathLike] | None = None,
                    dry_run: bool = False, manifest: str | os.PathLike | None = None,
                    progress: Callable[[int], None] | None = None) -> MoveResult:
    """Plan and carry out moving every non-keeper of a dedupe report into ``dest``."""
    if roots is not None:
        roots = list(roots)
    return move_files(plan_moves(report, dest, roots), dest, roots=roots, manifest=manifest,
                      dry_run=dry_run, progress=progress)


def _same_content(a: str, b: str, expect: str | None) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
        if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
            return True  # one file under two names (a hard link not yet unlinked)
        ha, hb = _identity(a)[1], _identity(b)[1]
    except OSError:
        return False
    return ha == hb and (expect is None or ha == expect)


def _link_on_path(path: str) -> str:
    """The first folder on ``path`` that is now a symbolic link ("" if none).

    Manifests record real paths, so a folder that became a link since the
    move could lead anywhere; undo does not follow it."""
    folder = os.path.dirname(path)
    while not os.path.lexists(folder):  # missing folders are made again, as real ones
        folder = os.path.dirname(folder)
    return "" if os.path.realpath(folder) == folder else folder


def _undo_one(m: Move, created: list[str]) -> tuple[str, str]:
    """Bring one file back; returns (new state, error)."""
    for path in (m.src, m.dst):
        link = _link_on_path(path)
        if link:
            return "undo_failed", (f"the folder {link} is now a symbolic link; undo does not "
                                   "follow it, nothing was changed")
    src, dst = m.src, m.dst
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}{PART_SUFFIX}")
    src_here, dst_here = os.path.lexists(src), os.path.lexists(dst)
    if src_here and os.path.lexists(tmp):
        _cleanup(tmp)  # our partial copy from an interrupted move; the original is intact
    if src_here and not dst_here:
        if m.state == "moved":
            return "undo_failed", ("a file is at the original path but the moved file is "
                                   "missing from the destination; nothing was changed")
        return "not_moved", ""
    if src_here and dst_here:
        if _same_content(src, dst, m.sha256):
            # Interrupted between placing the copy and removing the original:
            # the copy at the destination is ours and identical.
            _cleanup(dst)
            fsync_dir(os.path.dirname(dst))
            return "not_moved", ""
        return "undo_failed", ("another file now exists at the original path; it was not "
                               f"overwritten and the moved file stays at {dst}")
    if not dst_here:
        return "undo_failed", "file is missing at both the original path and the destination"
    try:
        size, digest = _identity(dst)
    except OSError as e:
        return "undo_failed", f"cannot read moved file: {_reason(e)}"
    if digest != m.sha256:
        return "undo_failed", ("the moved file changed since it was moved (hash differs); "
                               f"left at {dst}")
    try:
        _relocate(dst, src, digest, created)
    except (OSError, ValueError) as e:
        msg = _reason(e) if isinstance(e, OSError) else str(e)
        return "undo_failed", f"{msg}; the file stays at {dst}"
    return "restored", ""


#: Entries undo looks at: possibly moved ones. "failed" moves never left
#: their original path, and "restored"/"not_moved" ones are done.
_UNDO_STATES = ("planned", "moved", "undo_failed")


def _dry_state(m: Move) -> tuple[str, str]:
    """What :func:`_undo_one` would do with ``m``, without doing it."""
    for path in (m.src, m.dst):
        if _link_on_path(path):
            return "undo_failed", f"a folder on {path} is now a symbolic link"
    src_here, dst_here = os.path.lexists(m.src), os.path.lexists(m.dst)
    if dst_here and not src_here:
        return "would_restore", ""
    if dst_here and src_here and not _same_content(m.src, m.dst, m.sha256):
        return "undo_failed", "another file now exists at the original path"
    if not dst_here and not src_here:
        return "undo_failed", "missing at both paths"
    return "not_moved", ""


def undo(manifest: str | os.PathLike, *, dry_run: bool = False,
         progress: Callable[[int], None] | None = None) -> MoveResult:
    """Put every file of a move manifest back at its original path.

    The whole manifest is checked first (see the module docstring) and
    refused with :class:`MoveError` if any entry breaks a rule; nothing is
    changed then. Works on a complete manifest and on one left by an
    interrupted run. Never overwrites: an entry whose original path is taken
    by another file is reported (``undo_failed``) and left alone; rerunning
    ``undo`` after fixing it finishes the job. Hashes are checked before a
    file goes back. The result lists only the entries this run looked at;
    entries an earlier undo finished are counted in ``already``.
    """
    manifest = _abspath(manifest)
    data, checked = _load_manifest(manifest)
    moves = checked.moves
    todo = [m for m in moves if m.state in _UNDO_STATES]
    already: dict[str, int] = {}
    for m in moves:
        if m.state not in _UNDO_STATES:
            already[m.state] = already.get(m.state, 0) + 1
    if dry_run:
        for m in todo:
            m.state, m.error = _dry_state(m)
        return MoveResult(todo, manifest, True, "undo", already=already)
    restore_created: list[str] = []

    def save(status: str = "undoing") -> None:
        _write_manifest(manifest, {**data, "status": status, "moves": [asdict(m) for m in moves]})

    throttle = _Throttle(save)
    for m in todo:
        m.state, m.error = _undo_one(m, restore_created)
        throttle.tick()
        if progress:
            progress(1)
    problems = any(m.state == "undo_failed" for m in moves)
    if todo or data.get("status") not in ("undone", "partly undone"):
        throttle.fn = lambda: save("partly undone" if problems else "undone")
        throttle.flush()
    # Folders the move created inside the destination, deepest first, if now
    # empty; never the manifest's own folder or one above it.
    removed = []
    home = os.path.dirname(manifest)
    for d in sorted(checked.created, key=len, reverse=True):
        if not _under(d, checked.dest) or _under(home, d):
            continue
        try:
            os.rmdir(d)
            removed.append(d)
        except OSError:
            pass
    return MoveResult(todo, manifest, False, "undo", removed, already=already)
