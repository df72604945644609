"""The records an HTML review page draws: images, pairs, cards and page wording.

Kept apart from the rendering (:mod:`matchkit.report.html_render`) and the
writing (:mod:`matchkit.report.html`) so that callers which build cards (a
dedupe report, a gallery check, a labeling run) depend only on these plain
data classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ImageEntry:
    """One image as the page shows it."""

    path: str
    thumb: str | None = None      # URL relative to the HTML file
    width: int | None = None
    height: int | None = None
    file_size: int | None = None
    error: str | None = None      # why there is no thumbnail
    shown: dict[str, str] | None = None  # what the signals show (``DedupeReport.shown``)


@dataclass
class PairEntry:
    """A scored pair inside a card (``a`` and ``b`` are member paths)."""

    a: str
    b: str
    score: float | None = None
    kind: str = ""                # "exact" | "near" | a label, ...
    rule: str = ""                # what decided it ("phash", "local", ...)
    evidence: dict = field(default_factory=dict)
    picture: str | None = None    # URL of a keypoint picture, relative to the HTML file
    note: str = ""
    relation: str = ""            # how the images relate ("resized", "crop", ...; relation.KINDS)


@dataclass
class Card:
    """A group of images to review together, with the pairs that tie them."""

    members: list[str]
    keep: str | None = None
    pairs: list[PairEntry] = field(default_factory=list)
    title: str = ""
    #: Line under the title (default: size, weakest score, bytes in duplicates).
    meta: str = ""
    #: Why ``keep`` is the suggested keeper (shown under the title).
    why: str = ""
    #: Members that are never moved (in a reference folder), marked on the card.
    references: list[str] = field(default_factory=list)


@dataclass
class PageText:
    """The words that make a page about clusters, queries or answers.

    Dedupe's page is the default; a gallery check or a labeling run shows
    one card per query, whose first image (``keep``) gets ``badge``.
    """

    #: What a card is, plural ("1-50 of 80 clusters").
    noun: str = "clusters"
    #: Summary label whose value is the number of cards.
    total_label: str = "clusters"
    #: Badge on a card's ``keep`` image.
    badge: str = "keep"
    #: Text of the "most images first" sort.
    size_sort: str = "largest clusters first"
    #: Offer the "most bytes in duplicates" sort.
    bytes_sort: bool = True

