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
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from matchkit.util.fs import DIGEST, atomic_write_bytes, file_stamp, fsync_dir, read_json_file
from matchkit.util.fspath import json_text

MANIFEST_VERSION = 2
#: States an entry of a manifest's ``moves`` can be in.
STATES = ("planned", "moved", "failed", "restored", "not_moved", "undo_failed")
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
    #: planned | moved | failed | restored | not_moved | undo_failed; in results also
    #: skipped (never planned, ``error`` says why) and would_restore (dry run).
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

def _abspath(p: str | os.PathLike) -> str:
    # abspath, not resolve: a symbolic link is moved as the link it is.
    return os.path.abspath(os.fspath(p))


def _real_folders(p: str | os.PathLike) -> str:
    """``p`` absolute, with every folder on its path resolved but the last name
    kept: where the entry really is, without following it if it is a link."""
    p = _abspath(p)
    return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))


def _under(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or inside it (both absolute and normalised)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def real_roots(roots: Iterable[str | os.PathLike]) -> list[str]:
    """The scanned folders (or files) with symbolic links resolved, as recorded
    in a manifest: a file reached through a link into one of them is in them."""
    return sorted({os.path.realpath(_abspath(r)) for r in roots})


def _base_folder(roots: list[str]) -> str:
    dirs = [r if os.path.isdir(r) else os.path.dirname(r) for r in roots]
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


# ---------------------------------------------------------------- file operations

def _identity(path: str) -> tuple[int, str]:
    """Size and content hash of a file ("link:<target>" for a symbolic link)."""
    if os.path.islink(path):
        target = os.readlink(path)
        return len(target), "link:" + target
    stamp = file_stamp(path)
    return stamp["size"], stamp[DIGEST]


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

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _manifest_dict(moves: list[Move], *, dest: str, roots: list[str], status: str,
                   created: list[str], started: str) -> dict:
    """The manifest: entries that may move (each with its hash) under ``moves``;
    files that were never going to move (skipped, unreadable) under ``skipped``."""
    return {"matchkit_manifest": MANIFEST_VERSION, "created": started, "status": status,
            "roots": roots, "dest": dest, "created_dirs": created,
            "moves": [asdict(m) for m in moves if m.sha256 is not None],
            "skipped": [{"src": m.src, "state": m.state, "error": m.error}
                        for m in moves if m.sha256 is None]}


def _write_manifest(path: str, data: dict) -> None:
    atomic_write_bytes(path, json_text(data, indent=1).encode("utf-8"))


@dataclass
class _Checked:
    """A manifest that passed :func:`_check_manifest`."""

    moves: list[Move]
    roots: list[str]
    dest: str
    created: list[str]


def _shown(value) -> str:
    """A value for a one-line message (control characters escaped)."""
    text = value if isinstance(value, str) else repr(value)
    return text if text.isprintable() else repr(text)


def _clean_path(value, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MoveError(f"{what} must be a path, got {_shown(value)}")
    if "\0" in value or not os.path.isabs(value) or os.path.normpath(value) != value:
        raise MoveError(f"{what} must be an absolute, normalised path (no '..'), "
                        f"got {_shown(value)}")
    return value


def _check_manifest(data, manifest: str, *, hashes: bool = True) -> _Checked:
    """Every rule a manifest must follow before :func:`undo` touches a file (see
    the module docstring); the first broken one raises :class:`MoveError`.
    ``manifest`` is the absolute path the manifest is (or will be) stored at."""
    if not isinstance(data, dict):
        raise MoveError("not a matchkit move manifest")
    if data.get("matchkit_manifest") == 1:
        raise MoveError("manifest format 1 records no scanned folders, so undo cannot check "
                        "where its files may go and refuses it; move the files back by hand "
                        "from the folder it names as 'dest'")
    if data.get("matchkit_manifest") != MANIFEST_VERSION or not isinstance(data.get("moves"),
                                                                           list):
        raise MoveError("not a matchkit move manifest (or written by a newer matchkit)")
    roots = data.get("roots")
    if not isinstance(roots, list) or not roots:
        raise MoveError("no scanned folders recorded ('roots')")
    roots = [_clean_path(r, "each root") for r in roots]
    dest = _clean_path(data.get("dest"), "dest")
    home = os.path.realpath(os.path.dirname(manifest))
    if not _under(dest, home):
        raise MoveError(f"its destination {_shown(dest)} is not inside the manifest's folder "
                        f"{_shown(home)}")
    created = data.get("created_dirs", [])
    if not isinstance(created, list):
        raise MoveError("created_dirs must be a list")
    for d in created:
        _clean_path(d, "each created folder")
        if not (_under(d, dest) or _under(dest, d)):
            raise MoveError(f"created folder {_shown(d)} is not inside the destination")
    if not isinstance(data.get("skipped", []), list):
        raise MoveError("skipped must be a list")
    itself = os.path.join(home, os.path.basename(manifest))
    moves: list[Move] = []
    srcs: set[str] = set()
    dsts: set[str] = set()
    for i, e in enumerate(data["moves"], 1):
        try:
            moves.append(_check_entry(e, roots, dest, itself, hashes))
        except MoveError as err:
            raise MoveError(f"entry {i}: {err}") from None
        m = moves[-1]
        if m.src in srcs or m.dst in dsts:
            raise MoveError(f"entry {i}: {_shown(m.src if m.src in srcs else m.dst)} "
                            "appears twice")
        srcs.add(m.src)
        dsts.add(m.dst)
    return _Checked(moves, roots, dest, list(created))


def _check_entry(e, roots: list[str], dest: str, manifest: str, hashes: bool) -> Move:
    if not isinstance(e, dict) or not {"src", "dst", "state"} <= set(e) \
            or not set(e) <= set(Move.__dataclass_fields__):
        raise MoveError("not a move entry (needs src, dst, sha256, state)")
    src, dst = _clean_path(e["src"], "src"), _clean_path(e["dst"], "dst")
    state, sha = e["state"], e.get("sha256")
    if state not in STATES:
        raise MoveError(f"unknown state {_shown(state)}")
    if hashes and not (isinstance(sha, str) and (_SHA256.fullmatch(sha) or
                                                 sha.startswith("link:"))):
        raise MoveError(f"no valid sha256 for {_shown(src)}")
    for key in ("size", "cluster"):
        v = e.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise MoveError(f"{key} must be a whole number, got {_shown(v)}")
    if not isinstance(e.get("error", ""), str):
        raise MoveError("error must be text")
    if not any(_under(src, r) for r in roots):
        raise MoveError(f"source {_shown(src)} is not in a scanned folder the manifest records")
    if _under(src, dest):
        raise MoveError(f"source {_shown(src)} lies in the destination")
    if dst == dest or not _under(dst, dest):
        raise MoveError(f"destination {_shown(dst)} is not inside {_shown(dest)}")
    if dst == manifest:
        raise MoveError("destination is the manifest itself")
    return Move(**e)


def _load_manifest(path: str) -> tuple[dict, _Checked]:
    data = read_json_file(path, "manifest", MoveError)
    try:
        return data, _check_manifest(data, path)
    except MoveError as e:
        raise MoveError(f"manifest {path} refused, nothing was changed: {e}") from None


def read_manifest(path: str | os.PathLike) -> dict:
    """Load a manifest and check every rule :func:`undo` relies on;
    :class:`MoveError` (one line) if it breaks one."""
    return _load_manifest(_abspath(path))[0]


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
