"""The ``matchkit`` command: a thin layer over the Python API.

Every command has ``--help`` with an example. Wrong arguments get a one-line
error on stderr and exit code 2; unreadable images are reported, never fatal.

The click group ``cli`` and what the commands share are in
:mod:`matchkit.cli.common`; each family of commands is in its own
``cmd_*.py`` module, which attaches its commands to ``cli`` when imported.
This module imports them all (so importing it registers every command),
keeps every name importable from here, and holds ``main``.
"""

from __future__ import annotations

import json  # noqa: F401  (re-exported)
import os  # noqa: F401  (re-exported)
import shlex  # noqa: F401  (re-exported)
import sqlite3  # noqa: F401  (re-exported)
import sys  # noqa: F401  (re-exported)
import warnings
from pathlib import Path  # noqa: F401  (re-exported)

import click  # noqa: F401  (re-exported)

from matchkit.util.version import __version__  # noqa: F401  (re-exported)
from matchkit.util.fs import atomic_write_bytes  # noqa: F401  (re-exported)
from matchkit.util.fspath import display, json_text  # noqa: F401  (re-exported)
from matchkit.util.progress import PhaseProgress  # noqa: F401  (re-exported)
from matchkit.config import Settings  # noqa: F401  (re-exported)
from matchkit.jobs.dedupe import dedupe as run_dedupe  # noqa: F401  (re-exported)
from matchkit.distributed.ray_jobs import RayUnavailable  # noqa: F401  (re-exported)
from matchkit.store.gallery import Gallery, GalleryError  # noqa: F401  (re-exported)
from matchkit.store.shards import is_sharded, open_gallery  # noqa: F401  (re-exported)
from matchkit.relation import DEFAULT_LEVEL, LEVELS  # noqa: F401  (re-exported)
from matchkit.cli.common import (  # noqa: F401  (re-exported)
    _LEVEL_OPTION, _OneLineErrors, _RAY_OPTION, _SHARDS_OPTION, _Setting, _VOTE_INDEX_OPTION,
    _check_html_path, _check_signals, _emit_json, _fail, _load_profile, _one_line,
    _open_gallery, _signal_option, cli)
from matchkit.cli.cmd_calibrate import calibrate  # noqa: F401  (re-exported)
from matchkit.cli.cmd_check import check_cmd  # noqa: F401  (re-exported)
from matchkit.cli.cmd_dedupe import dedupe  # noqa: F401  (re-exported)
from matchkit.cli.cmd_gallery import (  # noqa: F401  (re-exported)
    _add_with_bar, _progress_bar, index, verify)
from matchkit.cli.cmd_labels import (  # noqa: F401  (re-exported)
    _MODEL_OPTIONS, _calibration_bars, _gallery_argument, _labeler, _model_options,
    _pick_gallery, label, labels, labels_calibrate, labels_import, labels_show)
from matchkit.cli.cmd_models import _models_table, models  # noqa: F401  (re-exported)
from matchkit.cli.cmd_moves import (  # noqa: F401  (re-exported)
    _SHOWN, _echo_moves, _n, _undo_summary, apply_cmd, undo)
from matchkit.cli.cmd_search import _hits_table, _parse_crop, search  # noqa: F401  (re-exported)
from matchkit.cli.cmd_serve import (  # noqa: F401  (re-exported)
    _key_store, serve, serve_keys, serve_keys_add, serve_keys_list, serve_keys_remove)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as a person reads it on a terminal: one line, no source line."""
    return f"matchkit: warning: {display(str(message))}\n"


def main() -> None:
    warnings.formatwarning = _one_line_warning
    cli()


if __name__ == "__main__":
    main()
