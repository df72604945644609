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
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from matchkit.util.fs import atomic_write_bytes
from matchkit.config import Settings
from matchkit.features import ImageRecord, extract_many
from matchkit.store.gallery import Gallery, GalleryError
from matchkit.io.load import ImageLoadError, load_image
from matchkit.jobs.labels import UNKNOWN, LabelError
from matchkit.match.calibrate import MIN_THRESHOLD, fit_open_set  # noqa: F401  (also matchkit.jobs.classify.fit_open_set)
from matchkit.match.query import QueryMatcher

CALIBRATION_FILE = "labeler.json"


@dataclass
class Support:
    """One example behind an answer: a gallery image, a stored vector or a class name."""

    labels: list[str]
    score: float
    #: "image" (gallery image), "vector" (fitted vector) or "text" (class name).
    kind: str
    path: str | None = None
    id: int | None = None
    #: Instance evidence (matchkit/match/query.py) and/or ``cosine`` similarity.
    evidence: dict = field(default_factory=dict)
    #: The two signals behind ``score``: instance match strength and cosine.
    instance: float | None = None
    cosine: float | None = None

    def to_dict(self) -> dict:
        out = {"labels": self.labels, "score": round(self.score, 4), "kind": self.kind}
        if self.path is not None:
            out["path"] = self.path
        if self.id is not None:
            out["id"] = self.id
        if self.evidence:
            out["evidence"] = self.evidence
        return out


@dataclass
class Answer:
    """The label of one query, how sure it is, and the examples behind it."""

    path: str | None
    #: A class, or ``"unknown"``.
    label: str
    #: Probability that ``best`` is right (calibrated), or the raw confidence
    #: when the labeler is not calibrated (``calibrated`` False).
    confidence: float
    #: The best class even when the answer is ``unknown`` (None: no example at all).
    best: str | None
    calibrated: bool
    #: Raw confidence (see the module docstring); compared with the threshold.
    raw: float = 0.0
    #: Classes by vote weight, best first: (class, weight).
    top: list[tuple[str, float]] = field(default_factory=list)
    #: The k examples that voted, strongest first.
    neighbours: list[Support] = field(default_factory=list)
    #: Why the query could not be read.
    error: str | None = None

    def to_dict(self) -> dict:
        out = {"path": self.path, "label": self.label, "confidence": round(self.confidence, 4),
               "best": self.best, "calibrated": self.calibrated, "raw": round(self.raw, 4),
               "top": [[c, round(w, 6)] for c, w in self.top],
               "neighbours": [s.to_dict() for s in self.neighbours]}
        if self.error:
            out["error"] = self.error
        return out


# -- voting and calibration (plain functions, used by Labeler) ----------------

def vote(supports: Sequence[Support], sharpness: float = 4.0) -> list[tuple[str, float, float]]:
    """(class, weight, best score) for every class among ``supports``, best first.

    Weight is the sum of ``score ** sharpness`` over a class's examples. Ties
    are broken by the best single example, then alphabetically by class, so
    the order never depends on input order.
    """
    weight: dict[str, float] = {}
    best: dict[str, float] = {}
    for s in supports:
        w = max(0.0, s.score) ** sharpness
        for c in dict.fromkeys(s.labels):
            weight[c] = weight.get(c, 0.0) + w
            best[c] = max(best.get(c, 0.0), s.score)
    ranked = sorted(weight, key=lambda c: (-weight[c], -best[c], c))
    return [(c, weight[c], best[c]) for c in ranked]


def raw_confidence(ranked: Sequence[tuple[str, float, float]]) -> float:
    """Best score of the winner, discounted by the runner-up's share of the vote."""
    if not ranked or ranked[0][1] <= 0:
        return 0.0
    w1, best = ranked[0][1], ranked[0][2]
    w2 = ranked[1][1] if len(ranked) > 1 else 0.0
    return float(max(0.0, best * (1.0 - w2 / w1)))


def calibrated(raw: float | np.ndarray, calibration: dict) -> float | np.ndarray:
    """P(correct) for raw confidences, from :func:`fit_open_set` data."""
    return np.interp(raw, calibration["x"], calibration["y"])


# -- synthetic calibration queries --------------------------------------------

def synthetic_edit(image, kind: str, rng: random.Random):
    """An edited copy of a PIL image, as people edit photos they pass on.

    Kinds: crop, rotate, scale, blur_jpeg (applied when saving), jitter,
    pad_grey, text, flip. Only Pillow is used, so calibration needs nothing
    beyond matchkit's own dependencies.
    """
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

    im = image.convert("RGB")
    w, h = im.size
    if kind == "crop":
        f = rng.uniform(0.6, 0.85)
        cw, ch = max(8, int(w * f)), max(8, int(h * f))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return im.crop((x, y, x + cw, y + ch))
    if kind == "rotate":
        fill = tuple(rng.randrange(256) for _ in range(3))
        return im.rotate(rng.choice([-1, 1]) * rng.uniform(5, 15), expand=True,
                         resample=Image.Resampling.BILINEAR, fillcolor=fill)
    if kind == "scale":
        f = rng.uniform(0.25, 0.5)
        return im.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.LANCZOS)
    if kind == "blur_jpeg":
        return im.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5)))
    if kind == "jitter":
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))
        im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.7, 1.3))
        return ImageEnhance.Color(im).enhance(rng.uniform(0.5, 1.5))
    if kind == "pad_grey":
        px, py = int(w * rng.uniform(0.1, 0.3)), int(h * rng.uniform(0.1, 0.3))
        fill = tuple(rng.randrange(256) for _ in range(3))
        return ImageOps.grayscale(ImageOps.expand(im, (px, py), fill=fill)).convert("RGB")
    if kind == "text":
        draw = ImageDraw.Draw(im)
        size = max(10, int(h * rng.uniform(0.08, 0.15)))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: fixed-size bitmap font
            font = ImageFont.load_default()
        text = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ0123456789 ") for _ in range(12))
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.text((int(w * rng.uniform(0, 0.4)), int(h * rng.uniform(0.1, 0.7))), text,
                  fill=colour, font=font)
        return im
    if kind == "flip":
        return ImageOps.mirror(im)
    raise ValueError(f"unknown edit {kind!r}")


#: What a synthetic calibration reports to ``Labeler.progress``, in order.
CALIBRATION_STAGES = ("making calibration queries", "reading calibration queries",
                      "matching calibration queries")
#: Records matched per call during calibration (progress granularity only).
CALIBRATION_CHUNK = 25

EDITS = ("crop", "rotate", "scale", "blur_jpeg", "jitter", "pad_grey", "text", "flip")


# -- the estimator ---------------------------------------------------------------

class Labeler:
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

    # -- calibration -------------------------------------------------------
    def calibrate(self, X, y: Sequence[str]) -> "Labeler":
        """Fit the open-set calibration on queries whose answers are known.

        ``y[i]`` is query i's class, or ``"unknown"`` when the gallery has no
        example of it. The queries must not be the data you then report
        accuracy on.
        """
        self._check_fitted()
        if len(y) != (len(X) if not isinstance(X, (str, os.PathLike)) else 1):
            raise ValueError("y needs one answer per query")
        _, sups, errors = self._supports(X, self._wide_k())
        keep = [i for i, e in enumerate(errors) if e is None]
        truth = [set() if y[i] == UNKNOWN else {y[i]} for i in keep]
        self._fit_calibration([sups[i] for i in keep], truth, "queries")
        return self

    def calibrate_synthetic(self, samples: int | None = None) -> "Labeler":
        """Fit the calibration from edited copies of gallery images.

        For up to ``samples`` (default ``calibration_samples``) labelled
        images, ``edits_per_image`` edited copies (crop, rotation, scale,
        blur, colour, padding, text, mirror) are queried twice: with the
        gallery as it is (known: the answer should be the image's class) and
        with every example of that class left out (unknown: any accepted
        answer is wrong).
        """
        self._check_fitted()
        if self.gallery_ is None or not self.image_labels_:
            raise ValueError("synthetic calibration needs a gallery with labelled images")
        rng = random.Random(self.random_state)
        ids = sorted(self.image_labels_)
        ids = rng.sample(ids, min(len(ids), samples or self.calibration_samples))
        paths = {i: img.path for i, img in self.gallery_.images(ids).items()}
        tell = self.progress or (lambda stage, done, total: None)
        with tempfile.TemporaryDirectory(prefix="matchkit-calib-") as tmp:
            files, sources = [], []
            tell(CALIBRATION_STAGES[0], 0, len(ids))
            for n, i in enumerate(ids, 1):
                try:
                    image = load_image(paths[i], max_side=1024,
                                       max_pixels=self.settings_.max_pixels).image
                except ImageLoadError:
                    continue
                finally:
                    tell(CALIBRATION_STAGES[0], n, len(ids))
                for kind in rng.sample(EDITS, min(len(EDITS), self.edits_per_image)):
                    edited = synthetic_edit(image, kind, rng)
                    out = Path(tmp) / f"{i}-{kind}.jpg"
                    quality = rng.randint(20, 35) if kind == "blur_jpeg" else 90
                    edited.save(out, quality=quality)
                    files.append(out)
                    sources.append(i)
            read = [0]

            def one_read() -> None:
                read[0] += 1
                tell(CALIBRATION_STAGES[1], read[0], len(files))

            records, src = [], []
            tell(CALIBRATION_STAGES[1], 0, len(files))
            for (path, rec), i in zip(extract_many(files, self.settings_, on_done=one_read),
                                      sources):
                if not isinstance(rec, ImageLoadError):
                    records.append(rec)
                    src.append(i)
            if not records:
                raise ValueError("no calibration query could be made from the gallery")
            # Each query is asked twice: with the gallery as it is (known) and
            # with its class left out (unknown). Asked in chunks only to report
            # progress; a chunk keeps both askings of a record together.
            known, unknown = [], []
            tell(CALIBRATION_STAGES[2], 0, len(records))
            for start in range(0, len(records), CALIBRATION_CHUNK):
                chunk = records[start:start + CALIBRATION_CHUNK]
                excl = [set(self.image_labels_[i]) for i in src[start:start + CALIBRATION_CHUNK]]
                sups = self._record_supports(chunk + chunk, self._wide_k(),
                                             [set() for _ in chunk] + excl)
                known += sups[:len(chunk)]
                unknown += sups[len(chunk):]
                tell(CALIBRATION_STAGES[2], start + len(chunk), len(records))
            sups = known + unknown
        truth = [set(self.image_labels_[i]) for i in src] + [set() for _ in src]
        self._fit_calibration(sups, truth, "synthetic")
        return self

    def _wide_k(self) -> int:
        """Neighbours gathered for calibration queries: more than ``k``, so the
        cosine maps see negatives too and examples can be re-ranked."""
        return max(4 * self.k, self.k + 10)

    def _fit_calibration(self, supports: list[list[Support]], truth: list[set],
                         source: str) -> None:
        """Cosine maps from the known queries' neighbours, then the isotonic
        confidence and the threshold from every query's raw confidence."""
        maps = {}
        for kind in ("image", "text"):
            pairs = [(s.cosine, bool(t.intersection(s.labels)))
                     for sups, t in zip(supports, truth) if t
                     for s in sups if s.cosine is not None and (s.kind == "text") == (kind == "text")]
            same = sum(p for _, p in pairs)
            if same >= 2 and len(pairs) - same >= 2:
                from sklearn.isotonic import IsotonicRegression

                iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
                iso.fit([c for c, _ in pairs], [float(p) for _, p in pairs])
                maps[kind] = {"x": [float(v) for v in iso.X_thresholds_],
                              "y": [float(v) for v in iso.y_thresholds_]}
        self.calibration_ = {"cosine_maps": maps}  # so _score uses the new maps
        raw, correct = [], []
        for sups, t in zip(supports, truth):
            for s in sups:
                s.score = self._score(s)
            ranked = vote(sorted(sups, key=_support_order)[: self.k], self.sharpness)
            raw.append(raw_confidence(ranked))
            correct.append(bool(t) and bool(ranked) and ranked[0][0] in t)
        cal = fit_open_set(raw, correct, self.target_accuracy)
        cal["cosine_maps"] = maps
        self._set_calibration(cal, source, known=sum(bool(t) for t in truth),
                              unknown=sum(not t for t in truth))

    def _set_calibration(self, cal: dict, source: str, known: int, unknown: int) -> None:
        cal.update(source=source, known_queries=known, unknown_queries=unknown,
                   labelled_images=len(self.image_labels_), profile=self.profile_,
                   fitted_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.calibration_ = cal
        self.threshold_ = cal["threshold"]

    def save_calibration(self, path: str | os.PathLike | None = None) -> Path:
        """Write the calibration as JSON (atomically): to ``path``, or into the
        gallery folder next to the gallery's own files, keyed by parameters."""
        if self.calibration_ is None:
            raise ValueError("nothing to save: the labeler is not calibrated")
        if path is not None:
            atomic_write_bytes(path, json.dumps(self.calibration_, indent=1).encode())
            return Path(path)
        if self.gallery_ is None:
            raise ValueError("no gallery to store the calibration with; give a path")
        file = Path(self.gallery_.path) / CALIBRATION_FILE
        store = _read_store(file)
        store.setdefault("profiles", {})[_profile_key(self.profile_)] = self.calibration_
        atomic_write_bytes(file, json.dumps(store, indent=1).encode())
        return file

    def _profile(self) -> dict:
        """Everything that changes what raw confidences mean."""
        s = asdict(self.settings_)
        s.pop("workers", None)
        if not s.get("signals"):  # (the default, as before signals existed)
            s.pop("signals", None)
        emb = self.embedder_
        return {"k": self.k, "sharpness": self.sharpness, "zoom": self.zoom,
                "target_accuracy": self.target_accuracy,
                "embedder": getattr(emb, "name", None) if emb is not None else None,
                "texts": self.texts if isinstance(self.texts, str) else (
                    None if self.texts is None else "names"),
                "templates": (None if self.texts is None or self.templates is None
                              else list(self.templates)),
                "settings": s,
                "pair_profile": (None if self.profile is None
                                 else _profile_key(self.profile.payload()))}

    def _load_or_fit_calibration(self) -> None:
        mode = self.calibration
        self.threshold_ = None
        if isinstance(mode, dict):
            self._use(dict(mode))
            return
        if isinstance(mode, os.PathLike) or (isinstance(mode, str) and mode not in
                                              ("auto", "stored", "none")):
            try:
                self._use(json.loads(Path(mode).read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"cannot read calibration {mode}: {e}") from None
            return
        if mode == "none":
            return
        if self.gallery_ is not None:
            stored = _read_store(Path(self.gallery_.path) / CALIBRATION_FILE)
            cal = stored.get("profiles", {}).get(_profile_key(self.profile_))
            stale = cal is not None and mode == "auto" and (
                cal.get("source") == "synthetic"
                and cal.get("labelled_images", 0) < self.calibration_samples
                and len(self.image_labels_) >= 2 * cal.get("labelled_images", 0))
            if cal is not None and not stale:
                self._use(cal)
                return
        if mode == "auto" and self.gallery_ is not None and self.image_labels_:
            self.calibrate_synthetic()
            self.calibrated_now_ = True
            try:
                self.save_calibration()
            except OSError as e:
                warnings.warn(f"could not store the calibration with the gallery: {e}")

    def _use(self, cal: dict) -> None:
        if not {"x", "y", "threshold"} <= set(cal):
            raise ValueError("calibration data needs 'x', 'y' and 'threshold'")
        self.calibration_ = cal
        self.threshold_ = cal["threshold"]


def _support_order(s: Support) -> tuple:
    """Strongest first; equal scores in a fixed order (kind, then id or name)."""
    return (-s.score, s.kind, s.id if s.id is not None else -1, s.labels)


def _normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    if X.ndim == 1:
        X = X[None, :]
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.ascontiguousarray(X / np.where(norms > 0, norms, 1.0))


def _profile_key(profile: dict) -> str:
    return hashlib.sha256(json.dumps(profile, sort_keys=True).encode()).hexdigest()[:16]


def _read_store(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        warnings.warn(f"ignoring unreadable calibration file {file}: {e}")
        return {}


def _load_embedder(embedder):
    """An embedder object as given, or one loaded by registry name or path."""
    if embedder is None or not isinstance(embedder, (str, os.PathLike)):
        return embedder
    from matchkit.embed import load_embedder

    return load_embedder(str(embedder))


def embed_paths(embedder, paths: Sequence[str], batch: int = 32) -> tuple[np.ndarray, list[int]]:
    """Embeddings of the readable images among ``paths`` and their positions,
    decoded as the gallery decodes images for embedding."""
    from matchkit.store.gallery import EMBED_DECODE_SIDE

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


__all__ = ["Labeler", "Answer", "Support", "vote", "raw_confidence", "fit_open_set",
           "calibrated", "synthetic_edit", "embed_paths", "UNKNOWN", "GalleryError"]
