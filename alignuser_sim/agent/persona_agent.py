"""PersonaAgent: a page of recommendations in, a `Decision` out, with ONE structured LLM call.

The prompt is built static-first so vLLM's prefix cache serves the shared part (see `llm/prompts.py`):
the system instructions (the same for every agent of a run), the persona (the same for every page of an
agent), then the lessons retrieved from the persona's lesson memory, the world-model hints and a short
recent history, and last the page itself. What the reply may hold, how the page is listed and how a reply
maps back to item ids is the agent's decision format (`agent/decision.py`, the scenario's `policy.reasoning`).
With `policy.rate_watched` the agent asks a second call after a page where it watched items without rating
them: the evaluation's rating call (`agent/rating.py`) for just those items. An adapter trained on a split that
rates few of its interactions (Agent4Rec's ML-1M rates 15%) learns to watch without rating, and a simulation
whose watches carry no ratings cannot measure satisfaction.
Each call's `max_tokens` is the worst case of the reply's schema narrowed to the page
(`llm.schemas.reply_budget`): no reply the schema admits is cut, whatever the page, and a small format asks
for a small budget.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from alignuser_sim.agent.decision import FULL, Decision, DecisionFormat
from alignuser_sim.agent.rating import RatingFormat, rating_messages
from alignuser_sim.config import PolicyConfig, SamplingConfig
from alignuser_sim.core import MOVIES, Domain, ItemView, call_seed
from alignuser_sim.data.personas import Persona
from alignuser_sim.llm.prompts import build_messages
from alignuser_sim.llm.protocol import StructuredLLM, is_transient
from alignuser_sim.llm.schemas import reply_budget

# the scenario's default (`policy.history_size`), for agents built without a scenario at hand
HISTORY_SIZE = PolicyConfig().history_size

MAX_TOKENS = SamplingConfig().max_tokens  # the budget of a reply whose schema is unbounded (none is, today)

SYSTEM_PROMPT = FULL.system  # the `full` format's system prompt (what `bench` counts)


def page_query(page: list[ItemView]) -> str:
    """The text a page is matched against lessons with: its titles and genres."""
    return " ".join(f"{item.title} {' '.join(item.genres)}" for item in page)


class LessonMemory(Protocol):
    """Where an agent's lessons come from (the learning step fills it; see `agent/memory.py`)."""

    def retrieve(self, query: str, k: int) -> list[str]: ...

    def __len__(self) -> int: ...


class NoLessons:
    def retrieve(self, query: str, k: int) -> list[str]:
        return []

    def __len__(self) -> int:
        return 0


class WorldModelContext(Protocol):
    """What the persona learned about how the recommender reacts (`agent/world_hints.py`): text lines of
    (state, action) -> next state examples relevant to this page, shown to the policy before it decides."""

    def hints(self, page: list[ItemView], k: int) -> list[str]: ...


class NoWorldModel:
    def hints(self, page: list[ItemView], k: int) -> list[str]:
        return []


@dataclass
class PersonaAgent:
    """One simulated user. Cheap to hold in thousands: a persona, a short history and a lessons handle."""

    persona: Persona
    lessons: LessonMemory = field(default_factory=NoLessons)
    lessons_k: int = 3
    world_model: WorldModelContext = field(default_factory=NoWorldModel)
    world_model_k: int = 2
    history_size: int = HISTORY_SIZE
    seed: int = 0
    decision_format: DecisionFormat = FULL
    max_tokens: int = MAX_TOKENS  # the scenario's `llm.sampling.max_tokens`: only for an unbounded schema
    history: deque = field(default_factory=deque)
    domain: Domain = MOVIES  # the words of its prompts (the scenario's `dataset.domain`)
    model: str | None = None  # the served name this agent asks (its trained adapter); None: the client's model
    rating_format: RatingFormat | None = None  # `policy.rate_watched`: rate what a page decision left unrated

    def __post_init__(self) -> None:
        self.history = deque(self.history, maxlen=self.history_size)
        self._persona_text = self.persona.describe(self.domain)
        self._system = self.decision_format.system_for(self.domain)  # static for a run: the prefix cache serves it

    @property
    def persona_text(self) -> str:
        """The persona as this agent's prompts describe it (in its domain's words)."""
        return self._persona_text

    @property
    def agent_id(self) -> str:
        return self.persona.user_id

    def policy_context(self, items: list[ItemView]) -> list[str]:
        """What the policy adds to a prompt about these items: the lessons and the world-model lines retrieved
        for them (each block only when something was retrieved). The page decision and the evaluation's
        rating call both use it, so the two prompts cannot drift apart."""
        context = []
        lessons = self.lessons.retrieve(page_query(items), self.lessons_k) if self.lessons_k else []
        if lessons:
            context.append("Lessons about how you really behave:\n" + "\n".join(f"- {x}" for x in lessons))
        hints = self.world_model.hints(items, self.world_model_k) if self.world_model_k else []
        if hints:
            context.append("How this recommender reacts to what you do:\n" + "\n".join(f"- {x}" for x in hints))
        return context

    def messages(self, page_no: int, page: list[ItemView]) -> list[dict[str, str]]:
        context = self.policy_context(page)
        if self.history:
            context.append(f"You recently {self.domain.consumed}: " + "; ".join(
                f"{title} (you rated {rating})" if rating else title for title, rating in self.history))
        dynamic = f"Page {page_no + 1}. Recommended items:\n" + self.decision_format.list_page(page)
        return build_messages(self._system, dynamic, persona=self._persona_text, context=context)

    def call_seed(self, session: int, page_no: int) -> int:
        """Same agent, page and run seed -> same seed: a re-run hits the completion cache."""
        return call_seed(self.seed, self.agent_id, session, page_no)

    async def decide(self, llm: StructuredLLM, session: int, page_no: int, page: list[ItemView]) -> Decision:
        """One structured call; what was watched joins the short history. A reply that did not validate is a
        counted failure: nothing watched, the session ends. A call that failed in transport (`decision.failure`
        is transient: the server down, busy or slow) is no decision: nothing is remembered, and the driver asks
        again on the same page later (`simulation/driver.py`), with the same seed."""
        decision = await self.ask(llm, page_no, page, seed=self.call_seed(session, page_no))
        if self.rating_format is not None and decision.failure is None:
            await self.rate_unrated(llm, decision, page, seed=call_seed(self.seed, self.agent_id, session, page_no,
                                                                         "rate"))
        if not is_transient(decision.failure):
            self.observe(decision, page)
        return decision

    async def rate_unrated(self, llm: StructuredLLM, decision: Decision, page: list[ItemView], *, seed: int) -> None:
        """Fill in the ratings of the watched items the decision left unrated with one rating call. A reply that
        does not validate leaves them unrated (the client logs and counts it); a call that failed in transport
        makes the whole decision transient, so the driver asks the page again (the decision itself then comes
        from the completion cache)."""
        unrated = [v for v in page if v.item_id in decision.ratings and decision.ratings[v.item_id] is None]
        if not unrated:
            return
        fmt = self.rating_format
        ids = [v.item_id for v in unrated]
        schema = fmt.schema(ids)
        budget = {"max_tokens": reply_budget(schema, fallback=self.max_tokens)}
        result = await llm.call(rating_messages(self, unrated, fmt), fmt.reply, seed=seed, schema=schema,
                                sampling=budget, model=self.model)
        decision.prompt_tokens += result.usage.prompt_tokens
        decision.completion_tokens += result.usage.completion_tokens
        decision.latency_s += result.latency_s
        if result.value is None:
            if is_transient(result.failure):
                decision.failure = result.failure
            return
        ratings, _ = fmt.to_ratings(result.value, ids)
        decision.ratings.update(ratings)

    async def ask(self, llm: StructuredLLM, page_no: int, page: list[ItemView], *, seed: int,
                  temperature: float | None = None) -> Decision:
        """The policy's decision on a page in the agent's format, remembering nothing: `decide` for the
        simulation, and learning's counterfactual samples (K seeds at a higher `temperature`)."""
        fmt = self.decision_format
        schema = fmt.schema(page)
        sampling: dict[str, float | int] = {"max_tokens": reply_budget(schema, fallback=self.max_tokens)}
        if temperature is not None:
            sampling["temperature"] = temperature
        result = await llm.call(self.messages(page_no, page), fmt.reply, seed=seed, sampling=sampling,
                                schema=schema, model=self.model)
        if result.value is None:
            decision = Decision(ratings={}, feelings={}, thought=None, action="exit", failure=result.failure)
        else:
            decision = fmt.to_decision(result.value, page)
        decision.prompt_tokens = result.usage.prompt_tokens
        decision.completion_tokens = result.usage.completion_tokens
        decision.latency_s = result.latency_s
        decision.from_cache = result.from_cache
        return decision

    def observe(self, decision: Decision, page: list[ItemView]) -> None:
        """Remember what was watched (the short history of later prompts)."""
        titles = {item.item_id: item.title for item in page}
        for item_id, rating in decision.ratings.items():
            self.history.append((titles[item_id], rating))
