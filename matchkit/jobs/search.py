"""Search a gallery by example image, by a crop of one, or by text.

The query is embedded with the model the gallery was indexed with and
compared by cosine similarity with the gallery's stored vectors (see
``Gallery.embed``). Metadata filters (:mod:`matchkit.jobs.filters`) pick the
images that may be returned *before* the nearest-neighbour search, so a
filter that keeps 1 image in 1,000 still yields the best ``k`` of those
images, not whatever survived of an unfiltered top ``k``.

A gallery is only ever searched with the model it was indexed with: vectors
of different models live in different spaces, and comparing them would give
confident nonsense.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from matchkit.jobs.filters import allowed_ids
from matchkit.features.embedding import EMBED_DECODE_SIDE
from matchkit.store.gallery import DB_NAME, Gallery, GalleryError
from matchkit.io.load import ImageLoadError, load_image
from matchkit.store.shards import ShardedGallery, is_sharded


class SearchError(ValueError):
    """A query that cannot be answered as asked (bad crop, text without a text
    model, no query...); the message is one line."""


@dataclass
class SearchHit:
    """One result: the gallery image, its cosine similarity to the query, its metadata."""

    id: int
    path: str
    score: float
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "score": self.score, "meta": self.meta}


def resolve_model(gallery: Gallery, model=None):
    """The embedder to query ``gallery`` with, after checking it matches the index.

    ``model`` may be None (the model the gallery was indexed with, loaded by
    its recorded name), a name or path for :func:`matchkit.embed.load_embedder`,
    or an already loaded embedder (reused across queries). A model the
    gallery holds no vectors for is refused with :class:`GalleryError`.
    """
    from matchkit.embed import load_embedder

    known = gallery.models()
    if not known:
        g = shlex.quote(str(gallery.path))
        raise GalleryError(
            f"gallery {gallery.path} has no embeddings yet; run `matchkit index DIR --gallery "
            f"{g} --model NAME` first (`matchkit models` lists names), or find copies of an "
            f"image without any model: `matchkit check --gallery {g} IMAGE`")
    if model is None:
        if len(known) > 1:
            raise GalleryError(f"gallery {gallery.path} holds embeddings of several models "
                               f"({', '.join(repr(k) for k in known)}); choose one with --model")
        model = next(iter(known))
    embedder = load_embedder(str(model)) if isinstance(model, (str, os.PathLike)) else model
    if embedder.name not in known:
        raise GalleryError(
            f"model {embedder.name!r} does not match this gallery: it was indexed with "
            f"{', '.join(repr(k) for k in known)}; query with that model or index the gallery "
            f"with {embedder.name!r} first")
    if int(embedder.dim) != known[embedder.name]:
        raise GalleryError(
            f"model {embedder.name!r} now gives {embedder.dim}-d vectors but the gallery "
            f"holds {known[embedder.name]}-d vectors under that name (the checkpoint changed); "
            "index the images again into a new gallery")
    return embedder


def validate_crop(crop: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` as ints, inside a ``width`` x ``height`` image with a positive size."""
    values = list(crop) if isinstance(crop, (list, tuple, np.ndarray)) else []
    if len(values) != 4 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            or isinstance(v, (float, np.floating)) and float(v).is_integer() for v in values):
        raise SearchError(f"crop must be four whole numbers x,y,w,h, not {crop!r}")
    x, y, w, h = (int(v) for v in values)
    if w <= 0 or h <= 0:
        raise SearchError(f"crop size must be positive, got {w}x{h}")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise SearchError(f"crop {x},{y},{w},{h} (x,y,w,h) is not inside the "
                          f"{width}x{height} query image")
    return x, y, w, h


def query_image(image: str | os.PathLike | Image.Image,
                crop: Sequence[int] | None = None) -> Image.Image:
    """The RGB picture to embed: the image (a path is decoded safely, EXIF-rotated)
    or the ``crop=(x, y, w, h)`` of it, in pixels of the image as displayed."""
    if isinstance(image, Image.Image):
        from matchkit.embed.base import as_rgb

        pil = as_rgb(image)
    else:
        try:
            # Whole images are decoded the way the gallery's were; crops need
            # the full resolution their coordinates refer to.
            pil = load_image(image, max_side=None if crop is not None else EMBED_DECODE_SIDE).image
        except ImageLoadError as e:
            raise SearchError(f"cannot use query image {image}: {e.reason}") from None
    if crop is not None:
        x, y, w, h = validate_crop(crop, pil.width, pil.height)
        pil = pil.crop((x, y, x + w, y + h))
    return pil


def search(gallery: Gallery | str | os.PathLike, *,
           image: str | os.PathLike | Image.Image | None = None,
           crop: Sequence[int] | None = None,
           text: str | None = None,
           where: Iterable[str] = (),
           k: int = 10,
           model=None,
           contains: str | None = None) -> list[SearchHit]:
    """The ``k`` gallery images most similar to the query, best first.

    Give exactly one of ``image`` (path or PIL image, optionally with
    ``crop=(x, y, w, h)``) or ``text`` (needs a model with a text encoder,
    such as CLIP). ``where`` holds filter expressions (see
    :mod:`matchkit.jobs.filters`), all of which an image must pass; the result
    then has ``min(k, allowed images with vectors)`` hits. ``model`` defaults
    to the gallery's; see :func:`resolve_model`.

    ``contains`` (instead of ``image`` or ``text``) finds images by the text
    they show: words read by the "ocr" signal (``matchkit.signals.ocr``), at
    ``Gallery.add`` with ``Settings(signals=("ocr",))``; fuzzy, no model
    needed. Scores: query words found (each up to 1, by closeness; accents
    ignored) plus 1 for each two of them in the query's order; of equal
    scores, the image with less text first (``signals.ocr.search_text``).
    """
    if contains is not None:
        if image is not None or text is not None:
            raise SearchError("give exactly one query: an image, a text or contains")
        return _search_contains(gallery, str(contains), list(where), int(k))
    if (image is None) == (text is None):
        raise SearchError("give exactly one query: an image (optionally with a crop) or a text")
    if crop is not None and image is None:
        raise SearchError("a crop needs an image query")
    if text is not None and not str(text).strip():
        raise SearchError("the text query is empty")
    if int(k) < 1:
        raise SearchError(f"k must be at least 1, not {k}")
    where = list(where)
    with ExitStack() as stack:
        if not isinstance(gallery, (Gallery, ShardedGallery)):
            if is_sharded(gallery):
                gallery = stack.enter_context(ShardedGallery(gallery, create=False))
            elif not (Path(gallery) / DB_NAME).exists():
                raise GalleryError(f"no gallery at {gallery}")
            else:
                gallery = stack.enter_context(Gallery(gallery, create=False))
        allowed = allowed_ids(gallery, where)  # bad filters fail before a model loads
        embedder = resolve_model(gallery, model)
        if text is not None:
            if not getattr(embedder, "has_text", False):
                raise SearchError(f"model {embedder.name!r} has no text encoder, so it cannot "
                                  "answer text queries; query with an image instead")
            query = embedder.embed_texts([str(text)])
        else:
            from matchkit.embed.base import EmbedderError

            picture = query_image(image, crop)
            try:
                query = embedder.embed_images([picture])
            except EmbedderError:
                raise
            except Exception as e:  # the model failing on this picture: a one-line error
                raise SearchError(f"model {embedder.name!r} cannot embed the query image: "
                                  f"{type(e).__name__}: {e}") from None
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        index = gallery.vector_index(embedder.name)
        if allowed is not None and len(allowed) == 0:
            return []
        ids, scores = index.search(query, int(k), allowed=allowed)
        ids, scores = np.asarray(ids).reshape(-1), np.asarray(scores).reshape(-1)
        keep = ids >= 0
        ids, scores = ids[keep].tolist(), scores[keep].tolist()
        rows = gallery.images(ids)
        hits = [SearchHit(i, rows[i].path, float(s), rows[i].meta)
                for i, s in zip(ids, scores) if i in rows]
    hits.sort(key=lambda h: -h.score)
    return hits


def _open_for_reading(gallery, stack: ExitStack):
    if isinstance(gallery, (Gallery, ShardedGallery)):
        return gallery
    if is_sharded(gallery):
        return stack.enter_context(ShardedGallery(gallery, create=False))
    if not (Path(gallery) / DB_NAME).exists():
        raise GalleryError(f"no gallery at {gallery}")
    return stack.enter_context(Gallery(gallery, create=False))


#: The signal ``search(contains=...)`` asks.
CONTAINS_SIGNAL = "ocr"


def _search_contains(gallery, query: str, where: list[str], k: int) -> list[SearchHit]:
    """``search(contains=query)``: see there."""
    from matchkit.signals import get

    if not query.strip():
        raise SearchError("the contains query is empty")
    if k < 1:
        raise SearchError(f"k must be at least 1, not {k}")
    with ExitStack() as stack:
        gallery = _open_for_reading(gallery, stack)
        allowed = allowed_ids(gallery, where)
        if not gallery.signal_payloads(CONTAINS_SIGNAL):
            g = shlex.quote(str(gallery.path))
            raise GalleryError(f"gallery {gallery.path} holds no text read from its images; run "
                               f"`matchkit index DIR --gallery {g} --signal ocr` first")
        ids = None if allowed is None else [int(i) for i in allowed]
        found = get(CONTAINS_SIGNAL).search(gallery, query, ids, k)
        rows = gallery.images([i for i, _ in found])
        return [SearchHit(i, rows[i].path, float(s), rows[i].meta)
                for i, s in found if i in rows]
