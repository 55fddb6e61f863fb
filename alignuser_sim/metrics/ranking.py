"""Recommender ranking agreement: do simulated users order the recommenders as offline metrics do?

Each recommender gets one number per side: a simulated outcome averaged over the simulated users (users
without a value, e.g. no rated watch for "mean rating", are left out of that mean), and an offline metric
(Recall@K, NDCG@K) averaged over the offline test users. Agreement is Kendall's tau-b between the two
vectors (ties count as neither concordant nor discordant, tau-b's correction for them):

    tau_b = (C - D) / sqrt((C + D + T_x) (C + D + T_y))

C concordant pairs, D discordant pairs, T_x pairs tied in x only, T_y pairs tied in y only. The interval
resamples the simulated users (the same draw for every recommender: they are the same population) and,
independently, the offline users, and recomputes tau for each draw (percentile 95%). With 5
recommenders tau moves in steps of 0.2, so the interval is coarse by nature.
"""

from __future__ import annotations

import numpy as np

from alignuser_sim.metrics.bootstrap import Estimate, finite_or_none, percentile_interval, resamples


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two equally long vectors (NaN when either is constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be vectors of one length")
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = np.sum(dx * dy)
    untied_x, untied_y = np.sum(dx != 0), np.sum(dy != 0)
    if untied_x == 0 or untied_y == 0:
        return float("nan")
    return float(concordant_minus_discordant / np.sqrt(untied_x * untied_y))


def ranks(values: np.ndarray) -> np.ndarray:
    """1 = best (largest value); ties share their average rank; NaN ranks last."""
    v = np.where(np.isnan(values), -np.inf, np.asarray(values, dtype=np.float64))
    order = np.argsort(-v, kind="stable")
    out = np.empty(len(v))
    out[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        out[tied] = out[tied].mean()
    return out


def user_means(per_user: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean over users of each column, NaN cells left out; `weights` (k, users) gives k resampled means."""
    values = np.asarray(per_user, dtype=np.float64)
    present = np.isfinite(values).astype(np.float64)
    filled = np.nan_to_num(values, nan=0.0)
    w = np.ones((1, values.shape[0])) if weights is None else weights
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ filled) / (w @ present)


def tau_estimate(simulated: np.ndarray, offline: np.ndarray, draws: int, seed: int) -> Estimate:
    """Kendall tau between the recommenders' simulated and offline means, with a bootstrap interval.

    simulated: (simulated users, recommenders), NaN where a user has no value; offline: (offline users,
    recommenders). Columns are the same recommenders in the same order.
    """
    simulated, offline = np.asarray(simulated, np.float64), np.asarray(offline, np.float64)
    value = finite_or_none(kendall_tau(user_means(simulated)[0], user_means(offline)[0]))
    if draws <= 0 or value is None or not len(simulated) or not len(offline):
        return Estimate(value)
    sim_draws = np.concatenate([user_means(simulated, w) for w in resamples(len(simulated), draws, seed)])
    off_draws = np.concatenate([user_means(offline, w) for w in resamples(len(offline), draws, seed + 1)])
    taus = np.array([kendall_tau(a, b) for a, b in zip(sim_draws, off_draws, strict=True)])
    lo, hi = percentile_interval(taus)
    return Estimate(value, lo, hi)
