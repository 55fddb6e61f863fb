"""The page loop of a simulation, written against plain interfaces so it runs with or without Ray.

Three roles, each a plain object here and a thin actor in `actors/`:

- a **shard** (`ShardCore`) hosts many persona agents and one LLM client; given a batch of pages it runs
  its agents' decisions concurrently (bounded by the client's semaphore) and returns events;
- a **recommender** serves pages in batches and takes feedback (`alignuser_sim.recommenders`);
- the **driver** (`Driver`) runs every shard's agents page by page until each agent exits or reaches
  the page cap, writes events (idempotent on their key), feeds back to the recommender and aggregates
  macro statistics as it goes.

Each shard's agents are split into a few groups, each with its own loop in the driver (no global barrier):
a group waits for its slowest decision before its next page, so several groups per shard keep the LLM
server busy through those tails, while each group still gets its pages in one batched recommender call.
A page served to an agent is remembered until its decision is logged, so a retried batch (a shard that
died mid-page) is decided on the same page, and the recommender sees each page's feedback exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from .agent import ItemView
from .events import Event, EventLog, MacroStats
from .personas import Persona
from .policy import PolicySetup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PageRequest:
    agent_id: str
    session: int
    page: int
    items: tuple[str, ...]


class Catalogue:
    """Item id -> what a user sees of it. Built once per process from the items table."""

    def __init__(self, items: pa.Table):
        ids = items["item_id"].to_pylist()
        titles = items["title"].to_pylist()
        genres = items["genres"].to_pylist()
        descriptions = (
            items["description"].to_pylist() if "description" in items.column_names else [None] * len(ids)
        )
        self.views = {
            i: ItemView(i, t or f"item {i}", tuple(g or ()), d or "")
            for i, t, g, d in zip(ids, titles, genres, descriptions, strict=True)
        }

    def page(self, item_ids: Sequence[str]) -> list[ItemView]:
        return [self.views.get(i) or ItemView(i, f"item {i}") for i in item_ids]


class ShardCore:
    """Many agents in one process: a shard of the population."""

    def __init__(
        self,
        shard_id: int,
        personas: list[Persona],
        catalogue: Catalogue,
        llm: Any,
        run_id: str,
        seed: int = 0,
        policy: PolicySetup | None = None,
        history_size: int = 5,
    ):
        self.shard_id, self.llm, self.run_id, self.catalogue = shard_id, llm, run_id, catalogue
        policy = policy or PolicySetup.prompt_only()
        self.agents = {p.user_id: policy.agent(p, seed=seed, history_size=history_size) for p in personas}

    async def decide(self, requests: list[PageRequest]) -> list[Event]:
        return list(await asyncio.gather(*(self._decide_one(r) for r in requests)))

    async def _decide_one(self, request: PageRequest) -> Event:
        agent = self.agents[request.agent_id]
        page = self.catalogue.page(request.items)
        decision = await agent.decide(self.llm, request.session, request.page, page)
        return Event(
            run_id=self.run_id,
            agent_id=request.agent_id,
            session=request.session,
            page=request.page,
            items=list(request.items),
            watched=[i in decision.ratings for i in request.items],
            ratings=[decision.ratings.get(i) for i in request.items],
            feelings=[decision.feelings.get(i, "") for i in request.items],
            thought=decision.thought,
            action=decision.action,
            failure=decision.failure,
            invalid_ids=decision.invalid_ids,
            prompt_tokens=decision.prompt_tokens,
            completion_tokens=decision.completion_tokens,
            latency_s=decision.latency_s,
            from_cache=decision.from_cache,
            shard=self.shard_id,
            wall_time=time.time(),
        )

    def restore(self, events: list[Event]) -> int:
        """Rebuild the agents' short histories from logged events (after a restart); returns how many."""
        n = 0
        for event in sorted(events, key=lambda e: (e.session, e.page)):
            agent = self.agents.get(event.agent_id)
            if agent is None:
                continue
            for item_id, watched, rating in zip(event.items, event.watched, event.ratings, strict=True):
                if watched:
                    agent.history.append((self.catalogue.views.get(item_id, ItemView(item_id, item_id)).title,
                                          rating))
            n += 1
        return n

    def llm_snapshot(self) -> dict[str, Any]:
        return self.llm.snapshot() if hasattr(self.llm, "snapshot") else {}


# --- the driver ------------------------------------------------------------------------------------------


class RecommenderPort(Protocol):
    """How the driver reaches the recommender (in-process or an actor)."""

    async def pages(self, user_ids: list[str], k: int) -> dict[str, list[str]]: ...

    async def feedback(self, batch: list[tuple[str, dict[str, float | None], list[str]]]) -> None: ...


class LocalRecommender:
    """A fitted recommender in this process, behind the driver's async port."""

    def __init__(self, recommender: Any):
        self.recommender = recommender

    async def pages(self, user_ids: list[str], k: int) -> dict[str, list[str]]:
        return self.recommender.pages(user_ids, k)

    async def feedback(self, batch: list[tuple[str, dict[str, float | None], list[str]]]) -> None:
        self.recommender.feedback_batch(batch)


def feedback_of(event: Event) -> tuple[str, dict[str, float | None], list[str]]:
    watched = {i: (None if r is None else float(r)) for i, w, r in zip(event.items, event.watched, event.ratings,
                                                                     strict=True) if w}
    return event.agent_id, watched, list(event.items)


@dataclass
class AgentProgress:
    session: int = 0
    page: int = 0
    done: bool = False


@dataclass
class Driver:
    """Runs shards page by page. `decide(shard_index, requests)` reaches a shard (in-process or actor)."""

    shards: dict[int, list[str]]  # shard index -> its agents' ids
    decide: Callable[[int, list[PageRequest]], Awaitable[list[Event]]]
    recommender: RecommenderPort
    event_log: EventLog
    page_cap: int
    items_per_page: int
    stats: MacroStats = field(default_factory=MacroStats)
    progress: dict[str, AgentProgress] = field(default_factory=dict)
    on_events: Callable[[list[Event]], None] | None = None
    max_batch: int = 4096
    max_groups_per_shard: int = 8
    agents_per_group: int = 200

    def __post_init__(self) -> None:
        for ids in self.shards.values():
            for agent_id in ids:
                self.progress.setdefault(agent_id, AgentProgress())
        self._pending: dict[str, PageRequest] = {}

    def session_over(self, event: Event) -> bool:
        return event.action == "exit" or event.failure is not None or event.page + 1 >= self.page_cap

    def replay(self, events: list[Event]) -> list[list[tuple[str, dict[str, float | None], list[str]]]]:
        """Take logged events as done (resume): progress and statistics. Returns their feedback grouped by
        page round, in order, for the recommender to re-serve and re-apply."""
        rounds: dict[tuple[int, int], list] = {}
        for event in sorted(events, key=lambda e: (e.session, e.page, e.agent_id)):
            self._advance(event)
            rounds.setdefault((event.session, event.page), []).append(feedback_of(event))
        return [rounds[key] for key in sorted(rounds)]

    def _advance(self, event: Event) -> None:
        over = self.session_over(event)
        self.stats.add(event, over)
        p = self.progress.setdefault(event.agent_id, AgentProgress())
        p.page = event.page + 1
        p.done = over

    @property
    def agents_done(self) -> int:
        return sum(p.done for p in self.progress.values())

    async def run(self) -> MacroStats:
        loops = []
        for shard, ids in self.shards.items():
            # at least 2 groups (tails), about `agents_per_group` each: every group round costs a few Ray
            # calls, which is noise next to an LLM call but not next to a cached one
            n = max(1, min(len(ids), max(2, min(self.max_groups_per_shard, len(ids) // self.agents_per_group))))
            loops += [self._run_group(shard, ids[g::n]) for g in range(n)]
        await asyncio.gather(*loops)
        return self.stats

    async def _run_group(self, shard: int, agent_ids: list[str]) -> None:
        while True:
            active = [a for a in agent_ids if not self.progress[a].done][: self.max_batch]
            if not active:
                return
            need = [a for a in active if a not in self._pending]
            if need:
                served = await self.recommender.pages(need, self.items_per_page)
                for agent_id in need:
                    p = self.progress[agent_id]
                    self._pending[agent_id] = PageRequest(agent_id, p.session, p.page, tuple(served[agent_id]))
            requests = [self._pending[a] for a in active]
            empty = [r for r in requests if not r.items]
            for r in empty:  # nothing left to recommend: the session ends without a decision
                self.progress[r.agent_id].done = True
                self._pending.pop(r.agent_id, None)
            requests = [r for r in requests if r.items]
            if not requests:
                continue
            events = await self.decide(shard, requests)
            fresh = self.event_log.append(events)
            for event in events:
                self._pending.pop(event.agent_id, None)
            for event in fresh:
                self._advance(event)
            await self.recommender.feedback([feedback_of(e) for e in fresh])
            if self.on_events is not None:
                self.on_events(fresh)
