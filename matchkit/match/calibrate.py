"""The calibrated pair decision: pair features -> P(duplicate) -> accept or not.

``PairCalibrator`` is a small scikit-learn style estimator (constructor
parameters, ``fit``, ``predict_proba``, ``predict``, fitted state in
attributes ending in ``_``). It fits in two steps on two disjoint parts of
the data, because a threshold picked on the data the model was fitted on
is optimistic:

1. a model on ``pairfeatures.FEATURES`` (fit part): gradient-boosted trees
   (``model="boosting"``, what ``matchkit calibrate`` fits) or a logistic
   regression on standardised features (``model="logistic"``, this class's
   default for backward compatibility). Chosen by measurement: before the
   suites had variant edits, trees did better on their own held-out pairs
   but worse on the AugLy-made calib-half hard set they had not seen (394
   false pairs among its verified candidates against 36), so logistic was
   the default. Once the copy-detection suite gained recolours (negatives
   at --level copies) the linear model could no longer separate them from
   grey and jittered copies (held-out recall at precision 0.99: 0.61 vs 0.97
   for trees), and with the relation gate in front (``pairfeatures.decide``)
   the trees' profile carried over: on the calib-half sets it had not seen,
   transformed P 1.000 R 0.992, hard P 1.000 R 0.964 (hand rules 0.990 and
   0.9695; RESULTS.md "calibrated decisions");
2. on the held-out part: an isotonic map from the model's score to the
   probability that the pair is a duplicate, and the accept threshold, the
   lowest score at which a one-sided 95% Clopper-Pearson lower bound on the
   precision of the accepted held-out pairs still reaches
   ``target_precision`` (:func:`fit_open_set`, shared with the labeler).

Decisions compare the model's score with ``threshold_`` (isotonic
probabilities are step functions, so thresholds on them are coarse);
``predict_proba`` gives the calibrated probability for reports. A pair can
be scored before local verification and after it (``pairfeatures`` marks
what is missing); in held-out threshold selection each pair counts once,
with its best score over its views, as the matcher accepts a pair when any
stage reaches the threshold.

The fitted state is plain numbers (``to_dict``/``from_dict``), so a profile
is data, never a pickle.

Choosing thresholds from scores and labels (:func:`fit_open_set`,
``MIN_THRESHOLD``, ``precision_recall_curve``) is in
:mod:`matchkit.match.thresholds`; those names are importable from here too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from matchkit.match.pairfeatures import FEATURES
from matchkit.match.thresholds import (  # noqa: F401  (re-exported)
    MIN_THRESHOLD, _lowest_observed, fit_open_set, precision_recall_curve)

MODELS = ("boosting", "logistic")
_TREE_KEYS = ("feature", "threshold", "left", "right", "leaf", "missing_left", "value")


class CalibratorError(ValueError):
    """Fitted calibrator data that cannot be used (wrong shape, types, NaN...)."""


class PairCalibrator:
    """Maps pair feature rows to P(duplicate) and a precision-calibrated decision.

    Parameters: ``model`` ("boosting" or "logistic"), ``target_precision``
    the held-out precision the threshold is certified for, ``alpha`` the
    one-sided error of that bound, ``holdout`` the fraction of pairs held out
    when ``fit`` is not told which rows are held out, ``C`` the inverse
    regularisation strength of the logistic regression, ``n_trees`` and
    ``max_leaf_nodes`` the size of the boosted model (scikit-learn's
    HistGradientBoostingClassifier, fitted with a fixed seed; its trees are
    kept as plain arrays and evaluated here, so a loaded profile needs no
    pickle and no particular scikit-learn version).
    """

    def __init__(self, model: str = "logistic", target_precision: float = 0.99,
                 alpha: float = 0.05, holdout: float = 0.5, C: float = 1.0,
                 n_trees: int = 100, max_leaf_nodes: int = 15):
        self.model = model
        self.target_precision = target_precision
        self.alpha = alpha
        self.holdout = holdout
        self.C = C
        self.n_trees = n_trees
        self.max_leaf_nodes = max_leaf_nodes

    # -- fitting -------------------------------------------------------------

    def fit(self, X, y, *, pairs: Sequence | None = None,
            held_out: Sequence[bool] | None = None) -> "PairCalibrator":
        """Fit the model on the fit part and the threshold on the held-out part.

        ``pairs`` gives each row's decision unit (rows of one pair: its
        unverified and verified views; default: every row its own pair).
        ``held_out`` marks the held-out rows; default: a stable hash of the
        pair id puts a ``holdout`` fraction of pairs aside.
        """
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r} (known: {', '.join(MODELS)})")
        if not 0.0 < self.target_precision < 1.0:
            raise ValueError("target_precision must be in (0, 1)")
        X = np.asarray(X, np.float64)
        y = np.asarray(y, bool)
        if X.ndim != 2 or X.shape[1] != len(FEATURES) or len(X) != len(y):
            raise ValueError(f"X must have shape (n, {len(FEATURES)}) matching y")
        pairs = np.arange(len(y)) if pairs is None else np.asarray(pairs)
        if held_out is None:
            held = np.array([_stable_fraction(p) < self.holdout for p in pairs.tolist()])
        else:
            held = np.asarray(held_out, bool)
        fit = ~held
        for part, name in ((fit, "fit"), (held, "held-out")):
            if len(set(y[part].tolist())) < 2:
                raise ValueError(f"the {name} part needs both duplicate and non-duplicate pairs")

        self.features_ = FEATURES
        if self.model == "logistic":
            self._fit_logistic(X[fit], y[fit])
        else:
            self._fit_boosting(X[fit], y[fit])

        s_fit, y_fit = _per_pair(self.score(X[fit]), y[fit], pairs[fit])
        s_held, y_held = _per_pair(self.score(X[held]), y[held], pairs[held])
        cal = fit_open_set(s_held, y_held, target=self.target_precision, alpha=self.alpha)
        self.isotonic_x_ = np.asarray(cal["x"], np.float64)
        self.isotonic_y_ = np.asarray(cal["y"], np.float64)
        # No certifiable threshold: accept nothing rather than guess.
        self.threshold_ = float(cal["threshold"]) if cal["threshold"] is not None else 1.0 + 1e-9
        self.train_threshold_ = _lowest_observed(s_fit, y_fit, self.target_precision)
        acc = s_held >= self.threshold_
        tp = int((acc & y_held).sum())
        self.stats_ = {
            "fit_pairs": int(len(s_fit)), "fit_positives": int(y_fit.sum()),
            "held_out_pairs": int(len(s_held)), "held_out_positives": int(y_held.sum()),
            "accepted": int(acc.sum()), "true_accepted": tp,
            "precision": float(tp / acc.sum()) if acc.sum() else 1.0,
            "recall": float(tp / y_held.sum()) if y_held.sum() else 1.0,
            "precision_lower_bound": float(cal["accuracy_lower_bound"]),
            "certified": bool(cal["certified"]),
        }
        #: Held-out per-pair scores and labels (for the precision-recall plot; not saved).
        self.held_out_ = (s_held, y_held)
        return self

    def _fit_logistic(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0)
        lr = LogisticRegression(C=self.C, max_iter=5000)
        lr.fit((X - self.mean_) / self.scale_, y)
        self.coef_ = lr.coef_[0].astype(np.float64)
        self.intercept_ = float(lr.intercept_[0])

    def _fit_boosting(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        gb = HistGradientBoostingClassifier(max_iter=self.n_trees,
                                            max_leaf_nodes=self.max_leaf_nodes,
                                            early_stopping=False, random_state=0)
        gb.fit(X, y)
        self.intercept_ = float(np.ravel(gb._baseline_prediction)[0])
        trees = []
        for (predictor,) in gb._predictors:
            n = predictor.nodes
            if n["is_categorical"].any():  # pragma: no cover - no categorical features
                raise RuntimeError("categorical splits are not supported")
            trees.append({
                "feature": n["feature_idx"].astype(int).tolist(),
                "threshold": n["num_threshold"].astype(float).tolist(),
                "left": n["left"].astype(int).tolist(), "right": n["right"].astype(int).tolist(),
                "leaf": n["is_leaf"].astype(int).tolist(),
                "missing_left": n["missing_go_to_left"].astype(int).tolist(),
                "value": n["value"].astype(float).tolist()})
        self.trees_ = _pack_trees(trees)

    # -- prediction ------------------------------------------------------------

    def raw(self, X) -> np.ndarray:
        """The model's log-odds of each row (rows in ``pairfeatures.FEATURES``
        order; a model fitted on another order reads its columns by name)."""
        self._check_fitted()
        X = np.atleast_2d(np.asarray(X, np.float64))
        if tuple(self.features_) != FEATURES:
            X = X[:, [FEATURES.index(f) for f in self.features_]]
        if self.model == "logistic":
            return ((X - self.mean_) / self.scale_) @ self.coef_ + self.intercept_
        out = np.full(len(X), self.intercept_)
        rows = np.arange(len(X))
        for t in self.trees_:
            node = np.zeros(len(X), np.int64)
            while True:
                inner = ~t["leaf"][node]
                if not inner.any():
                    break
                x = X[rows, t["feature"][node]]
                go_left = np.where(np.isnan(x), t["missing_left"][node], x <= t["threshold"][node])
                node = np.where(inner, np.where(go_left, t["left"][node], t["right"][node]), node)
            out += t["value"][node]
        return out

    def score(self, X) -> np.ndarray:
        """Uncalibrated model probability of each row (what ``threshold_`` applies to)."""
        z = self.raw(X)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def predict_proba(self, X) -> np.ndarray:
        """Columns P(not duplicate), P(duplicate), calibrated on held-out pairs."""
        p = np.interp(self.score(X), self.isotonic_x_, self.isotonic_y_)
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        """True where the pair is accepted as a duplicate."""
        return self.score(X) >= self.threshold_

    @property
    def probability_threshold_(self) -> float:
        """The calibrated probability at the threshold (for summaries)."""
        return float(np.interp(self.threshold_, self.isotonic_x_, self.isotonic_y_))

    def _check_fitted(self) -> None:
        if not hasattr(self, "intercept_"):
            raise RuntimeError("PairCalibrator is not fitted; call fit() first")

    # -- plain data -------------------------------------------------------------

    def to_dict(self) -> dict:
        """Everything needed to predict, as plain numbers, lists and strings."""
        self._check_fitted()
        out = {
            "model": self.model, "features": list(self.features_),
            "target_precision": float(self.target_precision), "alpha": float(self.alpha),
            "holdout": float(self.holdout), "C": float(self.C), "n_trees": int(self.n_trees),
            "max_leaf_nodes": int(self.max_leaf_nodes), "intercept": float(self.intercept_),
            "isotonic_x": [float(v) for v in self.isotonic_x_],
            "isotonic_y": [float(v) for v in self.isotonic_y_],
            "threshold": float(self.threshold_), "train_threshold": float(self.train_threshold_),
            "stats": dict(self.stats_),
        }
        if self.model == "logistic":
            out.update(mean=[float(v) for v in self.mean_], scale=[float(v) for v in self.scale_],
                       coef=[float(v) for v in self.coef_])
        else:
            out["trees"] = {k: [t[k].tolist() for t in self.trees_] for k in _TREE_KEYS}
            out["trees"]["leaf"] = [[int(v) for v in t["leaf"]] for t in self.trees_]
            out["trees"]["missing_left"] = [[int(v) for v in t["missing_left"]]
                                            for t in self.trees_]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PairCalibrator":
        """Rebuild a fitted calibrator; raises ``CalibratorError`` on anything off."""
        if not isinstance(data, dict):
            raise CalibratorError("calibrator must be a table")
        need = {"model", "features", "target_precision", "alpha", "holdout", "C", "n_trees",
                "max_leaf_nodes", "intercept", "isotonic_x", "isotonic_y", "threshold",
                "train_threshold", "stats"}
        if data.get("model") == "logistic":
            need |= {"mean", "scale", "coef"}
        else:
            need |= {"trees"}
        missing, unknown = need - set(data), set(data) - need
        if missing:
            raise CalibratorError(f"calibrator is missing: {', '.join(sorted(missing))}")
        if unknown:
            raise CalibratorError(f"calibrator has unknown keys: {', '.join(sorted(unknown))}")
        if data["model"] not in MODELS:
            raise CalibratorError(f"unknown calibrator model {data['model']!r}")
        # The same named features in any order: the columns are read by name
        # (``raw``). Any other set was fitted on other evidence: refused.
        got, want = list(data["features"]), list(FEATURES)
        if sorted(map(str, got)) != sorted(want):
            diff = sorted(set(map(str, got)) ^ set(want))
            raise CalibratorError(
                "calibrator features do not match this matchkit version"
                + (f" (differ: {', '.join(diff)})" if diff else " (a feature is repeated)"))
        n = len(FEATURES)
        c = cls(model=data["model"], target_precision=_number(data, "target_precision"),
                alpha=_number(data, "alpha", 0.0, 1.0), holdout=_number(data, "holdout", 0.0, 1.0),
                C=_number(data, "C", 1e-12, 1e12), n_trees=int(_number(data, "n_trees", 1, 10_000)),
                max_leaf_nodes=int(_number(data, "max_leaf_nodes", 2, 10_000)))
        if not 0.0 < c.target_precision < 1.0:
            raise CalibratorError("target_precision must be in (0, 1)")
        if c.model == "logistic":
            c.mean_, c.scale_, c.coef_ = (_vector(data, k, n) for k in ("mean", "scale", "coef"))
            if (c.scale_ <= 0).any():
                raise CalibratorError("calibrator scale must be positive")
        else:
            c.trees_ = _check_trees(data["trees"], n)
        c.intercept_ = _number(data, "intercept")
        c.isotonic_x_ = _vector(data, "isotonic_x")
        c.isotonic_y_ = _vector(data, "isotonic_y", len(c.isotonic_x_))
        if not len(c.isotonic_x_) or (np.diff(c.isotonic_x_) < 0).any() \
                or (np.diff(c.isotonic_y_) < 0).any():
            raise CalibratorError("isotonic knots must be non-empty and non-decreasing")
        if c.isotonic_y_.min() < 0 or c.isotonic_y_.max() > 1:
            raise CalibratorError("isotonic probabilities must lie in [0, 1]")
        # Scores are probabilities; a threshold just above 1 means "never".
        c.threshold_ = _number(data, "threshold", 0.0, _NEVER)
        c.train_threshold_ = _number(data, "train_threshold", 0.0, _NEVER)
        if not isinstance(data["stats"], dict):
            raise CalibratorError("calibrator stats must be a table")
        c.stats_ = dict(data["stats"])
        c.features_ = tuple(map(str, got))
        return c


def _pack_trees(trees: list[dict]) -> list[dict]:
    """Trees as numpy arrays, the form ``raw`` evaluates."""
    out = []
    for t in trees:
        out.append({"feature": np.asarray(t["feature"], np.int64),
                    "threshold": np.asarray(t["threshold"], np.float64),
                    "left": np.asarray(t["left"], np.int64),
                    "right": np.asarray(t["right"], np.int64),
                    "leaf": np.asarray(t["leaf"], bool),
                    "missing_left": np.asarray(t["missing_left"], bool),
                    "value": np.asarray(t["value"], np.float64)})
    return out


def _check_trees(data, n_features: int) -> list[dict]:
    """Validate stored trees: equal-length arrays, finite numbers, in-range
    features, children that point forward (so evaluation always ends at a leaf)."""
    if not isinstance(data, dict) or set(data) != set(_TREE_KEYS):
        raise CalibratorError(f"calibrator trees must have exactly: {', '.join(_TREE_KEYS)}")
    lists = [data[k] for k in _TREE_KEYS]
    if not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1:
        raise CalibratorError("calibrator trees: every key needs one list per tree")
    trees = []
    for i in range(len(data["feature"])):
        t = {}
        for k in _TREE_KEYS:
            t[k] = _vector({k: data[k][i]}, k)
        size = len(t["feature"])
        if size == 0 or any(len(v) != size for v in t.values()):
            raise CalibratorError(f"calibrator tree {i}: arrays of different lengths")
        for k in ("feature", "left", "right", "leaf", "missing_left"):
            if (t[k] != np.round(t[k])).any():
                raise CalibratorError(f"calibrator tree {i}: {k} must be integers")
        inner = t["leaf"] == 0
        idx = np.arange(size)
        if (inner & ((t["feature"] < 0) | (t["feature"] >= n_features))).any():
            raise CalibratorError(f"calibrator tree {i}: feature index out of range")
        if (inner & ((t["left"] <= idx) | (t["right"] <= idx) | (t["left"] >= size)
                     | (t["right"] >= size))).any():
            raise CalibratorError(f"calibrator tree {i}: child index out of range")
        trees.append(t)
    return _pack_trees(trees)


#: Largest threshold a profile may hold: fitting uses 1 + 1e-9 when no
#: threshold reaches the target precision (nothing is ever a duplicate).
_NEVER = 1.0 + 1e-6


def _number(data: dict, key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """``data[key]`` as a finite float in [lo, hi], else ``CalibratorError``."""
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CalibratorError(f"calibrator {key} must be a number, not {type(v).__name__}")
    if not math.isfinite(v):
        raise CalibratorError(f"calibrator {key} is not finite ({v})")
    if not lo <= v <= hi:
        raise CalibratorError(f"calibrator {key} must be between {lo} and {hi}, got {v!r}")
    return float(v)


def _vector(data: dict, key: str, length: int | None = None) -> np.ndarray:
    v = data[key]
    if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                      for x in v):
        raise CalibratorError(f"calibrator {key} must be a list of numbers")
    if length is not None and len(v) != length:
        raise CalibratorError(f"calibrator {key} has {len(v)} values, expected {length}")
    arr = np.asarray(v, np.float64)
    if not np.isfinite(arr).all():
        raise CalibratorError(f"calibrator {key} contains NaN or infinity")
    return arr


def _stable_fraction(key) -> float:
    """A number in [0, 1) from a key, the same on every run and machine."""
    return int(hashlib.sha256(str(key).encode()).hexdigest()[:12], 16) / 16 ** 12


def _per_pair(scores: np.ndarray, y: np.ndarray, pairs: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """One row per decision unit: its best score over its views, and its label."""
    best: dict = {}
    label: dict = {}
    for s, t, p in zip(scores.tolist(), y.tolist(), pairs.tolist()):
        if p not in best or s > best[p]:
            best[p] = s
        label[p] = t
    keys = list(best)
    return np.array([best[k] for k in keys]), np.array([label[k] for k in keys], bool)
