"""Learned image (and text) embeddings: a registry of models described as data.

    >>> from matchkit.embed import load_embedder
    >>> model = load_embedder("clip-vit-b32")            # or a directory / .onnx / .toml
    >>> vecs = model.embed_images([img1, img2])          # (2, model.dim) float32, unit rows
    >>> q = model.embed_texts(["a red bicycle"])         # CLIP models only

Importing this package needs neither torch nor onnxruntime; they are loaded
with the first model that needs them (extras ``matchkit[clip]``,
``matchkit[onnx]``).
"""

from matchkit.embed.base import Embedder, EmbedderError, ModelNotFound
from matchkit.embed.registry import DEFAULT_MODEL, ModelInfo, list_models, load_embedder

__all__ = ["Embedder", "EmbedderError", "ModelNotFound", "ModelInfo", "DEFAULT_MODEL",
           "list_models", "load_embedder"]
