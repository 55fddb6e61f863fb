"""Micro metrics: did the agent pick the items its human picked, and did it rate them as the human did.

Classification (per ratio of negatives to positives): an item is predicted positive when the agent
watches it; it is positive when the human interacted with it (held-out), negative when the human never
interacted with it. Counts are pooled over all judged items of all users (micro-average, as Agent4Rec
reports them), so users with more items weigh more:

    accuracy  = (tp + tn) / (tp + fp + fn + tn)
    precision = tp / (tp + fp)        (0 when the agent watched nothing)
    recall    = tp / (tp + fn)        (0 when there was no positive)
    F1        = 2 * precision * recall / (precision + recall)   (0 when both are 0)

Rating error over the items with a human rating and an agent rating: RMSE = sqrt(sum (r - r^)^2 / n),
MAE = sum |r - r^| / n.

Every function takes the totals as (k, m) arrays so the bootstrap (bootstrap.py) can evaluate all draws
at once.
"""

from __future__ import annotations

import numpy as np

from alignuser_sim.metrics.bootstrap import Estimate, bootstrap_many

CONFUSION = ("tp", "fp", "fn", "tn")
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")
RATING_METRICS = ("rmse", "mae")


def confusion(positive: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """[tp, fp, fn, tn] of boolean labels against boolean predictions."""
    positive = np.asarray(positive, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    return np.array([
        np.sum(positive & predicted), np.sum(~positive & predicted),
        np.sum(positive & ~predicted), np.sum(~positive & ~predicted),
    ], dtype=np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def accuracy(c: np.ndarray) -> np.ndarray:
    total = c.sum(axis=1)
    return np.where(total > 0, _ratio(c[:, 0] + c[:, 3], total), np.nan)


def precision(c: np.ndarray) -> np.ndarray:
    return _ratio(c[:, 0], c[:, 0] + c[:, 1])


def recall(c: np.ndarray) -> np.ndarray:
    return _ratio(c[:, 0], c[:, 0] + c[:, 2])


def f1(c: np.ndarray) -> np.ndarray:
    p, r = precision(c), recall(c)
    return _ratio(2 * p * r, p + r)


CLASSIFIERS = {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


def rating_sums(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """[sum of squared errors, sum of absolute errors, n] over the pairs where both are known (not NaN)."""
    truth = np.asarray(truth, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    both = np.isfinite(truth) & np.isfinite(predicted)
    err = truth[both] - predicted[both]
    return np.array([np.sum(err**2), np.sum(np.abs(err)), both.sum()], dtype=np.float64)


def rmse(s: np.ndarray) -> np.ndarray:
    return np.where(s[:, 2] > 0, np.sqrt(_ratio(s[:, 0], s[:, 2])), np.nan)


def mae(s: np.ndarray) -> np.ndarray:
    return np.where(s[:, 2] > 0, _ratio(s[:, 1], s[:, 2]), np.nan)


RATERS = {"rmse": rmse, "mae": mae}


def classification_estimates(per_user: np.ndarray, draws: int, seed: int) -> dict[str, Estimate]:
    """Accuracy, precision, recall, F1 with 95% intervals; per_user: (users, 4) confusion counts."""
    return bootstrap_many(per_user, CLASSIFIERS, draws, seed)


def rating_estimates(per_user: np.ndarray, draws: int, seed: int) -> dict[str, Estimate]:
    """RMSE and MAE with 95% intervals; per_user: (users, 3) rating_sums rows."""
    return bootstrap_many(per_user, RATERS, draws, seed)
