"""The ``matchkit`` command: a thin layer over the Python API.

Every command has ``--help`` with an example. Wrong arguments get a one-line
error on stderr and exit code 2; unreadable images are reported, never fatal.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import sys
import warnings
from pathlib import Path

import click

from matchkit.util.version import __version__
from matchkit.util.fs import atomic_write_bytes
from matchkit.util.fspath import display, json_text
from matchkit.util.progress import PhaseProgress
from matchkit.config import Settings
from matchkit.jobs.dedupe import dedupe as run_dedupe
from matchkit.distributed.ray_jobs import RayUnavailable
from matchkit.store.gallery import Gallery, GalleryError
from matchkit.store.shards import is_sharded, open_gallery
from matchkit.relation import DEFAULT_LEVEL, LEVELS


class _OneLineErrors(click.Group):
    """Print usage errors as a single line (``matchkit: error: ...``), exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name or "matchkit",
                              complete_var=complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.UsageError as e:
            click.echo(f"matchkit: error: {display(e.format_message())}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("matchkit: aborted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            click.echo(f"matchkit: error: {display(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except sqlite3.DatabaseError as e:  # a damaged gallery database, met mid-run
            from matchkit.store.gallery import damaged_database_message
            click.echo(f"matchkit: error: {damaged_database_message(e)}", err=True)
            sys.exit(2)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


#: ``--level`` of dedupe, check and label: which relations form matches.
_LEVEL_OPTION = click.option(
    "--level", type=click.Choice(list(LEVELS)), default=None,
    help="Which relations count: copies (exact, same pixels, resized, crop, edited, "
         "recapture), variants (also recolours, light/dark and state variants) or "
         f"similar (also other shots of the same scene). Default: {DEFAULT_LEVEL}, or "
         "the level a --profile was calibrated for.")

_RAY_OPTION = click.option(
    "--ray", default=None, metavar="ADDRESS|auto|local",
    help="Run on a Ray cluster (pip install 'matchkit[ray]'): 'auto' joins the cluster of "
         "this machine, 'local' starts one here. Files must be at the same paths on every "
         "node (shared storage); the gallery is sharded, one shard per node by default.")
_SHARDS_OPTION = click.option(
    "--shards", type=click.IntRange(min=1), default=None,
    help="Make a new gallery of this many shards (folders under --gallery, one manifest); "
         "an image's shard is chosen by a hash of its content.")

_VOTE_INDEX_OPTION = click.option(
    "--vote-index", type=click.Choice(["hnsw", "ivf"]), default=None,
    help="Descriptor index the candidate votes search: 'hnsw' (default) or 'ivf' (an "
         "inverted file over visual words: about 1.2 KB per image instead of 12-28 KB, and "
         "the same neighbours however the gallery is sharded). A gallery keeps one file "
         "per kind. Example: matchkit dedupe photos/ --gallery g --vote-index ivf")


def _check_signals(ctx, param, value) -> tuple[str, ...]:
    """``--signal`` names, checked against the registry (``matchkit.signals``)
    and able to run here, else a one-line error (exit 2)."""
    from matchkit.signals import SignalUnavailable, UnknownSignal, check_names, get

    try:
        names = check_names(value)
        for name in names:
            get(name).check()
    except (UnknownSignal, SignalUnavailable) as e:
        raise click.BadParameter(str(e), ctx, param) from None
    return names


def _signal_option(what: str):
    from matchkit.signals import available

    return click.option(
        "--signal", "signals", multiple=True, callback=_check_signals, metavar="NAME",
        help=f"Extra signal, repeatable ({', '.join(available())}): {what}")


def _fail(message: str) -> None:
    raise click.UsageError(message)


class _Setting(click.ParamType):
    """An option that sets a ``Settings`` field: parsed and range-checked exactly
    as ``Settings`` and profiles check it (``config.RANGES``)."""

    def __init__(self, setting: str):
        from matchkit.config import RANGES, setting_kind
        self.setting, self.kind = setting, setting_kind(setting)
        self.range = RANGES[setting]
        self.name = "integer" if self.kind is int else "number"

    def convert(self, value, param, ctx):
        from matchkit.config import SettingsError, check_setting
        if isinstance(value, str):
            try:
                value = self.kind(value)
            except ValueError:
                self.fail(f"{value!r} is not a {'whole ' if self.kind is int else ''}number",
                          param, ctx)
        try:
            return check_setting(self.setting, value)
        except SettingsError as e:
            self.fail(str(e), param, ctx)

    def get_metavar(self, param, ctx=None) -> str:
        lo, hi = self.range
        return f"{self.name.upper()} [{lo}..{hi}]"


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (some carry how-to text over several)."""
    return " ".join(str(error).split()) or type(error).__name__


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
                                    vote_index=vote_index, signals=signals or None)
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


def _load_profile(name, level=None):
    """The profile named on the command line (None: hand-set rules); errors,
    and a --level the profile was not calibrated for, exit 2."""
    if name is None:
        return None
    from matchkit.match.profiles import ProfileError, load_profile
    try:
        profile = load_profile(name)
        profile.check_level(level)
        return profile
    except ProfileError as e:
        _fail(_one_line(e))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Profile file to write (TOML), e.g. configs/products.toml.")
@click.option("--target-precision", type=click.FloatRange(0.5, 1.0, max_open=True),
              default=0.99, show_default=True,
              help="Precision the decision threshold is certified for on held-out pairs "
                   "(one-sided 95% Clopper-Pearson lower bound).")
@click.option("--edits", "suite_name", default="copy-detection", show_default=True,
              help="Edit suite that makes the positives: a name in configs/edits/ "
                   "(exact-ish, transformed, copy-detection) or a .toml file.")
@click.option("--name", default=None, help="Profile name (default: the --out file's stem).")
@click.option("--source", default=None,
              help="What the photos are, recorded in the profile (default: the PATHS).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Precision-recall plot (PNG; default: beside --out, same stem).")
@click.option("--workers", type=_Setting("workers"), default=None,
              help="Worker processes for decoding (default: one per core).")
@click.option("--model", type=click.Choice(["boosting", "logistic"]), default="boosting",
              show_default=True,
              help="The decision model: gradient-boosted trees, or a logistic regression "
                   "(smoother, but it cannot tell recolours from grey copies).")
@click.option("--level", type=click.Choice(list(LEVELS)), default=DEFAULT_LEVEL,
              show_default=True,
              help="Which relations are duplicates: the suite's variant edits (recolours, "
                   "light/dark) are negatives at copies and positives at variants/similar. "
                   "Use the profile at this level.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def calibrate(paths, out_path, target_precision, suite_name, name, source, plot_path, workers,
              model, level, quiet):
    """Fit a calibrated pair decision on edits of your own photos in PATHS.

    Photos are split in two halves by a hash of their name. Positives are
    edits of the same photo (the --edits suite); negatives are the other
    photos' images the candidate search proposes (the hardest non-duplicates).
    The model is fitted on one half; the threshold is chosen on the other, as
    the lowest whose lower precision bound reaches --target-precision.

    \b
    Example:
      matchkit calibrate ~/product-shots --out configs/products.toml --edits copy-detection
      matchkit dedupe ~/product-shots --profile configs/products.toml --json dupes.json
      matchkit calibrate ~/wallpapers --level variants --out configs/variants.toml
    """
    from matchkit.match.edits import EditError, load_suite
    from matchkit.match.pairsets import calibrate_folder
    from matchkit.match.profiles import ProfileError, save_profile

    try:
        suite = load_suite(suite_name)
    except EditError as e:
        _fail(_one_line(e))
    name = name or Path(out_path).stem
    plot_path = plot_path or str(Path(out_path).with_suffix(".png"))
    say = None if quiet else (lambda msg: click.echo(msg, err=True))
    try:
        run = calibrate_folder(list(paths), suite, name=name, target_precision=target_precision,
                               model=model,
                               settings=Settings().with_(workers=workers, level=level),
                               plot=plot_path,
                               source=source or " ".join(paths), progress=say)
        save_profile(run.profile, out_path)
    except (ValueError, ProfileError, EditError) as e:
        _fail(_one_line(e))
    cal = run.profile.calibrator
    st = cal.stats_
    click.echo(
        f"calibrated {name!r} on {run.profile.data['photos']} photos "
        f"({run.profile.data['images']} images, {suite.name} edits, --level {level}) "
        f"in {run.seconds:.0f} s\n"
        f"fit half: {st['fit_pairs']} pairs ({st['fit_positives']} duplicates); "
        f"held-out half: {st['held_out_pairs']} pairs ({st['held_out_positives']} duplicates)\n"
        f"threshold {cal.threshold_:.4f} (P(duplicate) {cal.probability_threshold_:.3f}; "
        f"fit-half optimum would be {cal.train_threshold_:.4f})\n"
        f"held-out: precision {st['precision']:.4f} (95% lower bound "
        f"{st['precision_lower_bound']:.4f}, target {target_precision}"
        f"{'' if st['certified'] else ', NOT certified: too few pairs'}), "
        f"recall {st['recall']:.4f}\n"
        f"profile: {out_path}\nplot: {plot_path}")


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
@click.option("--json", "fmt", flag_value="json",
              help="JSON list (the default when stdout is not a terminal).")
@click.option("--table", "fmt", flag_value="table",
              help="A text table (the default on a terminal).")
def models(fmt):
    """List the embedding models known by name, and whether each is usable here.

    On a terminal: a table, with how to get each model that is missing.
    With --json (or when piped): a JSON list with every field.

    \b
    Example:
      matchkit models
      matchkit models --json | jq -r '.[] | select(.available) | .name'
    """
    from dataclasses import asdict

    from matchkit.embed import list_models
    found = list_models()
    if fmt is None:
        fmt = "table" if sys.stdout.isatty() else "json"
    if fmt == "json":
        click.echo(json.dumps([asdict(m) for m in found], indent=2, default=str))
    else:
        click.echo(_models_table(found))


def _models_table(found) -> str:
    """One row per model, then how to get the missing ones (each instruction once)."""
    rows = [("name", "usable", "text", "description")]
    rows += [(m.name, "yes" if m.available else "no", "yes" if m.has_text else "no",
              m.description) for m in found]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3] for r in rows]
    how: dict[str, list[str]] = {}
    for m in found:
        if not m.available and m.how_to_get:
            how.setdefault(m.how_to_get, []).append(m.name)
    for text, names in how.items():
        lines.append(f"to get {', '.join(names)}: {text}")
    if not found:
        lines.append("no models registered")
    return "\n".join(lines)


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


def _open_gallery(path: str, settings: Settings | None = None):
    """An existing gallery, or a one-line usage error."""
    from matchkit.store.gallery import Gallery

    try:
        return Gallery(path, settings or Settings(), create=False)
    except GalleryError as e:
        _fail(str(e))


def _emit_json(data, json_path: str | None) -> None:
    """JSON to stdout, or atomically to a file."""
    import json

    from matchkit.util.fs import atomic_write_bytes

    text = json.dumps(data, indent=1)
    if json_path in (None, "-"):
        click.echo(text)
    else:
        atomic_write_bytes(json_path, (text + "\n").encode())


def _gallery_argument(f):
    """``--gallery G`` like every other command, and the older positional
    ``GALLERY`` (deprecated, still accepted) of the ``labels`` commands."""
    f = click.option("--gallery", "gallery_opt", type=click.Path(file_okay=False),
                     help="The labelled gallery folder.")(f)
    return click.argument("gallery", required=False, type=click.Path(file_okay=False),
                          metavar="[GALLERY]")(f)


def _pick_gallery(positional: str | None, option: str | None) -> str:
    """The gallery named by ``--gallery`` or (deprecated) positionally; usage error otherwise."""
    if positional and option and positional != option:
        _fail(f"two galleries given ({positional} and --gallery {option}); give only --gallery")
    if not (positional or option):
        _fail("give the gallery with --gallery G")
    return option or positional


@cli.group()
def labels() -> None:
    """Labelled galleries: import labels, calibrate the unknown threshold, list classes.

    The gallery is named with --gallery G, as in every other command (the
    older form with the gallery as first argument still works, but is
    deprecated).

    \b
    Example:
      matchkit labels import --gallery cat-gallery --folder catalogue/  # catalogue/<class>/*.jpg
      matchkit labels import --gallery cat-gallery --csv labels.csv     # rows: path,label
      matchkit labels show --gallery cat-gallery
    """


@labels.command("import")
@_gallery_argument
@click.option("--folder", type=click.Path(file_okay=False),
              help="ImageFolder tree: one subfolder per class.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False),
              help="CSV of path,label rows (header optional; paths relative to the file).")
@click.option("--jsonl", "jsonl_file", type=click.Path(dir_okay=False),
              help='JSON Lines: {"path": ..., "label": ...} per line.')
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the import report here instead of stdout.")
def labels_import(gallery, gallery_opt, folder, csv_file, jsonl_file, json_path):
    """Add labelled images to the --gallery (created if missing) and set their labels.

    Re-importing is incremental: unchanged files are not decoded again and
    the labels of every listed image are replaced. Unreadable images and bad
    rows are listed under "skipped" with a reason. GALLERY as first argument (instead of --gallery) is deprecated and still accepted.

    \b
    Example:
      matchkit labels import --gallery parts-gallery --folder bench-photos/
      matchkit labels import --gallery art-gallery --jsonl artworks.jsonl --json import.json
    """
    gallery = _pick_gallery(gallery, gallery_opt)
    from matchkit.store.gallery import Gallery
    from matchkit.jobs.labels import LabelError, import_folder, import_table

    sources = [x for x in (folder, csv_file, jsonl_file) if x]
    if len(sources) != 1:
        _fail("give exactly one of --folder, --csv or --jsonl")
    try:
        with Gallery(gallery) as g:
            if folder:
                report = import_folder(g, folder)
            else:
                report = import_table(g, csv_file or jsonl_file, "csv" if csv_file else "jsonl")
    except (GalleryError, LabelError) as e:
        _fail(str(e))
    _emit_json(report.to_dict(), json_path)


@labels.command("show")
@_gallery_argument
def labels_show(gallery, gallery_opt):
    """Print the classes of the --gallery with their number of images, as JSON.

    GALLERY as first argument (instead of --gallery) is deprecated and still accepted.

    \b
    Example:
      matchkit labels show --gallery parts-gallery | jq '.classes | length'
    """
    gallery = _pick_gallery(gallery, gallery_opt)
    from matchkit.jobs.labels import class_counts

    g = _open_gallery(gallery)
    with g:
        counts = class_counts(g)
        _emit_json({"images": len(g), "labelled": len(g.labelled()), "classes": counts}, None)


def _calibration_bars(intro: str):
    """Progress of a synthetic calibration on stderr: ``intro`` once it starts,
    then a line and (on a terminal) a bar per stage (``Labeler(progress=)``)."""
    from matchkit.util.progress import StageBars

    started: list[bool] = []

    def say(line: str) -> None:
        if not started:
            started.append(True)
            click.echo(f"matchkit: {intro}", err=True)
        click.echo(f"matchkit: {line}", err=True)
    return StageBars(say)


def _labeler(gallery, k, target, calibration, quiet, samples=200, model=None,
             no_model=False, text_labels=False, profile=None, level=None, bars=None):
    """A fitted Labeler over an existing gallery, or a one-line usage error.

    The embedding model is ``model``, else the one model the gallery holds
    vectors for (``matchkit index --model``), else none.
    """
    from matchkit.jobs.classify import Labeler
    from matchkit.jobs.labels import LabelError

    if not (Path(gallery) / "gallery.sqlite").exists():
        _fail(f"no gallery at {gallery} (create one with `matchkit labels import --gallery "
              f"{shlex.quote(str(gallery))} --folder DIR`)")
    if model and no_model:
        _fail("--model and --no-model contradict each other")
    if not model and not no_model:
        try:
            with Gallery(gallery, create=False) as g:
                held = list(g.models())
        except GalleryError as e:
            _fail(_one_line(e))
        if len(held) > 1:
            _fail(f"gallery {gallery} holds vectors of several models ({', '.join(held)}); "
                  "choose one with --model or none with --no-model")
        model = held[0] if held else None
    embedder = None
    if model:
        from matchkit.embed import EmbedderError, load_embedder
        try:
            embedder = load_embedder(model)
        except EmbedderError as e:
            _fail(_one_line(e) + " (or label without embeddings: --no-model)")
    if text_labels and embedder is None:
        _fail("--text-labels needs a CLIP model (--model)")
    bars = bars if bars is not None or quiet else _calibration_bars(
        "first answer from this gallery: calibrating the unknown threshold (once; it is "
        "stored with the gallery)")
    lab = Labeler(k=k, target_accuracy=target, calibration=calibration,
                  calibration_samples=samples, embedder=embedder,
                  texts="labels" if text_labels else None, profile=profile, level=level,
                  progress=bars)
    try:
        lab.fit(gallery)
    except (GalleryError, LabelError, ValueError) as e:
        lab.close()
        _fail(_one_line(e))
    finally:
        if bars is not None:
            bars.close()
    cal = lab.calibration_
    if not quiet and cal is not None and lab.calibrated_now_:
        click.echo(f"matchkit: calibrated the unknown threshold on {cal['queries']} synthetic "
                   f"queries (stored with the gallery for next time)", err=True)
    return lab


_MODEL_OPTIONS = [
    click.option("--model", default=None,
                 help="Embedding model for look-alike classes (name, folder or .onnx); "
                      "default: the model the gallery was indexed with, if any."),
    click.option("--no-model", is_flag=True, help="Use no embeddings, only instance evidence."),
    click.option("--text-labels", is_flag=True,
                 help="Also use class names as text examples (CLIP models)."),
]


def _model_options(f):
    for option in reversed(_MODEL_OPTIONS):
        f = option(f)
    return f


@labels.command("calibrate")
@_gallery_argument
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Neighbours that vote.")
@click.option("--target", type=click.FloatRange(0.5, 1.0, max_open=True), default=0.99,
              show_default=True, help="Accuracy wanted on accepted (non-unknown) answers.")
@click.option("--samples", type=click.IntRange(min=1), default=200, show_default=True,
              help="Gallery images to make synthetic calibration queries from.")
@click.option("--queries", "queries", type=click.Path(dir_okay=False),
              help='Calibrate on your own queries instead: CSV/JSONL of path,label rows '
                   'with label "unknown" for images of no gallery class.')
@_model_options
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def labels_calibrate(gallery, gallery_opt, k, target, samples, queries, model, no_model,
                     text_labels, quiet):
    """Fit and store the threshold below which answers are "unknown".

    GALLERY as first argument (instead of --gallery) is deprecated and still accepted.

    \b
    Example:
      matchkit labels calibrate --gallery parts-gallery --target 0.99
      matchkit labels calibrate --gallery parts-gallery --queries held-out.csv
    """
    gallery = _pick_gallery(gallery, gallery_opt)
    from matchkit.jobs.labels import LabelError, table_labels

    bars = None if quiet or queries else _calibration_bars(
        "calibrating the unknown threshold on edited copies of gallery images")
    lab = _labeler(gallery, k, target, "none", True, samples, model, no_model, text_labels,
                   bars=bars)
    with lab:
        try:
            if queries:
                rows, _ = table_labels(queries)
                lab.calibrate([p for p, _ in rows], [c for _, c in rows])
            else:
                lab.calibrate_synthetic(samples)
        except (LabelError, ValueError) as e:
            _fail(str(e))
        finally:
            if bars is not None:
                bars.close()
        where = lab.save_calibration()
        cal = {k: v for k, v in lab.calibration_.items() if k not in ("x", "y")}
        _emit_json({"stored": str(where), **cal}, None)


@cli.command()
@click.argument("queries", nargs=-1, required=True, type=click.Path())
@click.option("--gallery", required=True, type=click.Path(file_okay=False),
              help="A labelled gallery (see `matchkit labels import`).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the answers here instead of stdout.")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Neighbours that vote.")
@click.option("--target", type=click.FloatRange(0.5, 1.0, max_open=True), default=0.99,
              show_default=True, help="Accuracy wanted on accepted (non-unknown) answers.")
@click.option("--calibration", type=click.Choice(["auto", "stored", "none"]), default="auto",
              show_default=True,
              help="auto: use the stored calibration or fit one; stored: only use a stored one; "
                   "none: uncalibrated (accept verified matches without a rival class).")
@_model_options
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write a review page (HTML plus a PATH_files/ folder of thumbnails).")
@click.option("--profile", "profile_name", default=None, metavar="NAME|PATH",
              help="Decide whether a query copies a labelled example with a calibrated "
                   "profile (a name in configs/ or a .toml file) instead of the hand rules.")
@_LEVEL_OPTION
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
def label(queries, gallery, json_path, k, target, calibration, model, no_model, text_labels,
          html_path, profile_name, level, quiet):
    """Label each image in QUERIES (files or folders) by its nearest labelled
    gallery examples, or "unknown" when nothing matches well enough.

    Each answer has the label, a calibrated confidence, the best class even
    when rejected, and the neighbours that support it with their evidence.

    \b
    Example:
      matchkit label --gallery parts-gallery photo1.jpg photo2.jpg
      matchkit label --gallery art-gallery new-scans/ -k 3 --json answers.json
      matchkit label --gallery parts-gallery query.jpg | jq -r '.answers[].label'
      matchkit label --gallery art-gallery scan.jpg --model clip-vit-b32 --text-labels
      matchkit label --gallery parts-gallery new-photos/ --html answers.html
      matchkit label --gallery parts-gallery new-photos/ --profile default
    """
    import time

    from matchkit.io.load import iter_image_files

    _check_html_path(html_path)
    start = time.perf_counter()
    try:
        files = [str(p) for p in iter_image_files(queries)]
    except FileNotFoundError as e:
        _fail(str(e))
    profile = _load_profile(profile_name, level)
    lab = _labeler(gallery, k, target, calibration, quiet, model=model, no_model=no_model,
                   text_labels=text_labels, profile=profile, level=level)
    with lab:
        answers = lab.answers(files)
        out = lab.report(answers, seconds=time.perf_counter() - start)  # = the API's JSON
    if html_path:
        from matchkit.report.pages import write_label_html
        try:
            out["html"] = write_label_html(out, html_path, progress=not quiet).to_dict()
        except OSError as e:
            _fail(f"cannot write HTML report {html_path}: {e.strerror or e}")
    _emit_json(out, json_path)
    if not quiet:
        st = out["stats"]
        click.echo(f"{st['queries']} queries: {st['labelled']} labelled, {st['unknown']} unknown"
                   f" ({st['unreadable']} unreadable)", err=True)



def _check_html_path(html_path: str | None) -> None:
    if html_path == "-" or (html_path and os.path.isdir(html_path)):
        _fail(f"--html must name a file (thumbnails go in a folder beside it): {html_path}")


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
@click.option("--vote-index", type=click.Choice(["hnsw", "ivf"]), default=None,
              help="Descriptor index to search (default: the kind the gallery was last "
                   "written with). Example: matchkit check q.jpg --gallery g --vote-index ivf")
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
                           settings=None if vote_index is None else Settings().with_(
                               vote_index=vote_index),
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

@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--gallery", required=True, type=click.Path(file_okay=False),
              help="Gallery folder (created if missing).")
@click.option("--model", default=None,
              help="Compute embeddings with this model: a registered name (e.g. "
                   "clip-vit-b32), a CLIP checkpoint folder, a .onnx file or a .toml config. "
                   "Without it, the models the gallery already holds are used. Only images "
                   "without a vector are embedded.")
@click.option("--no-embed", is_flag=True,
              help="Compute no embeddings, not even for the gallery's models.")
@click.option("--meta", "meta_path", type=click.Path(dir_okay=False),
              help="Metadata to attach: .csv/.tsv with a 'path' column, or .jsonl with a "
                   "\"path\" key, plus any fields (see README, 'Search').")
@click.option("--no-exif-dates", is_flag=True,
              help="Do not record taken/year/month from EXIF for new or changed images.")
@click.option("--workers", type=_Setting("workers"), default=None,
              help="Worker processes/threads for decoding (default: one per core).")
@click.option("--max-pixels", type=_Setting("max_pixels"), default=None,
              help="Skip files with more pixels than this (decompression-bomb guard).")
@click.option("--hash-only", is_flag=True,
              help="Skip local features (faster; enough for search, less for dedupe).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass of the model.")
@click.option("--device", default="cpu", show_default=True,
              help="Where the model runs: cpu, cuda, cuda:N or auto.")
@_SHARDS_OPTION
@_RAY_OPTION
@_VOTE_INDEX_OPTION
@_signal_option("read with each image and kept in the gallery; 'ocr' (Tesseract) makes "
                "`matchkit search --contains TEXT` possible. Example: matchkit index docs/ "
                "--gallery g --signal ocr --no-embed")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def index(paths, gallery, model, no_embed, meta_path, no_exif_dates, workers, max_pixels,
          hash_only, batch_size, device, shards, ray, vote_index, signals, quiet):
    """Add images in PATHS to a gallery; attach metadata and embed them.

    Prints a JSON summary on stdout: images added/updated/unchanged, files
    skipped with reasons, metadata rows that matched no image, and how many
    images each model embedded. Running it again only processes what is new
    or changed. New and changed photos get taken/year/month from their EXIF
    capture date unless they already have one of these keys.

    \b
    Example:
      matchkit index photos/ --gallery ~/.matchkit/photos --model clip-vit-b32
      matchkit index photos/ --gallery g --model ./clip-dir --meta photos.csv
      matchkit index new-photos/ --gallery g -q     # embeds with g's model(s)
      matchkit index photos/ --gallery g --meta more.jsonl --no-embed | jq .metadata
      matchkit index archive/ --gallery big --shards 8 --ray auto -q
      matchkit index scans/ --gallery g --signal ocr --no-embed   # then: search --contains
    """
    from matchkit.store.gallery import DB_NAME
    from matchkit.io.load import iter_image_files
    from matchkit.jobs.metadata import MetadataError, add_exif_dates, import_metadata, read_metadata

    if model and no_embed:
        _fail("--model and --no-embed contradict each other")
    if ray is not None and signals:
        _fail("--signal is not supported with --ray yet")
    sharded = (shards or 1) > 1 or ray is not None or is_sharded(gallery)
    if sharded and meta_path:
        _fail("--meta is not supported on sharded galleries (--shards, --ray) yet")
    try:
        files = list(iter_image_files(paths))
    except FileNotFoundError as e:
        _fail(str(e))
    if meta_path:
        try:
            read_metadata(meta_path)  # refuse an unusable file before any work
        except MetadataError as e:
            _fail(_one_line(e))
    known: dict[str, int] = {}
    if (Path(gallery) / DB_NAME).exists() and not sharded or is_sharded(gallery):
        try:
            with open_gallery(gallery, create=False) as g:
                known = g.models()
        except GalleryError as e:
            _fail(_one_line(e))
    names = [] if no_embed else [model] if model else list(known)
    embedders = []
    if names:  # load every model first: a missing one fails before any work
        from matchkit.embed import EmbedderError, load_embedder
        for name in names:
            try:
                embedders.append(load_embedder(name, device=device, batch_size=batch_size))
            except EmbedderError as e:
                _fail(_one_line(e))
            emb = embedders[-1]
            if emb.name in known and known[emb.name] != emb.dim:
                _fail(f"model {emb.name!r} gives {emb.dim}-d vectors but gallery {gallery} "
                      f"holds {known[emb.name]}-d vectors from a model of that name; use a "
                      "new gallery")
    settings = Settings().with_(max_pixels=max_pixels, workers=workers,
                                local_features=False if hash_only else None,
                                vote_index=vote_index, signals=signals or None)
    out: dict = {"gallery": str(gallery)}
    try:
        if ray is not None:
            from matchkit.distributed.ray_jobs import RayRun
            with RayRun(ray, gallery, settings, shards=shards) as run:
                added = _add_with_bar(run, files, quiet)
        with open_gallery(gallery, settings, shards=shards) as g:
            if ray is None:
                added = _add_with_bar(g, files, quiet)
            g.save()
            out.update(files=len(files), images=len(g), added=added.added,
                       updated=added.updated, unchanged=added.unchanged,
                       skipped=[vars(s) for s in added.skipped])
            if not no_exif_dates:
                out["exif_dated"] = add_exif_dates(g, added.changed)
            if meta_path:
                roots = [p for p in paths if Path(p).is_dir()]
                out["metadata"] = import_metadata(g, meta_path, roots=roots).to_dict()
            out["embeddings"] = [g.embed(emb, progress=not quiet, workers=workers or None
                                         ).to_dict() for emb in embedders]
    except (GalleryError, MetadataError, RayUnavailable) as e:
        _fail(_one_line(e))
    except Exception as e:
        from matchkit.embed import EmbedderError
        if not isinstance(e, EmbedderError):
            raise
        _fail(_one_line(e))
    click.echo(json.dumps(out, indent=2))


def _add_with_bar(gallery, files: list, quiet: bool):
    """``gallery.add(files)`` (a gallery, sharded one or Ray run) with a progress bar."""
    bar = _progress_bar(len(files), not quiet)
    try:
        return gallery.add(files, progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()


@cli.command()
@click.argument("gallery", type=click.Path(file_okay=False))
@click.option("--repair", is_flag=True,
              help="Rebuild stale or damaged index files from the database and save them.")
@_VOTE_INDEX_OPTION
def verify(gallery, repair, vote_index):
    """Check a gallery's index and vector files against its database.

    Prints JSON: "differences" lists index files that claim to be current
    but whose keys differ from the database rows (exit code 1; should never
    happen), "stale" lists files that are missing, older or damaged and are
    rebuilt from the database whenever they are used (--repair rebuilds and
    saves them once). Safe to run while another matchkit writes.

    \b
    Example:
      matchkit verify ~/.matchkit/photos | jq .differences
      matchkit verify ~/.matchkit/photos --repair
      matchkit verify ~/.matchkit/photos --vote-index ivf   # its orb.ivf file
    """
    with _open_gallery(gallery, Settings().with_(vote_index=vote_index)) as g:
        try:
            report = g.verify(repair=repair)
        except GalleryError as e:
            _fail(_one_line(e))
    _emit_json(report.to_dict(), None)
    return 0 if report.ok else 1


def _parse_crop(text: str) -> tuple[int, int, int, int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        _fail(f"--crop takes four whole numbers x,y,w,h (pixels), not {text!r}")
    return values


@cli.command()
@click.option("--gallery", required=True, type=click.Path(file_okay=False),
              help="Gallery folder made by `matchkit index --model`.")
@click.option("--image", type=click.Path(dir_okay=False),
              help="Query by this image (file).")
@click.option("--crop", default=None,
              help="Query by this region of --image: x,y,w,h in pixels of the image as "
                   "displayed (after EXIF rotation).")
@click.option("--text", default=None, help="Query by a text (needs a CLIP-style model).")
@click.option("--contains", default=None,
              help="Find images whose own text (read by OCR) holds these words, fuzzily; "
                   "needs no model, but a gallery indexed with --signal ocr. Scores: query "
                   "words found (each up to 1) plus 1 per two of them in the query's order. Example: "
                   "matchkit search --gallery g --contains 'invoice 2023' --where year=2023")
@click.option("--where", multiple=True,
              help="Metadata filter, repeatable (all must hold): key=v, key!=v, "
                   "'key in a,b', key>=n, key<n, 'lo<=key<=hi'.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Number of results.")
@click.option("--model", default=None,
              help="Model to embed the query with (default: the one the gallery was "
                   "indexed with; any other is refused).")
@click.option("--json", "fmt", flag_value="json", default=True,
              help="JSON list of hits on stdout (default).")
@click.option("--table", "fmt", flag_value="table", help="A small text table instead.")
def search(gallery, image, crop, text, contains, where, k, model, fmt):
    """Find the gallery images most similar to an image, a crop of one, or a text.

    Scores are cosine similarities (1 = same direction). Filters select
    images before the nearest-neighbour search, so a selective filter still
    returns the best k matching images.

    \b
    Example:
      matchkit search --gallery g --image query.jpg -k 5
      matchkit search --gallery g --image shelf.jpg --crop 120,40,200,150 --table
      matchkit search --gallery g --text "a red bicycle" --where 'year>=2019' \\
          --where 'place in Paris,Lyon' | jq '.[].path'
      matchkit index scans/ --gallery g --signal ocr --no-embed
      matchkit search --gallery g --contains "invoice 2023" --table
    """
    from matchkit.embed import EmbedderError
    from matchkit.jobs.filters import FilterError
    from matchkit.jobs.search import SearchError, search as run_search
    from matchkit.index.vectors import VectorIndexError  # ModelMismatch is one

    if sum(q is not None for q in (image, text, contains)) != 1:
        _fail("give exactly one of --image or --text (or --contains)")
    if crop is not None and image is None:
        _fail("--crop needs --image")
    box = _parse_crop(crop) if crop is not None else None
    try:
        hits = run_search(gallery, image=image, crop=box, text=text, contains=contains,
                          where=where, k=k, model=model)
    except (GalleryError, SearchError, FilterError, EmbedderError, VectorIndexError) as e:
        _fail(_one_line(e))
    if fmt == "table":
        click.echo(_hits_table(hits))
    else:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2))


def _hits_table(hits) -> str:
    if not hits:
        return "no results"
    lines = [f"{'#':>3}  {'score':>6}  path  meta"]
    for rank, h in enumerate(hits, 1):
        meta = json_text(h.meta, separators=(",", ":")) if h.meta else ""
        lines.append(f"{rank:>3}  {h.score:6.3f}  {display(h.path)}  {meta}".rstrip())
    return "\n".join(lines)


def _progress_bar(total: int, enabled: bool):
    from matchkit.util.progress import progress_bar

    return progress_bar(total, enabled)


@cli.group(invoke_without_command=True)
@click.option("--gallery", "galleries", multiple=True, type=click.Path(file_okay=False),
              help="Gallery folder to serve (repeatable); its name in URLs is the folder's.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--no-auth", is_flag=True,
              help="Allow requests without an API key (only on a loopback --host).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=25.0,
              show_default=True, help="Largest upload (request body), in MiB.")
@click.option("--max-pixels", type=_Setting("max_pixels"), default=50_000_000,
              show_default=True, help="Largest uploaded image (width x height).")
@click.option("--rate", type=click.FloatRange(min=0), default=50.0, show_default=True,
              help="Requests per second per key (bursts of twice that); 0: no limit.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds a request may take before it is answered 504.")
@click.option("--readers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Reader threads (each keeps the galleries' indexes in memory).")
@click.option("--cors-origin", "cors", multiple=True,
              help="Allow browser pages from this origin (repeatable); CORS is off without.")
@click.pass_context
def serve(ctx, galleries, host, port, no_auth, max_upload_mb, max_pixels, rate, timeout,
          readers, cors):
    """Serve galleries over HTTP: search, check, label, add and manage images.

    Needs the serve extra (pip install 'matchkit[serve]'). Every request
    needs an API key made with 'matchkit serve keys add' (sent as
    'Authorization: Bearer KEY'), unless --no-auth on a loopback host.
    The API's schema and interactive docs are at /api/docs.

    \b
    Example:
      matchkit serve keys add --gallery ~/.matchkit/photos --scope read
      matchkit serve --gallery ~/.matchkit/photos --port 8000
      matchkit serve --gallery g1 --gallery g2 --host 127.0.0.1 --no-auth
    """
    if ctx.invoked_subcommand is not None:
        return
    if not galleries:
        _fail("give at least one --gallery to serve")
    try:
        import uvicorn  # noqa: F401  (the serve extra is installed)

        from matchkit.serve import ServeSettings, create_app
    except ImportError as e:
        _fail(f"matchkit serve needs the serve extra: pip install 'matchkit[serve]' ({e})")
    settings = ServeSettings(no_auth=no_auth, max_upload_bytes=int(max_upload_mb * 2**20),
                             max_pixels=max_pixels, rate=rate, burst=max(1, int(2 * rate)),
                             timeout=timeout, readers=readers, cors_origins=tuple(cors))
    try:
        app = create_app(list(galleries), settings, host=host)
    except (GalleryError, ValueError) as e:
        _fail(_one_line(e))
    click.echo(f"matchkit: serving {', '.join(app.state.matchkit.galleries)} on "
               f"http://{host}:{port}/api/ (docs: /api/docs)", err=True)
    from matchkit.serve.server import serve_app

    serve_app(app, host, port)


@serve.group("keys")
def serve_keys() -> None:
    """API keys of a gallery: add (the key is shown once), list, remove.

    \b
    Example:
      matchkit serve keys add --gallery g --scope read --name uploader
      matchkit serve keys list --gallery g
      matchkit serve keys remove --gallery g KEY_ID
    """


def _key_store(gallery: str):
    from matchkit.store.gallery import DB_NAME
    from matchkit.serve.keys import KeyStore

    if not (Path(gallery) / DB_NAME).is_file():
        _fail(f"no gallery at {gallery} (missing {DB_NAME})")
    return KeyStore(gallery)


@serve_keys.command("add")
@click.option("--gallery", required=True, type=click.Path(file_okay=False))
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), default="read",
              show_default=True, help="read: look and query; write: also change images; "
                                      "admin: everything.")
@click.option("--name", default="", help="A note saying who or what the key is for.")
def serve_keys_add(gallery, scope, name):
    """Make an API key for GALLERY and print it (only its hash is stored)."""
    token, key = _key_store(gallery).add(scope, name)
    click.echo(json.dumps({"key": token, **key.public()}, indent=1))


@serve_keys.command("list")
@click.option("--gallery", required=True, type=click.Path(file_okay=False))
def serve_keys_list(gallery):
    """List the keys of GALLERY (ids, scopes, names; never the keys)."""
    from matchkit.serve.keys import KeyStoreError
    try:
        keys = _key_store(gallery).keys()
    except KeyStoreError as e:
        _fail(str(e))
    click.echo(json.dumps([k.public() for k in keys], indent=1))


@serve_keys.command("remove")
@click.option("--gallery", required=True, type=click.Path(file_okay=False))
@click.argument("key_id")
def serve_keys_remove(gallery, key_id):
    """Revoke the key KEY_ID of GALLERY (takes effect at once on a running server)."""
    if not _key_store(gallery).remove(key_id):
        _fail(f"no key {key_id!r} in {gallery}")
    click.echo(f"removed key {key_id}")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as a person reads it on a terminal: one line, no source line."""
    return f"matchkit: warning: {display(str(message))}\n"


def main() -> None:
    warnings.formatwarning = _one_line_warning
    cli()


if __name__ == "__main__":
    main()
