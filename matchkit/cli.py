"""The ``matchkit`` command: a thin layer over the Python API.

Every command has ``--help`` with an example. Wrong arguments get a one-line
error on stderr and exit code 2; unreadable images are reported, never fatal.
"""

from __future__ import annotations

import sys

import click

from . import __version__
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
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
def dedupe(paths, json_path, csv_path, gallery, threshold, max_pixels, workers, hash_only, quiet):
    """Find exact and near-duplicate images in PATHS (folders or files).

    Files are never modified or deleted. Each cluster names a suggested
    keeper (highest resolution, then largest file, then oldest) and every
    other member matches that keeper directly.

    \b
    Example:
      matchkit dedupe photos/ more-photos/ --json dupes.json --csv dupes.csv
      matchkit dedupe photos/ --gallery ~/.matchkit/photos --json - | jq .stats
      matchkit dedupe big-archive/ --hash-only --csv dupes.csv
    """
    try:
        settings = Settings().with_(phash_max_distance=threshold, max_pixels=max_pixels,
                                    workers=workers, local_features=False if hash_only else None)
        report = run_dedupe(paths, gallery=gallery, settings=settings, progress=not quiet)
    except FileNotFoundError as e:
        _fail(str(e))
    except GalleryError as e:
        _fail(str(e))
    if json_path == "-":
        click.echo(report.to_json())
    elif json_path:
        report.write_json(json_path)
    if csv_path:
        report.write_csv(csv_path)
    if not quiet:
        click.echo(report.summary(), err=json_path == "-")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
