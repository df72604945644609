"""File names that are not valid UTF-8, kept losslessly everywhere.

On POSIX a file name is bytes. Python hands names that are not valid UTF-8
to us as ``str`` with "surrogate escapes" (byte 0xE9 becomes U+DCE9), and
``os.fsencode`` gives the exact bytes back. Those strings cannot be encoded
as UTF-8, so SQLite, ``.encode("utf-8")``, JSON files and terminals fail on
them. The helpers here are the only places that convert, so one odd name
never ends a run and never loses the bytes that name the file:

- SQLite: valid UTF-8 names are TEXT as before; other names are a BLOB of
  their exact bytes (SQLite keeps TEXT and BLOB apart, so no two names can
  collide and ``UNIQUE`` still holds).
- JSON: the escape ``\\udce9`` (what ``json.dumps`` writes with
  ``ensure_ascii``); ``json.loads`` then ``os.fsencode`` gives the bytes.
- CSV: the cell holds the name's own bytes (read the file with
  ``errors="surrogateescape"`` to get them back), like ``ls`` prints them.
- People (HTML pages, messages): ``display`` shows each undecodable byte
  as ``\\xe9``.
"""

from __future__ import annotations

import json
import os
import re

from matchkit.util.jsonfmt import dumps_indented

_SURROGATES = re.compile("[\udc80-\udcff]")


def is_text(path: str) -> bool:
    """True when ``path`` is valid UTF-8 text (no surrogate escapes)."""
    return _SURROGATES.search(path) is None


def to_db(path: str) -> str | bytes:
    """The value that stores ``path`` in SQLite: text, or its bytes when not UTF-8."""
    return path if is_text(path) else os.fsencode(path)


def from_db(value: str | bytes) -> str:
    """Inverse of :func:`to_db`."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def display(path: str) -> str:
    """``path`` for people: undecodable bytes shown as ``\\xNN``, nothing else changed."""
    if is_text(path):
        return path
    return _SURROGATES.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", path)


def json_text(data, **kwargs) -> str:
    """``json.dumps(data, ensure_ascii=False)`` that also takes surrogate-escaped
    names: they become ``\\udcNN`` escapes, so the text encodes as UTF-8 and
    ``json.loads`` returns the same string (``os.fsencode`` gives the bytes).
    Indented by two spaces (the reports), orjson writes it where it can
    (``jsonfmt.dumps_indented``: the same values, faster)."""
    if kwargs == {"indent": 2}:
        fast = dumps_indented(data)
        if fast is not None:
            return fast
    text = json.dumps(data, ensure_ascii=False, **kwargs)
    if is_text(text):
        return text
    return _SURROGATES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def csv_bytes(text: str) -> bytes:
    """CSV text as UTF-8, with each surrogate-escaped name written as its own bytes."""
    return text.encode("utf-8", "surrogateescape")
