"""Benchmark sets for text in images (issue 18), with their ground truth.

Two sets, each written with a ``truth.json``:

- ``text``: base photos with one to three lines of text drawn on them (eight
  fonts: sans, serif, mono, condensed, bold, italic; sizes from small print to
  headlines; light or dark, with or without a backing box; English, German,
  French and Spanish words), pages that are
  mostly text (a screenshot of a document), and photos left without text.
  ``truth.json`` holds each image's lines and the queries: two- to four-word
  phrases cut from the lines, each with the images that contain it (what a
  text search must find).
- ``screens``: screenshots of one made-up app (same window, sidebar and
  toolbar) that show different documents, each also saved as copies (resized,
  re-encoded, a few pixels cropped). Screens with different text are
  different pictures even though hashes see one template; ``truth.json``
  groups the copies. File names follow ``sets.py``: ``<group>__<edit>.<ext>``.

    python benchmarks/ocr_set.py --set screens --count 120        # -> benchmarks/_work/ocr-screens-120
    python benchmarks/ocr_set.py --set text --split calib         # -> benchmarks/_work/ocr-text-calib-353

Everything is drawn from a seed: the same command makes the same files.
Base photos are split like the other sets (``sets.photos``): settings are
chosen on ``calib`` and reported on ``eval``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import sets  # noqa: E402

#: A few hundred everyday words per language; phrases are random draws, so
#: queries rarely occur by chance in an unrelated image.
WORDS = {
    "en": """invoice receipt total amount payment due date account customer order number
    delivery address street city country phone email meeting agenda report quarter
    summer holiday beach mountain river garden kitchen coffee breakfast dinner market
    station ticket train platform departure arrival gate flight boarding passenger
    welcome happy birthday party friends family weekend morning evening library
    museum gallery exhibition opening hours closed monday tuesday wednesday thursday
    friday saturday sunday january february march april june july august september
    october november december project budget review draft final version approved""",
    "de": """rechnung quittung betrag zahlung datum konto kunde bestellung lieferung
    adresse strasse stadt telefon termin bericht sommer urlaub strand berge fluss
    garten kaffee abendessen markt bahnhof fahrkarte abfahrt ankunft willkommen
    geburtstag freunde familie wochenende morgen abend bibliothek ausstellung
    geschlossen montag dienstag mittwoch donnerstag freitag samstag sonntag januar
    februar juni juli oktober dezember projekt entwurf genehmigt""",
    "fr": """facture recu montant paiement compte client commande livraison adresse
    ville telephone rendez-vous rapport vacances plage montagne riviere jardin cafe
    dejeuner marche gare billet depart arrivee bienvenue anniversaire amis famille
    matin soir bibliotheque musee exposition ferme lundi mardi mercredi jeudi vendredi
    samedi dimanche janvier fevrier avril juin juillet octobre decembre projet brouillon""",
    "es": """factura recibo importe pago fecha cuenta cliente pedido entrega direccion
    calle ciudad telefono reunion informe verano playa montana jardin cafe desayuno
    cena mercado estacion billete salida llegada bienvenido cumpleanos amigos familia
    manana tarde biblioteca museo exposicion cerrado lunes martes miercoles jueves
    viernes sabado domingo enero febrero abril junio julio octubre diciembre proyecto""",
}

#: The fonts drawn with (Debian's fonts-dejavu-core and fonts-liberation, which
#: the chromium package pulls in): sans, serif, mono, condensed, bold, italic.
FONT_FILES = (
    "dejavu/DejaVuSans.ttf", "liberation/LiberationSerif-Regular.ttf",
    "liberation/LiberationSans-Bold.ttf", "dejavu/DejaVuSansMono.ttf",
    "dejavu/DejaVuSansCondensed.ttf", "liberation/LiberationSansNarrow-Regular.ttf",
    "dejavu/DejaVuSerif-Italic.ttf", "liberation/LiberationMono-Regular.ttf",
)
FONT_ROOT = Path("/usr/share/fonts/truetype")


def fonts() -> list[Path]:
    """``FONT_FILES`` that exist here, the first one (a plain sans) first."""
    found = [FONT_ROOT / f for f in FONT_FILES if (FONT_ROOT / f).exists()]
    if not found:
        raise SystemExit(f"no fonts under {FONT_ROOT} "
                         "(apt-get install fonts-dejavu-core fonts-liberation)")
    return found


def phrase(rng: random.Random, lang: str, n: int) -> str:
    words = WORDS[lang].split()
    out = [rng.choice(words) for _ in range(n)]
    if rng.random() < 0.3:
        out.insert(rng.randrange(len(out) + 1), str(rng.randrange(10, 9999)))
    return " ".join(out)


def _fit_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def draw_lines(img: Image.Image, lines: list[str], rng: random.Random,
               font_files: list[Path]) -> None:
    """Draw ``lines`` onto ``img`` in place: one font, size and colour per
    line, stacked where they fit, with a backing box on about half of them."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    y = rng.randrange(h // 20, h // 3)
    for line in lines:
        size = max(12, int(h * rng.choice([0.04, 0.05, 0.07, 0.09, 0.12])))
        font = _fit_font(rng.choice(font_files), size)
        while font.getlength(line) > 0.92 * w and size > 12:
            size = int(size * 0.85)
            font = _fit_font(rng.choice(font_files), size)
        tw = font.getlength(line)
        x = rng.randrange(max(1, int(w - tw) - 4)) if tw < w - 4 else 2
        dark = rng.random() < 0.5
        fill, back = ((20, 20, 20), (240, 240, 235)) if dark else ((250, 250, 250), (25, 25, 30))
        if rng.random() < 0.5:
            box = draw.textbbox((x, y), line, font=font)
            draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=back)
            draw.text((x, y), line, font=font, fill=fill)
        else:
            draw.text((x, y), line, font=font, fill=fill, stroke_width=max(1, size // 14),
                      stroke_fill=back)
        y += int(size * 1.5)
        if y > h - size:
            break


def text_page(rng: random.Random, font_files: list[Path], lang: str
              ) -> tuple[Image.Image, list[str]]:
    """A page that is mostly text (a document in a viewer)."""
    w, h = rng.choice([(1024, 768), (800, 1000), (1280, 720)])
    img = Image.new("RGB", (w, h), (250, 250, 248))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, w, 36), fill=(60, 63, 70))
    font_file = rng.choice(font_files)
    size = rng.choice([16, 18, 22, 26])
    font = _fit_font(font_file, size)
    lines, y = [], 60
    while y < h - 2 * size:
        line = phrase(rng, lang, rng.randint(3, 6))
        if font.getlength(line) < w - 80:
            draw.text((40, y), line, font=font, fill=(30, 30, 30))
            lines.append(line)
        y += int(size * 1.6)
    return img, lines


def build_text(split: str, out: Path, seed: int = 0, limit: int | None = None) -> Path:
    """The ``text`` set: see module docstring."""
    base = sets.photos(C.DEFAULT_PHOTOS, split, limit)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    font_files = fonts()
    rng = random.Random(f"ocr-text-{seed}-{split}")
    langs = sorted(WORDS)
    images: dict[str, list[str]] = {}
    for n, photo in enumerate(base):
        lang = langs[n % len(langs)]
        with Image.open(photo) as im:
            img = im.convert("RGB")
        if img.width < 480:  # small photos: text at a readable size needs room
            img = img.resize((480, round(480 * img.height / img.width)), Image.Resampling.LANCZOS)
        kind = n % 10
        if kind < 2:  # no text
            lines: list[str] = []
        elif kind == 2:  # a page of text instead of the photo
            img, lines = text_page(rng, font_files, lang)
        else:
            lines = [phrase(rng, lang, rng.randint(2, 5)) for _ in range(rng.randint(1, 3))]
            draw_lines(img, lines, rng, font_files)
        name = f"{photo.stem}__text.jpg" if lines else f"{photo.stem}__plain.jpg"
        img.save(out / name, quality=rng.choice([75, 85, 92]))
        images[name] = lines
    queries: dict[str, list[str]] = {}
    for name, lines in sorted(images.items()):
        for line in lines:
            words = line.split()
            if len(words) < 2:
                continue
            k = rng.randint(2, min(4, len(words)))
            start = rng.randrange(len(words) - k + 1)
            queries.setdefault(" ".join(words[start:start + k]), [])
    for q in queries:  # every image whose text holds the phrase is a right answer
        queries[q] = sorted(name for name, lines in images.items()
                            if any(q in line for line in lines))
    (out / "truth.json").write_text(json.dumps(
        {"set": "text", "split": split, "seed": seed, "images": images, "queries": queries},
        indent=1, ensure_ascii=False))
    return out


# -- screens ----------------------------------------------------------------

SIDEBAR = ["Inbox", "Drafts", "Sent", "Archive", "Projects", "Invoices", "Settings"]


def app_screen(rng: random.Random, font_files: list[Path], lang: str, size=(1280, 800)
               ) -> tuple[Image.Image, list[str]]:
    """One screen of a made-up mail/documents app: the same chrome on every
    screen, a different document in the main pane."""
    w, h = size
    img = Image.new("RGB", size, (245, 246, 248))
    d = ImageDraw.Draw(img)
    ui = _fit_font(font_files[0], 15)
    d.rectangle((0, 0, w, 32), fill=(44, 62, 80))
    d.text((12, 8), "Ledger - Documents", font=ui, fill=(240, 240, 240))
    for i, x in enumerate(range(w - 110, w - 10, 34)):
        d.ellipse((x, 9, x + 14, 23), fill=[(230, 90, 80), (240, 190, 60), (90, 200, 100)][i % 3])
    d.rectangle((0, 32, 200, h), fill=(232, 236, 241))
    for i, item in enumerate(SIDEBAR):
        d.text((24, 60 + 34 * i), item, font=ui, fill=(50, 60, 70))
    d.rectangle((200, 32, w, 76), fill=(250, 250, 252))
    for i in range(8):
        d.rounded_rectangle((216 + 44 * i, 42, 248 + 44 * i, 68), 5, fill=(210, 215, 222))
    d.line((200, 76, w, 76), fill=(200, 205, 210))
    body = _fit_font(font_files[1 % len(font_files)], 19)
    title = _fit_font(font_files[1 % len(font_files)], 30)
    head = phrase(rng, lang, rng.randint(2, 4))
    d.text((240, 100), head, font=title, fill=(20, 20, 25))
    lines, y = [head], 160
    for _ in range(rng.randint(8, 16)):
        line = phrase(rng, lang, rng.randint(4, 8))
        if body.getlength(line) < w - 280:
            d.text((240, y), line, font=body, fill=(45, 45, 50))
            lines.append(line)
        y += 32
    return img, lines


def build_screens(count: int, out: Path, seed: int = 0) -> Path:
    """The ``screens`` set: ``count`` different screens of one app, each with
    two copies (resized to 75% and saved as JPEG q85; re-encoded at q60 with
    six pixels cropped from each side)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    font_files = fonts()
    rng = random.Random(f"ocr-screens-{seed}")
    langs = sorted(WORDS)
    groups: dict[str, list[str]] = {}
    texts: dict[str, list[str]] = {}
    for n in range(count):
        img, lines = app_screen(rng, font_files, langs[n % len(langs)])
        g = f"screen{n:04d}"
        names = [f"{g}__orig.png", f"{g}__small.jpg", f"{g}__crop.jpg"]
        img.save(out / names[0])
        img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.Resampling.LANCZOS).save(
            out / names[1], quality=85)
        img.crop((6, 6, img.width - 6, img.height - 6)).save(out / names[2], quality=60)
        groups[g] = names
        for name in names:
            texts[name] = lines
    (out / "truth.json").write_text(json.dumps(
        {"set": "screens", "seed": seed, "groups": groups, "images": texts},
        indent=1, ensure_ascii=False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--set", required=True, choices=["text", "screens"])
    ap.add_argument("--split", default="calib", choices=["calib", "eval", "all"],
                    help="base photos of the text set (default %(default)s)")
    ap.add_argument("--limit", type=int, default=None, help="text set: first N photos only")
    ap.add_argument("--count", type=int, default=120, help="screens set: different screens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.set == "text":
        n = len(sets.photos(C.DEFAULT_PHOTOS, args.split, args.limit))
        out = build_text(args.split, args.out or C.WORK / f"ocr-text-{args.split}-{n}",
                         args.seed, args.limit)
    else:
        if args.count < 2:
            ap.error("--count must be at least 2")
        out = build_screens(args.count, args.out or C.WORK / f"ocr-screens-{args.count}",
                            args.seed)
    truth = json.loads((out / "truth.json").read_text())
    extra = (f", {len(truth['queries'])} queries" if "queries" in truth
             else f", {len(truth['groups'])} groups")
    print(f"{out}: {len(truth['images'])} images{extra}")


if __name__ == "__main__":
    main()
