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

from ..io import _to_rgb


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


def as_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB view of ``image``, by the same rules as :func:`matchkit.io.load_image`
    (transparency composited over mid-grey, 16-bit and palette modes converted), so an
    image embeds the same whether it came from a file or from the caller."""
    if not isinstance(image, Image.Image):
        raise EmbedderError(f"expected a PIL image, got {type(image).__name__}")
    return _to_rgb(image)


def batches(items: Sequence, size: int):
    """Consecutive slices of at most ``size`` items."""
    size = max(1, int(size))
    for start in range(0, len(items), size):
        yield items[start:start + size]
