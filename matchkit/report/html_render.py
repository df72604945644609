"""Rendering the HTML review page: the page's JSON, the filled-in template, plots.

:func:`render_html` turns :class:`~matchkit.report.html_cards.Card` objects
into the complete page (the template is :mod:`matchkit.report.html_template`);
:func:`histogram_svg` draws the inline score histogram. Nothing here reads
images or writes files: that is :mod:`matchkit.report.html`.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

from matchkit.report.html_cards import Card, ImageEntry, PageText
from matchkit.report.html_template import _PAGE
from matchkit.util.fspath import display, json_text

#: Cards per page (the reader can change it on the page).
PER_PAGE = 50
#: Cards per page whose thumbnails load at once; the rest load when scrolled to.
EAGER_CARDS = 8


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

