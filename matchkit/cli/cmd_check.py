"""``matchkit check``: check query images against a reference gallery.

Separate because it is its own job (``jobs.check``) with its own outputs.
"""

from __future__ import annotations

import click

from matchkit.util.fs import atomic_write_bytes
from matchkit.util.fspath import json_text
from matchkit.distributed.ray_jobs import RayUnavailable
from matchkit.store.gallery import GalleryError
from matchkit.cli.common import (
    _LEVEL_OPTION, _RAY_OPTION, _READ_VOTE_INDEX_OPTION, _check_html_path, _fail,
    _load_profile, _one_line, _reader_settings, cli)


@cli.command("check")
@click.argument("queries", nargs=-1, required=True, type=click.Path())
@click.option("--gallery", required=True, type=click.Path(file_okay=False),
              help="The reference gallery (made by `matchkit index` or `dedupe --gallery`).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the result as JSON to this file ('-' or default: stdout).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write one row per (query, match) as CSV.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write a review page (HTML plus a PATH_files/ folder of thumbnails).")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Most gallery matches listed per query, strongest first.")
@click.option("--all", "include_all", is_flag=True,
              help="Also list examined gallery images that did not match (near misses).")
@click.option("--profile", "profile_name", default=None, metavar="NAME|PATH",
              help="Decide with a calibrated profile (a name in configs/, e.g. 'default', "
                   "or a .toml file); scores are then its P(duplicate).")
@_LEVEL_OPTION
@_RAY_OPTION
@_READ_VOTE_INDEX_OPTION
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
def check_cmd(queries, gallery, json_path, csv_path, html_path, k, include_all, profile_name,
              level, ray, vote_index, quiet):
    """Check each image in QUERIES (files or folders) against a reference gallery.

    For every query: the gallery images it is a copy of (cropped, flipped,
    overlaid, re-encoded...), each with a score (>= 0.5 means matched; with
    --profile it is the profile's P(duplicate), thresholded where the profile
    says), the kind (exact or near), the rule that decided and its evidence
    (pHash distance, RANSAC inliers and transform, overlap correlation), or
    no match. Queries are not added to the gallery. Unreadable files are listed
    under "skipped" with a reason and do not change the exit code.

    \b
    Example:
      matchkit index reference/ --gallery ~/.matchkit/ref
      matchkit check --gallery ~/.matchkit/ref incoming/ > check.json
      matchkit check --gallery ~/.matchkit/ref found.jpg --html check.html
      matchkit check --gallery ~/.matchkit/ref incoming/ --csv check.csv --json check.json
      matchkit check --gallery g new/ | jq -r '.results[] | select(.matched) | .path'
      matchkit check --gallery ~/.matchkit/ref incoming/ --profile default
    """
    from matchkit.jobs.check import CheckError, check as run_check
    from matchkit.io.load import iter_image_files

    _check_html_path(html_path)
    try:
        files = [str(p) for p in iter_image_files(queries)]
    except FileNotFoundError as e:
        _fail(str(e))
    try:
        report = run_check(gallery, files, k=k, include_all=include_all,
                           settings=_reader_settings(vote_index),
                           profile=_load_profile(profile_name, level), level=level, ray=ray)
    except (GalleryError, CheckError, RayUnavailable) as e:
        _fail(_one_line(e))
    data = report.to_dict()
    if html_path:
        from matchkit.report.pages import write_check_html
        try:
            data["html"] = write_check_html(report, html_path, progress=not quiet).to_dict()
        except OSError as e:
            _fail(f"cannot write HTML report {html_path}: {e.strerror or e}")
    if csv_path:
        report.write_csv(csv_path)
    if json_path in (None, "-"):
        click.echo(json_text(data, indent=2))
    else:
        atomic_write_bytes(json_path, json_text(data, indent=2).encode("utf-8"))
    if not quiet:
        click.echo(report.summary(), err=True)
