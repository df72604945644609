"""Review pages for gallery checks and labeling runs.

Both show one card per query image: the query first (badge "query"), then
the gallery images it matched or that voted for its label, each with its
score, kind and evidence, and a side-by-side keypoint picture for
local-feature matches. They are drawn by the same renderer, thumbnails and
keypoint pictures as dedupe's page (:mod:`matchkit.report.html`), so sorting,
filtering, pagination and the offline, script-safe page work the same way.
Unreadable queries are listed at the bottom with their reason.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from matchkit.config import Settings
from matchkit.report.html import (DEFAULT_EVIDENCE_LIMIT, PER_PAGE, Card, HtmlReport, PageAssets,
                                  PageText, PairEntry, histogram_svg, make_assets, page_folder,
                                  render_html, score_markers, write_page)
from matchkit.report.thumbs import DEFAULT_SIDE

CHECK_TEXT = PageText(noun="queries", total_label="queries checked", badge="query",
                      size_sort="most matches first", bytes_sort=False)
LABEL_TEXT = PageText(noun="answers", total_label="answers", badge="query",
                      size_sort="most neighbours first", bytes_sort=False)


def _name(path: str) -> str:
    return os.path.basename(path) or path


def _pairs_to_draw(items: Sequence[tuple[float, str, str]], limit: int) -> list[tuple]:
    """The ``limit`` weakest local-feature pairs, as (query, gallery, None) to draw."""
    chosen = sorted(items)[:max(0, limit)]
    return sorted((q, g, None) for _, q, g in chosen)


def _write(path, title: str, cards_of, paths: list[str], todo: list[tuple], *, summary,
           skipped, plots, notes, text: PageText, n_local: int, thumb_side: int,
           settings: Settings, workers: int | None, per_page: int,
           progress: bool) -> HtmlReport:
    """Thumbnails and pictures, then the cards (which name them), then the page."""
    path, folder, url = page_folder(path)
    assets = make_assets(folder, url, paths, todo, thumb_side=thumb_side, settings=settings,
                         workers=workers, progress=progress)
    cards = cards_of(assets)
    if n_local > len(todo):
        notes = [*notes, f"Keypoint pictures were drawn for the {len(todo)} weakest of "
                 f"{n_local} local-feature matches."]
    page = render_html(cards, assets.images, title=title, summary=summary, skipped=skipped,
                       plots=plots, notes=notes, per_page=per_page, text=text)
    return write_page(path, assets, page, len(cards), n_local)


# ---------------------------------------------------------------- gallery checks

def check_cards(data: dict, assets: PageAssets) -> list[Card]:
    """One card per readable query of a check report dict: the query, then its matches."""
    cards = []
    for r in data.get("results", []):
        q, matches = r["path"], r.get("matches", [])
        pairs = []
        for m in matches:
            pic, note = assets.picture_of(q, m["path"])
            pairs.append(PairEntry(q, m["path"], m.get("score"),
                                   m.get("kind") if m.get("matched") else "no match",
                                   m.get("rule", ""), m.get("evidence") or {}, pic, note))
        hits = [m for m in matches if m.get("matched")]
        if hits:
            best = hits[0]
            meta = (f"matches {len(hits)} gallery image{'s' if len(hits) > 1 else ''} \u00b7 "
                    f"best {best['score']:.3f} {best.get('kind', '')}/{best.get('rule', '')}")
        else:
            meta = "no match in the gallery"
        if len(matches) > len(hits):
            misses = len(matches) - len(hits)
            meta += f" \u00b7 {misses} near miss{'es' if misses > 1 else ''}"
        members = list(dict.fromkeys([q] + [m["path"] for m in matches]))
        cards.append(Card(members, q, pairs, title=_name(q), meta=meta))
    return cards


def write_check_html(report, path: str | os.PathLike, *, title: str | None = None,
                     evidence_limit: int = DEFAULT_EVIDENCE_LIMIT,
                     thumb_side: int = DEFAULT_SIDE, settings: Settings = Settings(),
                     workers: int | None = None, per_page: int = PER_PAGE,
                     progress: bool = False) -> HtmlReport:
    """Write the review page of a gallery check (``CheckReport`` or its dict).

    Keypoint pictures are drawn for at most ``evidence_limit`` local-feature
    matches, weakest first: those are where a reviewer's eye is needed.
    """
    data = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    results, stats = data.get("results", []), data.get("stats", {})
    paths = list(dict.fromkeys(p for r in results
                               for p in [r["path"]] + [m["path"] for m in r.get("matches", [])]))
    local = [(m["score"], r["path"], m["path"]) for r in results for m in r.get("matches", [])
             if m.get("matched") and m.get("rule") == "local"]
    todo = _pairs_to_draw(local, evidence_limit)
    listed = [m for r in results for m in r.get("matches", [])]
    matched = sum(1 for r in results if r.get("matched"))
    summary = [("queries checked", len(results)), ("matched", matched),
               ("unmatched", len(results) - matched),
               ("skipped files", len(data.get("skipped", []))),
               ("gallery images", stats.get("gallery_images", "?")),
               ("local-feature matches", len(local))]
    if "seconds" in stats:
        summary.append(("check seconds", float(stats["seconds"])))
    plots = [histogram_svg([m["score"] for m in listed if m.get("matched")],
                           rejected=[m["score"] for m in listed if not m.get("matched")],
                           markers=score_markers(stats), title="Scores of gallery matches",
                           xlabel="match score", legend=("matches", "near misses"))]
    if stats.get("profile"):
        why = (f"Scores are the calibrated probability that the query is a copy, from profile "
               f"{stats['profile']!r} (calibrated for precision {stats.get('target_precision')}"
               "); at or above the threshold the profile calls the query a copy.")
    else:
        why = (f"Scores are {stats.get('score', 'match_strength')}: a score at or above the "
               "threshold means a dedupe rule (pHash, pHash + colour, or verified local "
               "features) called the query a copy. They rank matches; they are not "
               "probabilities.")
    notes = [why + " Gallery: " + str(data.get("gallery", ""))]
    return _write(path, title or "matchkit gallery check", lambda a: check_cards(data, a),
                  paths, todo, summary=summary, skipped=data.get("skipped", []), plots=plots,
                  notes=notes, text=CHECK_TEXT, n_local=len(local), thumb_side=thumb_side,
                  settings=settings, workers=workers, per_page=per_page, progress=progress)


# ---------------------------------------------------------------- labeling runs

def _classes(n: dict) -> str:
    return ", ".join(str(c) for c in n.get("labels", []))


def label_cards(data: dict, assets: PageAssets) -> list[Card]:
    """One card per readable answer of ``matchkit label``'s JSON: the query, then
    the gallery examples that voted (text and vector examples are named in the line
    under the title, having no picture)."""
    cards = []
    for a in data.get("answers", []):
        if a.get("error") or not a.get("path"):
            continue
        q = a["path"]
        pairs, others = [], []
        for n in a.get("neighbours", []):
            if not n.get("path"):
                others.append(f"{n.get('kind', '?')} example {_classes(n)} "
                              f"{n.get('score', 0):.3f}")
                continue
            ev = n.get("evidence") or {}
            pic, note = assets.picture_of(q, n["path"])
            pairs.append(PairEntry(q, n["path"], n.get("score"), "label: " + _classes(n),
                                   ev.get("rule", ""), ev, pic, note))
        conf = a.get("confidence")
        meta = (f"{a.get('label')} \u00b7 confidence {conf:.3f}"
                f"{' (calibrated)' if a.get('calibrated') else ' (uncalibrated)'}")
        if a.get("label") == "unknown" and a.get("best"):
            meta += f" \u00b7 best class {a['best']}"
        if others:
            meta += " \u00b7 " + "; ".join(others)
        members = list(dict.fromkeys([q] + [p.b for p in pairs]))
        cards.append(Card(members, q, pairs, title=f"{_name(q)} \u2192 {a.get('label')}",
                          meta=meta))
    return cards


def write_label_html(data: dict, path: str | os.PathLike, *, title: str | None = None,
                     evidence_limit: int = DEFAULT_EVIDENCE_LIMIT,
                     thumb_side: int = DEFAULT_SIDE, settings: Settings = Settings(),
                     workers: int | None = None, per_page: int = PER_PAGE,
                     progress: bool = False) -> HtmlReport:
    """Write the review page of ``matchkit label``'s JSON (answers, stats, calibration)."""
    answers = [a for a in data.get("answers", []) if not a.get("error") and a.get("path")]
    skipped = [{"path": a.get("path") or "", "reason": a["error"]}
               for a in data.get("answers", []) if a.get("error")]
    shown = [(a["path"], n) for a in answers for n in a.get("neighbours", []) if n.get("path")]
    paths = list(dict.fromkeys([a["path"] for a in answers] + [n["path"] for _, n in shown]))
    local = [(n.get("score", 0.0), q, n["path"]) for q, n in shown
             if (n.get("evidence") or {}).get("rule") == "local"]
    todo = _pairs_to_draw(local, evidence_limit)
    known = [a for a in answers if a.get("label") != "unknown"]
    stats, cal = data.get("stats", {}), data.get("calibration") or {}
    summary = [("answers", len(answers)), ("labelled", len(known)),
               ("unknown", len(answers) - len(known)), ("skipped files", len(skipped)),
               ("classes", stats.get("classes", "?")), ("k", stats.get("k", "?"))]
    if "seconds" in stats:
        summary.append(("label seconds", float(stats["seconds"])))
    threshold = cal.get("threshold") if cal else 0.5  # uncalibrated: accepted from 0.5
    markers = [(threshold, "accept threshold")] if isinstance(threshold, (int, float)) else []
    plots = [histogram_svg([a.get("raw", 0.0) for a in known],
                           rejected=[a.get("raw", 0.0) for a in answers
                                     if a.get("label") == "unknown"],
                           markers=markers, lo=0.0, title="Raw confidence of the answers",
                           xlabel="raw confidence", legend=("labelled", "unknown"))]
    notes = ["Confidence is the calibrated probability that the best class is right; "
             "answers whose raw confidence is below the accept threshold are unknown."
             if cal else "No calibration: answers are accepted when the raw confidence is "
             "at least 0.5."]
    return _write(path, title or "matchkit labels", lambda a: label_cards(data, a), paths,
                  todo, summary=summary, skipped=skipped, plots=plots, notes=notes,
                  text=LABEL_TEXT, n_local=len(local), thumb_side=thumb_side, settings=settings,
                  workers=workers, per_page=per_page, progress=progress)
