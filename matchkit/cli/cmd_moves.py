"""``matchkit undo`` and ``matchkit apply``: moving files out of the way and
back, and how moves are told to a person (``_echo_moves``, also used by
``dedupe --move-duplicates-to``).

Separate because it is its own family: commands that move files, with no
matching of their own.
"""

from __future__ import annotations

import os
import shlex
import sys

import click

from matchkit.util.fs import atomic_write_bytes
from matchkit.util.fspath import display, json_text
from matchkit.cli.common import _fail, _one_line, cli


def _echo_moves(result, quiet: bool, out) -> None:
    """Moves as lines people can read (problems are always printed, on stderr)."""
    skipped = [m for m in result.moves if m.state == "skipped"]
    if result.dry_run and not quiet:
        for m in result.moves:
            if m.state != "skipped":
                click.echo(f"would move: {display(m.src)} -> {display(m.dst)}", file=out)
    for m in result.problems:
        click.echo(f"matchkit: not moved: {display(m.src)}: {display(m.error)}", err=True)
    if quiet:
        return
    by_reason: dict[str, list] = {}
    for m in skipped:
        by_reason.setdefault(m.error, []).append(m)
    for reason, ms in by_reason.items():
        if len(ms) <= _SHOWN:
            for m in ms:
                click.echo(f"not moved, {reason}: {display(m.src)}", file=out)
        else:
            click.echo(f"not moved, {reason}: {len(ms)} files, e.g. {display(ms[0].src)}",
                       file=out)
    n_planned = len(result.moves) - len(skipped)
    if result.dry_run:
        click.echo(f"dry run: {n_planned} files would move; nothing was changed", file=out)
    elif result.manifest is None:
        click.echo("nothing to move", file=out)
    else:
        failed = result.counts().get("failed", 0)
        could_not = f", {failed} could not be moved" if failed else ""
        click.echo(f"moved {result.counts().get('moved', 0)} files{could_not}; "
                   f"undo with: matchkit undo {shlex.quote(result.manifest)}", file=out)


#: Files listed one per line for one reason before a count takes over.
_SHOWN = 3


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Show what would be put back; change nothing.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the entries this run looked at as JSON ('-' for stdout).")
@click.option("-v", "--verbose", is_flag=True, help="One line per file.")
@click.option("-q", "--quiet", is_flag=True, help="No summary (problems are still printed).")
def undo(manifest, dry_run, json_path, verbose, quiet):
    """Put files moved by 'dedupe --move-duplicates-to' or 'apply' back where they were.

    The manifest is checked as a whole first: every file must come from the
    destination folder (where the manifest is), go back under a folder that
    was scanned, and carry its SHA-256; a manifest that breaks a rule is
    refused (exit code 2) and nothing changes. Hashes are checked before a
    file goes back; a file that now exists at an original path is never
    overwritten (that entry is reported and left alone, exit code 1). Works
    on the manifest of an interrupted run too, and can be run again: files
    already put back are left alone.

    \b
    Example:
      matchkit undo ~/dupes/matchkit-moves-20250101-120000.json --dry-run
      matchkit undo ~/dupes/matchkit-moves-20250101-120000.json
    """
    from matchkit.io.moves import MoveError, undo as run_undo
    try:
        result = run_undo(manifest, dry_run=dry_run)
    except MoveError as e:
        _fail(_one_line(e))
    out = sys.stderr if json_path == "-" else sys.stdout
    if json_path == "-":
        click.echo(json_text(result.to_dict(), indent=2))
    elif json_path:
        atomic_write_bytes(json_path, json_text(result.to_dict(), indent=2).encode("utf-8"))
    for m in result.problems:
        click.echo(f"matchkit: not restored: {display(m.src)}: {display(m.error)}", err=True)
    if verbose:
        for m in result.moves:
            if m.state == "restored":
                click.echo(f"restored: {display(m.src)}", file=out)
            elif m.state == "would_restore":
                click.echo(f"would restore: {display(m.dst)} -> {display(m.src)}", file=out)
            elif m.state == "not_moved":
                click.echo(f"was not moved: {display(m.src)}", file=out)
    if not quiet:
        click.echo(_undo_summary(result), file=out)
    return 0 if result.ok else 1


@cli.command("apply")
@click.argument("review", type=click.Path(dir_okay=False), metavar="REVIEW.json")
@click.option("--to", "dest", type=click.Path(file_okay=False),
              help="Folder to move the files into (default: the one the review names).")
@click.option("--dry-run", is_flag=True, help="Show what would move, move nothing.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the moves as JSON ('-' for stdout).")
@click.option("-q", "--quiet", is_flag=True, help="No summary (problems are still printed).")
def apply_cmd(review, dest, dry_run, json_path, quiet):
    """Move the duplicates of a reviewed selection (REVIEW.json) out of the way.

    REVIEW.json is what the review page's "Save review" button downloads
    (after changing keepers and unticking members) or what the web app
    saves: per cluster, the file to keep and the members to move. Exactly
    those members move, keeping their paths relative to the scanned
    folders, with a manifest for 'matchkit undo'; nothing is deleted. If
    any listed file changed or vanished since the report was made, the
    review is refused (exit code 2) and nothing moves. Exit code 1 if some
    file could not be moved (it stays where it was).

    \b
    Example:
      matchkit dedupe photos/ --html review.html   # review, then "Save review"
      matchkit apply ~/Downloads/matchkit-review.json --to ~/dupes --dry-run
      matchkit apply ~/Downloads/matchkit-review.json --to ~/dupes
      matchkit undo ~/dupes/matchkit-moves-20250101-120000.json
    """
    from matchkit.io.moves import MoveError
    from matchkit.report.review import ReviewError, apply_review, read_review

    try:
        sel = read_review(review)
    except ReviewError as e:
        _fail(_one_line(e))
    if not dest and sel.to:
        dest = os.path.expanduser(sel.to)  # typed on the page: no shell expanded it
        if not os.path.isabs(dest):
            _fail(f"the review's destination {sel.to!r} is not an absolute path; "
                  "give one with --to DIR")
    if not dest:
        _fail("the review names no destination folder; give one with --to DIR")
    if os.path.exists(dest) and not os.path.isdir(dest):
        _fail(f"--to must be a folder: {dest}")
    out = sys.stderr if json_path == "-" else sys.stdout
    if not quiet:
        kept = sum(len(c.stay) for c in sel.clusters)
        click.echo(f"review: {_n(len(sel.clusters), 'cluster')}, "
                   f"{_n(len(sel.to_move), 'file')} to move"
                   + (f", {_n(kept, 'unticked member')} left in place" if kept else ""),
                   file=out)
    try:
        moved = apply_review(sel, dest, dry_run=dry_run)
    except (ReviewError, MoveError) as e:
        _fail(f"review {review} refused: {_one_line(e)}")
    if json_path == "-":
        click.echo(json_text(moved.to_dict(), indent=2))
    elif json_path:
        atomic_write_bytes(json_path, json_text(moved.to_dict(), indent=2).encode("utf-8"))
    _echo_moves(moved, quiet, out)
    return 0 if moved.ok else 1


def _n(count: int, word: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def _undo_summary(result) -> str:
    c = result.counts()
    failed = c.get("undo_failed", 0)
    could_not = f", {failed} could not" if failed else ""
    if result.dry_run and result.moves:
        return (f"dry run: {c.get('would_restore', 0)} files would be put back{could_not}; "
                "nothing was changed")
    if not result.moves:
        before = result.already.get("restored", 0)
        return "nothing left to restore" + (
            f": all {before} moved files were put back by an earlier undo" if before else "")
    return f"restored {_n(c.get('restored', 0), 'file')}{could_not}" + (
        f" ({c['not_moved']} had not been moved)" if c.get("not_moved") else "")
