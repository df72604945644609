"""The ``matchkit`` command: a thin layer over the Python API.

Every command has ``--help`` with an example. Wrong arguments get a one-line
error on stderr and exit code 2; unreadable images are reported, never fatal.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

import click

from . import __version__
from ._fs import atomic_write_bytes
from .config import Settings
from .dedupe import dedupe as run_dedupe
from .gallery import GalleryError


class _OneLineErrors(click.Group):
    """Print usage errors as a single line (``matchkit: error: ...``), exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name or "matchkit",
                              complete_var=complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.UsageError as e:
            click.echo(f"matchkit: error: {e.format_message()}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("matchkit: aborted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            click.echo(f"matchkit: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str) -> None:
    raise click.UsageError(message)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="matchkit")
def cli() -> None:
    """Find near-duplicate images and match images against a gallery.

    \b
    Example:
      matchkit dedupe ~/Pictures --json dupes.json --csv dupes.csv
    """


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the full result as JSON ('-' for stdout).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, writable=True),
              help="Write one row per cluster member as CSV.")
@click.option("--gallery", type=click.Path(file_okay=False),
              help="Keep features in this gallery folder so later runs only read new files.")
@click.option("--threshold", type=click.IntRange(0, 256), default=None,
              help="Largest dihedral pHash distance (bits of 256) counted as a near duplicate.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Skip files with more pixels than this (decompression-bomb guard).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Worker processes for decoding (default: one per core).")
@click.option("--hash-only", is_flag=True,
              help="Skip local features: several times faster, but misses crops, "
                   "arbitrary rotations, overlays and screenshots.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True),
              help="Write a review page (HTML plus a PATH_files/ folder of thumbnails).")
@click.option("--evidence-limit", type=click.IntRange(min=0), default=None,
              help="Most local-feature pairs drawn with matched keypoints in the HTML "
                   "page, weakest first (default 300).")
@click.option("--move-duplicates-to", "move_to", type=click.Path(file_okay=False),
              help="Move every non-keeper into this folder (relative paths kept) and "
                   "write a manifest for 'matchkit undo'. Nothing is ever deleted.")
@click.option("--dry-run", is_flag=True,
              help="With --move-duplicates-to: show what would move, move nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
def dedupe(paths, json_path, csv_path, gallery, threshold, max_pixels, workers, hash_only,
           html_path, evidence_limit, move_to, dry_run, quiet):
    """Find exact and near-duplicate images in PATHS (folders or files).

    Files are never modified or deleted. Each cluster names a suggested
    keeper (highest resolution, then largest file, then oldest) and every
    other member matches that keeper directly. Only with --move-duplicates-to
    are files moved: the non-keepers, and 'matchkit undo MANIFEST' puts them
    back; the exit code is 1 if some file could not be moved (it stays where
    it was).

    \b
    Example:
      matchkit dedupe photos/ more-photos/ --json dupes.json --csv dupes.csv
      matchkit dedupe photos/ --html review.html
      matchkit dedupe photos/ --move-duplicates-to ~/dupes --dry-run
      matchkit dedupe photos/ --move-duplicates-to ~/dupes --json dupes.json
      matchkit dedupe photos/ --gallery ~/.matchkit/photos --json - | jq .stats
      matchkit dedupe big-archive/ --hash-only --csv dupes.csv
    """
    if dry_run and not move_to:
        _fail("--dry-run needs --move-duplicates-to DIR")
    if html_path == "-" or (html_path and os.path.isdir(html_path)):
        _fail(f"--html must name a file (thumbnails go in a folder beside it): {html_path}")
    if move_to and os.path.exists(move_to) and not os.path.isdir(move_to):
        _fail(f"--move-duplicates-to must be a folder: {move_to}")
    try:
        settings = Settings().with_(phash_max_distance=threshold, max_pixels=max_pixels,
                                    workers=workers, local_features=False if hash_only else None)
        report = run_dedupe(paths, gallery=gallery, settings=settings, progress=not quiet)
    except FileNotFoundError as e:
        _fail(str(e))
    except GalleryError as e:
        _fail(str(e))
    out = sys.stderr if json_path == "-" else sys.stdout
    data = None
    if html_path:
        from .html_report import DEFAULT_EVIDENCE_LIMIT, write_html_report
        try:
            page = write_html_report(
                report, html_path, settings=settings, progress=not quiet,
                evidence_limit=DEFAULT_EVIDENCE_LIMIT if evidence_limit is None else evidence_limit)
        except OSError as e:
            _fail(f"cannot write HTML report {html_path}: {e.strerror or e}")
        data = report.to_dict()
        data["html"] = page.to_dict()
    moved = None
    if move_to:
        from .moves import MoveError, move_duplicates
        try:
            moved = move_duplicates(report.to_dict(), move_to, roots=paths, dry_run=dry_run)
        except MoveError as e:
            _fail(str(e))
        data = data or report.to_dict()
        data["moves"] = moved.to_dict()
    if json_path == "-":
        click.echo(report.to_json() if data is None else json.dumps(data, indent=2,
                                                                    ensure_ascii=False))
    elif json_path:
        if data is None:
            report.write_json(json_path)
        else:
            atomic_write_bytes(json_path, json.dumps(data, indent=2, ensure_ascii=False)
                               .encode("utf-8"))
    if csv_path:
        report.write_csv(csv_path)
    if not quiet:
        click.echo(report.summary(), file=out)
        if html_path:
            click.echo(f"review page: {html_path} ({page.thumbnails} thumbnails, "
                       f"{page.pictures} keypoint pictures, {page.bytes / 2**20:.1f} MB)", file=out)
    if moved is not None:
        _echo_moves(moved, quiet, out)
        return 0 if moved.ok else 1


def _echo_moves(result, quiet: bool, out) -> None:
    """Moves as lines people can read (problems are always printed, on stderr)."""
    if result.dry_run:
        if not quiet:
            for m in result.moves:
                click.echo(f"would move: {m.src} -> {m.dst}", file=out)
            click.echo(f"dry run: {len(result.moves)} files would move; nothing was changed",
                       file=out)
        return
    for m in result.problems:
        click.echo(f"matchkit: not moved: {m.src}: {m.error}", err=True)
    if not quiet:
        c = result.counts()
        click.echo(f"moved {c.get('moved', 0)} files, {c.get('failed', 0)} not moved; "
                   f"undo with: matchkit undo {shlex.quote(result.manifest)}", file=out)


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Show what would be put back; change nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
def undo(manifest, dry_run, quiet):
    """Put files moved by 'dedupe --move-duplicates-to' back where they were.

    Prints the updated manifest entries as JSON. Hashes are checked before a
    file goes back; a file that now exists at an original path is never
    overwritten (that entry is reported and left alone, exit code 1). Works
    on the manifest of an interrupted run too, and can be run again.

    \b
    Example:
      matchkit undo ~/dupes/matchkit-moves-20250101-120000.json --dry-run
      matchkit undo ~/dupes/matchkit-moves-20250101-120000.json
    """
    from .moves import MoveError, undo as run_undo
    try:
        result = run_undo(manifest, dry_run=dry_run)
    except MoveError as e:
        _fail(str(e))
    click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    for m in result.problems:
        click.echo(f"matchkit: not restored: {m.src}: {m.error}", err=True)
    if not quiet:
        c = result.counts()
        if dry_run:
            click.echo(f"dry run: {c.get('would_restore', 0)} files would be put back, "
                       f"{c.get('undo_failed', 0)} could not", err=True)
        else:
            click.echo(f"restored {c.get('restored', 0)} files, {c.get('undo_failed', 0)} "
                       "could not be restored", err=True)
    return 0 if result.ok else 1


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
