"""Text in images (OCR with Tesseract) as a pair signal and a search key.

Tesseract (Debian ``tesseract-ocr``, at least its ``eng`` data) is run as a
program, one call per image, and only on images with text-like regions: a
cheap gate on a downscaled grey copy looks for short, wide clusters of strong
edges (lines of glyphs); photos without any are not read at all.

Payload (JSON, UTF-8): the text as read, lowercased with whitespace
collapsed, and its words with confidence and box (fractions of the image),
of the words read with at least ``MIN_CONFIDENCE``; and, where it holds more,
"search": the text of every word read (``SEARCH_MIN_CONFIDENCE``), which
search looks in.

Evidence of a pair, over words of at least ``MIN_WORD`` letters or digits:
``words_a``/``words_b`` (distinct words each image holds) and
``text_similarity`` (shared pairs of consecutive words over the smaller
image's pairs, so a crop that keeps part of the text still agrees, while
two texts drawn from one vocabulary do not; None when either image has no
words). Equal text is evidence for a copy; a pair where both images hold at
least ``VETO_MIN_WORDS`` words and share less than ``VETO_SIMILARITY`` of them
shows different texts in one layout (two screenshots of one app) and is
vetoed.

Search (``matchkit search --contains "invoice 2023"``): images ranked by how
many query words they hold, fuzzily (``difflib`` ratio at least
``FUZZY_CUTOFF`` against the gallery's vocabulary), plus ``ORDER_BONUS`` for
each two query words that follow each other in their text. Accents are
ignored on both sides (``fold``); of images that score the same, the one
with less text comes first.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from matchkit.signals import Signal, SignalUnavailable

#: Words shorter than this (letters or digits) are ignored by pair evidence:
#: OCR reads noise in pictures as one- and two-letter words.
MIN_WORD = 3
#: A pair is vetoed only when both images hold at least this many words ...
VETO_MIN_WORDS = 5
#: ... and share less than this fraction of the smaller image's words
#: (chosen on the dev screens set: see benchmarks/bench_ocr.py).
VETO_SIMILARITY = 0.5
#: Words Tesseract is less sure of than this (0-100) are left out of the
#: image's text (pair evidence, what reports show) ...
MIN_CONFIDENCE = 40
#: ... but kept down to this confidence for search (the payload's "search"
#: text): a caption over a busy picture is often read right at low
#: confidence, and a query word rarely matches the noise such reads add
#: (ranking needs the query's words, in order). Chosen on the calib text set
#: (search otherwise unchanged): recall@10 0.9593 at 40 (the text's own
#: cut), 0.9633 at 25, 0.9669 at 10, 0.9726 at 0, i.e. every word read.
SEARCH_MIN_CONFIDENCE = 0
#: Longest side the image is read at (the pipeline's own decode is 512 px:
#: too small for body text).
READ_SIDE = 2048
#: Images with a shorter longest side than this are enlarged 2x before
#: reading (Tesseract wants glyphs some 20 px tall).
UPSCALE_BELOW = 1000
#: The text gate works on a grey copy with this longest side.
GATE_SIDE = 1024
#: Seconds one image may take to read.
TIMEOUT = 60.0
#: Least difflib ratio for a query word to count as found (fuzzy search).
#: (Chosen with ``ORDER_BONUS`` on the calib text set: 0.75-0.85 and 0.1-1.0
#: were within 0.01 of recall@10; most misses are words OCR did not read.)
FUZZY_CUTOFF = 0.75
#: Search score added for each two query words found in the query's order.
ORDER_BONUS = 1.0

#: Channel levels a caption's fill must reach to be in the white (>=) or black (<=) mask.
WHITE_FILL, BLACK_FILL = 225, 45
#: Report pages show at most this much of an image's text.
SHOWN_CHARS = 300
#: Outlined captions: light pixels (every channel >= OUTLINE_LIGHT) within
#: OUTLINE_REACH pixels of dark ones (every channel <= OUTLINE_DARK), and the
#: reverse. (Chosen on the calib text set's missed images: 30 of them held
#: 264 words, 112 read before, 165 with these masks; 200/80 161, reach 11 159.)
OUTLINE_LIGHT, OUTLINE_DARK, OUTLINE_REACH = 180, 100, 7
#: A page read that gives fewer words than this (of ``MIN_WORD`` letters or
#: more) is read again through the caption masks.
PAGE_MIN_WORDS = 3

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Lowercased, whitespace collapsed."""
    return " ".join(text.lower().split())


def words(text: str, min_len: int = 1) -> list[str]:
    """The words (runs of letters and digits) of ``text``, lowercased."""
    return [w for w in _WORD.findall(text.lower()) if len(w) >= min_len]


def fold(text: str) -> str:
    """``text`` without accents (``"café"`` -> ``"cafe"``): what search compares.
    Users type queries without them, and Tesseract's ``eng`` model adds them
    to unaccented words it misreads (``"kaffée"``); a difflib ratio would
    count each as a misspelling (``"cafe"``/``"café"`` is 0.75, the cutoff)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text)
                   if not unicodedata.combining(c))


def text_like_regions(image) -> int:
    """How many text-line-like regions a (PIL) image has, on a copy of
    ``GATE_SIDE`` pixels: short, wide clusters (joined along rows) of strong
    edges (a morphological gradient) or of a caption mask's pixels
    (``_caption_masks``), half-filled as glyphs are."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    scale = GATE_SIDE / max(h, w)
    if scale < 1:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    grad = cv2.morphologyEx(grey, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    layers = [grad >= 60, *_caption_masks(rgb)]  # (edges; plain and outlined captions)
    row = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 1))
    H = grey.shape[0]
    count = 0
    for layer in layers:
        bw = layer.astype(np.uint8) * 255
        joined = cv2.morphologyEx(bw, cv2.MORPH_CLOSE, row)
        _, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
        for x, y, bw_, bh, area in stats[1:]:
            if 6 <= bh <= 0.2 * H and bw_ >= 3 * bh and bw_ >= 30:
                fill = np.count_nonzero(bw[y:y + bh, x:x + bw_]) / float(bw_ * bh)
                if 0.2 <= fill <= 0.75:
                    count += 1
    return count


@dataclass(frozen=True)
class OCRSignal(Signal):
    name: str = "ocr"
    decode_side: int | None = READ_SIDE
    #: Tesseract language(s), e.g. "eng" or "eng+deu" (installed data only).
    lang: str = "eng"

    def check(self) -> None:
        if shutil.which("tesseract") is None:
            raise SignalUnavailable(
                "the ocr signal needs the tesseract program (Debian/Ubuntu: apt-get install "
                "tesseract-ocr; macOS: brew install tesseract)")

    # -- extraction ----------------------------------------------------------
    def extract(self, image, path: str) -> bytes | None:
        if text_like_regions(image) == 0:
            return None
        found = read_text(image, self.lang)
        if not found["words"] and not found.get("search"):
            return None
        return json.dumps(found, separators=(",", ":"), ensure_ascii=False).encode()

    # -- pairs -----------------------------------------------------------------
    def pair_evidence(self, pa: bytes | None, pb: bytes | None) -> dict[str, float | None]:
        wa, wb = _text_words(pa), _text_words(pb)
        sim = None
        if wa and wb:
            ba, bb = _shingles(wa), _shingles(wb)
            sim = round(len(ba & bb) / max(1, min(len(ba), len(bb))), 4)
        return {"words_a": len(set(wa)), "words_b": len(set(wb)), "text_similarity": sim}

    def veto(self, evidence: dict[str, float | None]) -> str | None:
        sim = evidence.get("text_similarity")
        if (sim is not None and min(evidence.get("words_a") or 0, evidence.get("words_b") or 0)
                >= VETO_MIN_WORDS and sim < VETO_SIMILARITY):
            return (f"different text ({sim:.0%} of words shared, "
                    f"{evidence['words_a']} and {evidence['words_b']} words)")
        return None

    def describe(self, evidence: dict[str, float | None]) -> str:
        sim = evidence.get("text_similarity")
        if sim is None:
            return f"text: {evidence.get('words_a', 0)} and {evidence.get('words_b', 0)} words"
        return (f"text {sim:.0%} shared ({evidence.get('words_a')} and "
                f"{evidence.get('words_b')} words)")

    def show(self, payload: bytes | None) -> str | None:
        """The text read (at most ``SHOWN_CHARS`` characters)."""
        text = payload_text(payload)
        if len(text) > SHOWN_CHARS:
            text = text[:SHOWN_CHARS - 1].rstrip() + "\u2026"
        return text or None

    # -- search ----------------------------------------------------------------
    def search(self, gallery, query: str, ids: Sequence[int] | None = None,
               k: int = 10) -> list[tuple[int, float]]:
        return search_text(gallery.signal_payloads(self.name, ids), query, k)


#: An image is "a page" (a document, a screenshot) when at least this share
#: of its grey pixels lie within ``FLAT_LEVELS`` of its most common level;
#: pages are read once as they are, pictures also through masks of their
#: near-white and near-black pixels (captions drawn with an outline: memes).
PAGE_SHARE = 0.4
FLAT_LEVELS = 4


def _is_page(grey: np.ndarray) -> bool:
    hist = np.bincount(grey.reshape(-1), minlength=256)
    m = int(hist.argmax())
    return hist[max(0, m - FLAT_LEVELS):m + FLAT_LEVELS + 1].sum() >= PAGE_SHARE * grey.size


def _tesseract(image, lang: str, psm: int) -> list[list]:
    """Tesseract's words of a PIL image: [text, confidence, block, par, line, x, y, w, h]."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    try:
        out = subprocess.run(["tesseract", "stdin", "stdout", "-l", lang, "--psm", str(psm),
                              "tsv"], input=buf.getvalue(), capture_output=True, timeout=TIMEOUT)
    except FileNotFoundError:
        raise SignalUnavailable("the ocr signal needs the tesseract program "
                                "(apt-get install tesseract-ocr)") from None
    except subprocess.TimeoutExpired:
        return []
    found = []
    for row in out.stdout.decode("utf-8", "replace").splitlines()[1:]:
        f = row.split("\t")
        if len(f) < 12 or f[0] != "5" or not f[11].strip():
            continue
        try:
            conf = float(f[10])
            box = [int(v) for v in f[6:10]]
        except ValueError:
            continue
        if conf >= SEARCH_MIN_CONFIDENCE:
            found.append([f[11].strip(), conf, f[2], f[3], f[4], *box])
    return found


def _caption_masks(rgb: np.ndarray) -> list[np.ndarray]:
    """Masks of a picture's caption pixels, each read on its own: its
    white and its black pixels (a plain fill), and its light pixels that lie
    near dark ones and the dark ones near light ones (text drawn with an
    outline or a shadow over a busy or a light background, where the plain
    fill masks also hold the background)."""
    import cv2

    lo, hi = rgb.min(axis=2), rgb.max(axis=2)
    masks = [lo >= WHITE_FILL, hi <= BLACK_FILL]
    light, dark = lo >= OUTLINE_LIGHT, hi <= OUTLINE_DARK
    kernel = np.ones((OUTLINE_REACH, OUTLINE_REACH), np.uint8)
    near = [cv2.dilate(m.astype(np.uint8), kernel).astype(bool) for m in (dark, light)]
    return masks + [light & near[0], dark & near[1]]


def read_text(image, lang: str = "eng") -> dict:
    """The text of a PIL image: {"text": normalised text, "words": [[word,
    confidence, x, y, w, h], ...]} with boxes in fractions of the image, of
    the words read with at least ``MIN_CONFIDENCE``; and "search": the text
    of the words read with at least ``SEARCH_MIN_CONFIDENCE`` (only when it
    holds more than "text"). A
    page is read once (a page that gives fewer than ``PAGE_MIN_WORDS`` words
    is a picture on a plain background: a product shot, a sky); a picture
    also through its caption masks (words of all reads, each read's lines in
    order)."""
    from PIL import Image

    grey = image.convert("L")
    if max(grey.size) < UPSCALE_BELOW:
        image = image.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS)
        grey = image.convert("L")
    W, H = grey.size
    found, lines, seen = [], [], set()
    all_lines, all_seen = [], set()  # (words of any confidence kept: for search)

    def add(by_line: dict[tuple, list[str]], into: list[str], seen_: set[str]) -> None:
        for v in by_line.values():
            line = normalise(" ".join(v))
            if line not in seen_:  # (the same line read twice counts once)
                seen_.add(line)
                into.append(line)

    def read(img, psm: int) -> None:
        by_line: dict[tuple, list[str]] = {}
        by_line_all: dict[tuple, list[str]] = {}
        for text, conf, block, par, line, x, y, w, h in _tesseract(img, lang, psm):
            by_line_all.setdefault((block, par, line), []).append(text)
            if conf < MIN_CONFIDENCE:
                continue
            by_line.setdefault((block, par, line), []).append(text)
            found.append([text.lower(), round(conf), round(x / W, 4), round(y / H, 4),
                          round(w / W, 4), round(h / H, 4)])
        add(by_line, lines, seen)
        add(by_line_all, all_lines, all_seen)

    read(grey, 3)
    if not _is_page(np.asarray(grey)) or len(words(" ".join(lines), MIN_WORD)) < PAGE_MIN_WORDS:
        for mask in _caption_masks(np.asarray(image.convert("RGB"))):
            if mask.mean() > 0.0005:
                read(Image.fromarray(np.where(mask, 0, 255).astype(np.uint8)), 11)
    out = {"text": normalise("\n".join(lines)), "words": found}
    search = normalise("\n".join(all_lines))
    if search != out["text"]:
        out["search"] = search
    return out


def _payload(p: bytes | None) -> dict | None:
    if not p:
        return None
    try:
        return json.loads(p)
    except ValueError:
        return None


def payload_text(p: bytes | None) -> str:
    """The normalised text of a stored payload ("" without one)."""
    d = _payload(p)
    return d.get("text", "") if d else ""


def payload_search_text(p: bytes | None) -> str:
    """The text search looks in: the payload's "search" text (words of lower
    confidence too) where it has one, else its text."""
    d = _payload(p)
    return (d.get("search") or d.get("text", "")) if d else ""


def _text_words(p: bytes | None) -> list[str]:
    """The payload's words of at least ``MIN_WORD`` characters, in reading order."""
    return words(payload_text(p), MIN_WORD)


def _shingles(ws: list[str]) -> set[tuple[str, ...]]:
    """Pairs of consecutive words (the word itself for a one-word text):
    texts drawn from one vocabulary share words, rarely word pairs."""
    return {tuple(ws[i:i + 2]) for i in range(max(1, len(ws) - 1))}


def search_text(payloads: dict[int, bytes | None], query: str, k: int = 10,
                order_bonus: float | None = None) -> list[tuple[int, float]]:
    """(image id, score) of the ``k`` images whose text best holds ``query``'s
    words: score = the sum over query words of the best difflib ratio of an
    image word (at least ``FUZZY_CUTOFF``), plus ``order_bonus`` (default
    ``ORDER_BONUS``) for each two query words that follow each other in the
    image's text as in the query (one word between them allowed: a word
    misread beyond recognition). Words are compared without accents
    (``fold``). Equal scores are ordered by the image's number of words,
    fewest first: the same query words in a caption of five words say more
    about the image than in a page of three hundred, which holds many of a
    language's common words by chance (and an image id is no reason at all).
    (Chosen on the calib text set: recall@10 0.9551 -> 0.9593, the length
    order giving most of it.)"""
    bonus = ORDER_BONUS if order_bonus is None else order_bonus
    q = words(fold(query))
    if not q:
        return []
    texts = {i: words(fold(payload_search_text(p))) for i, p in payloads.items() if p}
    vocabulary = sorted({w for ws in texts.values() for w in ws})
    known = set(vocabulary)
    # Query word -> {vocabulary word: ratio} for the words close enough.
    close: list[dict[str, float]] = []
    for qw in q:
        near = {qw: 1.0} if qw in known else {}
        for w in difflib.get_close_matches(qw, vocabulary, n=50, cutoff=FUZZY_CUTOFF):
            near.setdefault(w, difflib.SequenceMatcher(None, qw, w).ratio())
        close.append(near)
    hits = []
    for i, ws in texts.items():
        have = set(ws)
        best = [max((r for w, r in near.items() if w in have), default=0.0) for near in close]
        score = sum(best)
        if score <= 0:
            continue
        if bonus and len(q) > 1:
            pos: dict[str, list[int]] = {}
            for n, w in enumerate(ws):
                pos.setdefault(w, []).append(n)
            for j in range(len(q) - 1):
                a = [p for w in close[j] for p in pos.get(w, ())]
                b = {p for w in close[j + 1] for p in pos.get(w, ())}
                if any(p + 1 in b or p + 2 in b for p in a):
                    score += bonus
        hits.append((i, round(score, 4), len(ws)))
    hits.sort(key=lambda h: (-h[1], h[2], h[0]))
    return [(i, score) for i, score, _ in hits[:k]]
