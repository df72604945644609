"""``matchkit search``: the gallery images nearest to an image, a crop of
one, a text, or words read in them, with metadata filters.

Separate because it has its own query parsing (``--crop``) and output
(``--table``).
"""

from __future__ import annotations

import json

import click

from matchkit.util.fspath import display, json_text
from matchkit.store.gallery import GalleryError
from matchkit.cli.common import _fail, _one_line, cli


def _parse_crop(text: str) -> tuple[int, int, int, int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        _fail(f"--crop takes four whole numbers x,y,w,h (pixels), not {text!r}")
    return values


@cli.command()
@click.option("--gallery", required=True, type=click.Path(file_okay=False),
              help="Gallery folder made by `matchkit index --model`.")
@click.option("--image", type=click.Path(dir_okay=False),
              help="Query by this image (file).")
@click.option("--crop", default=None,
              help="Query by this region of --image: x,y,w,h in pixels of the image as "
                   "displayed (after EXIF rotation).")
@click.option("--text", default=None, help="Query by a text (needs a CLIP-style model).")
@click.option("--contains", default=None,
              help="Find images whose own text (read by OCR) holds these words, fuzzily; "
                   "needs no model, but a gallery indexed with --signal ocr. Scores: query "
                   "words found (each up to 1) plus 1 per two of them in the query's order. Example: "
                   "matchkit search --gallery g --contains 'invoice 2023' --where year=2023")
@click.option("--where", multiple=True,
              help="Metadata filter, repeatable (all must hold): key=v, key!=v, "
                   "'key in a,b', key>=n, key<n, 'lo<=key<=hi'.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Number of results.")
@click.option("--model", default=None,
              help="Model to embed the query with (default: the one the gallery was "
                   "indexed with; any other is refused).")
@click.option("--json", "fmt", flag_value="json", default=True,
              help="JSON list of hits on stdout (default).")
@click.option("--table", "fmt", flag_value="table", help="A small text table instead.")
def search(gallery, image, crop, text, contains, where, k, model, fmt):
    """Find the gallery images most similar to an image, a crop of one, or a text.

    Scores are cosine similarities (1 = same direction). Filters select
    images before the nearest-neighbour search, so a selective filter still
    returns the best k matching images.

    \b
    Example:
      matchkit search --gallery g --image query.jpg -k 5
      matchkit search --gallery g --image shelf.jpg --crop 120,40,200,150 --table
      matchkit search --gallery g --text "a red bicycle" --where 'year>=2019' \\
          --where 'place in Paris,Lyon' | jq '.[].path'
      matchkit index scans/ --gallery g --signal ocr --no-embed
      matchkit search --gallery g --contains "invoice 2023" --table
    """
    from matchkit.embed import EmbedderError
    from matchkit.jobs.filters import FilterError
    from matchkit.jobs.search import SearchError, search as run_search
    from matchkit.index.vectors import VectorIndexError  # ModelMismatch is one

    if sum(q is not None for q in (image, text, contains)) != 1:
        _fail("give exactly one of --image or --text (or --contains)")
    if crop is not None and image is None:
        _fail("--crop needs --image")
    box = _parse_crop(crop) if crop is not None else None
    try:
        hits = run_search(gallery, image=image, crop=box, text=text, contains=contains,
                          where=where, k=k, model=model)
    except (GalleryError, SearchError, FilterError, EmbedderError, VectorIndexError) as e:
        _fail(_one_line(e))
    if fmt == "table":
        click.echo(_hits_table(hits))
    else:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2))


def _hits_table(hits) -> str:
    if not hits:
        return "no results"
    lines = [f"{'#':>3}  {'score':>6}  path  meta"]
    for rank, h in enumerate(hits, 1):
        meta = json_text(h.meta, separators=(",", ":")) if h.meta else ""
        lines.append(f"{rank:>3}  {h.score:6.3f}  {display(h.path)}  {meta}".rstrip())
    return "\n".join(lines)
