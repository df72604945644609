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
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from matchkit.util.fs import atomic_write_bytes
from matchkit.config import Settings
from matchkit.report.evidence import draw_pairs
from matchkit.util.fspath import display, json_text
from matchkit.signals.hashing import PHASH_BITS
from matchkit.report.thumbs import DEFAULT_SIDE, make_thumbs

#: Cards per page (the reader can change it on the page).
PER_PAGE = 50
#: Cards per page whose thumbnails load at once; the rest load when scrolled to.
EAGER_CARDS = 8
#: Local-feature pairs that get a keypoint picture, weakest first.
DEFAULT_EVIDENCE_LIMIT = 300


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


# ---------------------------------------------------------------- plots

def histogram_svg(scores: Sequence[float], *, rejected: Sequence[float] = (),
                  markers: Iterable[tuple[float, str]] = (), bins: int = 40,
                  lo: float | None = None, hi: float = 1.0, width: int = 640,
                  height: int = 200, title: str = "", log: bool = True,
                  xlabel: str = "pair score",
                  legend: tuple[str, str] = ("matched pairs", "rejected candidates")) -> str:
    """An inline SVG histogram of scores, with vertical lines at ``markers``.

    ``scores`` are accepted pairs (blue); ``rejected`` (optional) are
    candidate pairs that did not match (grey), drawn behind. Bar heights are
    logarithmic by default: the few doubtful pairs near the line are what a
    reviewer looks for, and thousands of sure ones would flatten them. Plain
    SVG so the page needs no plotting library and no network. ``xlabel`` and
    ``legend`` name the axis and the two series for other kinds of scores.
    """
    scores = [float(s) for s in scores if s is not None and math.isfinite(s)]
    rejected = [float(s) for s in rejected if s is not None and math.isfinite(s)]
    markers = [(float(v), str(t)) for v, t in markers if v is not None and math.isfinite(v)]
    values = scores + rejected + [v for v, _ in markers]
    if lo is None:
        lo = min(values) if values else 0.0
        lo = max(0.0, math.floor(lo * 20) / 20 - 0.05)
    hi = max(hi, lo + 1e-6)
    ml, mr, mt, mb = 44, 12, 24, 34
    pw, ph = width - ml - mr, height - mt - mb

    def counts(vals):
        out = [0] * bins
        for v in vals:
            i = int((min(max(v, lo), hi) - lo) / (hi - lo) * bins)
            out[min(i, bins - 1)] += 1
        return out

    cs, cr = counts(scores), counts(rejected)
    top = max(cs + cr + [1])

    def bar_height(c: int) -> float:
        return ph * (math.log1p(c) / math.log1p(top) if log else c / top)
    bw = pw / bins
    e = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="hist" role="img" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
             f'<title>{e(title or "score histogram")}</title>',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for series, colour in ((cr, "#b8b8b8"), (cs, "#3b73c8")):
        for i, c in enumerate(series):
            if not c:
                continue
            h = bar_height(c)
            a, b = lo + i * (hi - lo) / bins, lo + (i + 1) * (hi - lo) / bins
            parts.append(f'<rect x="{ml + i * bw + 0.5:.1f}" y="{mt + ph - h:.1f}" '
                         f'width="{max(bw - 1, 0.5):.1f}" height="{h:.1f}" fill="{colour}">'
                         f'<title>{a:.3f}-{b:.3f}: {c}</title></rect>')
    # Axes: ticks every 0.05 or 0.1 depending on the range.
    step = 0.05 if hi - lo <= 0.5 else 0.1
    t = math.ceil(lo / step - 1e-9) * step
    while t <= hi + 1e-9:
        x = ml + (t - lo) / (hi - lo) * pw
        parts.append(f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 4}" '
                     f'stroke="#555"/><text x="{x:.1f}" y="{mt + ph + 16}" font-size="10" '
                     f'text-anchor="middle" fill="#333">{t:.2f}</text>')
        t += step
    ticks = [v for v in (1, 10, 100, 1000, 10000, 100000)
             if log and bar_height(top) - bar_height(v) > 12] + [top]
    for v in ticks:
        y = mt + ph - bar_height(v)
        parts.append(f'<line x1="{ml - 3}" y1="{y:.1f}" x2="{ml}" y2="{y:.1f}" stroke="#555"/>'
                     f'<text x="{ml - 5}" y="{y + 3:.1f}" font-size="10" text-anchor="end" '
                     f'fill="#333">{v}</text>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 4}" font-size="11" '
                 f'text-anchor="middle" fill="#333">{e(xlabel)}'
                 f'{" (bar height: count, log scale)" if log else " (bar height: count)"}</text>')
    for n, (v, label) in enumerate(markers):
        x = ml + (min(max(v, lo), hi) - lo) / (hi - lo) * pw
        parts.append(f'<line class="marker" x1="{x:.1f}" y1="{mt - 4}" x2="{x:.1f}" '
                     f'y2="{mt + ph}" stroke="#d0312d" stroke-width="2" stroke-dasharray="5 3"/>'
                     f'<text x="{x + 4:.1f}" y="{mt + 8 + 12 * n}" font-size="11" '
                     f'fill="#d0312d">{e(label)} ({v:.3f})</text>')
    keys = [("#3b73c8", f"{legend[0]} ({len(scores)})")]
    if rejected:
        keys.append(("#b8b8b8", f"{legend[1]} ({len(rejected)})"))
    x = ml
    for colour, text in keys:
        parts.append(f'<rect x="{x}" y="6" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="15" font-size="11" fill="#333">{e(text)}</text>')
        x += 20 + 7 * len(text)
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- rendering

def _json_for_script(data) -> str:
    """JSON that cannot end its ``<script>`` element or open markup."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _file_url(path: str) -> str | None:
    try:
        return Path(os.path.abspath(path)).as_uri()
    except (ValueError, UnicodeError):
        return None


def _common_folder(paths: Iterable[str]) -> str:
    dirs = {os.path.dirname(os.path.abspath(p)) for p in paths}
    if not dirs:
        return ""
    try:
        return os.path.commonpath(sorted(dirs))
    except ValueError:  # mixed drives (Windows)
        return ""


def _clean_float(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _clean_evidence(ev: dict) -> dict:
    """Evidence without bulky or non-JSON parts (keypoint lists stay out of the page)."""
    out = {}
    for k, v in (ev or {}).items():
        if k == "points":
            continue
        if k == "signals" and isinstance(v, dict):  # extra signals: each says it in words
            from matchkit.signals import describe
            v = describe(v)
        if isinstance(v, float):
            v = _clean_float(v)
        out[str(k)] = v
    return out


def page_data(cards: Sequence[Card], images: dict[str, ImageEntry], *, title: str,
              skipped: Sequence[dict] = (), per_page: int = PER_PAGE,
              text: PageText = PageText(), review: dict | None = None) -> dict:
    """The JSON the page script reads: images by index, cards refer to them.

    With ``review`` (see :func:`review_section`) the page lets the reader
    change keepers, untick members and save the result as a review file
    for ``matchkit apply``.
    """
    order: dict[str, int] = {}
    for c in cards:
        for m in c.members:
            order.setdefault(m, len(order))
        for p in c.pairs:
            order.setdefault(p.a, len(order))
            order.setdefault(p.b, len(order))
    root = _common_folder(order)
    imgs = []
    for path in order:
        e = images.get(path) or ImageEntry(path)
        folder = os.path.dirname(os.path.abspath(path))
        rel = os.path.relpath(folder, root) if root else folder
        # Names are shown with undecodable bytes as \xNN; the link keeps the bytes.
        imgs.append({"p": display(path), "n": display(os.path.basename(path)),
                     "d": "" if rel == "." else display(rel),
                     "u": _file_url(path), "t": e.thumb, "w": e.width, "h": e.height,
                     "s": e.file_size, "e": e.error,
                     **({"x": dict(e.shown)} if e.shown else {})})
    out_cards = []
    for c in cards:
        pairs = [{"a": order[p.a], "b": order[p.b], "s": _clean_float(p.score), "k": p.kind,
                  "r": p.rule, "ev": _clean_evidence(p.evidence), "pic": p.picture,
                  "note": p.note, "rel": p.relation} for p in c.pairs]
        out_cards.append({"m": [order[m] for m in c.members],
                          "k": order[c.keep] if c.keep is not None else None,
                          "t": display(c.title) if isinstance(c.title, str) else c.title,
                          "pairs": pairs})
        if c.meta:
            out_cards[-1]["meta"] = c.meta
        if c.why:
            out_cards[-1]["why"] = c.why
        if c.references:
            out_cards[-1]["refs"] = [order[r] for r in c.references if r in order]
    out = {"v": 1, "title": title, "root": display(root), "per_page": per_page,
           "eager": EAGER_CARDS, "noun": text.noun, "badge": text.badge,
           "bytes": text.bytes_sort, "images": imgs, "cards": out_cards,
           "skipped": [{"path": display(str(s.get("path", ""))),
                        "reason": display(str(s.get("reason", "")))}
                       for s in skipped]}
    if review is not None:
        stamps = review.get("stamps") or {}
        rv_stamps = [None if p not in stamps else
                     {**stamps[p], "mtime_ns": str(stamps[p].get("mtime_ns"))} for p in order]
        out["review"] = {
            "report": {k: v for k, v in review.items() if k != "stamps"},
            # Names this page's decisions in the browser's storage: the same
            # files (as read) in the same clusters give the same key.
            "key": hashlib.sha256(json_text([title, list(order), rv_stamps, [
                c["k"] for c in out_cards]]).encode("utf-8")).hexdigest()[:32],
            # Exact paths (the names shown above may have \xNN for odd bytes) and
            # each file as read; mtime_ns as text, beyond JavaScript's exact integers.
            "paths": list(order),
            "stamps": rv_stamps}
    return out


def review_section(report: dict, page: str) -> dict:
    """What a dedupe page needs to save a review file (``matchkit.report.review``):
    the report's scanned folders and stats, and every member's recorded stamp."""
    stats = report.get("stats") or {}
    keys = ("files", "images", "clusters", "duplicates", "level", "profile", "model")
    return {"roots": list(report.get("roots") or []), "page": page,
            "stats": {k: stats[k] for k in keys if k in stats},
            "stamps": {p: st for c in report.get("clusters", [])
                       for p, st in (c.get("stamps") or {}).items()}}


def render_html(cards: Sequence[Card], images: dict[str, ImageEntry], *,
                title: str = "matchkit report", summary: Sequence[tuple[str, object]] = (),
                skipped: Sequence[dict] = (), plots: Sequence[str] = (),
                notes: Sequence[str] = (), per_page: int = PER_PAGE,
                text: PageText = PageText(), review: dict | None = None) -> str:
    """The complete page as a string.

    ``summary`` are (label, value) counts shown at the top (the one labelled
    ``text.total_label`` is the number of cards); ``plots`` are trusted SVG
    strings (see :func:`histogram_svg`); ``notes`` are plain text.
    """
    e = html.escape
    nonce = secrets.token_urlsafe(16)
    data = page_data(cards, images, title=title, skipped=skipped, per_page=per_page, text=text,
                     review=review)
    total = text.total_label
    summary_html = "".join(
        f'<div class="stat"><span class="v"{" id=mk-total" if label == total else ""}>'
        f"{e(_fmt(value))}</span><span class=\"l\">{e(str(label))}</span></div>"
        for label, value in summary)
    notes_html = "".join(f"<p class=note>{e(n)}</p>" for n in notes)
    plots_html = "".join(f'<figure class="plot">{svg}</figure>' for svg in plots)
    csp = ("default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
           f"script-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'")
    values = {"CSP": e(csp, quote=False), "TITLE": e(title), "ROOT": e(data["root"]),
              "SUMMARY": summary_html, "NOTES": notes_html, "PLOTS": plots_html,
              "NONCE": nonce, "DATA": _json_for_script(data), "SIZESORT": e(text.size_sort)}
    # One pass: text that came in with a value is never substituted again.
    return re.sub(r"%([A-Z]+)%", lambda m: values.get(m.group(1), m.group(0)), _PAGE)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.2f}"
    return str(v)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


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


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%CSP%">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
:root{--fg:#1d1d1f;--mut:#666;--line:#ddd;--acc:#3b73c8;--keep:#1f8a3b;--warn:#b3261e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);background:#f4f5f7}
header.top{background:#fff;border-bottom:1px solid var(--line);padding:12px 20px}
h1{font-size:20px;margin:0 0 4px}
.root{color:var(--mut);font-size:12px;word-break:break-all}
.stats{display:flex;flex-wrap:wrap;gap:8px;margin:10px 0}
.stat{background:#f7f8fa;border:1px solid var(--line);border-radius:6px;padding:6px 10px;min-width:90px}
.stat .v{display:block;font-size:18px;font-weight:600}
.stat .l{color:var(--mut);font-size:12px}
.plot{margin:6px 0}.plot svg{max-width:100%;height:auto}
.note{color:var(--mut);font-size:12px;margin:2px 0}
.controls{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:8px 20px;display:flex;flex-wrap:wrap;gap:10px;align-items:center}
.controls label{font-size:12px;color:var(--mut)}
.controls input,.controls select{font:inherit;padding:2px 4px}
.controls input[type=number]{width:70px}
.pager{display:flex;gap:6px;align-items:center;margin-left:auto}
.pager button{font:inherit;padding:2px 8px}
main{padding:12px 20px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;margin:0 0 12px;padding:10px 12px}
.card h2{font-size:15px;margin:0 0 6px;display:flex;gap:10px;flex-wrap:wrap;align-items:baseline}
.card h2 .meta{font-weight:400;color:var(--mut);font-size:12px}
.members{display:flex;flex-wrap:wrap;gap:10px}
figure.m{margin:0;width:176px;border:2px solid transparent;border-radius:6px;padding:4px;background:#fafafa}
figure.m.keep{border-color:var(--keep);background:#f1faf3}
.tb{width:166px;height:166px;display:flex;align-items:center;justify-content:center;background:#eee;border-radius:4px;overflow:hidden}
.tb img{max-width:166px;max-height:166px;width:auto;height:auto;display:block}
.shown{font-size:11px;color:#444;background:#f7f8fa;border-left:2px solid var(--line);padding:2px 4px;margin:3px 0;max-height:4.2em;overflow:hidden;word-break:break-word}
.tb .err{color:var(--warn);font-size:11px;padding:6px;text-align:center}
figcaption{font-size:12px;margin-top:4px;word-break:break-all}
.badge{display:inline-block;background:var(--keep);color:#fff;border-radius:3px;padding:0 5px;font-size:11px;font-weight:600;margin-right:4px}
.dim,.fold{color:var(--mut)}
.sc{font-variant-numeric:tabular-nums}
.k-exact{color:#555}.k-local{color:#8a4fbf}.k-near{color:var(--acc)}
details.pairs{margin-top:8px}
details.pairs summary{cursor:pointer;color:var(--acc);font-size:12px}
table{border-collapse:collapse;font-size:12px;margin-top:4px}
td,th{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
.pic{margin:6px 0}.pic img{max-width:100%;height:auto;border:1px solid var(--line)}
section.skipped{padding:12px 20px 40px}
section.skipped li{word-break:break-all}
.empty{color:var(--mut);padding:20px}
.rvbar{display:flex;flex-wrap:wrap;gap:8px;align-items:center;width:100%;font-size:13px}
.rvbar button{font:inherit;padding:2px 10px;font-weight:600}
.rv{margin-top:4px;font-size:12px;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
.rv button,.card h2 button{font:inherit;font-size:11px;padding:0 6px}
figure.m.off{opacity:.45}
.card.changed{border-color:var(--keep)}
</style></head>
<body>
<header class="top">
<h1>%TITLE%</h1>
<div class="root">Folder: %ROOT%</div>
<div class="stats">%SUMMARY%</div>
%PLOTS%
%NOTES%
</header>
<div class="controls" id="mk-controls">
<label>Sort <select id="mk-sort">
<option value="size">%SIZESORT%</option>
<option value="weak">weakest match first</option>
<option value="strong">strongest match first</option>
<option value="bytes">most bytes in duplicates first</option>
<option value="folder">folder</option>
</select></label>
<label>Weakest score from <input type="number" id="mk-min" step="0.01" min="0" max="1"></label>
<label>to <input type="number" id="mk-max" step="0.01" min="0" max="1"></label>
<label>Size at least <input type="number" id="mk-size" step="1" min="2"></label>
<label>Kind <select id="mk-kind"><option value="">any</option><option value="exact">exact</option>
<option value="near">near</option><option value="local">local features</option></select></label>
<label>Relation <select id="mk-rel"><option value="">any</option></select></label>
<label>Folder contains <input type="search" id="mk-folder" list="mk-folders" size="18"></label>
<datalist id="mk-folders"></datalist>
<label>Per page <select id="mk-per"><option>25</option><option>50</option><option>100</option><option>200</option></select></label>
<div class="pager" id="mk-pager"><button id="mk-prev" type="button">&lsaquo; prev</button>
<span id="mk-count"></span><button id="mk-next" type="button">next &rsaquo;</button></div>
<div class="rvbar" id="mk-review" hidden><span id="mk-review-count"></span>
<label>Move to folder <input type="text" id="mk-to" size="24" placeholder="e.g. ~/dupes (or apply --to DIR)"></label>
<button type="button" id="mk-save">Save review</button><button type="button" id="mk-reset">Reset</button><a id="mk-download" hidden></a>
<span id="mk-saved" class="dim"></span></div>
</div>
<main id="mk-cards"></main>
<div class="controls" style="position:static"><div class="pager"><button id="mk-prev2" type="button">&lsaquo; prev</button>
<span id="mk-count2"></span><button id="mk-next2" type="button">next &rsaquo;</button></div></div>
<section class="skipped" id="mk-skipped"></section>
<output id="mk-state" hidden></output>
<script type="application/json" id="mk-data">%DATA%</script>
<script nonce="%NONCE%">
(function(){
"use strict";
var D=JSON.parse(document.getElementById("mk-data").textContent);
var I=D.images, C=D.cards, R=D.review||null;
// Review state per card: the keeper (image index) and the unticked members.
var RV=C.map(function(c){return {k:c.k,off:{}}});
function keepOf(idx){return RV[idx].k}
function isRef(c,j){return !!(c.refs&&c.refs.indexOf(j)>=0)}
var $=function(id){return document.getElementById(id)};
function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;if(text!=null)e.textContent=String(text);return e}
function kb(n){if(n==null)return "?";var u=["B","KB","MB","GB"],i=0;while(n>=1024&&i<3){n/=1024;i++}return (i?n.toFixed(1):n)+" "+u[i]}
function kindOf(p){return p.r==="local"?"local":(p.k||"")}
// Per-card facts for sorting and filtering, computed once.
var F=C.map(function(c,i){
  var lo=null,hi=null,kinds={},rels={},folders={},bytes=0;
  c.pairs.forEach(function(p){if(p.s!=null){lo=lo==null?p.s:Math.min(lo,p.s);hi=hi==null?p.s:Math.max(hi,p.s)}kinds[kindOf(p)]=1;if(p.k&&p.k!==kindOf(p))kinds[p.k]=1;if(p.rel)rels[p.rel]=1});
  c.m.forEach(function(j){folders[I[j].d.toLowerCase()]=1;if(j!==c.k)bytes+=I[j].s||0});
  return {i:i,size:c.m.length,lo:lo,hi:hi,kinds:kinds,rels:rels,folders:Object.keys(folders),bytes:bytes,first:I[c.m[0]].d+"/"+I[c.m[0]].n};
});
// Kinds beyond the usual three (a label page's "label: cat", a check's "no match").
(function(){var sel=$("mk-kind"),have={};[].forEach.call(sel.options,function(o){have[o.value]=1});
 var all={};F.forEach(function(f){Object.keys(f.kinds).forEach(function(k){if(k&&!have[k])all[k]=1})});
 Object.keys(all).sort().forEach(function(k){var o=el("option",null,k);o.value=k;sel.appendChild(o)});
 // Relations present on the page, closest first (the order of relation.KINDS).
 var ORDER=["exact","same-pixels","resized","crop","edited","recapture","variant","same-scene"],rs={},rsel=$("mk-rel");
 F.forEach(function(f){Object.keys(f.rels).forEach(function(r){rs[r]=1})});
 var rank=function(r){var i=ORDER.indexOf(r);return i<0?99:i};
 Object.keys(rs).sort(function(a,b){return rank(a)-rank(b)||(a<b?-1:1)}).forEach(function(r){var o=el("option",null,r);o.value=r;rsel.appendChild(o)});
 if(D.bytes===false){var b=$("mk-sort").querySelector("option[value=bytes]");if(b)b.remove()}})();
var NOUN=D.noun||"clusters";
(function(){var cnt={};F.forEach(function(f){f.folders.forEach(function(d){cnt[d]=(cnt[d]||0)+1})});
 var dl=$("mk-folders");Object.keys(cnt).sort(function(a,b){return cnt[b]-cnt[a]}).slice(0,300).forEach(function(d){var o=el("option");o.value=d;dl.appendChild(o)})})();
var S={page:0,per:D.per_page||50,view:[]};
$("mk-per").value=String(S.per);
function num(id){var v=$(id).value;return v===""?null:Number(v)}
function compute(){
  var mn=num("mk-min"),mx=num("mk-max"),sz=num("mk-size"),kind=$("mk-kind").value,rel=$("mk-rel").value,fold=$("mk-folder").value.trim().toLowerCase();
  var v=F.filter(function(f){
    if(mn!=null&&(f.lo==null||f.lo<mn))return false;
    if(mx!=null&&(f.lo==null||f.lo>mx))return false;
    if(sz!=null&&f.size<sz)return false;
    if(kind&&!f.kinds[kind])return false;
    if(rel&&!f.rels[rel])return false;
    if(fold&&!f.folders.some(function(d){return d.indexOf(fold)>=0}))return false;
    return true});
  var s=$("mk-sort").value;
  var cmp={size:function(a,b){return b.size-a.size||a.i-b.i},
    weak:function(a,b){return (a.lo==null?2:a.lo)-(b.lo==null?2:b.lo)||a.i-b.i},
    strong:function(a,b){return (b.hi==null?-1:b.hi)-(a.hi==null?-1:a.hi)||a.i-b.i},
    bytes:function(a,b){return b.bytes-a.bytes||a.i-b.i},
    folder:function(a,b){return a.first<b.first?-1:a.first>b.first?1:a.i-b.i}}[s];
  v.sort(cmp);S.view=v;
}
function figure(c,j,toKeep,eager,idx){
  var kp=keepOf(idx),im=I[j],f=el("figure","m"+(j===kp?" keep":"")+(RV[idx].off[j]?" off":""));
  var box=el("div","tb");
  if(im.t){var a=el("a");if(im.u)a.setAttribute("href",im.u);a.setAttribute("target","_blank");a.setAttribute("rel","noopener");
    var img=el("img");img.setAttribute("alt",im.n);img.setAttribute("loading",eager?"eager":"lazy");img.setAttribute("decoding","async");
    if(im.w&&im.h){var r=Math.min(1,166/Math.max(im.w,im.h));img.setAttribute("width",Math.max(1,Math.round(im.w*r)));img.setAttribute("height",Math.max(1,Math.round(im.h*r)))}
    img.setAttribute("src",im.t);a.appendChild(img);box.appendChild(a)}
  else box.appendChild(el("div","err",im.e||"no thumbnail"));
  f.appendChild(box);
  var cap=el("figcaption");
  if(j===kp)cap.appendChild(el("span","badge",D.badge||"keep"));
  if(c.refs&&c.refs.indexOf(j)>=0)cap.appendChild(el("span","badge","reference"));
  var nm=el("span","nm",im.n);nm.setAttribute("title",im.p);cap.appendChild(nm);cap.appendChild(el("br"));
  cap.appendChild(el("span","dim",(im.w?im.w+"\\u00d7"+im.h+" \\u00b7 ":"")+kb(im.s)));cap.appendChild(el("br"));
  cap.appendChild(el("span","fold",im.d||"."));
  if(im.x)Object.keys(im.x).forEach(function(k){var t=el("div","shown",im.x[k]);t.setAttribute("title",k+": "+im.x[k]);cap.appendChild(t)});
  if(toKeep){cap.appendChild(el("br"));var k=kindOf(toKeep);
    cap.appendChild(el("span","sc k-"+k,(toKeep.s!=null?toKeep.s.toFixed(3):"")+" "+k+(toKeep.rel?" \u00b7 "+toKeep.rel:"")))}
  if(R)cap.appendChild(reviewControls(idx,c,j,kp));
  f.appendChild(cap);return f;
}
// Under each image of a dedupe page: move it or not, or make it the keeper.
function reviewControls(idx,c,j,kp){
  var d=el("div","rv");
  if(j===kp){d.appendChild(el("span","dim",kp===c.k?"suggested keeper":"your keeper"));return d}
  if(isRef(c,j)){d.appendChild(el("span","dim","reference: never moved"));return d}
  var lab=el("label"),cb=el("input");cb.type="checkbox";cb.className="mv";cb.checked=!RV[idx].off[j];
  cb.setAttribute("data-card",String(idx));cb.setAttribute("data-img",String(j));
  lab.appendChild(cb);lab.appendChild(document.createTextNode(" move"));d.appendChild(lab);
  var b=el("button","mk-keep","make keeper");b.type="button";
  b.setAttribute("data-card",String(idx));b.setAttribute("data-img",String(j));d.appendChild(b);
  return d;
}
function card(idx,eager){
  var c=C[idx],f=F[idx],art=el("article","card"+(RV[idx].k!==c.k?" changed":""));art.setAttribute("data-card",String(idx));
  var h=el("h2",null,c.t||("Group "+(idx+1)));
  h.appendChild(el("span","meta",c.meta||(f.size+" images \\u00b7 "+(f.lo!=null?"weakest "+f.lo.toFixed(3):"")+" \\u00b7 "+kb(f.bytes)+" in duplicates")));
  if(R){var movable=c.m.filter(function(j){return j!==RV[idx].k&&!isRef(c,j)}),anyOn=movable.some(function(j){return !RV[idx].off[j]});
    if(movable.length){var all=el("button","mk-all",anyOn?"untick all":"tick all");all.type="button";all.setAttribute("data-card",String(idx));all.setAttribute("data-on",anyOn?"0":"1");h.appendChild(all)}}
  art.appendChild(h);
  if(RV[idx].k!==c.k)art.appendChild(el("p","note why","Keeper chosen by you; suggested was "+I[c.k].n+(c.why?" ("+c.why+")":"")));
  else if(c.why)art.appendChild(el("p","note why","Keeper: "+c.why));
  var toKeep={};c.pairs.forEach(function(p){if(p.a===c.k)toKeep[p.b]=p;else if(p.b===c.k)toKeep[p.a]=p});
  var mem=el("div","members");
  c.m.forEach(function(j){mem.appendChild(figure(c,j,toKeep[j],eager,idx))});
  art.appendChild(mem);
  if(c.pairs.length){
    var d=el("details","pairs");var nPic=c.pairs.filter(function(p){return p.pic}).length;
    d.appendChild(el("summary",null,"Pairs ("+c.pairs.length+")"+(nPic?" with "+nPic+" keypoint picture"+(nPic>1?"s":""):"")));
    var t=el("table"),hr=el("tr");["image","matched to","score","kind","evidence"].forEach(function(x){hr.appendChild(el("th",null,x))});t.appendChild(hr);
    c.pairs.forEach(function(p){var tr=el("tr");tr.appendChild(el("td",null,I[p.b].n));tr.appendChild(el("td",null,I[p.a].n));
      tr.appendChild(el("td","sc",p.s!=null?p.s.toFixed(4):""));tr.appendChild(el("td",null,(p.k||"")+(p.r?" / "+p.r:"")+(p.rel?" ("+p.rel+")":"")));
      var ev=[];Object.keys(p.ev||{}).forEach(function(k){var v=p.ev[k];if(k==="rule"||k==="transform")return;ev.push(k+"="+(typeof v==="object"?JSON.stringify(v):v))});
      var td=el("td",null,ev.join(", "));
      if(p.pic){var pd=el("div","pic"),pi=el("img");pi.setAttribute("loading","lazy");pi.setAttribute("alt","matched keypoints");pi.setAttribute("src",p.pic);pd.appendChild(pi);td.appendChild(pd)}
      if(p.note)td.appendChild(el("div","note",p.note));
      tr.appendChild(td);t.appendChild(tr)});
    d.appendChild(t);art.appendChild(d);
  }
  return art;
}
var readyOnce=false;
function render(){
  var pages=Math.max(1,Math.ceil(S.view.length/S.per));S.page=Math.min(Math.max(0,S.page),pages-1);
  var start=S.page*S.per,slice=S.view.slice(start,start+S.per),box=$("mk-cards");
  box.textContent="";
  var frag=document.createDocumentFragment();
  slice.forEach(function(f,n){frag.appendChild(card(f.i,n<(D.eager||8)))});
  if(!slice.length)frag.appendChild(el("div","empty","No "+NOUN+" match these filters."));
  box.appendChild(frag);
  var txt=(S.view.length?(start+1)+"\\u2013"+(start+slice.length):"0")+" of "+S.view.length+" "+NOUN+" \\u00b7 page "+(S.page+1)+"/"+pages;
  $("mk-count").textContent=txt;$("mk-count2").textContent=txt;
  ["mk-prev","mk-prev2"].forEach(function(id){$(id).disabled=S.page===0});
  ["mk-next","mk-next2"].forEach(function(id){$(id).disabled=S.page>=pages-1});
  var imgs=[].slice.call(box.querySelectorAll("img[loading=eager]"));
  var left=imgs.length,loaded=0,failed=0,t0=performance.now();
  function done(ok){if(ok)loaded++;else failed++;if(--left===0)finish()}
  function finish(){
    if(!readyOnce){readyOnce=true;try{performance.mark("mk-ready")}catch(e){}}
    document.documentElement.setAttribute("data-mk-ready","1");
    $("mk-state").textContent=JSON.stringify({total:C.length,filtered:S.view.length,page:S.page+1,pages:pages,shown:slice.length,
      eager_images:imgs.length,loaded:loaded,failed:failed,render_ms:Math.round(performance.now()-t0)});
  }
  document.documentElement.removeAttribute("data-mk-ready");
  if(!left)finish();
  imgs.forEach(function(img){if(img.complete&&img.naturalWidth)done(true);else if(img.complete)done(false);
    else{img.addEventListener("load",function(){done(true)},{once:true});img.addEventListener("error",function(){done(false)},{once:true})}});
}
function refresh(){compute();S.page=0;render()}
["mk-sort","mk-kind","mk-rel","mk-per"].forEach(function(id){$(id).addEventListener("change",function(){S.per=Number($("mk-per").value)||50;refresh()})});
["mk-min","mk-max","mk-size","mk-folder"].forEach(function(id){$(id).addEventListener("input",refresh)});
function go(d){S.page+=d;render();window.scrollTo(0,$("mk-controls").offsetTop)}
["mk-prev","mk-prev2"].forEach(function(id){$(id).addEventListener("click",function(){go(-1)})});
["mk-next","mk-next2"].forEach(function(id){$(id).addEventListener("click",function(){go(1)})});
// Skipped files, with reasons, at the bottom.
var sk=$("mk-skipped");
if(D.skipped.length){sk.appendChild(el("h2",null,"Skipped files ("+D.skipped.length+")"));var ul=el("ul");
  D.skipped.forEach(function(s){var li=el("li");li.appendChild(el("code",null,s.path));li.appendChild(document.createTextNode(" \\u2014 "+s.reason));ul.appendChild(li)});sk.appendChild(ul)}
else sk.appendChild(el("p","note","No files were skipped."));
// The review: what moves, counted in the bar; saved as a file for `matchkit apply`.
function plan(){var mv=0,bytes=0,changed=0,stay=0;
  C.forEach(function(c,i){var k=RV[i].k;if(k!==c.k)changed++;
    c.m.forEach(function(j){if(j===k||isRef(c,j))return;if(RV[i].off[j]){stay++;return}mv++;bytes+=I[j].s||0})});
  return {move:mv,bytes:bytes,changed:changed,stay:stay}}
// Decisions survive a reload of this very page (same files, same clusters).
var KEY=R&&R.key?"matchkit-review:"+R.key:null;
function store(){if(!KEY)return;try{var o={};RV.forEach(function(r,i){if(r.k!==C[i].k||Object.keys(r.off).length)o[i]=r});
  if(Object.keys(o).length)localStorage.setItem(KEY,JSON.stringify(o));else localStorage.removeItem(KEY)}catch(e){}}
function restore(){if(!KEY)return;try{var o=JSON.parse(localStorage.getItem(KEY)||"{}");
  Object.keys(o).forEach(function(i){var r=o[i];if(RV[i]&&C[i].m.indexOf(r.k)>=0){RV[i].k=r.k;RV[i].off=r.off||{}}})}catch(e){}}
function counts(){if(!R)return;store();var p=plan();
  $("mk-review-count").textContent=pl(p.move,"file")+" to move ("+kb(p.bytes)+")"+(p.changed?", "+pl(p.changed,"keeper")+" changed":"")+(p.stay?", "+p.stay+" unticked":"")}
function pl(n,w){return n+" "+w+(n===1?"":"s")}
function review(){
  var P=R.paths,files={};
  function stamp(j){if(R.stamps[j])files[P[j]]=R.stamps[j]}
  var clusters=C.map(function(c,i){var k=RV[i].k,o={keep:P[k],move:[],stay:[],references:[]};stamp(k);
    c.m.forEach(function(j){if(j===k)return;if(isRef(c,j)){o.references.push(P[j]);return}
      if(RV[i].off[j])o.stay.push(P[j]);else{o.move.push(P[j]);stamp(j)}});return o});
  var rep={};Object.keys(R.report).forEach(function(x){rep[x]=R.report[x]});rep.title=D.title;rep.saved=new Date().toISOString();
  return {matchkit_review:1,report:rep,to:$("mk-to").value.trim()||null,clusters:clusters,files:files};
}
function save(){
  var text=JSON.stringify(review(),null,1)+"\\n",a=$("mk-download");
  if(a.href&&a.href.indexOf("blob:")===0)URL.revokeObjectURL(a.href);
  a.href=URL.createObjectURL(new Blob([text],{type:"application/json"}));a.download="matchkit-review.json";a.click();
  var p=plan();$("mk-saved").textContent="saved matchkit-review.json ("+p.move+" to move); then: matchkit apply matchkit-review.json --to DIR";
  return text;
}
if(R){
  $("mk-review").hidden=false;
  $("mk-cards").addEventListener("change",function(e){var t=e.target;if(!t.classList||!t.classList.contains("mv"))return;
    var i=Number(t.getAttribute("data-card")),j=Number(t.getAttribute("data-img"));
    if(t.checked)delete RV[i].off[j];else RV[i].off[j]=1;
    var old=document.querySelector('article[data-card="'+i+'"]');if(old)old.parentNode.replaceChild(card(i,true),old);counts()});
  $("mk-cards").addEventListener("click",function(e){var t=e.target;if(!t.classList||!(t.classList.contains("mk-keep")||t.classList.contains("mk-all")))return;
    var i=Number(t.getAttribute("data-card")),j=Number(t.getAttribute("data-img"));
    if(t.classList.contains("mk-all")){var on=t.getAttribute("data-on")==="1";C[i].m.forEach(function(m){if(on)delete RV[i].off[m];else RV[i].off[m]=1})}
    else{RV[i].k=j;delete RV[i].off[j]}
    var old=document.querySelector('article[data-card="'+i+'"]');if(old)old.parentNode.replaceChild(card(i,true),old);counts()});
  $("mk-save").addEventListener("click",save);
  $("mk-reset").addEventListener("click",function(){RV.forEach(function(r,i){r.k=C[i].k;r.off={}});counts();render()});
  restore();counts();
}
window.mkReport={data:D,state:S,go:go,refresh:refresh,review:review,reviewState:RV,save:save};
compute();render();
})();
</script>
</body></html>
"""
