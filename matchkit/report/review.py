"""A reviewed dedupe selection, and moving exactly what it says (``matchkit apply``).

A person looks at the clusters of a dedupe report (the HTML review page, or
later the web app), makes another member the keeper here, unticks a member
there, and saves the result as a *review file*:

.. code-block:: json

    {"matchkit_review": 1,
     "report": {"roots": ["/photos"], "stats": {...}, "page": "review.html"},
     "to": null,
     "clusters": [{"keep": "/photos/a.jpg", "move": ["/photos/b.jpg"],
                   "stay": ["/photos/c.jpg"], "references": []}],
     "files": {"/photos/a.jpg": {"size": 1234, "mtime_ns": "1700000000000000000",
                                 "sha256": "..."}}}

``keep`` is the file that stays (the suggested keeper or the reviewer's
choice), ``move`` the members to move out of the way, ``stay`` the members
the reviewer excluded; ``references`` are files in a reference folder,
never moved. ``files`` holds every listed file as the report read it
(``mtime_ns`` may be a string: JavaScript numbers cannot hold it exactly).
``report`` says where the selection came from: the scanned folders
(``roots``, where moved files keep their relative paths from) and the
report's stats. ``to`` is an optional destination folder.

Applying moves exactly the ``move`` files, with the manifest ``matchkit
undo`` understands (:mod:`matchkit.io.moves`). Before anything moves, every
listed file is compared with what the report recorded (size, then content
hash, else modification time): if one changed or is gone, the whole review
is refused, since the reviewer decided about files that are no longer
there. A keeper that changed counts too: moving its duplicates could leave
no copy of the picture the reviewer saw.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from matchkit.util.fs import DIGEST, file_stamp, read_json_file
from matchkit.util.fspath import display

REVIEW_VERSION = 1
#: Changed files named in a refusal before a count takes over.
_NAMED = 3


class ReviewError(Exception):
    """A review file that cannot be applied (one line; nothing was moved)."""


@dataclass
class ReviewCluster:
    """One cluster as reviewed: who stays, who moves."""

    keep: str
    move: list[str] = field(default_factory=list)
    stay: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)


@dataclass
class Review:
    """A review file's content, checked for shape (see the module docstring)."""

    clusters: list[ReviewCluster]
    files: dict[str, dict]
    roots: list[str] = field(default_factory=list)
    to: str | None = None
    report: dict = field(default_factory=dict)

    @property
    def to_move(self) -> list[str]:
        return [p for c in self.clusters for p in c.move]

    def to_dict(self) -> dict:
        return {"matchkit_review": REVIEW_VERSION,
                "report": {**self.report, "roots": list(self.roots)}, "to": self.to,
                "clusters": [{"keep": c.keep, "move": list(c.move), "stay": list(c.stay),
                              "references": list(c.references)} for c in self.clusters],
                "files": {p: dict(s) for p, s in self.files.items()}}


def review_of_report(report, page: str | None = None) -> Review:
    """The review a report suggests before anyone changes it: each cluster's
    keeper stays, every other member but the references moves."""
    data = report.to_dict() if hasattr(report, "to_dict") else report
    clusters, files = [], {}
    for c in data.get("clusters", []):
        refs = list(c.get("references") or [])
        clusters.append(ReviewCluster(c["keep"], [m for m in c["members"]
                                                  if m != c["keep"] and m not in refs],
                                      [], refs))
        files.update({p: dict(s) for p, s in (c.get("stamps") or {}).items()})
    info = {"stats": dict(data.get("stats") or {})}
    if page:
        info["page"] = page
    return Review(clusters, files, list(data.get("roots") or []), None, info)


# ---------------------------------------------------------------- reading

def _path(value, what: str) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ReviewError(f"{what} must be a path, got {_shown(value)}")
    if not os.path.isabs(value) or os.path.normpath(value) != value:
        raise ReviewError(f"{what} must be an absolute, normalised path: {_shown(value)}")
    return value


def _paths(value, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReviewError(f"{what} must be a list of paths")
    return [_path(v, what) for v in value]


def _shown(value) -> str:
    text = display(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _stamp(value, path: str) -> dict:
    if not isinstance(value, dict):
        raise ReviewError(f"no recorded size for {_shown(path)} under 'files'")
    size, mtime, digest = value.get("size"), value.get("mtime_ns"), value.get(DIGEST)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ReviewError(f"recorded size of {_shown(path)} is not a whole number")
    if isinstance(mtime, str) and mtime.isdigit():
        mtime = int(mtime)
    if mtime is not None and (isinstance(mtime, bool) or not isinstance(mtime, int)):
        raise ReviewError(f"recorded mtime_ns of {_shown(path)} is not a whole number")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                   and all(ch in "0123456789abcdef" for ch in digest)):
        raise ReviewError(f"recorded sha256 of {_shown(path)} is not a SHA-256 hex digest")
    if mtime is None and digest is None:
        raise ReviewError(f"{_shown(path)} has neither mtime_ns nor sha256 recorded")
    return {"size": size, "mtime_ns": mtime, DIGEST: digest}


def parse_review(data) -> Review:
    """Check a review's shape and consistency; :class:`ReviewError` if broken.

    Every path absolute and normalised; no file in two places (two
    clusters, or kept and moved); no reference moved; every kept and moved
    file with a recorded size and a hash or modification time.
    """
    if not isinstance(data, dict) or data.get("matchkit_review") != REVIEW_VERSION:
        raise ReviewError("not a matchkit review file (needs \"matchkit_review\": "
                          f"{REVIEW_VERSION}); save one from the review page")
    raw_clusters, raw_files = data.get("clusters"), data.get("files")
    if not isinstance(raw_clusters, list) or not isinstance(raw_files, dict):
        raise ReviewError("a review needs a 'clusters' list and a 'files' object")
    report = data.get("report") or {}
    if not isinstance(report, dict):
        raise ReviewError("'report' must be an object")
    roots = _paths(report.get("roots"), "each of report.roots")
    to = data.get("to")
    if to in ("", None):
        to = None
    elif not isinstance(to, str) or "\0" in to:
        raise ReviewError("'to' must be a folder path")
    clusters: list[ReviewCluster] = []
    seen: set[str] = set()
    for n, c in enumerate(raw_clusters, 1):
        if not isinstance(c, dict) or "keep" not in c:
            raise ReviewError(f"cluster {n} is not an object with a 'keep' path")
        rc = ReviewCluster(_path(c["keep"], f"cluster {n}: keep"),
                           _paths(c.get("move"), f"cluster {n}: move"),
                           _paths(c.get("stay"), f"cluster {n}: stay"),
                           _paths(c.get("references"), f"cluster {n}: references"))
        for p in [rc.keep, *rc.move, *rc.stay]:
            if p in seen:
                raise ReviewError(f"cluster {n}: {_shown(p)} is listed twice")
            seen.add(p)
        moved_ref = set(rc.move) & set(rc.references)
        if moved_ref:
            raise ReviewError(f"cluster {n}: {_shown(min(moved_ref))} is in a reference "
                              "folder and is never moved")
        clusters.append(rc)
    files = {}
    for rc in clusters:
        for p in [rc.keep, *rc.move]:
            files[p] = _stamp(raw_files.get(p), p)
    return Review(clusters, files, roots, to, {k: v for k, v in report.items() if k != "roots"})


def read_review(path: str | os.PathLike) -> Review:
    """Load and check a review file; :class:`ReviewError` (one line) if unusable."""
    data = read_json_file(path, "review file", ReviewError)
    try:
        return parse_review(data)
    except ReviewError as e:
        raise ReviewError(f"review {path} refused, nothing was moved: {e}") from None


# ---------------------------------------------------------------- checking and applying

def file_change(path: str, stamp: dict) -> str:
    """How ``path`` differs from its recorded ``stamp`` ("" when it does not).

    Size first (cheap); then the content hash when one was recorded, else
    the modification time (a file merely touched still counts as the same
    when its hash is known)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is gone"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not os.path.isfile(path):
        return "is not a file"
    if st.st_size != stamp["size"]:
        return f"size changed ({stamp['size']} -> {st.st_size} bytes)"
    if stamp.get(DIGEST):
        try:
            if file_stamp(path)[DIGEST] != stamp[DIGEST]:
                return "content changed"
        except OSError as e:
            return f"cannot be read ({e.strerror or e})"
    elif stamp.get("mtime_ns") is not None and st.st_mtime_ns != stamp["mtime_ns"]:
        return "was modified"
    return ""


def changed_files(review: Review, progress: Callable[[int], None] | None = None
                  ) -> list[tuple[str, str]]:
    """(path, how) of every kept or to-be-moved file that differs from the report."""
    out = []
    for path, stamp in review.files.items():
        how = file_change(path, stamp)
        if how:
            out.append((path, how))
        if progress:
            progress(1)
    return out


def refusal(changed: list[tuple[str, str]]) -> str:
    """One line saying which files changed (the first few) and what to do."""
    named = "; ".join(f"{display(p)} {how}" for p, how in changed[:_NAMED])
    more = f" and {len(changed) - _NAMED} more" if len(changed) > _NAMED else ""
    n = len(changed)
    hint = ("run dedupe again and review the new report" if any(
        how != "is gone" for _, how in changed) else "was this review applied already? "
        "Its manifest in the destination undoes it; or run dedupe again")
    return (f"{n} file{'s' if n != 1 else ''} changed since the report ({named}{more}); "
            f"nothing was moved: {hint}")


def apply_review(review: Review, dest: str | os.PathLike, *, dry_run: bool = False,
                 manifest: str | os.PathLike | None = None,
                 progress: Callable[[int], None] | None = None):
    """Move exactly the ``move`` files of ``review`` into ``dest`` (a
    :class:`~matchkit.io.moves.MoveResult`, with a manifest for ``undo``).

    Raises :class:`ReviewError` before anything is written when a listed
    file changed since the report, and :class:`~matchkit.io.moves.MoveError`
    for an unusable destination.
    """
    from matchkit.io.moves import move_duplicates

    changed = changed_files(review)
    if changed:
        raise ReviewError(refusal(changed))
    report = {"clusters": [{"keep": c.keep, "members": [c.keep, *c.move],
                            "references": c.references} for c in review.clusters if c.move]}
    return move_duplicates(report, dest, roots=review.roots or None, dry_run=dry_run,
                           manifest=manifest, progress=progress)
