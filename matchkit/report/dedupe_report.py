"""Results of a dedupe run as records, JSON, CSV and a short summary.

The JSON shape is a contract with scripts and later tools (the HTML report,
``undo``): ``{"clusters": [{"keep", "members", "pairs": [{"a", "b", "score",
"kind", "relation"}], "member_relations": [{"a", "b", "relation", "via"}],
"stamps": {path: {"size", "mtime_ns", "sha256"}}}], "skipped": [{"path",
"reason"}], "roots": [scanned paths], "stats": {...}}``. New keys may be
added; these never change meaning.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass

from matchkit.util.fs import atomic_write_bytes
from matchkit.util.fspath import csv_bytes, display, json_text


_PLAIN = (str, int, float, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def plain(obj):
    """What ``dataclasses.asdict`` makes of a report record (dataclasses as
    dicts, containers copied, other values deep-copied), about three times
    faster: ``asdict`` looks up each class's fields and deep-copies every
    string and number one by one, which was half a second of writing the
    report of 2,000 images."""
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return type(obj)((plain(k), plain(v)) for k, v in obj.items())
    cls = type(obj)
    names = _FIELD_NAMES.get(cls)
    if names is None and is_dataclass(obj) and not isinstance(obj, type):
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(obj))
    if names is not None:
        return {name: plain(getattr(obj, name)) for name in names}
    if isinstance(obj, tuple):
        items = [plain(v) for v in obj]
        return cls(*items) if hasattr(obj, "_fields") else cls(items)
    return copy.deepcopy(obj)


@dataclass
class PairResult:
    a: str
    b: str
    score: float
    kind: str  # "exact" | "near"
    evidence: dict = field(default_factory=dict)
    #: How the two images relate (``relation.KINDS``): "exact", "same-pixels",
    #: "resized", "crop", "edited", "recapture", "variant" or "same-scene".
    relation: str = ""


@dataclass
class MemberRelation:
    """How two members of a cluster relate when neither is the keeper (the
    keeper's pairs are in ``ClusterResult.pairs``). ``via`` says how it is
    known: ``"verified"`` (their own pair was verified and accepted),
    ``"exact"`` (same bytes or same pixels) or ``"keeper"`` (each matched the
    keeper; the looser of their two relations, see ``relation.compose``)."""

    a: str
    b: str
    relation: str
    via: str


@dataclass
class ClusterResult:
    keep: str
    members: list[str]  # keeper first
    pairs: list[PairResult]
    #: Why ``keep`` was chosen, in a few words ("highest JPEG quality (90 vs 30)").
    keep_reason: str = ""
    #: Members in a reference folder (``--keep-in``): never moved.
    references: list[str] = field(default_factory=list)
    #: Each member's file as it was read: {path: {"size", "mtime_ns", "sha256"}}, so
    #: a later ``matchkit apply`` can refuse files that changed since (``review``).
    stamps: dict[str, dict] = field(default_factory=dict)
    #: Members that are not the keeper, pairwise, with their relation, for
    #: clusters of up to ``MEMBER_RELATIONS_UP_TO`` members (empty above: the
    #: list grows with the square of the size).
    member_relations: list[MemberRelation] = field(default_factory=list)


#: Largest cluster whose member pairs get ``ClusterResult.member_relations``.
MEMBER_RELATIONS_UP_TO = 16


@dataclass
class SkippedFile:
    path: str
    reason: str


#: Skipped files a summary names one by one before it only counts the rest.
SKIPPED_SHOWN = 5


def skipped_lines(skipped: list[tuple[str, str]], shown: int = SKIPPED_SHOWN) -> list[str]:
    """``skipped: PATH: REASON`` for the first ``shown`` files, then how many more."""
    lines = [f"skipped: {display(path)}: {display(reason)}" for path, reason in skipped[:shown]]
    if len(skipped) > shown:
        lines.append(f"... and {len(skipped) - shown} more skipped files "
                     "(--json lists them all with their reasons)")
    return lines


@dataclass
class DedupeReport:
    clusters: list[ClusterResult] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    #: Images that show one flat colour (e.g. fully transparent): read, but
    #: matched only as exact copies (same bytes, or same size and pixels).
    blank: list[str] = field(default_factory=list)
    #: The scanned paths (absolute): where moves keep relative paths from.
    roots: list[str] = field(default_factory=list)
    #: What the configured signals show of each cluster member (path ->
    #: {signal: text}, e.g. the text OCR read); empty without signals, and
    #: then left out of the JSON.
    shown: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "clusters": [plain(c) for c in self.clusters],
            "skipped": [plain(s) for s in self.skipped],
            "blank": list(self.blank),
            "roots": list(self.roots),
            "stats": dict(self.stats),
            **({"shown": dict(self.shown)} if self.shown else {}),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json_text(self.to_dict(), indent=indent)

    def to_csv(self) -> str:
        """One row per cluster member; ``score``/``kind`` describe its match to the
        keeper, ``keep_reason`` (keeper row) why it was chosen, ``reference``
        whether the file is in a reference folder."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["cluster", "path", "keep", "score", "kind", "relation", "keep_reason",
                    "reference"])
        for i, c in enumerate(self.clusters):
            to_keeper = {}
            for p in c.pairs:
                if p.a == c.keep:
                    to_keeper[p.b] = p
                elif p.b == c.keep:
                    to_keeper[p.a] = p
            refs = set(c.references)
            for m in c.members:
                p = to_keeper.get(m)
                w.writerow([i, m, int(m == c.keep),
                            "" if p is None else f"{p.score:.4f}", "" if p is None else p.kind,
                            "" if p is None else p.relation,
                            c.keep_reason if m == c.keep else "", int(m in refs)])
        return buf.getvalue()

    def summary(self, json_output: str | None = None) -> str:
        """A few lines for people. Skipped files are listed with their reasons
        (the first few, then a count) unless the same run writes the JSON,
        which lists them all: ``json_output`` is its file ('-': stdout)."""
        s = self.stats
        dupes = sum(len(c.members) - 1 for c in self.clusters)
        kinds = {"exact": 0, "near": 0}
        for c in self.clusters:
            for p in c.pairs:
                kinds[p.kind] = kinds.get(p.kind, 0) + 1
        lines = [
            f"{s.get('images', 0)} images read, {len(self.skipped)} skipped"
            f" ({s.get('seconds', 0):.1f} s)",
            f"{len(self.clusters)} clusters, {dupes} duplicates to review"
            f" ({kinds['exact']} exact pairs, {kinds['near']} near pairs)",
        ]
        if "pairs_reused" in s:  # an incremental (gallery) run
            lines.append(f"{s['images_searched']} images matched again, "
                         f"{s['pairs_verified']} pairs verified, {s['pairs_reused']} reused "
                         "from the gallery" + (" (--rematch)" if s.get("rematch") else ""))
        if self.blank:
            lines.append(f"{len(self.blank)} blank images (one flat colour): matched only as "
                         "exact copies; listed under 'blank' in the JSON output")
        if self.skipped and json_output:
            where = "the JSON on stdout" if json_output == "-" else display(json_output)
            lines.append(f"skipped files are listed with their reasons under 'skipped' in {where}")
        elif self.skipped:
            lines += skipped_lines([(f.path, f.reason) for f in self.skipped])
        return "\n".join(lines)

    def write_json(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, self.to_json().encode("utf-8"))

    def write_csv(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, csv_bytes(self.to_csv()))
