"""Binary classification metrics without scikit-learn: ROC AUC, operating-point metrics, calibration, bootstrap CIs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); NaN when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds descending."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s, y = np.asarray(scores)[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(1, y.sum())]
    fpr = np.r_[0.0, fps / max(1, (~y).sum())]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def precision_recall_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) over descending thresholds."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    y = labels[order]
    tps = np.cumsum(y)
    k = np.arange(1, len(y) + 1)
    return tps / max(1, y.sum()), tps / k


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, PPV, NPV with 'positive' meaning score >= threshold."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(scores) >= threshold
    tp, tn = int((p & y).sum()), int((~p & ~y).sum())
    fp, fn = int((p & ~y).sum()), int((~p & y).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "accuracy": ratio(tp + tn, len(y)),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }


def threshold_for_sensitivity(labels: np.ndarray, scores: np.ndarray, sensitivity: float) -> float:
    """The highest threshold whose sensitivity is at least ``sensitivity`` (triage: miss few bleeds)."""
    y = np.asarray(labels).astype(bool)
    pos = np.sort(np.asarray(scores)[y])[::-1]
    if len(pos) == 0:
        return 0.5
    k = int(np.ceil(sensitivity * len(pos))) - 1
    return float(np.clip(pos[max(0, k)], 1e-4, 1 - 1e-4))


def bootstrap_ci(
    labels: np.ndarray, scores: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], float], n: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``statistic(labels, scores)`` over resampled slices."""
    rng = np.random.default_rng(seed)
    labels, scores = np.asarray(labels), np.asarray(scores)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        v = statistic(labels[idx], scores[idx])
        if not np.isnan(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def calibration_bins(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed positive rate, count) per equal-width score bin."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(scores, edges) - 1, 0, bins - 1)
    mean_p, frac, count = np.zeros(bins), np.zeros(bins), np.zeros(bins, dtype=int)
    for b in range(bins):
        sel = idx == b
        count[b] = sel.sum()
        if count[b]:
            mean_p[b], frac[b] = np.mean(np.asarray(scores)[sel]), np.mean(np.asarray(labels)[sel])
    return mean_p, frac, count


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the count-weighted mean |observed positive rate - mean score| over the
    equal-width bins of :func:`calibration_bins` (0 = the scores are the observed rates); NaN when empty."""
    if len(scores) == 0:
        return float("nan")
    mean_p, frac, count = calibration_bins(labels, scores, bins)
    return float(np.sum(count * np.abs(frac - mean_p)) / count.sum())


def brier_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean squared difference between score and label (0 best; 0.25 for a constant 0.5); NaN when empty."""
    if len(scores) == 0:
        return float("nan")
    return float(np.mean((np.asarray(scores, dtype=np.float64) - np.asarray(labels, dtype=np.float64)) ** 2))


def calibrated_ece_p95(scores: np.ndarray, bins: int = 10, draws: int = 1000, seed: int = 0) -> float:
    """The 95th percentile of the ECE that a perfectly calibrated model shows by chance on these scores: labels
    drawn as Bernoulli(score), ``draws`` times. A measured ECE below it is consistent with calibration (a
    bootstrap interval is no help here: resampling adds its own noise to an absolute error, so it lies above
    the measured value); NaN when empty."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    null = [expected_calibration_error(rng.random(len(scores)) < scores, scores, bins) for _ in range(draws)]
    return float(np.percentile(null, 95))
