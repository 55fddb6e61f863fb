"""The discriminator test: can a classifier tell simulated sessions from the human sessions of the same users?

A measure of believability that needs no judge model. Each session, simulated (a run's events) or human
(the rollouts of the run's users on the TRAINING split, `data/holdout.split_dataset`, with the scenario's
pages config and seed; sessions cut at `pages.count` as the simulation cuts them), becomes one row of
`FEATURES`. Two cross-validated classifiers (logistic regression on standardized features, gradient boosting)
predict "simulated" for each held-out session; their ROC AUC says how well the two kinds are told apart:
0.5 = indistinguishable, 1.0 = every session gives itself away. The interval is a 95% percentile bootstrap
over the out-of-fold predictions (sessions resampled). What gives the simulation away: the logistic
model's standardized coefficients (signed: > 0 = simulated sessions have more of it) and the booster's
permutation importance (drop of held-out AUC when the feature is shuffled).

Classes are balanced by subsampling the larger side (seeded), so AUC and importances are not driven by
the ratio. Simulated sessions with a failed page are left out (their length is not the agent's choice).
scikit-learn is imported only here, when a test runs (the `cpu` / `gpu` extras install it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from alignuser_sim import store
from alignuser_sim.errors import UserError
from alignuser_sim.metrics.bootstrap import Estimate, finite_or_none, percentile_interval, resamples
from alignuser_sim.store import RunFolder

# name -> what it is, as the report and the CLI say it
FEATURES = {
    "watches_per_page": "watches per page",
    "watch_share": "share of page items watched",
    "rating_mean": "mean rating of rated items",
    "rating_std": "rating spread (std) of rated items",
    "pages": "pages per session",
    "exited": "left by choice (1) vs cut at the page cap (0)",
    "genre_entropy": "genre entropy of watched items (nats)",
    "popularity": "mean log(1 + training count) of watched items",
    "repeat_genre_share": "share of watched items repeating a genre seen earlier in the session",
}
NAMES = list(FEATURES)
MODELS = {"logistic": "logistic regression", "boosting": "gradient boosting"}
FOLDS = 5
MIN_SESSIONS = 10  # per side: fewer leave a 5-fold split with folds of one or two sessions
DRAWS = 1000
PERMUTATION_REPEATS = 5


# --- features ---------------------------------------------------------------------------------------------


@dataclass
class _Session:
    """The pages of one session in page order: (items, watched, ratings) each, and the last page's action."""

    pages: list[tuple[Sequence[str], Sequence[bool], Sequence[Any]]] = field(default_factory=list)
    last_action: str = ""
    failed: bool = False


def session_row(session: _Session, genres_of: Callable[[str], Sequence[str]],
                popularity: Mapping[str, float]) -> list[float]:
    """One session's features, in `NAMES` order (NaN where undefined: no rating, nothing watched)."""
    shown = watched_n = 0
    ratings: list[float] = []
    genres: Counter[str] = Counter()
    pops: list[float] = []
    seen: set[str] = set()
    repeats = 0
    for items, watched, page_ratings in session.pages:
        shown += len(items)
        for item, w, r in zip(items, watched, page_ratings, strict=True):
            if not w:
                continue
            watched_n += 1
            if r is not None and math.isfinite(float(r)):
                ratings.append(float(r))
            item_genres = set(genres_of(item))
            repeats += bool(item_genres & seen)
            seen |= item_genres
            genres.update(item_genres)
            pops.append(popularity.get(item, 0.0))
    n_pages = len(session.pages)
    total = sum(genres.values())
    # fsum: exact whatever the order the genres were counted in (a set's order changes with the process's
    # string hashes, and a last-bit difference moves the booster's bins: the same run gave two AUCs)
    entropy = -math.fsum(c / total * math.log(c / total) for c in genres.values()) if total else math.nan
    nan = math.nan
    return [
        watched_n / n_pages,
        watched_n / shown if shown else nan,
        float(np.mean(ratings)) if ratings else nan,
        float(np.std(ratings)) if ratings else nan,
        float(n_pages),
        float(session.last_action == "exit"),
        entropy,
        float(np.mean(pops)) if pops else nan,
        repeats / watched_n if watched_n else nan,
    ]


def _sessions(rows: Iterable[Mapping[str, Any]], user_key: str, page_cap: int) -> dict[tuple[str, int], _Session]:
    out: dict[tuple[str, int], _Session] = {}
    for row in sorted(rows, key=lambda r: (r[user_key], int(r["session"]), int(r["page"]))):
        if int(row["page"]) >= page_cap:
            continue
        s = out.setdefault((row[user_key], int(row["session"])), _Session())
        if row.get("failure"):
            s.failed = True
            continue
        s.pages.append((row["items"], row["watched"], row["ratings"]))
        s.last_action = row["action"]
    return out


def simulated_features(events: Iterable[Mapping[str, Any]], page_cap: int, genres_of: Callable[[str], Sequence[str]],
                       popularity: Mapping[str, float]) -> np.ndarray:
    """One row per simulated session (events.parquet rows as dicts); sessions with a failed page left out."""
    sessions = _sessions(events, "agent_id", page_cap)
    rows = [session_row(s, genres_of, popularity) for s in sessions.values() if s.pages and not s.failed]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(NAMES))


def human_features(rollouts: Iterable[Mapping[str, Any]], page_cap: int, genres_of: Callable[[str], Sequence[str]],
                   popularity: Mapping[str, float]) -> np.ndarray:
    """One row per human session (rollout rows as dicts, grouped by user and session), cut at `page_cap`."""
    sessions = _sessions(rollouts, "user_id", page_cap)
    rows = [session_row(s, genres_of, popularity) for s in sessions.values() if s.pages]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(NAMES))


# --- the classifiers --------------------------------------------------------------------------------------


@dataclass
class DiscriminatorResult:
    features: list[str]
    sessions: dict[str, int]  # simulated / human sessions found, and per_side: how many each side used
    auc: dict[str, Estimate]  # model -> out-of-fold ROC AUC with its interval
    coefficients: dict[str, float]  # standardized logistic coefficients (> 0: simulated sessions have more)
    importance: dict[str, float]  # the booster's permutation importance (held-out AUC drop), mean over folds
    means: dict[str, dict[str, float | None]]  # side -> feature -> mean over the sessions used
    folds: int = FOLDS
    draws: int = DRAWS
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"features": self.features, "sessions": self.sessions,
                "auc": {m: e.as_dict() for m, e in self.auc.items()}, "coefficients": self.coefficients,
                "importance": self.importance, "means": self.means, "folds": self.folds, "draws": self.draws,
                "seed": self.seed}


def auc_draws(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count half) of each row of `weights` (how many times each session is taken), all at once:
    per distinct score, the positives' weight times the negatives' weight below it (+ half the tied)."""
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(w * y[order], starts, axis=1)
    neg = np.add.reduceat(w * (1 - y[order]), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / den, np.nan)


def _auc_estimate(y: np.ndarray, score: np.ndarray, draws: int, seed: int) -> Estimate:
    value = finite_or_none(auc_draws(y, score, np.ones((1, len(y))))[0])
    if draws <= 0 or value is None:
        return Estimate(value)
    drawn = np.concatenate([auc_draws(y, score, w) for w in resamples(len(y), draws, seed)])
    lo, hi = percentile_interval(drawn)
    return Estimate(value, lo, hi)


def _models(seed: int, rows: int) -> dict[str, Any]:
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise UserError("the discriminator needs scikit-learn: pip install 'alignuser-sim[cpu]' "
                        "(or scikit-learn)") from None
    # the logistic model takes no NaN: an undefined feature (no rating, nothing watched) gets the column mean
    logistic = make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(),
                             LogisticRegression(max_iter=2000))
    # takes NaN as it is; leaves of 20 (the default) would leave a small run's booster without a single split
    boosting = HistGradientBoostingClassifier(random_state=seed, min_samples_leaf=min(20, max(2, rows // 20)))
    return {"logistic": logistic, "boosting": boosting}


def _cross_validate(models: dict[str, Any], x: np.ndarray, y: np.ndarray, n_features: int, folds: int,
                    seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Out-of-fold P(simulated) per model, the booster's permutation importance (mean over folds) and the
    logistic model's standardized coefficients fitted on all rows."""
    from sklearn.base import clone
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import StratifiedKFold

    oof = {name: np.zeros(len(y)) for name in models}
    drops = np.zeros(n_features)
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y)
    for train, test in splits:
        for name, model in models.items():
            fitted = clone(model).fit(x[train], y[train])
            oof[name][test] = fitted.predict_proba(x[test])[:, 1]
            if name == "boosting":
                perm = permutation_importance(fitted, x[test], y[test], scoring="roc_auc",
                                              n_repeats=PERMUTATION_REPEATS, random_state=seed)
                drops += perm.importances_mean / folds
    coefficients = clone(models["logistic"]).fit(x, y)[-1].coef_[0]
    return oof, drops, coefficients


def classify(simulated: np.ndarray, human: np.ndarray, names: Sequence[str] = NAMES, seed: int = 0,
             folds: int = FOLDS, draws: int = DRAWS) -> DiscriminatorResult:
    """Cross-validated simulated-vs-human classification of feature rows (one per session, columns `names`)."""
    from threadpoolctl import threadpool_limits  # comes with scikit-learn

    simulated, human = np.asarray(simulated, dtype=np.float64), np.asarray(human, dtype=np.float64)
    found = {"simulated": len(simulated), "human": len(human)}
    for side, n in found.items():
        if n < MIN_SESSIONS:
            raise UserError(f"{n} {side} session{'s' * (n != 1)}: the discriminator needs at least {MIN_SESSIONS} "
                            f"on each side for {folds}-fold cross-validation (simulate more users)")
    rng = np.random.default_rng(seed)
    n = min(found.values())
    simulated = simulated[np.sort(rng.choice(len(simulated), n, replace=False))]
    human = human[np.sort(rng.choice(len(human), n, replace=False))]
    x = np.vstack([simulated, human])
    y = np.r_[np.ones(n), np.zeros(n)]
    models = _models(seed, len(x))
    # one thread: a few thousand rows need no more, and the booster's OpenMP threads spin-wait for each
    # other on a machine whose cores are busy (a model server beside the report): 40x slower there
    with threadpool_limits(limits=1):
        oof, drops, coefficients = _cross_validate(models, x, y, len(names), folds, seed)

    def means(rows: np.ndarray) -> dict[str, float | None]:
        columns = [rows[np.isfinite(rows[:, i]), i] for i in range(len(names))]
        return {f: float(c.mean()) if c.size else None for f, c in zip(names, columns, strict=True)}

    return DiscriminatorResult(
        features=list(names), sessions={**found, "per_side": n},
        auc={name: _auc_estimate(y, oof[name], draws, seed) for name in models},
        coefficients={f: float(c) for f, c in zip(names, coefficients, strict=True)},
        importance={f: float(d) for f, d in zip(names, drops, strict=True)},
        means={"simulated": means(simulated), "human": means(human)}, folds=folds, draws=draws, seed=seed)


def top_features(result: dict[str, Any], n: int = 5) -> list[dict[str, Any]]:
    """The features that give the simulation away most, by |standardized coefficient| then importance."""
    rows = [{"feature": f, "label": FEATURES.get(f, f), "coefficient": result["coefficients"][f],
             "importance": result["importance"][f], "simulated": result["means"]["simulated"][f],
             "human": result["means"]["human"][f]} for f in result["features"]]
    rows.sort(key=lambda r: (-abs(r["coefficient"]), -r["importance"]))
    return rows[:n]


# --- from a run folder -----------------------------------------------------------------------------------

EVENT_COLUMNS = ["agent_id", "session", "page", "items", "watched", "ratings", "action", "failure"]
EVENT_KEY = ("run_id", "agent_id", "session", "page")


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The run's events: `events.parquet`, or the parts of a run still going (one row per key)."""
    run = RunFolder(run_dir)
    if not run.path.is_dir():
        raise UserError(f"{run_dir}: no such folder")
    if run.events.exists():
        return pq.read_table(run.events, columns=EVENT_COLUMNS).to_pylist()
    parts = store.part_files(run.path / RunFolder.EVENTS)
    if not parts:
        raise UserError(f"{run_dir}: no events (neither events.parquet nor events/ parts): not a simulation run "
                        f"folder, or a run that has not decided a page yet")
    table = store.merge_parts(parts, pq.read_schema(parts[0]), EVENT_KEY)
    return table.select(EVENT_COLUMNS).to_pylist()


def discriminate(run_dir: Path, draws: int = DRAWS, seed: int | None = None) -> dict[str, Any]:
    """The discriminator test on a run folder (module doc); `seed` defaults to the scenario's."""
    import pyarrow.compute as pc

    from alignuser_sim.config import load_scenario
    from alignuser_sim.data import load_dataset
    from alignuser_sim.data.holdout import split_dataset
    from alignuser_sim.data.rollouts import build_rollouts

    run_dir = Path(run_dir)
    events = read_events(run_dir)
    run = RunFolder(run_dir)
    if not run.scenario.exists():
        raise UserError(f"{run_dir}: no {run.scenario.name}: not a simulation run folder")
    scenario = load_scenario(run.scenario)
    seed = scenario.seed if seed is None else seed
    users = sorted({u for ids in run.shards().values() for u in ids} or {e["agent_id"] for e in events})
    ds = load_dataset(scenario.dataset)
    train, _ = split_dataset(ds)
    genres = dict(zip(ds.items["item_id"].to_pylist(), ds.items["genres"].to_pylist(), strict=True))

    def genres_of(item: str) -> list[str]:
        return list(genres.get(item) or ())

    counts = pc.value_counts(train.interactions["item_id"])
    popularity = {v["values"]: math.log1p(v["counts"]) for v in counts.to_pylist()}
    rollouts = build_rollouts(train, users, scenario.pages, scenario.seed, ds.interactions)
    cap = scenario.pages.count
    simulated = simulated_features(events, cap, genres_of, popularity)
    human = human_features(rollouts.to_pylist(), cap, genres_of, popularity)
    try:
        result = classify(simulated, human, NAMES, seed=seed, draws=draws)
    except UserError as exc:
        raise UserError(f"{run_dir}: {exc}") from None
    return {"run_dir": str(run_dir), "run_id": run.meta().get("run_id"), "scenario": scenario.name,
            "dataset": scenario.dataset.name, "policy": scenario.policy.label, "users": len(users),
            "page_cap": cap, **result.as_dict()}
