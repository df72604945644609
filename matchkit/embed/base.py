"""What every embedder promises: unit-length float32 vectors, one row per input.

An embedder turns images (and, for CLIP-like models, texts) into vectors
whose dot product is their cosine similarity, so a vector index can compare
them directly. ``name`` is what a gallery records, so a gallery built with one
model is never searched with another.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from matchkit.io.load import _to_rgb


class EmbedderError(Exception):
    """An embedder could not be built or could not embed its input."""


class ModelNotFound(EmbedderError):
    """The model (name, directory, file or package) is not available on this machine.

    The message always says how to get it: matchkit never downloads silently
    and never falls back to a different model.
    """


#: Appended to "not found" messages for models fetched from the Hugging Face hub.
HUB_HOWTO = (
    "On a machine with internet access run `huggingface-cli download {repo} --local-dir DIR` "
    "(or `hf download {repo} --local-dir DIR`), copy DIR here and pass its path instead of "
    "the name; or make the model available in the Hugging Face cache (HF_HOME).")


class Embedder:
    """Base class: subclasses set ``name``, ``dim``, ``has_text`` and implement
    :meth:`embed_images` (and :meth:`embed_texts` when ``has_text``)."""

    name: str = ""
    dim: int = 0
    has_text: bool = False

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """float32 array (len(images), dim), rows of unit length."""
        raise NotImplementedError

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts), dim), rows of unit length, in the image space."""
        raise EmbedderError(f"model {self.name!r} has no text encoder; text queries need a "
                            "CLIP-style model such as 'clip-vit-b32'")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, has_text={self.has_text})"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32 (all-zero rows stay zero rather than NaN)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


#: Longest side / shortest side an image is embedded with. Models resize the
#: shorter side to about 224 pixels, so a 1024x1 strip would become a
#: 229,376 x 224 picture (hundreds of MB) before its centre is cropped: the
#: centre of a longer image is cut to this ratio first. Photos and panoramas
#: (up to about 10:1) are unaffected.
MAX_ASPECT = 16


def as_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB view of ``image``, by the same rules as :func:`matchkit.io.load.load_image`
    (transparency composited over mid-grey, 16-bit and palette modes converted), so an
    image embeds the same whether it came from a file or from the caller.
    Extreme strips are cut to :data:`MAX_ASPECT` around their centre."""
    if not isinstance(image, Image.Image):
        raise EmbedderError(f"expected a PIL image, got {type(image).__name__}")
    image = _to_rgb(image)
    w, h = image.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        long = MAX_ASPECT * min(w, h)
        if w > h:
            image = image.crop(((w - long) // 2, 0, (w - long) // 2 + long, h))
        else:
            image = image.crop((0, (h - long) // 2, w, (h - long) // 2 + long))
    return image


def embed_isolated(embedder: "Embedder", images: Sequence[Image.Image]
                   ) -> tuple[np.ndarray, dict[int, str]]:
    """``embedder.embed_images(images)``, but an image the model fails on only
    loses its own row: when the batch raises, each image is embedded alone.
    Returns the vectors (failed rows zero) and ``{row: reason}`` of failures."""
    def one(batch) -> np.ndarray:
        return np.asarray(embedder.embed_images(list(batch)), dtype=np.float32)

    if len(images) > 1:
        try:
            return one(images), {}
        except Exception:  # noqa: BLE001 -- find the image(s) it was, below
            pass
    rows, failed = [], {}
    for i, im in enumerate(images):
        try:
            rows.append(one([im]).reshape(-1))
        except Exception as e:  # one image's failure must not end the run
            failed[i] = f"model {embedder.name!r} failed on this image: {type(e).__name__}: {e}"
            rows.append(None)
    dim = next((len(r) for r in rows if r is not None), int(embedder.dim))
    out = np.zeros((len(images), dim), np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = r
    return out, failed


def batches(items: Sequence, size: int):
    """Consecutive slices of at most ``size`` items."""
    size = max(1, int(size))
    for start in range(0, len(items), size):
        yield items[start:start + size]
