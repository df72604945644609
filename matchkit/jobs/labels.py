"""Labelled galleries: which class each gallery image shows.

Labels live in the gallery itself (the ``labels`` JSON column of each image),
so they persist with the features and need no second file to keep in sync.
Two sources are read:

* an ImageFolder tree, one subfolder per class (``root/<class>/**/*.jpg``,
  the torchvision convention); images directly under ``root`` have no class
  and are reported, not guessed;
* a table of ``path,label`` rows: CSV (a ``path,label`` header is optional)
  or JSON Lines (``{"path": ..., "label": ...}`` or ``"labels": [...]``).
  Relative paths are relative to the table's folder. A path listed with
  several labels gets all of them.

Importing is incremental: images already in the gallery are not decoded
again unless their file changed, and the labels of every listed image are
replaced by the imported ones (so re-importing a corrected folder moves an
image to its new class). Unreadable images and bad rows are reported with a
reason; the rest is imported.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from matchkit.store.gallery import Gallery, Skipped
from matchkit.io.load import IMAGE_EXTENSIONS, iter_image_files

#: The label an answer gets when nothing in the gallery matches well enough.
UNKNOWN = "unknown"


class LabelError(ValueError):
    """A label source that cannot be used at all (missing, empty, malformed)."""


@dataclass
class LabelImport:
    """What an import did."""

    #: Readable images that carry labels from this import.
    images: int = 0
    #: Distinct labels among them.
    classes: int = 0
    #: Gallery work: images decoded for the first time / again / not at all.
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    #: Images whose stored labels changed.
    relabelled: int = 0
    #: Gallery images under an imported folder whose file is gone (forgotten).
    removed: int = 0
    #: Unreadable images and unusable rows, with reasons.
    skipped: list[Skipped] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def folder_labels(root: str | os.PathLike) -> tuple[list[tuple[Path, str]], list[Skipped]]:
    """(image, class) for every image under ``root/<class>/``; images directly
    in ``root`` are returned as skipped."""
    root = Path(root)
    if not root.is_dir():
        raise LabelError(f"no such folder: {root}")
    pairs: list[tuple[Path, str]] = []
    skipped: list[Skipped] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            pairs += [(f, entry.name) for f in iter_image_files([entry])]
        elif entry.suffix.lower() in IMAGE_EXTENSIONS:
            skipped.append(Skipped(str(entry.resolve()),
                                   "not inside a class folder (expected ROOT/<class>/image)"))
    return pairs, skipped


def table_labels(table: str | os.PathLike, format: str | None = None
                 ) -> tuple[list[tuple[Path, str]], list[Skipped]]:
    """(image, label) rows of a CSV or JSON Lines file, and the unusable rows.

    ``format`` is "csv" or "jsonl"; by default the file's extension decides
    (.jsonl/.ndjson/.json: JSON Lines, anything else: CSV).
    """
    table = Path(table)
    if format not in (None, "csv", "jsonl"):
        raise ValueError(f"unknown table format {format!r}")
    if format is None:
        format = "jsonl" if table.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"
    try:
        text = table.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise LabelError(f"cannot read {table}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise LabelError(f"{table} is not UTF-8 text") from None
    here = table.resolve().parent
    pairs: list[tuple[Path, str]] = []
    skipped: list[Skipped] = []

    def add(n: int, path, labels) -> None:
        if not isinstance(path, str) or not path.strip():
            skipped.append(Skipped(f"{table}:{n}", "row has no path"))
            return
        labels = [labels] if isinstance(labels, str) else labels
        if (not isinstance(labels, list) or not labels
                or not all(isinstance(v, str) and v.strip() for v in labels)):
            skipped.append(Skipped(f"{table}:{n}", "row has no label"))
            return
        p = Path(path.strip()).expanduser()
        pairs.extend((p if p.is_absolute() else here / p, v.strip()) for v in labels)

    if format == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                skipped.append(Skipped(f"{table}:{n}", f"not JSON: {e.msg}"))
                continue
            if not isinstance(row, dict):
                skipped.append(Skipped(f"{table}:{n}", "not a JSON object"))
                continue
            add(n, row.get("path"), row.get("labels", row.get("label")))
    else:
        rows = list(csv.reader(text.splitlines()))
        cols = (0, 1)
        first = 1
        if rows and {c.strip().lower() for c in rows[0]} >= {"path", "label"}:
            head = [c.strip().lower() for c in rows[0]]
            cols, first = (head.index("path"), head.index("label")), 2
            rows = rows[1:]
        for n, row in enumerate(rows, first):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) <= max(cols):
                skipped.append(Skipped(f"{table}:{n}", "row needs a path and a label"))
                continue
            add(n, row[cols[0]], row[cols[1]])
    if not pairs and not skipped:
        raise LabelError(f"{table} has no rows")
    return pairs, skipped


def import_labels(gallery: Gallery, pairs: list[tuple[str | os.PathLike, str]],
                  skipped: list[Skipped] | None = None, progress=None) -> LabelImport:
    """Add the images to ``gallery`` (incrementally) and set their labels."""
    wanted: dict[str, list[str]] = {}
    for path, label in pairs:
        key = str(Path(path).resolve())
        values = wanted.setdefault(key, [])
        if label not in values:
            values.append(label)
    report = gallery.add(list(wanted), progress=progress)
    gallery.save()
    labels = {}
    by_path = {img.path: i for i, img in gallery.images(report.ids).items()}
    for path, values in wanted.items():
        if path in by_path:
            labels[by_path[path]] = values
    out = LabelImport(images=len(labels), added=report.added, updated=report.updated,
                      unchanged=report.unchanged, skipped=list(skipped or []) + report.skipped)
    out.classes = len({v for values in labels.values() for v in values})
    out.relabelled = gallery.set_labels(labels)
    return out


def import_folder(gallery: Gallery, root: str | os.PathLike, progress=None, *,
                  prune: bool = True) -> LabelImport:
    """Import an ImageFolder tree (one subfolder per class).

    The tree is the truth about itself: with ``prune``, gallery images that
    lie under ``root`` but whose files are gone are forgotten, so a deleted
    example stops voting (the gallery's other images are not touched).
    """
    pairs, skipped = folder_labels(root)
    if not pairs:
        raise LabelError(f"no images in class subfolders of {root}")
    report = import_labels(gallery, pairs, skipped, progress)
    if prune:
        prefix = str(Path(root).resolve()) + os.sep
        gone = [i for i, img in gallery.images().items()
                if img.path.startswith(prefix) and not os.path.exists(img.path)]
        if gone:
            report.removed = gallery.remove(gone)
            gallery.save()
    return report


def import_table(gallery: Gallery, table: str | os.PathLike, format: str | None = None,
                 progress=None) -> LabelImport:
    """Import a CSV or JSON Lines table of ``path,label`` rows."""
    pairs, skipped = table_labels(table, format)
    return import_labels(gallery, pairs, skipped, progress)


def class_counts(gallery: Gallery) -> dict[str, int]:
    """Number of gallery images per label."""
    counts: Counter = Counter()
    for values in gallery.labelled().values():
        counts.update(set(values))
    return dict(sorted(counts.items()))
