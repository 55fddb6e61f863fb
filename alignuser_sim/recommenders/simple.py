"""The two baselines: Random and Pop (most popular)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from alignuser_sim.core import user_rng
from alignuser_sim.recommenders.base import Param, Recommender


class RandomRecommender(Recommender):
    """Unseen items in a random order.

    Deterministic: a user's next page comes from a generator seeded by (seed, user id, number of items the
    user has seen so far), so the same user gets the same pages for the same seed, whoever else is served,
    and after a resume (from `state_dict` or by replaying the feedback).
    Feedback: only the history update (watched and shown items are never served again); the order of
    the remaining items does not depend on what was watched. Cold users are served the same way.
    """

    name = "random"

    def _fit_model(self) -> None:
        pass

    def _scores(self, user_ids: list[str]) -> np.ndarray:
        scores = np.empty((len(user_ids), self.n_items), dtype=np.float64)
        for r, uid in enumerate(user_ids):
            step = len(self._seen.get(uid, ()))
            scores[r] = user_rng(self.seed, uid, step).random(self.n_items)
        return scores

    def _uses_popularity(self, user_ids: list[str]) -> list[bool]:
        return [False] * len(user_ids)  # cold users too get a random order


class PopRecommender(Recommender):
    """The most popular unseen items: popularity = number of distinct users who consumed the item.

    Ties go to the item listed first in the items table. Feedback: watched/shown items are never served
    to that user again. With `live_popularity: true`, every watched item also adds one to its popularity
    count (shared by all users: what simulated users watch becomes more popular for everybody); that
    makes a user's pages depend on the timing of other agents' decisions, so such a run is not exactly
    reproducible or resumable, hence off by default. Cold users are served exactly like everyone else.
    """

    name = "pop"
    params_spec: ClassVar[dict[str, Param]] = {
        "live_popularity": Param(False, help="count simulated watches into popularity (not reproducible)"),
    }

    def _fit_model(self) -> None:
        pass

    def _scores(self, user_ids: list[str]) -> np.ndarray:
        return np.broadcast_to(self.pop_scores(), (len(user_ids), self.n_items))

    def _uses_popularity(self, user_ids: list[str]) -> list[bool]:
        return [True] * len(user_ids)
