"""Learned embeddings as a signal: the cosine of two images' vectors.

The models are :mod:`matchkit.embed` (CLIP, any ONNX model such as SSCD);
the gallery computes vectors in batches after extraction
(``Gallery.embed``), because a model runs best on many images at once, and
keeps them per model. This module says what the signal keeps, proposes and
adds to a pair. Without a model every pair has ``cosine_missing = 1``, so a
profile fitted with and without embeddings reads the same features.
"""

from __future__ import annotations

from dataclasses import dataclass

from matchkit.signals import PairContext, Signal


@dataclass(frozen=True)
class EmbeddingSignal(Signal):
    name: str = "embedding"
    features: tuple[str, ...] = (
        "cosine_missing",  # no learned embedding for the pair (1/0)
        "cosine",          # embedding cosine (0 when missing)
    )
    stores: tuple[str, ...] = ("embeddings.vector", "vectors-*.usearch")
    candidates: str | None = ("each other's nearest by cosine "
                              "(match.searches.embedding_candidates over the gallery's vector index)")

    def enabled(self, settings) -> bool:
        return settings.model is not None

    def pair_features(self, pair, context: PairContext) -> tuple[float, ...]:
        c = pair.cosine
        return (1.0, 0.0) if c is None else (0.0, float(c))

    def evidence(self, pair) -> dict:
        return {} if pair.cosine is None else {"cosine": round(pair.cosine, 4)}
