"""``matchkit dedupe``: find near-duplicates in folders, report them (JSON,
CSV, review page) and optionally move the non-keepers.

Separate because it is the largest command (most options, most outputs).
"""

from __future__ import annotations

import os
import sys

import click

from matchkit.util.fs import atomic_write_bytes
from matchkit.util.fspath import json_text
from matchkit.util.progress import PhaseProgress
from matchkit.config import Settings
from matchkit.jobs.dedupe import dedupe as run_dedupe
from matchkit.distributed.ray_jobs import RayUnavailable
from matchkit.store.gallery import GalleryError
from matchkit.cli.cmd_moves import _echo_moves
from matchkit.cli.common import (
    _LEVEL_OPTION, _RAY_OPTION, _SHARDS_OPTION, _VOTE_INDEX_OPTION, _check_html_path, _fail,
    _load_profile, _one_line, _Setting, _signal_option, _writer_vote_index, cli)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the full result as JSON ('-' for stdout).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, writable=True),
              help="Write one row per cluster member as CSV.")
@click.option("--gallery", type=click.Path(file_okay=False),
              help="Keep features and pair decisions in this gallery folder so later runs "
                   "only read new files and match only what they change.")
@click.option("--rematch", is_flag=True,
              help="With --gallery: match every pair again instead of reusing stored decisions.")
@click.option("--threshold", type=_Setting("phash_max_distance"), default=None,
              help="Largest dihedral pHash distance (bits of 256) counted as a near duplicate.")
@click.option("--max-pixels", type=_Setting("max_pixels"), default=None,
              help="Skip files with more pixels than this (decompression-bomb guard).")
@click.option("--workers", type=_Setting("workers"), default=None,
              help="Worker processes for decoding (default: one per core).")
@click.option("--hash-only", is_flag=True,
              help="Skip local features: several times faster, but misses crops, "
                   "arbitrary rotations, overlays and screenshots.")
@click.option("--model", default=None,
              help="Also compare learned embeddings of this model (name, folder or "
                   ".onnx/.toml file; 'matchkit models' lists names): its nearest neighbours "
                   "become candidates, verified with local features.")
@click.option("--min-cosine", type=_Setting("min_cosine"), default=None,
              help="With --model: embedding cosine that counts as a match on its own "
                   "(model-specific; default: never, candidates are verified).")
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
@click.option("--profile", "profile_name", default=None, metavar="NAME|PATH",
              help="Decide pairs with a calibrated profile (a name in configs/, e.g. "
                   "'default', or a .toml file from 'matchkit calibrate') instead of the "
                   "hand-set rules.")
@click.option("--keep-in", "keep_in", multiple=True, type=click.Path(), metavar="DIR",
              help="Reference folder (repeatable): scanned too; its files are always "
                   "keepers and are never moved.")
@click.option("--prefer", multiple=True, metavar="RULE",
              help="Keeper preference, repeatable, applied in order before the built-in "
                   "rule: oldest, newest, largest, smallest (file size), format:FMT "
                   "(e.g. format:png) or path:GLOB (matched against the full path).")
@_LEVEL_OPTION
@_SHARDS_OPTION
@_RAY_OPTION
@_VOTE_INDEX_OPTION
@_signal_option("read with each image; a pair it vetoes is refused, its evidence is in "
                "the pair's JSON and review page. 'ocr' reads text with Tesseract "
                "(apt-get install tesseract-ocr): two screenshots of one app with different "
                "text are different pictures. Example: matchkit dedupe shots/ --signal ocr")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
def dedupe(paths, json_path, csv_path, gallery, rematch, threshold, max_pixels, workers, hash_only,
           model, min_cosine, html_path, evidence_limit, move_to, dry_run, profile_name,
           keep_in, prefer, level, shards, ray, vote_index, signals, quiet):
    """Find exact and near-duplicate images in PATHS (folders or files).

    Files are never modified or deleted. Each cluster names a suggested
    keeper and says why (keep_reason): a file in a --keep-in folder, then
    the --prefer rules, then the most picture pixels (fill and grey copies
    discounted), a lossless file or the highest JPEG quality, the largest
    file, the oldest; among files with the same pixels the original (a JPEG
    before its PNG re-save), then the oldest, then the smallest. Every
    other member matches that keeper directly. Only with --move-duplicates-to
    are files moved: the non-keepers, and 'matchkit undo MANIFEST' puts them
    back; the exit code is 1 if some file could not be moved (it stays where
    it was). To move a reviewed selection instead, change keepers and untick
    members on the --html page, press "Save review", and run 'matchkit apply'.

    \b
    Example:
      matchkit dedupe photos/ more-photos/ --json dupes.json --csv dupes.csv
      matchkit dedupe photos/ --html review.html
      matchkit apply ~/Downloads/matchkit-review.json --to ~/dupes   # saved from the page
      matchkit dedupe photos/ --move-duplicates-to ~/dupes --dry-run
      matchkit dedupe photos/ --move-duplicates-to ~/dupes --json dupes.json
      matchkit dedupe photos/ --gallery ~/.matchkit/photos --json - | jq .stats
      matchkit dedupe big-archive/ --hash-only --csv dupes.csv
      matchkit dedupe photos/ --model sscd-disc-mixup --json dupes.json
      matchkit dedupe photos/ --profile default --json dupes.json
      matchkit dedupe inbox/ --keep-in archive/ --move-duplicates-to ~/dupes
      matchkit dedupe photos/ --prefer oldest --prefer 'path:*/originals/*'
      matchkit dedupe wallpapers/ --level variants --html review.html
      matchkit dedupe /shared/archive/ --ray auto --gallery /shared/g --json dupes.json
      matchkit dedupe screenshots/ --signal ocr --html review.html
    """
    profile = _load_profile(profile_name, level)
    from matchkit.match.keeper import parse_preference
    for rule in prefer:
        try:
            parse_preference(rule)
        except ValueError as e:
            _fail(str(e))
    for folder in keep_in:
        if not os.path.isdir(folder):
            _fail(f"--keep-in must be an existing folder: {folder}")
    if min_cosine is not None and not model:
        _fail("--min-cosine needs --model")
    if dry_run and not move_to:
        _fail("--dry-run needs --move-duplicates-to DIR")
    if rematch and not gallery:
        _fail("--rematch needs --gallery DIR")
    if shards and not (gallery or ray):
        _fail("--shards needs --gallery DIR (or --ray)")
    if ray is not None and model:
        _fail("--model is not supported with --ray yet")
    if ray is not None and signals:
        _fail("--signal is not supported with --ray yet")
    _check_html_path(html_path)
    if move_to and os.path.exists(move_to) and not os.path.isdir(move_to):
        _fail(f"--move-duplicates-to must be a folder: {move_to}")
    try:
        settings = Settings().with_(phash_max_distance=threshold, max_pixels=max_pixels,
                                    workers=workers, local_features=False if hash_only else None,
                                    model=model, min_cosine=min_cosine,
                                    signals=signals or None,
                                    **_writer_vote_index(vote_index, gallery))
        shown = None if quiet else PhaseProgress()
        report = run_dedupe(paths, gallery=gallery, settings=settings, on_progress=shown,
                            profile=profile, keep_in=keep_in, prefer=prefer,
                            level=level, rematch=rematch, ray=ray, shards=shards)
        if shown is not None:
            shown.close()
    except FileNotFoundError as e:
        _fail(str(e))
    except (GalleryError, RayUnavailable) as e:
        _fail(_one_line(e))
    except Exception as e:  # a missing or unusable --model: one line, exit 2
        from matchkit.embed import EmbedderError
        if not isinstance(e, EmbedderError):
            raise
        _fail(str(e))
    out = sys.stderr if json_path == "-" else sys.stdout
    data = None
    # Output files written so far, of ``writing`` (shown as phase "write").
    writing = [p for p in (html_path, json_path, csv_path) if p and p != "-"]
    files_written = 0

    def written(n: int) -> None:
        nonlocal files_written
        files_written += n
        if shown is not None and writing:
            shown("write", files_written, len(writing))
    written(0)
    if html_path:
        from matchkit.report.html import DEFAULT_EVIDENCE_LIMIT, write_html_report
        try:
            page = write_html_report(
                report, html_path, settings=settings, progress=not quiet,
                evidence_limit=DEFAULT_EVIDENCE_LIMIT if evidence_limit is None else evidence_limit)
        except OSError as e:
            _fail(f"cannot write HTML report {html_path}: {e.strerror or e}")
        data = report.to_dict()
        data["html"] = page.to_dict()
        written(1)
    moved = None
    if move_to:
        from matchkit.io.moves import MoveError, move_duplicates
        try:
            moved = move_duplicates(report.to_dict(), move_to, roots=paths, dry_run=dry_run)
        except MoveError as e:
            _fail(str(e))
        data = data or report.to_dict()
        data["moves"] = moved.to_dict()
    if json_path == "-":
        click.echo(report.to_json() if data is None else json_text(data, indent=2))
    elif json_path:
        if data is None:
            report.write_json(json_path)
        else:
            atomic_write_bytes(json_path, json_text(data, indent=2).encode("utf-8"))
        written(1)
    if csv_path:
        report.write_csv(csv_path)
        written(1)
    if shown is not None:
        shown.close()
    if not quiet:
        click.echo(report.summary(json_output=json_path), file=out)
        if html_path:
            click.echo(f"review page: {html_path} ({page.thumbnails} thumbnails, "
                       f"{page.pictures} keypoint pictures, {page.bytes / 2**20:.1f} MB); "
                       "its \"Save review\" file moves with: matchkit apply FILE --to DIR",
                       file=out)
    if moved is not None:
        _echo_moves(moved, quiet, out)
        return 0 if moved.ok else 1
