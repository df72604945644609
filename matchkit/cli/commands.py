"""The ``matchkit`` command: a thin layer over the Python API.

Every command has ``--help`` with an example. Wrong arguments get a one-line
error on stderr and exit code 2; unreadable images are reported, never fatal.

The click group ``cli`` and what the commands share are in
:mod:`matchkit.cli.common`; each family of commands is in its own
``cmd_*.py`` module, which attaches its commands to ``cli`` when imported.
This module imports them all (so importing it registers every command),
keeps the commands and their helpers importable from here, and holds
``main``.
"""

from __future__ import annotations

import warnings

from matchkit.util.fspath import display
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
