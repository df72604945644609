"""Label images by their nearest labelled examples, or answer ``unknown``.

Extreme classification by search: the gallery holds one or a few labelled
examples per class (thousands of classes: a product catalogue, an art
collection, parts on a bench) and a query takes the label of the examples it
resembles. Three kinds of example can vote:

* gallery images, compared with the query by the dedupe evidence
  (pHash, colour, verified local features; see matchkit/match/query.py): this
  recognises *the same object or picture* (instance level);
* gallery images again, by cosine similarity of an embedding model (when an
  ``embedder`` is given): this recognises *look-alike* classes;
* class names, embedded with the text side of a CLIP model (``texts``):
  zero-shot classes, alone or mixed with image examples.

**Scores and votes.** Each example gets a score in [0, 1]: the match
strength of the instance evidence (at least 0.5 exactly when dedupe would
call the two the same picture), or its cosine similarity, whichever is
larger. Once calibrated, a cosine counts as the probability that an example
that similar has the query's class, learned from the calibration queries
separately for image and text examples (their cosines live on different
scales), so an embedding that says little cannot outvote a verified copy. The ``k`` best examples vote for their labels with weight
``score ** sharpness``; a high ``sharpness`` lets one strong example outvote
several weak ones. Classes rank by total weight, then by their single best
example, then by name, so equal evidence always gives the same answer.

**Open set.** The answer's raw confidence is ``best * (1 - W2 / W1)``: the
best example's score of the winning class, discounted by how close the
runner-up class's weight ``W2`` comes to the winner's ``W1`` (an exact tie
scores 0). Calibration turns it into a probability that the answer is right
(isotonic regression on calibration queries whose answers are known) and
picks the accept threshold: the lowest raw confidence at which a one-sided
95% Clopper-Pearson lower bound on the accuracy of accepted calibration
answers still reaches ``target_accuracy``, and never so low that answers
there are more often wrong than right. Below it the answer is
``unknown``. Calibration queries come from the user (:meth:`Labeler.calibrate`)
or are made from the gallery (:meth:`Labeler.calibrate_synthetic`): edits of
gallery images are known queries, and the same edits with their whole class
left out of the gallery are unknown ones. The fitted calibration is plain
JSON data stored with the gallery (``labeler.json``), never a pickle.

**Modules.** ``Labeler`` (here: its parameters, fitting and the query
methods) mixes in its neighbour search (``classify_neighbours.py``) and its
calibration (``classify_calibration.py``); the answer records and the vote
are in ``classify_answers.py``. Their names are imported back here. This
module stays a little over 400 lines to keep the estimator's public face
(``fit``, ``predict`` and the parameter reference) in one place.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from matchkit.config import Settings
from matchkit.store.gallery import Gallery, GalleryError
from matchkit.jobs.labels import UNKNOWN, LabelError
from matchkit.match.calibrate import MIN_THRESHOLD, fit_open_set  # noqa: F401  (also matchkit.jobs.classify.fit_open_set)
from matchkit.match.query import QueryMatcher
# Moved from here to the modules beside it; imported back for older imports.
from matchkit.jobs.classify_answers import (  # noqa: F401  (re-exported)
    Answer, Support, _support_order, calibrated, raw_confidence, vote)
from matchkit.jobs.classify_neighbours import (  # noqa: F401  (re-exported)
    LabelerNeighbours, _normalise, embed_paths)
from matchkit.jobs.classify_calibration import (  # noqa: F401  (re-exported)
    CALIBRATION_CHUNK, CALIBRATION_FILE, CALIBRATION_STAGES, EDITS, LabelerCalibration,
    _profile_key, _read_store, synthetic_edit)


# -- the estimator ---------------------------------------------------------------

class Labeler(LabelerNeighbours, LabelerCalibration):
    """k-nearest-neighbour labels from a gallery, with ``unknown`` for the rest.

    Parameters are set in the constructor, learned state in attributes ending
    in ``_`` (scikit-learn style).

    >>> lab = Labeler(k=5, target_accuracy=0.99).fit("catalogue-gallery")  # doctest: +SKIP
    >>> lab.predict(["query.jpg"])                                          # doctest: +SKIP
    array(['sku-1234'], dtype=object)

    ``fit`` takes a :class:`~matchkit.store.gallery.Gallery` (or its folder) with
    labelled images, or an ``(n, d)`` array of embedding vectors with labels
    ``y``, or nothing (zero-shot, from ``texts`` only). ``predict`` and the
    other query methods take image paths, or an ``(n, d)`` array of query
    vectors when there are embedding examples.

    Parameters
    ----------
    k:
        Examples that vote for each query.
    target_accuracy:
        Accuracy wanted on accepted (non-``unknown``) answers; calibration
        picks the threshold for it.
    settings:
        Feature settings (default: the gallery's).
    embedder:
        An embedding model (:func:`matchkit.embed.load_embedder` name or
        path, or an ``Embedder``). Labelled gallery images without a vector
        for it are embedded at ``fit`` and the vectors stored in the gallery.
    texts:
        Class names to add as text examples (zero-shot classes; needs a CLIP
        model), or ``"labels"`` to add every gallery class name as well.
    templates:
        Prompt templates for the class names (default: the model's own).
    sharpness:
        Vote weight is ``score ** sharpness``.
    calibration:
        "auto" (load the calibration stored with the gallery for these
        parameters, or fit one from synthetic queries and store it),
        "stored" (load it if present, else stay uncalibrated), "none", or
        calibration data from an earlier fit (a dict, or a JSON file written
        by :meth:`save_calibration`). Uncalibrated answers are accepted when
        their raw confidence is at least 0.5 (for instance evidence: a
        verified match with no competing class) and say ``calibrated: false``.
    calibration_samples, edits_per_image, random_state:
        Size and seed of the synthetic calibration.
    progress:
        Called as ``progress(stage, done, total)`` while a synthetic
        calibration runs, for each of ``CALIBRATION_STAGES`` (a progress bar
        for the minute the first ``label`` on a gallery spends on it).
    zoom:
        Give unmatched queries a closer second look (matchkit/match/query.py).
    cache_size:
        Gallery images whose local features (~32 KB each) the labeler keeps
        in memory between queries.
    profile:
        A calibrated pair profile (``profiles.Profile``) that decides whether
        a query is a copy of a gallery example, instead of the hand rules;
        its settings overrides apply. Stored calibrations are kept per profile.

    Learned attributes: ``classes_``, ``n_examples_``, ``calibration_``
    (plain data), ``threshold_``, ``gallery_``, ``embedder_``.

    Ties: classes rank by vote weight, then best single example, then name;
    an exact tie between the two best classes has raw confidence 0 and is
    always answered ``unknown`` (its ``best`` is the alphabetically first).
    """

    def __init__(self, k: int = 5, target_accuracy: float = 0.99, *,
                 settings: Settings | None = None, embedder=None,
                 texts: Sequence[str] | str | None = None,
                 templates: Sequence[str] | None = None,
                 sharpness: float = 4.0, calibration: str | dict | os.PathLike = "auto",
                 calibration_samples: int = 200, edits_per_image: int = 2,
                 zoom: bool = True, profile=None, random_state: int = 0,
                 level: str | None = None, cache_size: int = 4096,
                 progress: Callable[[str, int, int], None] | None = None):
        self.k = k
        self.cache_size = cache_size
        #: Told ``(stage, done, total)`` as a synthetic calibration runs (it can
        #: take a minute on the first query of a gallery): see ``CALIBRATION_STAGES``.
        self.progress = progress
        #: Which relations count as a copy of a labelled example (None: the settings').
        self.level = level
        self.target_accuracy = target_accuracy
        self.settings = settings
        self.embedder = embedder
        self.texts = texts
        self.templates = templates
        self.sharpness = sharpness
        self.calibration = calibration
        self.calibration_samples = calibration_samples
        self.edits_per_image = edits_per_image
        self.zoom = zoom
        self.profile = profile
        self.random_state = random_state

    # -- fitting -----------------------------------------------------------
    def fit(self, X=None, y: Sequence | None = None) -> "Labeler":
        """Learn the examples: a gallery (or its folder), vectors with labels, or nothing."""
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if self.level is not None:
            from matchkit.relation import check_level
            check_level(self.level)  # before any gallery is opened
        self.close()
        self.gallery_ = None
        self._own_gallery = False
        self.matcher_ = None
        self.image_labels_: dict[int, list[str]] = {}
        #: Embedding examples: a VectorIndex keyed by gallery id (gallery mode,
        #: searched within ``_vector_allowed``) or by row number (vector mode).
        self._vector_index = None
        self._vector_allowed: np.ndarray | None = None
        self._vector_labels: dict[int, list[str]] = {}
        self._text_vectors = None
        self._text_labels: list[str] = []
        self.embedder_ = _load_embedder(self.embedder)
        self.settings_ = self.settings or Settings()
        if X is None:
            pass
        elif isinstance(X, (Gallery, str, os.PathLike)):
            self._fit_gallery(X)
        else:
            self._fit_vectors(X, y)
        self._fit_texts()
        classes = {c for v in self.image_labels_.values() for c in v}
        classes |= {c for v in self._vector_labels.values() for c in v} | set(self._text_labels)
        if not classes:
            where = f"gallery {self.gallery_.path}" if self.gallery_ is not None else "the data"
            raise LabelError(f"{where} has no labelled examples; import labels first "
                             "(matchkit labels import --gallery GALLERY --folder DIR)")
        self.classes_ = np.array(sorted(classes), dtype=object)
        counts: dict[str, int] = {}
        for values in list(self.image_labels_.values()) + (
                list(self._vector_labels.values()) if self.gallery_ is None else []):
            for c in dict.fromkeys(values):
                counts[c] = counts.get(c, 0) + 1
        self.n_examples_ = counts
        self.profile_ = self._profile()
        self.calibration_ = None
        #: Whether this fit computed the calibration (rather than loading it).
        self.calibrated_now_ = False
        self._load_or_fit_calibration()
        return self

    def _fit_gallery(self, X) -> None:
        if isinstance(X, Gallery):
            g = X
        else:
            g = Gallery(X, create=False)
            self._own_gallery = True
        self.gallery_ = g
        if len(g) == 0:
            raise LabelError(f"gallery {g.path} is empty; add labelled images first "
                             "(matchkit labels import --gallery GALLERY --folder DIR)")
        self.settings_ = self.settings or g.settings
        if self.profile is not None:
            self.settings_ = self.profile.apply(self.settings_, self.level)
        if self.level is not None:
            self.settings_ = self.settings_.with_(level=self.level)
        self.image_labels_ = {i: [str(v) for v in values] for i, values in g.labelled().items()}
        if self.image_labels_:
            self.matcher_ = self._matcher(g)
        if self.embedder_ is not None and self.image_labels_:
            # Vectors live in the gallery (matchkit index --model); labelled
            # images that lack one are embedded now, once, and stored.
            emb = self.embedder_
            ids = np.array(sorted(self.image_labels_), np.int64)
            have = g.embedded_ids(emb.name) if emb.name in g.models() else np.zeros(0, np.int64)
            missing = np.setdiff1d(ids, have)
            if len(missing):
                g.embed(emb, missing.tolist())
            self._vector_index = g.vector_index(emb.name)
            self._vector_allowed = np.intersect1d(ids, g.embedded_ids(emb.name))
            self._vector_labels = self.image_labels_

    def _matcher(self, g: Gallery) -> QueryMatcher:
        return QueryMatcher(g, self.settings_, allowed=set(self.image_labels_), zoom=self.zoom,
                            calibrator=self.profile.calibrator if self.profile is not None
                            else None, cache_size=self.cache_size)

    def refresh(self, gallery: Gallery) -> bool:
        """Answer from ``gallery``, a newer open state of the gallery this
        labeler was fitted on, keeping the fit and its calibration: True if
        its labelled examples (and their vectors) are the same there. A
        server's reader reopens its gallery after writes; adding unlabelled
        images need not cost a new fit. False (and nothing changed) when the
        examples changed or the labeler was fitted some other way: fit again."""
        self._check_fitted()
        if self.gallery_ is None or self._own_gallery or self.texts is not None:
            return False
        labels = {i: [str(v) for v in values] for i, values in gallery.labelled().items()}
        if labels != self.image_labels_ or not labels:
            return False
        emb = self.embedder_
        if emb is not None:
            ids = np.array(sorted(labels), np.int64)
            have = (gallery.embedded_ids(emb.name) if emb.name in gallery.models()
                    else np.zeros(0, np.int64))
            allowed = np.intersect1d(ids, have)
            if len(allowed) != len(ids):
                return False  # some examples need a vector: fit embeds them
            self._vector_index = gallery.vector_index(emb.name)
            self._vector_allowed = allowed
        old, self.matcher_ = self.matcher_, self._matcher(gallery)
        if old is not None:
            old.close()
        self.gallery_ = gallery
        return True

    def _fit_vectors(self, X, y) -> None:
        X = np.asarray(X, np.float32)
        if X.ndim != 2:
            raise ValueError("vectors must be a 2-D array (n_examples, dim)")
        if y is None or len(y) != len(X):
            raise ValueError("y must give one label (or list of labels) per vector")
        self.settings_ = self.settings or Settings()
        from matchkit.index.vectors import VectorIndex

        self._vector_labels = {
            row: [str(v)] if isinstance(v, (str, int, np.integer)) else [str(x) for x in v]
            for row, v in enumerate(y)}
        name = getattr(self.embedder_, "name", None) or "vectors"
        self._vector_index = VectorIndex(name, X.shape[1])
        if len(X):
            self._vector_index.add(np.arange(len(X)), _normalise(X))

    def _fit_texts(self) -> None:
        if self.texts is None:
            return
        if self.embedder_ is None or not getattr(self.embedder_, "has_text", False):
            raise ValueError("texts need an embedder with a text side (a CLIP model)")
        if isinstance(self.texts, str):
            if self.texts != "labels":
                raise ValueError("texts must be a list of class names or 'labels'")
            names = sorted({c for v in self.image_labels_.values() for c in v}
                           | {c for v in self._vector_labels.values() for c in v})
        else:
            names = list(dict.fromkeys(str(t) for t in self.texts))
        if not names:
            return
        emb = self.embedder_
        if self.templates is None:  # the model's own prompt templates
            vecs = emb.embed_texts(names)
        else:
            try:
                vecs = emb.embed_texts(names, templates=tuple(self.templates))
            except TypeError:  # an embedder without templates of its own
                t = list(self.templates) or ["{}"]
                vecs = np.asarray(emb.embed_texts([x.format(n) for n in names for x in t]),
                                  np.float32).reshape(len(names), len(t), -1).mean(axis=1)
        self._text_vectors = _normalise(np.asarray(vecs, np.float32))
        self._text_labels = names

    def close(self) -> None:
        """Release the worker pool and the gallery this labeler opened itself."""
        if getattr(self, "matcher_", None) is not None:
            self.matcher_.close()
        if getattr(self, "_own_gallery", False) and getattr(self, "gallery_", None) is not None:
            self.gallery_.close()
            self._own_gallery = False

    def __enter__(self) -> "Labeler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- predicting --------------------------------------------------------
    def predict(self, X) -> np.ndarray:
        """Labels (or ``"unknown"``) for image paths or query vectors."""
        return np.array([a.label for a in self.answers(X)], dtype=object)

    def predict_proba(self, X) -> np.ndarray:
        """Probabilities over ``classes_``, shape (n_queries, n_classes).

        The best class gets the answer's confidence (calibrated when the
        labeler is). Each other voting class gets its share of ``1 -
        confidence`` by vote weight (the best class's own share counts as
        unknown), but never more than the best class. ``1 - row sum`` is the
        probability that the answer is none of these (unknown).
        """
        answers = self.answers(X)
        col = {c: i for i, c in enumerate(self.classes_)}
        out = np.zeros((len(answers), len(self.classes_)))
        for r, a in enumerate(answers):
            if a.best is None:
                continue
            out[r, col[a.best]] = a.confidence
            total = sum(w for _, w in a.top)
            rest = 1.0 - a.confidence
            for c, w in a.top[1:]:
                if total > 0:
                    out[r, col[c]] = min(a.confidence, rest * w / total)
        return out

    def kneighbors(self, X, n_neighbors: int | None = None) -> list[list[Support]]:
        """The ``n_neighbors`` (default ``k``) best examples of each query, strongest first.

        Unlike scikit-learn's (distances, indices) arrays, each neighbour
        carries its labels, score and evidence.
        """
        return self._supports(X, n_neighbors or self.k)[1]

    def top_k(self, X, n: int = 5) -> list[list[tuple[str, float]]]:
        """The ``n`` best classes of each query by vote weight."""
        return [a.top[:n] for a in self.answers(X)]

    def answers(self, X) -> list[Answer]:
        """Full answers: label, confidence, best class, votes and supporting examples."""
        self._check_fitted()
        paths, supports, errors = self._supports(X, self.k)
        return [self._answer(p, s, e) for p, s, e in zip(paths, supports, errors)]

    def report(self, answers: Sequence[Answer], seconds: float = 0.0) -> dict:
        """The JSON of ``matchkit label`` (and of the API's label endpoint):
        answers, counts, and the calibration they were judged with."""
        known = [a for a in answers if a.label != "unknown"]
        cal = self.calibration_
        profile = self.profile
        return {
            "answers": [a.to_dict() for a in answers],
            "stats": {"queries": len(answers), "labelled": len(known),
                      "unknown": len(answers) - len(known),
                      "unreadable": sum(a.error is not None for a in answers),
                      "classes": len(self.classes_), "k": self.k,
                      "profile": profile.name if profile else None,
                      "target_precision": profile.target_precision if profile else None,
                      "level": self.settings_.level, "seconds": round(seconds, 3)},
            "calibration": None if cal is None else {
                key: cal.get(key) for key in ("threshold", "target_accuracy", "certified",
                                              "source", "queries", "accuracy_lower_bound",
                                              "fitted_at")},
        }

    def _answer(self, path, supports: list[Support], error: str | None = None) -> Answer:
        ranked = vote(supports, self.sharpness)
        raw = raw_confidence(ranked)
        cal = self.calibration_
        if cal is not None:
            conf = float(calibrated(raw, cal))
            threshold = cal["threshold"]
            accept = threshold is not None and raw >= threshold
        else:
            conf, accept = raw, raw >= 0.5
        best = ranked[0][0] if ranked else None
        label = best if (accept and best is not None and error is None) else UNKNOWN
        return Answer(path, label, 0.0 if error else conf, best, cal is not None, raw,
                      [(c, w) for c, w, _ in ranked], supports, error)

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise RuntimeError("this Labeler is not fitted yet; call fit() first")


def _load_embedder(embedder):
    """An embedder object as given, or one loaded by registry name or path."""
    if embedder is None or not isinstance(embedder, (str, os.PathLike)):
        return embedder
    from matchkit.embed import load_embedder

    return load_embedder(str(embedder))


__all__ = ["Labeler", "Answer", "Support", "vote", "raw_confidence", "fit_open_set",
           "calibrated", "synthetic_edit", "embed_paths", "UNKNOWN", "GalleryError"]
