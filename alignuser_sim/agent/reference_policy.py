"""The `popularity` policy: a simulated user with no LLM, the reference the LLM policies are read against.

On ML-1M a popularity ranking that knows how many positives a page holds matches the published AlignUSER
accuracy without any model; a ranking of recommenders by simulated satisfaction, or a discriminator's AUC,
means little until it is set beside what such a user gives. This agent browses exactly as an LLM agent does
(same driver, same recommender feedback, same events), deciding from the training split only
(`data/training_stats.py`):

- watches the page's most popular items, as many as its human's training watch rate implies
  (round(rate x page size), halves up: the eval's `popularity` reference);
- rates each at the item's training mean rating, rounded (the user's mean, then the global mean, for an item
  without ratings; no rating on a dataset without ratings);
- leaves once it has seen as many pages as its human's training sessions lasted on average (rounded, at
  least one), else goes on to the next page.

Deterministic: no seed, no temperature, no tokens. It never touches the LLM it is handed.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignuser_sim.agent.decision import Decision
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.core import ItemView
from alignuser_sim.data.training_stats import TrainingStats, round_half_up
from alignuser_sim.llm.protocol import StructuredLLM


@dataclass
class PopularityAgent(PersonaAgent):
    stats: TrainingStats | None = None

    def _rating(self, item_id: str) -> int | None:
        stats = self.stats
        assert stats is not None
        if stats.global_mean is None:
            return None
        mean = stats.item_mean.get(item_id, stats.user_mean.get(self.agent_id, stats.global_mean))
        return max(1, round_half_up(mean))

    def session_pages(self) -> int:
        assert self.stats is not None
        return max(1, round_half_up(self.stats.pages(self.agent_id)))

    async def ask(self, llm: StructuredLLM, page_no: int, page: list[ItemView], *, seed: int,
                  temperature: float | None = None) -> Decision:
        stats = self.stats
        assert stats is not None, "PopularityAgent needs the training statistics (PolicySetup.for_scenario)"
        ids = [item.item_id for item in page]
        watched = stats.top(ids, round_half_up(stats.rate(self.agent_id) * len(ids)))
        ratings = {item_id: self._rating(item_id) for item_id, w in zip(ids, watched, strict=True) if w}
        action = "exit" if page_no + 1 >= self.session_pages() else "next_page"
        return Decision(ratings=ratings, feelings={}, thought=None, action=action)
