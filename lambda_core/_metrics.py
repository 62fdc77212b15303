"""Evaluation metrics: AUC, RMSE and log loss, without scikit-learn."""

from math import sqrt
from typing import Callable, Dict, List

import numpy as np


def auc(y_scores, y_targets) -> float:
    """Area under the ROC curve from ranks (ties count one half); NaN if only one class is present.

    Positives are targets > 0, so {0, 1} and {-1, +1} labels both work.
    """
    scores = np.asarray(y_scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(y_targets).reshape(-1) > 0
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Imported here: scipy.stats takes ~1 s to import, a cost every command (the job, the replay)
    # would otherwise pay at start-up for a metric only the tutorial's evaluation calls.
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def rmse(y_scores, y_targets) -> float:
    """Root mean square error between scores and targets."""
    diff = np.asarray(y_scores, dtype=np.float64).reshape(-1) - np.asarray(y_targets, dtype=np.float64).reshape(-1)
    return sqrt(float(diff @ diff) / len(diff)) if len(diff) else float("nan")


def log_loss(y_scores, y_targets) -> float:
    """Mean logistic loss, treating scores as logits (what ``score_linear_model`` returns).

    Targets > 0 are positives. Stable for any score.
    """
    scores = np.asarray(y_scores, dtype=np.float64).reshape(-1)
    if not len(scores):
        return float("nan")
    sign = np.where(np.asarray(y_targets).reshape(-1) > 0, 1.0, -1.0)
    return float(np.mean(np.logaddexp(0.0, -sign * scores)))


METRICS: Dict[str, Callable[..., float]] = {"auc": auc, "rmse": rmse, "log_loss": log_loss}


def evaluate(metric_list: List[str], y_scores, y_targets) -> Dict[str, float]:
    """Compute each named metric; ``ValueError`` naming any metric that is not supported."""
    unknown = sorted(set(metric_list) - set(METRICS))
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; supported: {sorted(METRICS)}.")
    return {name: METRICS[name](y_scores, y_targets) for name in metric_list}
