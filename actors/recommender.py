"""RecommenderActor: one fitted recommender (built-in, plug-in or HTTP client) serving pages in batches and
taking feedback; `stats()` is what it reports for stats.json (an HTTP service's latency and reply problems)."""

from __future__ import annotations

from typing import Any

import ray

from alignuser_sim.config import RecommenderConfig
from alignuser_sim.recommenders import make_recommender, recommender_stats, replay


@ray.remote(num_cpus=0)
class RecommenderActor:
    def __init__(self, config: RecommenderConfig, seed: int, interactions: Any, items: Any,
                 run_id: str | None = None):
        self.recommender = make_recommender(config, seed=seed, run_id=run_id).fit(interactions, items)

    def ping(self) -> bool:
        return True

    def pages(self, user_ids: list[str], k: int) -> dict[str, list[str]]:
        return self.recommender.pages(user_ids, k)

    def feedback(self, batch: list[tuple[str, dict[str, float | None], list[str]]]) -> int:
        return self.recommender.feedback_batch(batch)

    def replay(self, by_page: list[list[tuple[str, dict[str, float | None], list[str]]]], k: int) -> int:
        """Resume: rebuild the recommender's state from the logged feedback, page round by page round, so it
        equals the interrupted run's (`recommenders.replay`: an HTTP service gets the same keys again)."""
        return replay(self.recommender, by_page, k)

    def stats(self) -> dict[str, Any]:
        flush = getattr(self.recommender, "flush", None)
        if callable(flush):
            flush()  # feedback kept after a failure: one more try before the run's numbers are taken
        return recommender_stats(self.recommender)
