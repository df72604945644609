"""The examples behind each ``Labeler`` query: gallery images by instance
evidence (``QueryMatcher``), stored vectors and class names by cosine
similarity, merged into one list of ``Support`` per query.

Split from ``jobs/classify.py``: ``LabelerNeighbours`` is mixed into ``Labeler``
(its ``-- neighbours --`` section) and reads what ``fit`` learned
(``matcher_``, ``image_labels_``, the vector index and text vectors) and
the calibration's cosine maps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from matchkit.features import ImageRecord, extract_many
from matchkit.io.load import ImageLoadError, load_image
from matchkit.jobs.classify_answers import Support, _support_order


class LabelerNeighbours:
    """Neighbour search of a fitted ``classify.Labeler`` (mixed into it)."""

    # -- neighbours --------------------------------------------------------
    def _supports(self, X, k: int, exclude: Sequence[set] | None = None
                  ) -> tuple[list, list[list[Support]], list[str | None]]:
        """(query names, k best examples per query, read errors) for paths or vectors.

        ``exclude[i]`` holds labels whose examples query i must not see
        (leave-class-out calibration).
        """
        if isinstance(X, np.ndarray) and X.dtype != object:
            vecs = np.asarray(X, np.float32).reshape(len(X), -1)
            sups = self._vector_supports(vecs, k, exclude)
            return [None] * len(vecs), sups, [None] * len(vecs)
        paths = [str(p) for p in ([X] if isinstance(X, (str, os.PathLike)) else X)]
        records: list[ImageRecord | None] = []
        errors: list[str | None] = []
        for path, rec in extract_many(paths, self.settings_):
            if isinstance(rec, ImageLoadError):
                records.append(None)
                errors.append(rec.reason)
            else:
                records.append(rec)
                errors.append(None)
        return paths, self._record_supports(records, k, exclude, errors), errors

    def _record_supports(self, records: Sequence[ImageRecord | None], k: int,
                         exclude: Sequence[set] | None, errors: list | None = None
                         ) -> list[list[Support]]:
        n = len(records)
        exclude = list(exclude) if exclude is not None else [set()] * n
        live = [i for i in range(n) if records[i] is not None]
        found: list[dict[tuple, Support]] = [{} for _ in range(n)]
        if self.matcher_ is not None and live:
            excl_ids = [self._ids_with(exclude[i]) for i in live]
            results = self.matcher_.match_records([records[i] for i in live], excl_ids)
            for i, neighbours in zip(live, results):
                for nb in neighbours:
                    found[i][("image", nb.id)] = Support(
                        list(self.image_labels_[nb.id]), nb.score, "image", nb.path, nb.id,
                        nb.evidence.to_evidence(), instance=nb.score)
        if self.embedder_ is not None and live:
            vecs, kept = embed_paths(self.embedder_, [records[i].path for i in live])
            if errors is not None:
                for j, i in enumerate(live):
                    if j not in set(kept):
                        errors[i] = "cannot embed image"
            rows = [live[j] for j in kept]
            by_vec = self._vector_supports(vecs, k, [exclude[i] for i in rows])
            for i, sups in zip(rows, by_vec):
                for s in sups:
                    key = (s.kind, s.id if s.kind != "text" else s.labels[0])
                    old = found[i].get(key)
                    if old is None:
                        if s.kind == "image":
                            s.path = self._path_of(s.id)
                        found[i][key] = s
                    else:  # the same gallery image by both signals: the stronger speaks
                        old.evidence["cosine"] = s.evidence["cosine"]
                        old.cosine = s.cosine
                        old.score = self._score(old)
        return [sorted(f.values(), key=_support_order)[:k] for f in found]

    def _score(self, s: Support) -> float:
        """An example's score: the stronger of its instance evidence and its
        (mapped) cosine similarity."""
        score = s.instance or 0.0
        if s.cosine is not None:
            score = max(score, self._cosine_score(s.cosine, s.kind))
        return score

    def _cosine_score(self, cos: float, kind: str) -> float:
        """Cosine similarity on the scale of match strengths: the calibrated
        P(same class | cosine) for this kind of example (image-image and
        image-text cosines live on different scales), or the cosine itself."""
        maps = (self.calibration_ or {}).get("cosine_maps") or {}
        m = maps.get("text" if kind == "text" else "image")
        if m:
            return float(np.interp(cos, m["x"], m["y"]))
        return max(0.0, min(1.0, float(cos)))

    def _path_of(self, image_id: int) -> str | None:
        try:
            return self.gallery_.get(image_id).path
        except KeyError:
            return None

    def _ids_with(self, labels: set) -> set[int]:
        if not labels:
            return set()
        return {i for i, v in self.image_labels_.items() if labels.intersection(v)}

    def _vector_supports(self, vecs: np.ndarray, k: int, exclude: Sequence[set] | None
                         ) -> list[list[Support]]:
        """Examples by cosine similarity: stored vectors and class-name texts."""
        n = len(vecs)
        exclude = list(exclude) if exclude is not None else [set()] * n
        vecs = _normalise(vecs)
        out: list[list[Support]] = [[] for _ in range(n)]
        index = self._vector_index
        if index is not None and len(index):
            if vecs.shape[1] != index.dim:
                raise ValueError(f"query vectors have {vecs.shape[1]} dimensions, "
                                 f"the examples {index.dim}")
            extra = max((sum(self.n_examples_.get(c, 0) for c in e) for e in exclude if e),
                        default=0)
            allowed = self._vector_allowed
            size = len(index) if allowed is None else len(allowed)
            want = max(1, min(size, k + extra))
            ids, sims = index.search(vecs, want, allowed=allowed)
            kind = "image" if self.gallery_ is not None else "vector"
            for i in range(n):
                for key, cos in zip(ids[i].tolist(), sims[i].tolist()):
                    if key < 0:
                        break
                    labels = self._vector_labels.get(key)
                    if labels is None or (exclude[i] and exclude[i].intersection(labels)):
                        continue
                    out[i].append(Support(list(labels), self._cosine_score(cos, kind), kind,
                                          None, key, {"cosine": round(cos, 4)}, cosine=cos))
                    if len(out[i]) >= k:
                        break
        if self._text_vectors is not None:
            sims = vecs @ self._text_vectors.T
            for i in range(n):
                for j in np.argsort(-sims[i], kind="stable")[:k + len(exclude[i])].tolist():
                    name = self._text_labels[j]
                    if name in exclude[i]:
                        continue
                    cos = float(sims[i, j])
                    out[i].append(Support([name], self._cosine_score(cos, "text"), "text", None,
                                          None, {"cosine": round(cos, 4), "text": name},
                                          cosine=cos))
        return [sorted(s, key=_support_order)[:k] for s in out]


def _normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    if X.ndim == 1:
        X = X[None, :]
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.ascontiguousarray(X / np.where(norms > 0, norms, 1.0))


def embed_paths(embedder, paths: Sequence[str], batch: int = 32) -> tuple[np.ndarray, list[int]]:
    """Embeddings of the readable images among ``paths`` and their positions,
    decoded as the gallery decodes images for embedding."""
    from matchkit.features.embedding import EMBED_DECODE_SIDE

    vecs, kept = [], []
    for start in range(0, len(paths), batch):
        images, where = [], []
        for j, p in enumerate(paths[start:start + batch], start):
            try:
                images.append(load_image(p, max_side=EMBED_DECODE_SIDE).image)
                where.append(j)
            except ImageLoadError:
                continue
        if images:
            vecs.append(np.asarray(embedder.embed_images(images), np.float32))
            kept += where
    dim = getattr(embedder, "dim", 0)
    return (np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)), kept
