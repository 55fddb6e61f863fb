"""What a user did on the TRAINING split, counted without any model: the knowledge of the reference policies.

Two places read it: the micro evaluation's reference rows (`evaluation/references.py`: always-watch, random,
popularity and the rating means, decided on the eval's own pages) and the `popularity` policy of the
simulation (`agent/reference_policy.py`), which browses pages page by page as an LLM policy does, so that a
`compare` or a believability run can be read against a user model that has no LLM at all.

Everything comes from the training split (`data/holdout.split_dataset`), as learning's:
- the user's training watch rate: the share of the items shown on the user's training rollout pages
  (`data/rollouts.build_rollouts`, the scenario's `pages` and seed) that the human watched; the mean over
  the users for a user without pages. Rollout pages mix the human's items with distractors at
  `pages.distractor_ratio`, so this rate mostly reflects that setting, not the user;
- the user's pages per session on those rollouts (how long the human's sessions ran);
- item popularity: the number of training interactions of each item;
- ratings: the training split's ratings (global, per item, per user).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.config import PagesConfig
from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.data.rollouts import build_rollouts
from alignuser_sim.data.tables import Dataset


@dataclass
class TrainingStats:
    """What the references know, all from the training split."""

    watch_rate: dict[str, float]
    mean_rate: float
    popularity: dict[str, int]
    global_mean: float | None  # None: the dataset has no ratings
    item_mean: dict[str, float] = field(default_factory=dict)
    user_mean: dict[str, float] = field(default_factory=dict)
    session_pages: dict[str, float] = field(default_factory=dict)  # user -> mean pages per training session
    mean_session_pages: float = 1.0

    def rate(self, user: str) -> float:
        return self.watch_rate.get(user, self.mean_rate)

    def pages(self, user: str) -> float:
        return self.session_pages.get(user, self.mean_session_pages)

    def top(self, items: list[str], n: int, least: bool = False) -> list[bool]:
        """The n most (least: the n least) popular items of the page (ties: by item id), as watched flags in
        page order."""
        sign = 1 if least else -1
        ranked = sorted(range(len(items)), key=lambda i: (sign * self.popularity.get(items[i], 0), items[i]))
        chosen = set(ranked[: max(0, n)])
        return [i in chosen for i in range(len(items))]

    def predict(self, name: str, user: str, items: list[str]) -> list[float]:
        assert self.global_mean is not None
        if name == "global-mean":
            return [self.global_mean] * len(items)
        if name == "item-mean":
            return [self.item_mean.get(i, self.global_mean) for i in items]
        return [self.user_mean.get(user, self.global_mean)] * len(items)

    def for_users(self, users: list[str]) -> TrainingStats:
        """The part a shard of these users needs (the item tables are shared by all)."""
        keep = set(users)
        return TrainingStats(
            {u: r for u, r in self.watch_rate.items() if u in keep}, self.mean_rate, self.popularity,
            self.global_mean, self.item_mean, {u: m for u, m in self.user_mean.items() if u in keep},
            {u: p for u, p in self.session_pages.items() if u in keep}, self.mean_session_pages)


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _means(inter: pa.Table, key: str) -> dict[str, float]:
    """Mean rating per value of `key` (users or items) over the rated rows."""
    table = inter.group_by(key).aggregate([("rating", "mean")])
    return {k: float(v) for k, v in zip(table[key].to_pylist(), table["rating_mean"].to_pylist(), strict=True)
            if v is not None}


def training_stats(dataset: Dataset, users: list[str], pages: PagesConfig, seed: int) -> TrainingStats:
    """Watch rates, session lengths, popularity and rating means from the training split of `dataset`."""
    train, _ = split_dataset(dataset)
    inter = train.interactions
    counts = inter.group_by("item_id").aggregate([("item_id", "count")])
    popularity_of = dict(zip(counts["item_id"].to_pylist(), counts["item_id_count"].to_pylist(), strict=True))
    rollouts = build_rollouts(train, users, pages, seed, dataset.interactions)
    shown: Counter[str] = Counter()
    watched: Counter[str] = Counter()
    page_count: Counter[str] = Counter()
    sessions: dict[str, set[int]] = {}
    for user, session, flags in zip(rollouts["user_id"].to_pylist(), rollouts["session"].to_pylist(),
                                    rollouts["watched"].to_pylist(), strict=True):
        shown[user] += len(flags)
        watched[user] += sum(flags)
        page_count[user] += 1
        sessions.setdefault(user, set()).add(session)
    rates = {u: watched[u] / shown[u] for u in shown if shown[u]}
    mean_rate = float(np.mean(list(rates.values()))) if rates else 0.0
    lengths = {u: page_count[u] / len(s) for u, s in sessions.items()}
    mean_length = float(np.mean(list(lengths.values()))) if lengths else 1.0
    rated = inter.filter(pc.is_valid(inter["rating"]))
    if not rated.num_rows:
        return TrainingStats(rates, mean_rate, popularity_of, None, session_pages=lengths,
                             mean_session_pages=mean_length)
    return TrainingStats(rates, mean_rate, popularity_of, float(pc.mean(rated["rating"]).as_py()),
                         _means(rated, "item_id"), _means(rated, "user_id"), lengths, mean_length)
