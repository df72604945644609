"""A self-contained HTML review page: one card per group of images.

The page is one HTML file plus a folder of thumbnails beside it
(``report.html`` + ``report_files/``): no server, no network, no CDN. The
data sits in the page as JSON (``<script type="application/json">``) and a
small inline script draws one page of cards at a time (pagination, lazy
thumbnails), so tens of thousands of clusters still open quickly.

The renderer knows nothing about dedupe: it draws :class:`Card` objects
(images, a suggested keeper, pair scores with their kind and evidence), so a
labeling run or a gallery check can show its results the same way.
:func:`write_html_report` turns a dedupe report into cards, thumbnails and
keypoint pictures and writes the page.

Safety: file names can contain anything, markup included. They only reach
the page as JSON (``<``, ``>`` and ``&`` escaped) and are put into the
document with ``textContent``/``setAttribute``, never as HTML; a Content
Security Policy allows only this page's own script (by nonce), so even an
injected ``onerror=`` attribute could not run.

The page is built in parts, each in its own module: the records it draws
(:mod:`~matchkit.report.html_cards`), the rendering into JSON and the filled-in
template, with the score histogram (:mod:`~matchkit.report.html_render`), and the
template itself (:mod:`~matchkit.report.html_template`). This module makes
a page's thumbnails and keypoint pictures and writes it; every name of
those parts can still be imported from here.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from matchkit.util.fs import atomic_write_bytes
from matchkit.config import Settings
from matchkit.report.evidence import draw_pairs
from matchkit.signals.hashing import PHASH_BITS
from matchkit.report.thumbs import DEFAULT_SIDE, make_thumbs
from matchkit.report.html_cards import (  # noqa: F401  (re-exported)
    Card, ImageEntry, PageText, PairEntry)
from matchkit.report.html_render import (  # noqa: F401  (re-exported)
    EAGER_CARDS, PER_PAGE, _clean_evidence, _clean_float, _common_folder, _file_url, _fmt,
    _json_for_script, histogram_svg, human_bytes, page_data, render_html, review_section)
from matchkit.report.html_template import _PAGE  # noqa: F401  (re-exported)

#: Local-feature pairs that get a keypoint picture, weakest first.
DEFAULT_EVIDENCE_LIMIT = 300


@dataclass
class HtmlReport:
    """What :func:`write_html_report` wrote."""

    path: str
    assets: str
    cards: int
    thumbnails: int
    thumbnail_errors: int
    pictures: int
    local_pairs: int
    bytes: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------- dedupe reports

def score_markers(stats: dict) -> list[tuple[float, str]]:
    """Where the decision line sits on the score axis, from a report's stats.

    A calibrated threshold (``stats["score_threshold"]``) when the run has
    one; otherwise the pHash limit expressed as a score (1 - bits/256).
    """
    if isinstance(stats.get("score_threshold"), (int, float)):
        return [(float(stats["score_threshold"]), "decision threshold")]
    d = stats.get("phash_max_distance")
    if isinstance(d, (int, float)):
        return [(1.0 - d / PHASH_BITS, f"pHash limit, {int(d)} bits")]
    return []


def report_cards(report: dict, images: dict[str, ImageEntry] | None = None,
                 pictures: dict[tuple[str, str], object] | None = None,
                 assets_url: str = "") -> list[Card]:
    """Cards for the clusters of a dedupe report dict (keeper first)."""
    cards = []
    for i, c in enumerate(report.get("clusters", [])):
        pairs = []
        for p in c.get("pairs", []):
            ev = p.get("evidence") or {}
            pic = (pictures or {}).get((p["a"], p["b"]))
            pairs.append(PairEntry(
                p["a"], p["b"], p.get("score"), p.get("kind", ""), ev.get("rule", ""), ev,
                picture=f"{assets_url}{pic.name}" if pic is not None and pic.name else None,
                note=(pic.error or "") if pic is not None else "", relation=p.get("relation", "")))
        cards.append(Card(list(c["members"]), c.get("keep"), pairs, title=f"Cluster {i + 1}",
                          why=str(c.get("keep_reason") or ""),
                          references=list(c.get("references") or [])))
    return cards


def _prune(folder: Path, keep: set[str]) -> None:
    """Remove thumbnails and pictures of earlier runs that this page no longer uses
    (only files with our own generated names)."""
    pattern = re.compile(r"^(?:[0-9a-f]{32}-\d+|pair-[0-9a-f]{24})\.jpg$")
    for f in folder.iterdir():
        if pattern.match(f.name) and f.name not in keep:
            try:
                f.unlink()
            except OSError:
                pass


def page_folder(path: str | os.PathLike) -> tuple[Path, Path, str]:
    """(HTML path, its ``<stem>_files`` folder, that folder's URL from the page),
    both folders created."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"HTML report path is a folder: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    assets = path.with_name(f"{path.stem}_files")
    assets.mkdir(exist_ok=True)
    return path, assets, quote(assets.name) + "/"


@dataclass
class PageAssets:
    """Thumbnails and keypoint pictures made for one page."""

    folder: Path
    url: str
    images: dict[str, ImageEntry]
    thumbs: dict
    pictures: dict

    def picture_of(self, a: str, b: str) -> tuple[str | None, str]:
        """(URL, note) of the keypoint picture of pair (a, b), if one was drawn."""
        pic = self.pictures.get((a, b))
        if pic is None:
            return None, ""
        return (f"{self.url}{pic.name}" if pic.name else None), pic.error or ""


def make_assets(folder: Path, url: str, paths: Sequence[str], pairs: Sequence[tuple], *,
                thumbnails: bool = True, thumb_side: int = DEFAULT_SIDE,
                settings: Settings = Settings(), workers: int | None = None,
                progress: bool = False) -> PageAssets:
    """Thumbnails of ``paths`` and keypoint pictures of ``pairs`` ((a, b, points)
    in drawing order) in ``folder``; every path gets an :class:`ImageEntry`."""
    bar = _bar(len(paths), progress, "thumbnails")
    thumbs = make_thumbs(paths, folder, side=thumb_side, max_pixels=settings.max_pixels,
                         workers=workers, progress=bar.update if bar else None) \
        if thumbnails else {}
    if bar:
        bar.close()
    images = {}
    for m in paths:
        t = thumbs.get(m)
        if t is None:
            try:
                size = os.stat(m).st_size
            except OSError:
                size = None
            images[m] = ImageEntry(m, file_size=size, error="thumbnails were not made"
                                   if size is not None else "cannot read file")
        else:
            images[m] = ImageEntry(m, f"{url}{t.name}" if t.name else None,
                                   t.width, t.height, t.file_size, t.error)
    bar = _bar(len(pairs), progress, "keypoint pictures")
    pictures = draw_pairs(pairs, folder, settings=settings, workers=workers,
                          progress=bar.update if bar else None) if pairs else {}
    if bar:
        bar.close()
    return PageAssets(folder, url, images, thumbs, pictures)


def write_page(path: Path, assets: PageAssets, page: str, cards: int,
               local_pairs: int) -> HtmlReport:
    """Write the page, drop this page's stale generated files, and say what was written."""
    atomic_write_bytes(path, page.encode("utf-8"))
    folder = assets.folder
    used = {Path(e.thumb).name for e in assets.images.values() if e.thumb}
    used |= {p.name for p in assets.pictures.values() if p.name}
    _prune(folder, used)
    total = path.stat().st_size + sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    thumbs, pictures = assets.thumbs.values(), assets.pictures.values()
    return HtmlReport(str(path), str(folder), cards, sum(1 for t in thumbs if t.name),
                      sum(1 for t in thumbs if t.error), sum(1 for p in pictures if p.name),
                      local_pairs, total)


def write_html_report(report, path: str | os.PathLike, *, title: str | None = None,
                      thumbnails: bool = True, thumb_side: int = DEFAULT_SIDE,
                      evidence_limit: int = DEFAULT_EVIDENCE_LIMIT,
                      settings: Settings = Settings(), workers: int | None = None,
                      per_page: int = PER_PAGE, progress: bool = False) -> HtmlReport:
    """Write ``path`` (HTML) and ``<stem>_files/`` (thumbnails, keypoint pictures).

    ``report`` is a :class:`~matchkit.report.dedupe_report.DedupeReport` or its JSON dict.
    Keypoint pictures are drawn for at most ``evidence_limit`` local-feature
    pairs, weakest score first (the ones most worth a look). Unreadable files
    get a card entry with the reason instead of a thumbnail.
    """
    data = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    path, folder, assets_url = page_folder(path)
    clusters = data.get("clusters", [])
    members = list(dict.fromkeys(m for c in clusters for m in c["members"]))
    local = [(p["score"], p["a"], p["b"], (p.get("evidence") or {}).get("points"))
             for c in clusters for p in c.get("pairs", [])
             if (p.get("evidence") or {}).get("rule") == "local"]
    local.sort(key=lambda x: (x[0], x[1], x[2]))
    # The weakest pairs are chosen; they are drawn grouped by keeper, which
    # then is decoded once for its whole cluster.
    todo = sorted(((a, b, pts) for _, a, b, pts in local[:max(0, evidence_limit)]),
                  key=lambda x: (x[0], x[1]))
    assets = make_assets(folder, assets_url, members, todo, thumbnails=thumbnails,
                         thumb_side=thumb_side, settings=settings, workers=workers,
                         progress=progress)
    images, pictures = assets.images, assets.pictures
    for m, shown in (data.get("shown") or {}).items():  # (e.g. the text OCR read)
        if m in images and isinstance(shown, dict):
            images[m].shown = {str(k): str(v) for k, v in shown.items()}

    cards = report_cards(data, images, pictures, assets_url)
    stats = data.get("stats", {})
    skipped = data.get("skipped", [])
    n_pairs = sum(len(c.get("pairs", [])) for c in clusters)
    kinds = Counter(p.get("kind", "") for c in clusters for p in c.get("pairs", []))
    freed = sum(images[m].file_size or 0 for c in clusters for m in c["members"]
                if m != c.get("keep"))
    summary = [("images", stats.get("images", len(members))), ("clusters", len(clusters)),
               ("duplicates", sum(len(c["members"]) - 1 for c in clusters)),
               ("exact pairs", kinds.get("exact", 0)), ("near pairs", kinds.get("near", 0)),
               ("local-feature pairs", len(local)), ("bytes in duplicates", human_bytes(freed)),
               ("skipped files", len(skipped))]
    if "seconds" in stats:
        summary.append(("dedupe seconds", float(stats["seconds"])))
    near = [p["score"] for c in clusters for p in c.get("pairs", []) if p.get("kind") != "exact"]
    rejected = stats.get("rejected_scores") or ()
    plots = [histogram_svg(near, rejected=rejected, markers=score_markers(stats),
                           title="Scores of matched near-duplicate pairs")]
    notes = [f"Histogram: {len(near)} near pairs; {kinds.get('exact', 0)} exact pairs (score 1) "
             "are left out. Scores are 1 - pHash bits/256, or 0.5 + inliers/100 for "
             "local-feature matches, so local matches can sit left of the pHash line."]
    if len(local) > len(todo):
        notes.append(f"Keypoint pictures were drawn for the {len(todo)} weakest of "
                     f"{len(local)} local-feature pairs (raise --evidence-limit for more).")
    page = render_html(cards, images, title=title or "matchkit dedupe report",
                       summary=summary, skipped=skipped, plots=plots, notes=notes,
                       per_page=per_page, review=review_section(data, path.name))
    return write_page(path, assets, page, len(cards), len(local))


def _bar(total: int, enabled: bool, what: str):
    from matchkit.util.progress import progress_bar

    return progress_bar(total, enabled, what)
