"""The OCR signal (matchkit/signals/ocr.py) on rendered screenshots.

Needs the tesseract program (Debian ``tesseract-ocr``; CI installs it):
skipped with that reason where it is missing. Text is drawn large (28 px)
in PIL's scalable default font, which Tesseract reads reliably.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

from matchkit import signals
from matchkit.cli.commands import cli
from matchkit.config import Settings
from matchkit.jobs.dedupe import dedupe
from matchkit.signals.ocr import normalise, search_text, text_like_regions

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="tesseract is not installed (apt-get install tesseract-ocr)")

TEXT_A = ["quarterly invoice summary", "payment received from customer",
          "delivery address station street", "approved final version today"]
TEXT_B = ["holiday booking request", "mountain cabin reservation friday",
          "breakfast included every morning", "welcome party saturday evening"]


def screen(lines: list[str]) -> Image.Image:
    """A made-up app window: the same chrome, a document of ``lines``."""
    img = Image.new("RGB", (900, 560), (246, 247, 249))
    d = ImageDraw.Draw(img)
    small = ImageFont.load_default(size=18)
    font = ImageFont.load_default(size=28)
    d.rectangle((0, 0, 900, 40), fill=(44, 62, 80))
    d.text((14, 10), "Ledger Documents", font=small, fill=(240, 240, 240))
    d.rectangle((0, 40, 180, 560), fill=(230, 234, 240))
    for i, item in enumerate(["Inbox", "Drafts", "Archive", "Settings"]):
        d.text((20, 70 + 40 * i), item, font=small, fill=(50, 60, 70))
    for i, line in enumerate(lines):
        d.text((220, 90 + 60 * i), line, font=font, fill=(25, 25, 30))
    return img


@pytest.fixture
def shots(tmp_path):
    d = tmp_path / "shots"
    d.mkdir()
    a = screen(TEXT_A)
    a.save(d / "a.png")
    a.resize((720, 448), Image.Resampling.LANCZOS).save(d / "a_small.jpg", quality=85)
    screen(TEXT_B).save(d / "b.png")
    return d


def test_words_and_normalise():
    assert normalise("  Invoice\n 2023\tTOTAL ") == "invoice 2023 total"
    payloads = {1: json.dumps({"text": "total invoice 2023 amount"}).encode(),
                2: json.dumps({"text": "invoce from 2023"}).encode(),  # a misread word
                3: json.dumps({"text": "holiday photos"}).encode(), 4: None}
    found = search_text(payloads, "Invoice 2023")
    assert [i for i, _ in found] == [1, 2]  # exact words first, the fuzzy match next
    assert found[0][1] > found[1][1] > 1.0
    assert search_text(payloads, "  ") == []


def test_gate_skips_a_plain_picture(photo):
    # A smooth colour field has no text-like regions; a rendered page has many.
    flat = Image.new("RGB", (400, 300), (120, 160, 200))
    assert text_like_regions(flat) == 0
    assert text_like_regions(screen(TEXT_A)) >= 4


@needs_tesseract
def test_veto_on_different_text_and_none_on_copies(shots):
    sig = signals.get("ocr")
    pay = {}
    for name in ("a.png", "a_small.jpg", "b.png"):
        with Image.open(shots / name) as im:
            pay[name] = sig.extract(im.convert("RGB"), str(shots / name))
    text = json.loads(pay["a.png"])["text"]
    assert "quarterly invoice summary" in text
    same = sig.pair_evidence(pay["a.png"], pay["a_small.jpg"])
    other = sig.pair_evidence(pay["a.png"], pay["b.png"])
    assert same["text_similarity"] >= 0.8 and sig.veto(same) is None
    assert other["text_similarity"] < 0.3 and other["words_a"] >= 5
    assert "different text" in sig.veto(other)
    assert sig.veto(sig.pair_evidence(pay["a.png"], None)) is None  # missing: no say


@needs_tesseract
def test_dedupe_with_ocr_keeps_copies_and_splits_different_text(shots, tmp_path):
    r = dedupe([shots], settings=Settings(workers=1, signals=("ocr",)))
    groups = [sorted(os.path.basename(m) for m in c.members) for c in r.clusters]
    assert ["a.png", "a_small.jpg"] in groups
    assert not any("b.png" in g for g in groups)
    ev = r.clusters[0].pairs[0].evidence["signals"]["ocr"]
    assert ev["text_similarity"] >= 0.8
    # The text each member holds is in the JSON and under its picture on the page.
    shown = json.loads(r.to_json())["shown"]
    members = r.clusters[0].members
    assert set(shown) == set(members)
    assert all("quarterly invoice" in shown[m]["ocr"] for m in members)
    from matchkit.report.html import write_html_report
    write_html_report(r, tmp_path / "page.html", thumbnails=False)
    page = (tmp_path / "page.html").read_text()
    assert "quarterly invoice" in page and '"x":{"ocr":' in page


def test_no_signals_no_shown_key(tmp_path):
    from matchkit.report.dedupe_report import DedupeReport
    assert "shown" not in DedupeReport().to_dict()


@needs_tesseract
def test_search_contains_finds_the_image(shots, tmp_path):
    g = tmp_path / "g"
    runner = CliRunner()
    r = runner.invoke(cli, ["index", str(shots), "--gallery", str(g), "--signal", "ocr",
                            "--no-embed", "--hash-only", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["search", "--gallery", str(g), "--contains", "cabin reservaton"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    assert os.path.basename(hits[0]["path"]) == "b.png"
    assert all(os.path.basename(h["path"]) != "b.png" for h in hits[1:])
    from matchkit.store.gallery import Gallery
    from matchkit.jobs.search import search
    hits = search(g, contains="quarterly invoice", k=5)
    assert {os.path.basename(h.path) for h in hits[:2]} == {"a.png", "a_small.jpg"}
    # Metadata filters apply: with b.png filtered out, its words find nothing of it.
    with Gallery(g) as gal:
        gal.update_meta({i: {"kind": "doc"} for i, rec in gal.images().items()
                         if not rec.path.endswith("b.png")})
    hits = search(g, contains="cabin reservation", where=["kind=doc"])
    assert all(not h.path.endswith("b.png") for h in hits)
    assert search(g, contains="cabin reservation")[0].path.endswith("b.png")


def test_search_contains_needs_ocr_gallery(tmp_path, photo):
    d = tmp_path / "p"
    d.mkdir()
    photo(1).save(d / "x.jpg")
    runner = CliRunner()
    assert runner.invoke(cli, ["index", str(d), "--gallery", str(tmp_path / "g"), "--no-embed",
                               "-q"]).exit_code == 0
    r = runner.invoke(cli, ["search", "--gallery", str(tmp_path / "g"), "--contains", "x y"])
    assert r.exit_code == 2
    assert "--signal ocr" in r.output


def test_review_page_shows_signal_evidence_in_words():
    from matchkit.report.html import _clean_evidence

    ev = _clean_evidence({"rule": "phash", "signals": {"ocr": {
        "words_a": 40, "words_b": 38, "text_similarity": 0.93}}})
    assert ev["signals"] == "ocr: text 93% shared (40 and 38 words)"
    assert ev["rule"] == "phash"


def outlined_caption(text: str) -> Image.Image:
    """White text drawn with a black outline across a light, noisy photo-like
    background: the plain white mask holds the background too."""
    import numpy as np

    rng = np.random.default_rng(3)
    base = rng.integers(200, 256, (6, 14, 3), dtype=np.uint8)  # light, smooth blobs
    img = Image.fromarray(base).resize((700, 300), Image.Resampling.BICUBIC)
    d = ImageDraw.Draw(img)
    d.text((30, 120), text, font=ImageFont.load_default(size=40), fill=(255, 255, 255),
           stroke_width=3, stroke_fill=(0, 0, 0))
    return img


def test_caption_masks_keep_an_outlined_caption_not_its_light_background():
    import numpy as np

    from matchkit.signals.ocr import _caption_masks

    img = outlined_caption("station quarterly delivery")
    rgb = np.asarray(img)
    white, _, light_near_dark, _ = _caption_masks(rgb)
    band = np.zeros(white.shape, bool)
    band[110:180, 20:690] = True  # where the caption is drawn
    # The plain white mask is mostly background; the outline mask is the caption.
    assert white[~band].sum() > 2 * white[band].sum()
    assert light_near_dark[band].sum() > 10 * max(1, light_near_dark[~band].sum())



def _payloads(texts: dict[int, str]) -> dict[int, bytes]:
    """Stored ocr payloads (as ``OCRSignal.extract`` writes them) of ``texts``."""
    return {i: json.dumps({"text": normalise(t), "words": []}).encode() for i, t in texts.items()}


def test_search_ignores_accents_on_both_sides():
    # Tesseract adds accents to words it misreads; users type without them.
    # Without folding, each word would be a 0.75 fuzzy match (score 1.5 + 1),
    # not a found one.
    pay = _payloads({1: "Bienvenue au Café — commandé ici", 2: "plage matin soir"})
    assert search_text(pay, "cafe commande") == [(1, 3.0)]
    assert search_text(pay, "café commandé")[0] == (1, 3.0)
    assert search_text(_payloads({5: "kaffee genehmigt"}), "kafféé genéhmigt") == [(5, 3.0)]


def test_search_equal_scores_put_the_shorter_text_first():
    # The page (id 1) holds both query words apart, as the caption (id 2)
    # does: equal scores; the caption, whose text the words are more of,
    # comes first although its id is larger.
    page = " ".join(["rechnung betrag datum konto kunde"] * 20 + ["bahnhof", "quittung", "markt"])
    pay = _payloads({1: page, 2: "bahnhof am markt", 3: "sommer strand"})
    hits = search_text(pay, "bahnhof markt", order_bonus=0)
    assert [i for i, _ in hits] == [2, 1]
    assert hits[0][1] == hits[1][1] == 2.0
    # A better score still wins over a shorter text.
    hits = search_text(_payloads({1: page + " bahnhof markt", 2: "bahnhof"}), "bahnhof markt")
    assert [i for i, _ in hits] == [1, 2]
    # Ties between equally long texts keep the id order (deterministic results).
    assert [i for i, _ in search_text(_payloads({4: "bahnhof x", 3: "bahnhof y"}),
                                      "bahnhof")] == [3, 4]


def test_low_confidence_words_are_searched_but_not_compared(monkeypatch):
    from matchkit.signals import ocr

    # Tesseract's tsv: a line of four words, one read at confidence 20 (kept
    # for search only); a row of another level (a line's box) is no word.
    head = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
    rows = [("invoice", 95), ("total", 90), ("2413", 20), ("amount", 92)]
    tsv = "\n".join([head, "4\t1\t1\t1\t1\t0\t0\t0\t50\t8\t-1\tline"]
                     + [f"5\t1\t1\t1\t1\t{n}\t{10 * n}\t5\t8\t8\t{c}\t{t}"
                        for n, (t, c) in enumerate(rows, 1)])

    class Done:
        stdout = tsv.encode()

    monkeypatch.setattr(ocr.subprocess, "run", lambda *a, **k: Done())
    read = ocr._tesseract(Image.new("L", (40, 20), 255), "eng", 3)
    assert [r[0] for r in read] == ["invoice", "total", "2413", "amount"]
    found = ocr.read_text(Image.new("RGB", (1200, 800), (255, 255, 255)))  # a page: read once
    assert found["text"] == "invoice total amount"
    assert found["search"] == "invoice total 2413 amount"
    assert [w[0] for w in found["words"]] == ["invoice", "total", "amount"]
    payload = json.dumps(found).encode()
    # Pair evidence and reports use the confident words only ...
    assert ocr._text_words(payload) == ["invoice", "total", "amount"]
    assert ocr.OCRSignal().show(payload) == "invoice total amount"
    # ... search finds the number read at low confidence, next to "total".
    assert search_text({7: payload}, "total 2413") == [(7, 3.0)]
    # A payload stored before the "search" text existed is searched by its text.
    old = json.dumps({"text": "invoice total amount", "words": []}).encode()
    assert search_text({7: old}, "total 2413") == [(7, 1.0)]
