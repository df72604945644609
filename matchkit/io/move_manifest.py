"""The move manifest: what it records and every rule it must follow.

A manifest is the JSON file a move writes before its first file moves and
that :func:`matchkit.io.moves.undo` reads back (see that module's docstring
for why undo checks all of it first). Here: the entry record (:class:`Move`)
and its states, writing a manifest, checking one (:func:`read_manifest`),
its default name, and the paths as a manifest records them. Apart from the
moving itself so that the format and its rules read in one place.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from matchkit.util.fs import atomic_write_bytes, read_json_file
from matchkit.util.fspath import json_text

MANIFEST_VERSION = 2
#: States an entry of a manifest's ``moves`` can be in.
STATES = ("planned", "moved", "failed", "restored", "not_moved", "undo_failed")


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


# ---------------------------------------------------------------- paths

def _abspath(p: str | os.PathLike) -> str:
    # abspath, not resolve: a symbolic link is moved as the link it is.
    return os.path.abspath(os.fspath(p))


def _under(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or inside it (both absolute and normalised)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


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
