"""`policy.choice: score`: the LLM says which items, the user's own training history says how many.

A page-list reply (`agent/decision.py`) asks a model to decide, in one greedy answer, both how many items a
user takes and which. The embedded 135M model gets neither from the prompt: its lists follow the page's order
and not its popularity (within-page AUC against popularity 0.46-0.48 on ML-1M, the humans' 0.83), so every
list policy sits at chance on 1:1 pages, trained or not. Asked about one item at a time, the same model's
probability of "yes" does rank a user's held-out positives above the page's negatives (AUC 0.58 zero-shot),
even though its greedy answer is "no" every time.

So a scoring agent asks one yes/no question per item (the persona and the policy's lessons and world-model
lines first, the item last: the prefix cache serves all but the item's line), reads P(yes) from the first
token's log-probabilities (`llm/logprobs.py`), and watches the `round(rate x page size)` items with the
highest P(yes), where `rate` is its human's training watch rate, and leaves once it has seen as many pages as
its human's training sessions held: the popularity reference's rules (`agent/reference_policy.py`) with the
LLM's ranking in place of the popularity ranking, so the two differ in exactly what the LLM adds. Ratings are
not part of the answer: watched items carry none (`policy.rate_watched` asks them in a simulation; the
evaluation asks its own rating call).

With a `temperature` (learning's counterfactual samples) the items are drawn, not ranked: Gumbel top-k on
log P(yes) / temperature, seeded.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import numpy as np

from alignuser_sim.agent.decision import ROLE, Decision
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.core import Domain, ItemView
from alignuser_sim.data.training_stats import TrainingStats, round_half_up
from alignuser_sim.llm.logprobs import FIRST_TOKEN_SAMPLING, FirstToken
from alignuser_sim.llm.prompts import build_messages
from alignuser_sim.llm.protocol import StructuredLLM, is_transient


def scoring_system(domain: Domain) -> str:
    """The system prompt before the persona: the same for every agent of a run (the prefix cache serves it)."""
    return ROLE + f"Now you see one recommended {domain.item} at a time: answer yes if this user would " \
                  f"{domain.consume} it, no if not."


def item_question(item: ItemView, domain: Domain) -> str:
    return f"Recommended: {item.text()}\nWould you {domain.consume} it? Answer yes or no."


def answer_word(watched: bool) -> str:
    """The reply a training example teaches for one item (`learning/training_data.py`)."""
    return "yes" if watched else "no"


@dataclass
class ScoringAgent(PersonaAgent):
    stats: TrainingStats | None = None  # the human's training watch rate and session length (PolicySetup)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._system = scoring_system(self.domain)

    def item_messages(self, item: ItemView) -> list[dict[str, str]]:
        """One item's question: persona, the policy's lessons and world-model lines for this item, the short
        history, then the item."""
        context = self.policy_context([item])
        if self.history:
            context.append(f"You recently {self.domain.consumed}: " + "; ".join(
                f"{title} (you rated {rating})" if rating else title for title, rating in self.history))
        return build_messages(self._system, item_question(item, self.domain), persona=self._persona_text,
                              context=context)

    def session_pages(self) -> int:
        assert self.stats is not None
        return max(1, round_half_up(self.stats.pages(self.agent_id)))

    def how_many(self, page: list[ItemView]) -> int:
        assert self.stats is not None, "ScoringAgent needs the training statistics (PolicySetup.for_scenario)"
        return round_half_up(self.stats.rate(self.agent_id) * len(page))

    async def scores(self, llm: StructuredLLM, page: list[ItemView], *, seed: int) -> tuple[list[float | None],
                                                                                              Decision]:
        """P(yes) per item (None where the reply named neither word or failed) and a Decision holding the
        calls' cost and, when any call failed in transport, that failure."""
        results = await asyncio.gather(*(
            llm.call(self.item_messages(item), FirstToken, seed=seed, sampling=FIRST_TOKEN_SAMPLING,
                     model=self.model) for item in page))
        cost = Decision(ratings={}, feelings={}, thought=None, action="next_page")
        probs: list[float | None] = []
        for result in results:
            cost.prompt_tokens += result.usage.prompt_tokens
            cost.completion_tokens += result.usage.completion_tokens
            cost.latency_s = max(cost.latency_s, result.latency_s)  # asked side by side
            cost.from_cache = cost.from_cache or result.from_cache
            if is_transient(result.failure):
                cost.failure = result.failure
            probs.append(result.value.yes_probability() if result.value is not None else None)
        if cost.failure is None and all(p is None for p in probs) and results:
            cost.failure = results[0].failure or "no_yes_no"
        return probs, cost

    async def ask(self, llm: StructuredLLM, page_no: int, page: list[ItemView], *, seed: int,
                  temperature: float | None = None) -> Decision:
        probs, decision = await self.scores(llm, page, seed=seed)
        if decision.failure is not None:
            decision.action = "exit"
            return decision
        keys = np.array([math.log(max(p, 1e-9)) if p is not None else -np.inf for p in probs])
        if temperature:
            rng = np.random.default_rng(seed & 0xFFFFFFFF)
            keys = keys / temperature + rng.gumbel(size=len(keys))
        order = sorted(range(len(page)), key=lambda i: (-keys[i], i))  # ties: the earlier item
        chosen = [i for i in order[: self.how_many(page)] if probs[i] is not None]
        decision.ratings = {page[i].item_id: None for i in sorted(chosen)}
        decision.action = "exit" if page_no + 1 >= self.session_pages() else "next_page"
        return decision
