"""Reading back the JSON a gallery stores, fast where it is read in bulk.

An incremental run reads every stored pair's evidence and verification
again (53,000 pairs at 5,000 images): with the standard library that was
1.4 s of the run, with orjson 0.5 s (same texts, this machine). orjson gives
the same Python values for every document ``json.dumps`` writes here, except
``NaN`` and ``Infinity``, which it refuses: those fall back to ``json``.
Stored evidence is still written with ``json.dumps``: it is compared as
text (``incremental_state.evidence_json``), and orjson formats differently.
Stored match records, read back as values only, are written by orjson
(``dumps_sorted``): 3,900 records changed by a 50-image add to 4,950 took
0.15 s to encode with the standard library. The
indented JSON files people and scripts read (the ``--json`` reports) are
written by orjson when that gives the same values (``dumps_indented``): the
standard library's indented encoder is pure Python, 0.08 s for the 2.8 MB
report of 2,000 images here against 0.015 s, and grows with the report.
"""

from __future__ import annotations

import json
from typing import Any

try:  # (a dependency; the fallback keeps a broken install working)
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None


def loads(text: str | bytes) -> Any:
    """``json.loads``, by orjson where it can parse the text."""
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(text)


def dumps_indented(data: Any) -> str | None:
    """``data`` as JSON indented by two spaces, by orjson; None where that
    would not read back as ``data`` (then ``json.dumps`` must write it).

    Read back with orjson and compared: orjson writes NaN and infinities as
    ``null`` and refuses non-text keys, huge integers and surrogate-escaped
    names, and a tuple reads back as a list; each of those falls back. Where
    the values are equal, only number spelling differs from ``json.dumps``
    (``1e-5`` for ``1e-05``), which every JSON reader takes as the same."""
    return None if _orjson is None else _same_by_orjson(data, _orjson.OPT_INDENT_2)


def dumps_sorted(data: Any) -> str:
    """``data`` as compact JSON with sorted keys, by orjson where that reads
    back as ``data`` (see ``dumps_indented`` for what does not), else by
    ``json.dumps(data, sort_keys=True)``. For texts read back as values,
    never compared as text: the two writers space and spell numbers
    differently."""
    out = None if _orjson is None else _same_by_orjson(data, _orjson.OPT_SORT_KEYS)
    return json.dumps(data, sort_keys=True) if out is None else out


def _same_by_orjson(data: Any, option: int) -> str | None:
    """``data`` written by orjson with ``option``, or None where orjson
    refuses it or the text would not read back as ``data``."""
    try:
        out = _orjson.dumps(data, option=option)
    except (_orjson.JSONEncodeError, TypeError):
        return None
    if _orjson.loads(out) != data:
        return None
    return out.decode("utf-8")
