"""Extraction of the embedding signal: decode stored images, run a model,
keep the vectors that are usable.

The other signals are extracted in one decode per file (:mod:`.record`);
embeddings come after, in batches, because a model runs best on many images
at once and a gallery may be embedded later, or with another model, than it
was indexed. The gallery stores what this yields (``Gallery.embed``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from matchkit.embed.base import batches, embed_isolated
from matchkit.io.load import ImageLoadError, load_image

#: Longest side images are decoded at for embedding (JPEGs in draft mode):
#: CLIP-style models look at ~224 pixels of the shorter side, so this keeps
#: even 4:1 panoramas above that while decoding camera photos several times faster.
EMBED_DECODE_SIDE = 1024


class VectorShapeError(ValueError):
    """A model returned vectors of another shape than it declares."""


@dataclass
class EmbeddedBatch:
    """One batch of :func:`embed_images`: the usable vectors and what was not."""

    #: Images embedded, in input order, and their vectors (float32, finite, non-zero).
    ids: list[int]
    vectors: np.ndarray
    #: (path, reason) of the images of the batch that gave no usable vector.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: Images of the input this batch covered (embedded or skipped).
    done: int = 0


def load_for_embedding(path: str, size: int, mtime_ns: int, max_pixels: int | None):
    """The image at ``path`` decoded for a model, or a reason why it cannot
    be used now: unreadable, or changed since it was added (its stored
    size and mtime ``size``/``mtime_ns``), so the vector would describe
    another picture than the stored features."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot read file: {e.strerror or e}"
    if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
        return "file changed since it was added; add it again first"
    try:
        return load_image(path, max_side=EMBED_DECODE_SIDE, max_pixels=max_pixels).image
    except ImageLoadError as e:
        return e.reason


def embed_images(embedder, images: Sequence, *, batch_size: int, workers: int,
                 max_pixels: int | None = None) -> Iterator[EmbeddedBatch]:
    """``embedder``'s vectors of ``images`` (stored images: ``id``, ``path``,
    ``size``, ``mtime_ns``), one :class:`EmbeddedBatch` per ``batch_size``
    images. Decoding runs on ``workers`` threads while the model embeds the
    previous batch. An image the model fails on, or whose vector is not
    finite or is zero, is skipped with a reason, and the rest completes;
    a model whose vectors have another width than ``embedder.dim`` raises
    :class:`VectorShapeError` (every vector would be wrong)."""
    name, dim = str(embedder.name), int(embedder.dim)
    chunks = list(batches(images, batch_size))

    def load(rec):
        return load_for_embedding(rec.path, rec.size, rec.mtime_ns, max_pixels)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = [pool.submit(load, r) for r in chunks[0]] if chunks else []
        for n, chunk in enumerate(chunks):
            loaded = [f.result() for f in pending]
            pending = ([pool.submit(load, r) for r in chunks[n + 1]]
                       if n + 1 < len(chunks) else [])
            skipped = [(rec.path, why) for rec, why in zip(chunk, loaded) if isinstance(why, str)]
            good = [(rec, img) for rec, img in zip(chunk, loaded) if not isinstance(img, str)]
            ids, vecs = [], np.zeros((0, dim), np.float32)
            if good:
                vecs, failed = embed_isolated(embedder, [img for _, img in good])
                skipped += [(good[i][0].path, why) for i, why in failed.items()]
                good = [g for i, g in enumerate(good) if i not in failed]
                vecs = np.delete(vecs, list(failed), axis=0)
                if vecs.shape != (len(good), dim):
                    raise VectorShapeError(f"model {name!r} returned vectors of shape "
                                           f"{vecs.shape}, expected ({len(good)}, {dim})")
                ok = np.isfinite(vecs).all(axis=1) & (np.linalg.norm(vecs, axis=1) > 0)
                skipped += [(rec.path, f"model {name!r} returned an invalid vector")
                            for (rec, _), fine in zip(good, ok) if not fine]
                ids = [rec.id for (rec, _), fine in zip(good, ok) if fine]
                vecs = vecs[ok]
            yield EmbeddedBatch(ids, vecs, skipped, len(chunk))
