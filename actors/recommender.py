"""RecommenderActor: one fitted recommender serving pages in batches and taking feedback."""

from __future__ import annotations

from typing import Any

import ray

from alignuser_sim.config import RecommenderConfig
from alignuser_sim.recommenders import make_recommender


@ray.remote(num_cpus=0)
class RecommenderActor:
    def __init__(self, config: RecommenderConfig, seed: int, interactions: Any, items: Any):
        self.recommender = make_recommender(config, seed=seed).fit(interactions, items)

    def ping(self) -> bool:
        return True

    def pages(self, user_ids: list[str], k: int) -> dict[str, list[str]]:
        return self.recommender.pages(user_ids, k)

    def feedback(self, batch: list[tuple[str, dict[str, float | None], list[str]]]) -> int:
        return self.recommender.feedback_batch(batch)

    def replay(self, by_page: list[list[tuple[str, dict[str, float | None], list[str]]]], k: int) -> int:
        """Resume: serve each logged page again (pages are deterministic given the state), then apply its
        feedback, page by page, so the state equals the interrupted run's."""
        n = 0
        for batch in by_page:
            self.recommender.pages([user for user, _, _ in batch], k)
            n += self.feedback(batch)
        return n
