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
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._fs import atomic_write_bytes, fsync_dir
from .fspath import json_text

MANIFEST_VERSION = 1
#: Suffix of a partial cross-filesystem copy (never under the final name).
PART_SUFFIX = ".matchkit-part"


class MoveError(Exception):
    """A manifest or destination that cannot be used at all (bad argument)."""


@dataclass
class Move:
    """One file to move (``src`` -> ``dst``), and what happened to it."""

    src: str
    dst: str
    cluster: int | None = None
    size: int | None = None
    #: SHA-256 of the content ("link:<target>" for a symbolic link).
    sha256: str | None = None
    #: planned | moved | failed | restored | not_moved | undo_failed
    state: str = "planned"
    error: str = ""


@dataclass
class MoveResult:
    """Outcome of :func:`move_files` or :func:`undo` (JSON-ready via ``to_dict``)."""

    moves: list[Move]
    manifest: str | None = None
    dry_run: bool = False
    action: str = "move"  # "move" | "undo"
    removed_dirs: list[str] = field(default_factory=list)

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
        return {"action": self.action, "dry_run": self.dry_run, "manifest": self.manifest,
                "counts": self.counts(), "moves": [asdict(m) for m in self.moves]}


# ---------------------------------------------------------------- planning

def _abspath(p: str | os.PathLike) -> str:
    # abspath, not resolve: a symbolic link is moved as the link it is.
    return os.path.abspath(os.fspath(p))


def _base_folder(roots: Iterable[str | os.PathLike]) -> str:
    dirs = []
    for r in roots:
        r = _abspath(r)
        dirs.append(r if os.path.isdir(r) else os.path.dirname(r))
    if not dirs:
        raise MoveError("nothing to move")
    return os.path.commonpath(dirs)


def _free_name(path: str, taken: set[str]) -> str:
    """``path``, or ``stem~N.ext`` with the smallest N that is free on disk and in the plan."""
    if path not in taken and not os.path.lexists(path):
        return path
    stem, ext = os.path.splitext(path)
    n = 1
    while True:
        cand = f"{stem}~{n}{ext}"
        if cand not in taken and not os.path.lexists(cand):
            return cand
        n += 1


def plan_moves(report, dest: str | os.PathLike,
               roots: Iterable[str | os.PathLike] | None = None) -> list[Move]:
    """Where each non-keeper of a dedupe report would go (nothing is touched).

    ``report`` is a :class:`~matchkit.report.DedupeReport` or its JSON dict. Paths are
    kept relative to the common folder of ``roots`` (the scanned paths;
    default: the folders of all clustered files). A name already used in
    ``dest`` (or twice in the plan) gets ``~1``, ``~2``... before its suffix.
    """
    dest = _abspath(dest)
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise MoveError(f"destination is not a folder: {dest}")
    if hasattr(report, "to_dict"):
        report = report.to_dict()
    clusters = report.get("clusters", [])
    keepers = {_abspath(c["keep"]) for c in clusters}
    if roots is None:
        roots = [os.path.dirname(_abspath(m)) for c in clusters for m in c["members"]]
    roots = list(roots)
    if not roots:
        return []
    base = _base_folder(roots)
    moves: list[Move] = []
    taken: set[str] = set()
    seen: set[str] = set()
    for i, c in enumerate(clusters):
        for m in c["members"]:
            src = _abspath(m)
            if src in keepers or src in seen:
                continue  # a keeper is never moved, whatever else the report says
            seen.add(src)
            if os.path.commonpath([src, base]) == base:
                rel = os.path.relpath(src, base)
            else:  # outside every scanned root (a file named directly elsewhere)
                rel = os.path.basename(src)
            if os.path.commonpath([src, dest]) == dest:
                continue  # already inside the destination (an earlier run moved it)
            dst = _free_name(os.path.join(dest, rel), taken)
            taken.add(dst)
            moves.append(Move(src, dst, cluster=i))
    return moves


# ---------------------------------------------------------------- file operations

def _identity(path: str) -> tuple[int, str]:
    """Size and content hash of a file ("link:<target>" for a symbolic link)."""
    if os.path.islink(path):
        target = os.readlink(path)
        return len(target), "link:" + target
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _same_filesystem(src: str, dst_dir: str) -> bool:
    try:
        return os.lstat(src).st_dev == os.stat(dst_dir).st_dev
    except OSError:
        return False


def _copy_file(src: str, tmp: str) -> str:
    """Copy ``src`` to the new file ``tmp`` (fsync'ed); returns the copy's SHA-256.

    ``tmp`` is created exclusively, never overwritten.
    """
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(tmp, "xb") as fo:
        while block := fi.read(1 << 20):
            fo.write(block)
            h.update(block)
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest()


def _place(tmp_or_src: str, dst: str, *, keep_source: bool) -> None:
    """Give ``tmp_or_src`` the name ``dst`` without ever overwriting ``dst``.

    A hard link fails if ``dst`` exists (atomically). Filesystems without hard
    links fall back to check-then-rename. With ``keep_source`` the old name
    stays (the caller removes it once the new one is durable).
    """
    try:
        os.link(tmp_or_src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                           errno.ENOSYS):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "destination exists", dst) from None
        if keep_source:
            raise  # cannot have both names without links
        os.rename(tmp_or_src, dst)
        return
    if not keep_source:
        os.unlink(tmp_or_src)


def _cleanup(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _relocate(src: str, dst: str, expect: str, created: list[str]) -> None:
    """Move one file from ``src`` to a free ``dst`` whose content must hash to
    ``expect``. On any failure the file is left at ``src`` and ``OSError`` (or
    ``ValueError`` for a hash mismatch) says why."""
    parent = os.path.dirname(dst)
    _makedirs(parent, created)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination appeared after planning", dst)
    if _same_filesystem(src, parent):
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.EXDEV:  # bind mounts: same device number, still no link
                return _copy_then_remove(src, dst, expect)
            if e.errno == errno.EEXIST:
                raise
            # No hard links here (or not allowed): rename never duplicates a file.
            if os.path.lexists(dst):
                raise FileExistsError(errno.EEXIST, "destination exists", dst) from None
            os.rename(src, dst)
            fsync_dir(parent)
            fsync_dir(os.path.dirname(src))
            return
        fsync_dir(parent)
        try:
            os.unlink(src)
        except OSError:
            _cleanup(dst)  # the original stays where it was; drop the second name
            raise
        fsync_dir(os.path.dirname(src))
        return
    _copy_then_remove(src, dst, expect)


def _copy_then_remove(src: str, dst: str, expect: str) -> None:
    """Across filesystems: copy, fsync, verify hash, link into place, then unlink."""
    parent = os.path.dirname(dst)
    tmp = os.path.join(parent, f".{os.path.basename(dst)}{PART_SUFFIX}")
    _cleanup(tmp)  # a partial copy of ours from a crashed run
    try:
        if os.path.islink(src):
            os.symlink(os.readlink(src), tmp)
            got = "link:" + os.readlink(tmp)
        else:
            _copy_file(src, tmp)
            got = _identity(tmp)[1]  # read back what reached the disk
        if got != expect:
            raise ValueError("copy does not match the original (hash differs)")
        if not os.path.islink(tmp):
            try:
                shutil.copystat(src, tmp)
            except OSError:
                pass  # times and mode are nice to keep, not worth failing a move for
        _place(tmp, dst, keep_source=False)
    except BaseException:
        _cleanup(tmp)
        raise
    fsync_dir(parent)
    try:
        os.unlink(src)
    except OSError:
        _cleanup(dst)  # original stays; the verified copy was ours to remove
        raise
    fsync_dir(os.path.dirname(src))


def _makedirs(folder: str, created: list[str]) -> None:
    missing = []
    p = folder
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            pass


# ---------------------------------------------------------------- manifest

def _manifest_dict(moves: list[Move], *, dest: str, status: str, created: list[str],
                   started: str) -> dict:
    return {"matchkit_manifest": MANIFEST_VERSION, "created": started, "status": status,
            "dest": dest, "created_dirs": created, "moves": [asdict(m) for m in moves]}


def _write_manifest(path: str, data: dict) -> None:
    atomic_write_bytes(path, json_text(data, indent=1).encode("utf-8"))


def read_manifest(path: str | os.PathLike) -> dict:
    """Load and check a manifest; :class:`MoveError` if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MoveError(f"no such manifest: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MoveError(f"cannot read manifest {path}: {e}") from None
    if not isinstance(data, dict) or data.get("matchkit_manifest") != MANIFEST_VERSION \
            or not isinstance(data.get("moves"), list):
        raise MoveError(f"not a matchkit move manifest: {path}")
    return data


def default_manifest_path(dest: str | os.PathLike, taken: set[str] = frozenset()) -> str:
    """``DEST/matchkit-moves-<UTC time>.json`` (a free name)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return _free_name(os.path.join(_abspath(dest), f"matchkit-moves-{stamp}.json"), set(taken))


class _Throttle:
    """Call ``fn`` at most every ``seconds`` (and always on ``flush``)."""

    def __init__(self, fn: Callable[[], None], seconds: float = 0.5):
        self.fn, self.seconds, self.last = fn, seconds, time.monotonic()

    def tick(self) -> None:
        if time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        self.fn()
        self.last = time.monotonic()


# ---------------------------------------------------------------- move / undo

def move_files(moves: list[Move], dest: str | os.PathLike, *, manifest: str | os.PathLike | None = None,
               dry_run: bool = False,
               progress: Callable[[int], None] | None = None) -> MoveResult:
    """Carry out planned moves (see :func:`plan_moves`); never deletes a file.

    Every failure (unreadable or read-only source, name taken meanwhile, disk
    full during a copy) leaves that file at its original path, is recorded
    with its reason, and the other moves go on. With ``dry_run`` nothing is
    written, not even the manifest.
    """
    dest = _abspath(dest)
    if dry_run:
        return MoveResult(moves, None, True)
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise MoveError(f"destination is not a folder: {dest}")
    created: list[str] = []
    try:
        _makedirs(dest, created)
    except OSError as e:
        raise MoveError(f"cannot create destination {dest}: {_reason(e)}") from None
    manifest = (_abspath(manifest) if manifest
                else default_manifest_path(dest, {m.dst for m in moves}))
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    # Identity of every file before anything moves: undo checks it later.
    for m in moves:
        try:
            m.size, m.sha256 = _identity(m.src)
        except OSError as e:
            m.state, m.error = "failed", f"cannot read: {_reason(e)}"

    def save(status: str = "moving") -> None:
        _write_manifest(manifest, _manifest_dict(moves, dest=dest, status=status,
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
    return move_files(plan_moves(report, dest, roots), dest, manifest=manifest,
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


def _undo_one(m: Move, created: list[str]) -> tuple[str, str]:
    """Bring one file back; returns (new state, error)."""
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
    if m.sha256 is not None and digest != m.sha256:
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


def undo(manifest: str | os.PathLike, *, dry_run: bool = False,
         progress: Callable[[int], None] | None = None) -> MoveResult:
    """Put every file of a move manifest back at its original path.

    Works on a complete manifest and on one left by an interrupted run. Never
    overwrites: an entry whose original path is taken by another file is
    reported (``undo_failed``) and left alone; rerunning ``undo`` after fixing
    it finishes the job. Hashes are checked before a file goes back.
    """
    manifest = _abspath(manifest)
    data = read_manifest(manifest)
    try:
        moves = [Move(**{k: v for k, v in e.items() if k in Move.__dataclass_fields__})
                 for e in data["moves"]]
    except TypeError:
        raise MoveError(f"not a matchkit move manifest: {manifest}") from None
    if dry_run:
        for m in moves:
            if m.state not in _UNDO_STATES:
                continue
            src_here, dst_here = os.path.lexists(m.src), os.path.lexists(m.dst)
            if dst_here and not src_here:
                m.state, m.error = "would_restore", ""
            elif dst_here and src_here and not _same_content(m.src, m.dst, m.sha256):
                m.state, m.error = "undo_failed", "another file now exists at the original path"
            elif not dst_here and not src_here:
                m.state, m.error = "undo_failed", "missing at both paths"
            else:
                m.state, m.error = "not_moved", ""
        return MoveResult(moves, manifest, True, "undo")
    created = list(data.get("created_dirs", []))
    restore_created: list[str] = []

    def save(status: str = "undoing") -> None:
        _write_manifest(manifest, {**data, "status": status, "moves": [asdict(m) for m in moves]})

    throttle = _Throttle(save)
    for m in moves:
        if m.state in _UNDO_STATES:
            m.state, m.error = _undo_one(m, restore_created)
            throttle.tick()
        if progress:
            progress(1)
    problems = any(m.state == "undo_failed" for m in moves)
    throttle.fn = lambda: save("partly undone" if problems else "undone")
    throttle.flush()
    # Folders the move created, deepest first, if now empty (never the manifest's own).
    removed = []
    keep = os.path.dirname(manifest)
    for d in sorted(created, key=len, reverse=True):
        if d == keep or os.path.commonpath([d, keep]) == d:
            continue
        try:
            os.rmdir(d)
            removed.append(d)
        except OSError:
            pass
    return MoveResult(moves, manifest, False, "undo", removed)
