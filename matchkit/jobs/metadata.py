"""Import image metadata from CSV or JSON Lines into a gallery.

Each row names an image by its ``path`` and carries any other fields (a
photographer, a year, tags...). The fields are merged into the image's
``meta`` JSON, where ``--where`` filters (``matchkit/jobs/filters.py``) can select
on them. A row that matches no gallery image is reported, never dropped
silently, and never stops the import.

Formats, chosen by the file name ending:

- ``.csv`` (or ``.tsv``): a header row with a ``path`` column. Cells are
  typed so numeric filters work: ``2019`` becomes an integer, ``2.5`` a float;
  everything else stays text, including numbers with leading zeros
  (``02139`` is a postcode, not 2139). Empty cells are left out.
- ``.jsonl`` (or ``.ndjson``): one JSON object per line with a ``"path"`` key;
  values keep their JSON types (lists, booleans, nested objects).

Paths are matched in this order: an absolute path as it is; a relative path
against the metadata file's folder, then against each indexed folder
(``roots``); finally, if still unmatched, against the end of the gallery's
paths (``sub/a.jpg`` finds ``/any/where/sub/a.jpg``) when exactly one gallery
image ends that way.

:func:`add_exif_dates` records when a photo was taken, from its EXIF
``DateTimeOriginal`` (else ``DateTimeDigitized``, else ``DateTime``), as
``taken`` (ISO text), ``year`` and ``month``. File dates are never used: a
copy's modification time says when it was copied, not when it was taken.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterable
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:  # pragma: no cover
    from matchkit.store.gallery import Gallery

#: Name endings read as CSV (with their delimiter) and as JSON Lines.
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}

_INT_RE = re.compile(r"^[+-]?(?:0|[1-9]\d*)$")
_FLOAT_RE = re.compile(r"^[+-]?(?:(?:0|[1-9]\d*)(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")


class MetadataError(ValueError):
    """A metadata file that cannot be used at all (missing, wrong format, no path column)."""


@dataclass
class MetaRow:
    """One row of a metadata file: the image path as written and its fields."""

    path: str
    fields: dict
    line: int


@dataclass
class RowProblem:
    """A row that was not applied, and why."""

    line: int
    path: str | None
    reason: str


@dataclass
class MetadataReport:
    """What :func:`import_metadata` did."""

    source: str
    rows: int = 0
    matched: int = 0
    images: int = 0
    unmatched: list[RowProblem] = field(default_factory=list)
    invalid: list[RowProblem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"source": self.source, "rows": self.rows, "matched": self.matched,
                "images": self.images,
                "unmatched": [vars(p) for p in self.unmatched],
                "invalid": [vars(p) for p in self.invalid]}


def parse_cell(text: str) -> int | float | str:
    """A CSV cell as int, float or text (leading zeros and nan/inf stay text)."""
    s = text.strip()
    if _INT_RE.match(s):
        return int(s)
    if _FLOAT_RE.match(s):
        value = float(s)
        if math.isfinite(value):
            return value
    return s


def read_metadata(path: str | os.PathLike) -> tuple[list[MetaRow], list[RowProblem]]:
    """Rows of a CSV/TSV or JSON Lines file, plus the rows that could not be read.

    Raises :class:`MetadataError` only when the file as a whole is unusable.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES and suffix not in JSONL_SUFFIXES:
        raise MetadataError(f"metadata file {path} must end in .csv, .tsv, .jsonl or .ndjson")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MetadataError(f"no such metadata file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MetadataError(f"cannot read metadata file {path}: {e}") from None
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, text, CSV_SUFFIXES[suffix])
    return _read_jsonl(text)


def _read_csv(path: Path, text: str, delimiter: str) -> tuple[list[MetaRow], list[RowProblem]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise MetadataError(f"metadata file {path} is empty") from None
    except csv.Error as e:
        raise MetadataError(f"cannot read the header of {path}: {e}") from None
    names = [h.strip() for h in header]
    lowered = [n.lower() for n in names]
    if "path" not in lowered:
        raise MetadataError(f"metadata file {path} has no 'path' column (columns: "
                            f"{', '.join(names) or 'none'})")
    path_col = lowered.index("path")
    rows, problems = [], []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            problems.append(RowProblem(reader.line_num, None, f"unreadable CSV row: {e}"))
            continue
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(names):
            problems.append(RowProblem(line, cells[path_col].strip() if path_col < len(cells)
                                       else None,
                                       f"{len(cells)} cells but {len(names)} columns"))
            continue
        image = cells[path_col].strip() if path_col < len(cells) else ""
        if not image:
            problems.append(RowProblem(line, None, "empty path"))
            continue
        fields = {name: parse_cell(cell) for i, (name, cell) in enumerate(zip(names, cells))
                  if i != path_col and name and cell.strip() != ""}
        rows.append(MetaRow(image, fields, line))
    return rows, problems


def _read_jsonl(text: str) -> tuple[list[MetaRow], list[RowProblem]]:
    rows, problems = [], []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(RowProblem(line_no, None, f"not valid JSON: {e.msg}"))
            continue
        if not isinstance(obj, dict):
            problems.append(RowProblem(line_no, None, "not a JSON object"))
            continue
        image = obj.get("path")
        if not isinstance(image, str) or not image.strip():
            problems.append(RowProblem(line_no, None, "no \"path\" string"))
            continue
        rows.append(MetaRow(image.strip(), {k: v for k, v in obj.items() if k != "path"},
                            line_no))
    return rows, problems


class _PathMatcher:
    """Finds the gallery image a metadata path means (see the module docstring)."""

    def __init__(self, gallery: "Gallery", base: Path, roots: Iterable[str | os.PathLike]):
        self.gallery = gallery
        self.bases = [base, *(Path(r) for r in roots)]
        self._by_name: dict[str, list[tuple[int, str]]] | None = None

    def match(self, raw: str) -> tuple[int | None, str]:
        p = Path(raw).expanduser()
        candidates = [p] if p.is_absolute() else [b / p for b in self.bases]
        for c in candidates:
            rec = self.gallery.find(c)
            if rec is not None:
                return rec.id, ""
        if p.is_absolute():
            return None, "no gallery image has this path"
        return self._by_suffix(p)

    def _by_suffix(self, p: Path) -> tuple[int | None, str]:
        if self._by_name is None:
            self._by_name = {}
            for image_id, path in self.gallery.paths().items():
                self._by_name.setdefault(Path(path).name, []).append((image_id, path))
        parts = [x for x in p.parts if x not in ("", ".")]
        if not parts or ".." in parts:
            return None, "no gallery image has this path"
        tail = os.sep + os.path.join(*parts)
        hits = [i for i, path in self._by_name.get(parts[-1], []) if path.endswith(tail)]
        if len(hits) == 1:
            return hits[0], ""
        if hits:
            return None, f"ambiguous: {len(hits)} gallery images end with {tail[1:]}"
        return None, "no gallery image has this path"


def import_metadata(gallery: "Gallery", path: str | os.PathLike, *,
                    roots: Iterable[str | os.PathLike] = (), replace: bool = False
                    ) -> MetadataReport:
    """Read ``path`` and merge each row's fields into its image's ``meta``.

    ``roots`` are the folders the images were indexed from (relative paths are
    also tried against them). Several rows for one image are merged in file
    order. ``replace=True`` replaces an image's whole ``meta`` instead of
    merging. All matched rows are written in one transaction.
    """
    path = Path(path)
    rows, invalid = read_metadata(path)
    report = MetadataReport(str(path), rows=len(rows) + len(invalid), invalid=invalid)
    matcher = _PathMatcher(gallery, path.resolve().parent, roots)
    updates: dict[int, dict] = {}
    for row in rows:
        image_id, reason = matcher.match(row.path)
        if image_id is None:
            report.unmatched.append(RowProblem(row.line, row.path, reason))
            continue
        updates.setdefault(image_id, {}).update(row.fields)
        report.matched += 1
    report.images = gallery.update_meta(updates, replace=replace)
    return report


#: EXIF tags with a capture time, most specific first: DateTimeOriginal and
#: DateTimeDigitized (in the Exif sub-IFD), then DateTime (IFD0; often the
#: time of the last edit).
_EXIF_IFD = 0x8769
_EXIF_DATE_TAGS = ((_EXIF_IFD, 36867), (_EXIF_IFD, 36868), (None, 306))
_EXIF_DATE_RE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?")
#: Keys written by add_exif_dates; an image that has any of them is left alone.
DATE_KEYS = ("taken", "year", "month")


def parse_exif_datetime(raw) -> datetime | None:
    """``"2019:05:03 12:34:56"`` as a datetime; None for blanks, zeros and nonsense."""
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str):
        return None
    m = _EXIF_DATE_RE.match(raw.strip("\x00 "))
    if not m:
        return None
    y, mo, d, h, mi, sec = (int(v) if v else 0 for v in m.groups())
    if y < 1800:
        return None
    try:
        return datetime(y, mo, d, h, mi, sec)
    except ValueError:
        return None


def exif_datetime(path: str | os.PathLike) -> datetime | None:
    """When the photo at ``path`` was taken according to its EXIF, if it says.

    Reads only the file's header (no pixels are decoded); any problem means
    "unknown", never an error.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                exif = img.getexif()
                sub = exif.get_ifd(_EXIF_IFD) if _EXIF_IFD in exif else {}
                for ifd, tag in _EXIF_DATE_TAGS:
                    found = parse_exif_datetime((sub if ifd else exif).get(tag))
                    if found is not None:
                        return found
    except Exception:  # noqa: BLE001 - unreadable EXIF is simply no date
        return None
    return None


def add_exif_dates(gallery: "Gallery", ids: Iterable[int]) -> int:
    """Set ``taken``/``year``/``month`` from EXIF on images that have none of
    these keys yet (user metadata always wins); returns how many were dated."""
    updates: dict[int, dict] = {}
    for image_id, rec in gallery.images(list(ids)).items():
        if any(k in rec.meta for k in DATE_KEYS):
            continue
        when = exif_datetime(rec.path)
        if when is not None:
            updates[image_id] = {"taken": when.isoformat(), "year": when.year,
                                 "month": when.month}
    return gallery.update_meta(updates)
