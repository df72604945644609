"""Metadata filters (``--where``) compiled to the set of allowed image ids.

A filter is a small expression over an image's ``meta`` JSON (what
``Gallery.update(meta=...)`` or ``matchkit index --meta`` stored). Several
filters are combined with AND. The syntax, one expression per ``--where``:

==========================  =================================================
``key=value``               equal (``==`` works too)
``key!=value``              not equal; images without ``key`` are kept
``key in a,b,c``            equal to one of the values
``key not in a,b``          none of them; images without ``key`` are kept
``key>=2019`` (``>``,       numeric range when the bound is a number (only
``<``, ``<=``)              numeric values match), otherwise text order
``2019<=year<=2021``        both bounds at once (``<`` or ``<=`` on each side)
==========================  =================================================

Values are typed the way the metadata importer types them: ``2019`` matches
the number 2019 and also the text ``"2019"``; ``true``/``false`` match JSON
booleans or that text; anything else is text. Quote a value to keep commas
or surrounding spaces: ``place in "Paris, France",Lyon``. A key holding a list
(``tags: ["beach", "dog"]``) matches when any element does. Keys may use
letters, digits, ``_`` and ``-``; ``a.b`` reaches into nested objects.

Expressions become parameterised SQL (``json_each`` over the ``meta``
column): user text is only ever bound as a parameter, never formatted into
the query. Keys are validated against the pattern above before they are
turned into a JSON path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matchkit.store.gallery import Gallery


class FilterError(ValueError):
    """An expression that cannot be parsed; the message is one line."""


_KEY = r"[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z_][A-Za-z0-9_\-]*)*"
_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE_RE = re.compile(
    rf"^\s*(?P<lo>\S+?)\s*(?P<op1><=|<)\s*(?P<key>{_KEY})\s*(?P<op2><=|<)\s*(?P<hi>\S+?)\s*$")
_IN_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>not\s+in|in)\s+(?P<values>.*?)\s*$",
                    re.IGNORECASE)
_CMP_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>!=|==|>=|<=|=|>|<)\s*(?P<value>.*?)\s*$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_NUM_RE = re.compile(rf"^{_NUM}$")


@dataclass(frozen=True)
class Condition:
    """One parsed expression: ``op`` is one of ``= != in not-in range``.

    ``values`` holds the values of ``=``/``in`` (and their negations) as the
    user wrote them, unquoted; they are typed when compiled (:func:`to_sql`).
    ``lo``/``hi`` are the bounds of a range (``None`` when open), numbers or text.
    """

    key: str
    op: str
    values: tuple = ()
    lo: float | str | None = None
    hi: float | str | None = None
    lo_inclusive: bool = True
    hi_inclusive: bool = True
    text: str = ""


def parse(expression: str) -> Condition:
    """Parse one ``--where`` expression (see the module docstring for the syntax)."""
    text = expression.strip()
    if not text:
        raise FilterError("empty --where expression")
    m = _RANGE_RE.match(text)
    if m:
        lo, hi = _bound(m["lo"], text), _bound(m["hi"], text)
        if type(lo) is not type(hi):
            raise FilterError(f"bounds of {text!r} must both be numbers or both be text")
        return Condition(m["key"], "range", lo=lo, hi=hi, lo_inclusive=m["op1"] == "<=",
                         hi_inclusive=m["op2"] == "<=", text=text)
    m = _IN_RE.match(text)
    if m:
        values = _split_list(m["values"], text)
        op = "in" if m["op"].lower() == "in" else "not-in"
        return Condition(m["key"], op, values=tuple(values), text=text)
    m = _CMP_RE.match(text)
    if m:
        key, op, raw = m["key"], m["op"], m["value"]
        if raw == "":
            raise FilterError(f"missing value in {text!r} (use \"\" for an empty text)")
        if raw[0] in "=<>!" and op in ("=", "==", "!="):
            raise FilterError(f"unexpected {raw[0]!r} after {op!r} in {text!r}: ranges are "
                              f"written {key}>=n or {key}<=n; quote a text value that "
                              f"starts with {raw[0]!r}")
        if op in ("=", "=="):
            return Condition(key, "=", values=(_unquote(raw, text),), text=text)
        if op == "!=":
            return Condition(key, "!=", values=(_unquote(raw, text),), text=text)
        bound = _bound(raw, text)
        if op in (">", ">="):
            return Condition(key, "range", lo=bound, lo_inclusive=op == ">=", text=text)
        return Condition(key, "range", hi=bound, hi_inclusive=op == "<=", text=text)
    raise FilterError(
        f"cannot parse --where {text!r}; expected key=value, key!=value, key in a,b, "
        "key>=n, key<n or lo<=key<=hi (keys: letters, digits, _ - and . for nesting)")


def _unquote(raw: str, text: str) -> str:
    if raw[:1] in ("'", '"'):
        if len(raw) < 2 or raw[-1] != raw[0]:
            raise FilterError(f"unbalanced quote in {text!r}")
        return raw[1:-1]
    return raw


def _split_list(raw: str, text: str) -> list[str]:
    """Comma-separated values; a value in quotes keeps its commas and spaces."""
    values, i, n = [], 0, len(raw)
    while True:
        while i < n and raw[i] == " ":
            i += 1
        if i < n and raw[i] in "\"'":
            end = raw.find(raw[i], i + 1)
            if end < 0:
                raise FilterError(f"unbalanced quote in {text!r}")
            values.append(raw[i + 1:end])
            i = end + 1
            while i < n and raw[i] == " ":
                i += 1
            if i < n and raw[i] != ",":
                raise FilterError(f"expected a comma after the quoted value in {text!r}")
        else:
            end = raw.find(",", i)
            end = n if end < 0 else end
            value = raw[i:end].strip()
            if value == "":
                raise FilterError(f"empty value in the list of {text!r}")
            values.append(value)
            i = end
        if i >= n:
            return values
        i += 1  # the comma
        if i >= n:
            raise FilterError(f"empty value in the list of {text!r}")


def _bound(raw: str, text: str) -> float | str:
    raw = _unquote(raw.strip(), text)
    if _NUM_RE.match(raw):
        value = float(raw)
        if math.isfinite(value):
            return int(raw) if _INT_RE.match(raw) and abs(int(raw)) < 2**63 else value
    if raw == "":
        raise FilterError(f"empty bound in {text!r}")
    return raw


def _json_path(key: str) -> str:
    # Keys match _KEY (no quotes or backslashes), so quoting each part is safe.
    return "$" + "".join(f'."{part}"' for part in key.split("."))


def _value_sql(raw: str) -> tuple[str, list]:
    """SQL matching one json_each row ``j`` against a value as the user typed it.

    Text always matches text equal to it; a number also matches that number
    (so ``2019`` finds 2019 and 2019.0, ``02139`` still finds the text
    "02139"); ``true``/``false`` also match JSON booleans.
    """
    if _NUM_RE.match(raw) and math.isfinite(float(raw)):
        number = int(raw) if _INT_RE.match(raw) and abs(int(raw)) < 2**63 else float(raw)
        return "(j.type='text' AND j.value=?) OR (j.type IN ('integer','real') AND j.value=?)", [
            raw, number]
    if raw.lower() in ("true", "false"):
        return "(j.type='text' AND j.value=?) OR j.type=?", [raw, raw.lower()]
    return "(j.type='text' AND j.value=?)", [raw]


def to_sql(cond: Condition) -> tuple[str, list]:
    """A boolean SQL expression over ``images.meta`` and its parameters."""
    path = _json_path(cond.key)
    if cond.op in ("=", "!=", "in", "not-in"):
        parts, params = [], []
        for v in cond.values:
            sql, p = _value_sql(v)
            parts.append(f"({sql})")
            params += p
        match = " OR ".join(parts)
        exists = f"EXISTS (SELECT 1 FROM json_each(images.meta, ?) AS j WHERE {match})"
        negate = cond.op in ("!=", "not-in")
        return ("NOT " if negate else "") + exists, [path, *params]
    # range
    numeric = isinstance(cond.lo if cond.lo is not None else cond.hi, (int, float))
    clauses = ["j.type IN ('integer','real')" if numeric else "j.type='text'"]
    params: list = [path]
    if cond.lo is not None:
        clauses.append("j.value >= ?" if cond.lo_inclusive else "j.value > ?")
        params.append(cond.lo)
    if cond.hi is not None:
        clauses.append("j.value <= ?" if cond.hi_inclusive else "j.value < ?")
        params.append(cond.hi)
    return ("EXISTS (SELECT 1 FROM json_each(images.meta, ?) AS j WHERE "
            + " AND ".join(clauses) + ")"), params


def compile_where(expressions: Iterable[str | Condition]) -> tuple[str, list]:
    """All expressions ANDed into one SQL ``WHERE`` body (``"1"`` when empty)."""
    parts, params = [], []
    for e in expressions:
        cond = e if isinstance(e, Condition) else parse(e)
        sql, p = to_sql(cond)
        parts.append(f"({sql})")
        params += p
    return (" AND ".join(parts) if parts else "1"), params


def allowed_ids(gallery: "Gallery", expressions: Iterable[str | Condition]) -> np.ndarray | None:
    """Sorted ids (int64) of the images that pass every expression.

    Returns ``None`` when there are no expressions, meaning "everything": a
    search then need not carry a list of all ids.
    """
    exprs = list(expressions)
    if not exprs:
        return None
    sql, params = compile_where(exprs)
    return gallery.ids_where(sql, params)
