"""What every ``matchkit`` command shares: the ``cli`` click group itself,
one-line usage errors (``_fail``, ``_OneLineErrors``), the options several
commands take (``--level``, ``--ray``, ``--shards``, ``--vote-index``,
``--signal``, ``Settings`` fields), and small helpers (profiles, ``--html``
paths, opening a gallery, JSON output).

Separate from the commands so that each command family (``cmd_*.py``) can
attach its commands to ``cli`` without importing the others;
:mod:`matchkit.cli.commands` imports them all.
"""

from __future__ import annotations

import os
import sqlite3
import sys

import click

from matchkit.util.version import __version__
from matchkit.util.fspath import display
from matchkit.config import VOTE_INDEXES, Settings, vote_index_settings
from matchkit.store.gallery import GalleryError
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
    "--vote-index", type=click.Choice(list(VOTE_INDEXES)), default=None,
    help="Descriptor index the candidate votes search: 'ivf' (the default: an inverted "
         "file over 65,536 visual words, about 3.6 KB per image, the same neighbours however "
         "the gallery is sharded) or 'hnsw' (a USearch graph: 23-33 KB per image in memory, "
         "approximate); 'ivf-4k' and 'ivf-16k' file descriptors under 4,096 or 16,384 "
         "words (a probe scans 16 or 4 times as much). Not given: the index an existing "
         "--gallery was written with. A gallery keeps one file per kind. "
         "Example: matchkit dedupe photos/ --gallery g --vote-index hnsw")

#: ``--vote-index`` of the commands that read a gallery (``check``, ``verify``):
#: not told, they use the index the gallery was last written with.
_READ_VOTE_INDEX_OPTION = click.option(
    "--vote-index", type=click.Choice(list(VOTE_INDEXES)), default=None,
    help="Descriptor index to use (default: the kind, vocabulary, probes and nodes the "
         "gallery was last written with). "
         "Example: matchkit check q.jpg --gallery g --vote-index ivf")


def _writer_vote_index(vote_index: str | None, gallery) -> dict:
    """The descriptor-index settings of a command that writes a gallery
    (``index``, ``dedupe``): those ``--vote-index`` names; not told, those
    the gallery was last written with (``shards.saved_index_settings``),
    else the defaults."""
    if vote_index is not None:
        return vote_index_settings(vote_index)
    if gallery is None:
        return {}
    from matchkit.store.shards import saved_index_settings
    try:
        return saved_index_settings(gallery)
    except (GalleryError, sqlite3.DatabaseError, OSError):
        return {}  # (the command's own opening of the gallery reports what is wrong)


def _reader_settings(vote_index: str | None) -> Settings | None:
    """Settings of a command that reads a gallery: None (the gallery's own
    index) unless ``--vote-index`` names one."""
    return None if vote_index is None else Settings().with_(**vote_index_settings(vote_index))


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


def _open_gallery(path: str, settings: Settings | None = None):
    """An existing gallery, or a one-line usage error. Without ``settings``
    it is read with the descriptor index it was written with (``Gallery``)."""
    from matchkit.store.gallery import Gallery

    try:
        return Gallery(path, settings, create=False)
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


def _check_html_path(html_path: str | None) -> None:
    if html_path == "-" or (html_path and os.path.isdir(html_path)):
        _fail(f"--html must name a file (thumbnails go in a folder beside it): {html_path}")
