"""Choosing an accept threshold from scores and their labels.

:func:`fit_open_set` certifies a threshold on held-out data (a one-sided
Clopper-Pearson bound on precision) and maps raw scores to calibrated
probabilities; ``PairCalibrator`` (:mod:`matchkit.match.calibrate`) and the
labeler (``jobs/classify*.py``) both use it, so it lives apart from either.
Beside it: the threshold one would pick on observed precision alone, and the
precision-recall curve for plots. Plain numpy (and scipy/scikit-learn inside
``fit_open_set``), no model and no pair features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _lowest_observed(scores: np.ndarray, y: np.ndarray, target: float) -> float:
    """The lowest score whose accepted set has observed precision >= target
    (what one would pick looking at the fit data alone; kept to show the
    difference to the held-out choice)."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], y[order]
    prec = np.cumsum(t) / np.arange(1, len(t) + 1)
    last = np.r_[s[1:] != s[:-1], True]
    ok = np.nonzero((prec >= target) & last)[0]
    return float(s[ok[-1]]) if len(ok) else float(s[0]) + 1e-9 if len(s) else 1.0


def precision_recall_curve(scores: np.ndarray, y: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at every distinct score (highest first)."""
    order = np.argsort(-scores, kind="stable")
    s, t = np.asarray(scores)[order], np.asarray(y, bool)[order]
    tp = np.cumsum(t)
    n = np.arange(1, len(t) + 1)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
    pos = max(int(t.sum()), 1)
    return (tp / n)[last], (tp / pos)[last], s[last]


#: Raw confidence an answer needs at least, whatever the calibration says:
#: an exact tie (or no example at all) is never accepted.
MIN_THRESHOLD = 1e-6


def fit_open_set(raw: Sequence[float], correct: Sequence[bool], target: float = 0.99,
                 alpha: float = 0.05) -> dict:
    """Calibration as plain data: an isotonic map raw -> P(correct) and a threshold.

    ``correct[i]`` says whether accepting query i's best class would be right
    (always False for queries whose true answer is unknown). The threshold is
    the lowest raw value whose accepted set has a one-sided ``1 - alpha``
    Clopper-Pearson lower bound on accuracy of at least ``target``
    (``certified``), but never one where the calibrated probability of a
    right answer is below one half (an average over the accepted set could
    otherwise hide a band of mostly wrong answers). It lies midway between
    the accepted set's lowest raw value and the next lower one. If no threshold can be certified (too few calibration
    queries), the lowest one whose observed accuracy reaches the target is
    used and ``certified`` is False; if none reaches it, nothing is accepted
    (``threshold`` None).
    """
    from scipy.stats import beta
    from sklearn.isotonic import IsotonicRegression

    raw = np.asarray(raw, np.float64)
    correct = np.asarray(correct, bool)
    if len(raw) == 0:
        raise ValueError("calibration needs at least one query")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(raw, correct.astype(np.float64))
    order = np.argsort(-raw, kind="stable")
    r, c = raw[order], correct[order]
    n = np.arange(1, len(r) + 1)
    k = np.cumsum(c)
    last = np.r_[r[1:] != r[:-1], True]  # accepted set for threshold r[i]: all >= r[i]
    below = np.r_[r[1:], 0.0][last]         # the next lower raw value (0: none)
    r, n, k = r[last], n[last], k[last]
    with np.errstate(invalid="ignore"):
        lower = np.where(k > 0, beta.ppf(alpha, k, n - k + 1), 0.0)
    lower = np.nan_to_num(lower)
    positive = r > 0
    certified = np.nonzero((lower >= target) & positive)[0]
    observed = np.nonzero((k / n >= target) & positive)[0]
    if len(certified):
        i, ok = certified[-1], True
    elif len(observed):
        i, ok = observed[-1], False
    else:
        i, ok = None, False
    # Never accept where an answer is more likely wrong than right: the
    # accuracy of the accepted set is an average, and easy answers must not
    # pay for a band of mostly wrong ones just above the threshold.
    if i is not None:
        likely = np.nonzero(iso.predict(r) >= 0.5)[0]
        if not len(likely):
            i, ok = None, False
        elif likely[-1] < i:
            i = likely[-1]
    # Any threshold between r[i] and the next lower value accepts the same
    # calibration queries; the middle of that gap leaves room on both sides.
    threshold = None if i is None else max((float(r[i]) + float(below[i])) / 2, MIN_THRESHOLD)
    out = {
        "x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_],
        "threshold": threshold,
        "target_accuracy": target, "alpha": alpha, "certified": ok,
        "queries": int(len(raw)), "correct": int(correct.sum()),
        "accepted": 0 if i is None else int(n[i]),
        "accepted_correct": 0 if i is None else int(k[i]),
        "accuracy_lower_bound": 0.0 if i is None else round(float(lower[i]), 6),
    }
    return out
