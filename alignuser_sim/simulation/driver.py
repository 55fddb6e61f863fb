"""The page loop of a simulation, written against plain interfaces so it runs with or without Ray.

Three roles, each a plain object here and a thin actor in `actors/`:

- a **shard** (`ShardCore`) hosts many persona agents and one LLM client; given a batch of pages it runs
  its agents' decisions concurrently (bounded by the client's semaphore) and hands each decision back as
  soon as it is made (`decide_stream`), in chunks of whatever finished together;
- a **recommender** serves pages in batches and takes feedback (`alignuser_sim.recommenders`);
- the **driver** (`Driver`) runs every shard's agents page by page until each agent exits or reaches
  the page cap, writes events (idempotent on their key), feeds back to the recommender and aggregates
  macro statistics as it goes.

Agents are pipelined: an agent asks for its next page as soon as its decision is logged and fed back, so
one slow decision holds up nobody else (a group that waited for its slowest member kept a CPU vLLM
server at two thirds of its throughput). Calls stay batched: agents that come back within a few
milliseconds of each other (`batch_window_s`) get their pages in one recommender call and go to their
shard in one decide call, and decisions come back in chunks. A page served to an agent is remembered until
its decision is logged, so a retried request (a shard that died mid-page) is decided on the same page, and
the recommender sees each page's feedback exactly once, before that agent's next page is served.

An LLM outage does not end sessions. A decision whose call failed in transport (connection refused, timeout,
HTTP 5xx: `llm.protocol.is_transient`) is no decision: it is not logged, the agent is parked and asks again
on the same page after a backoff (`run.outage_backoff_s`, doubling per try up to `OUTAGE_BACKOFF_MAX_S`). The
run tolerates `run.outage_wait_s` seconds without any answer from the server; a page still failing after that
leaves its session unfinished (`Driver.unfinished`), which `--resume` retries since no event was logged for
it. A reply that did not validate is a decision (a counted, logged failure that ends the session), as before.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.config import RunConfig
from alignuser_sim.core import Catalogue, ItemView
from alignuser_sim.data.personas import Persona
from alignuser_sim.llm.protocol import StructuredLLM, is_transient
from alignuser_sim.simulation.events import Event, EventLog, MacroStats

log = logging.getLogger(__name__)
_RUN = RunConfig()  # the defaults of the `run:` knobs, for a driver made without a scenario (tests, benchmarks)
OUTAGE_BACKOFF_MAX_S = 30.0  # the longest wait of a parked page between two tries


@dataclass(frozen=True)
class PageRequest:
    agent_id: str
    session: int
    page: int
    items: tuple[str, ...]


async def as_completed_chunks(aws: Iterable[Awaitable[Any]], max_chunk: int = _RUN.max_chunk,
                              ) -> AsyncIterator[list[Any]]:
    """Run the awaitables concurrently; yield their results in completion order, in lists of whatever has
    finished since the last yield (at most `max_chunk`), so a caller can batch its follow-up work without
    waiting for the slowest. The first exception cancels the rest and propagates."""
    queue: asyncio.Queue[asyncio.Task[Any]] = asyncio.Queue()
    tasks = [asyncio.ensure_future(a) for a in aws]
    for task in tasks:
        task.add_done_callback(queue.put_nowait)
    left = len(tasks)
    try:
        while left:
            chunk = [await queue.get()]
            while len(chunk) < max_chunk and not queue.empty():
                chunk.append(queue.get_nowait())
            left -= len(chunk)
            yield [task.result() for task in chunk]
    finally:
        for task in tasks:
            task.cancel()


class ShardCore:
    """Many agents in one process: a shard of the population. The agents' prompts show the last
    `policy.config.history_size` items they watched (the scenario's `policy.history_size`)."""

    def __init__(
        self,
        shard_id: int,
        personas: list[Persona],
        catalogue: Catalogue,
        llm: StructuredLLM,
        run_id: str,
        seed: int = 0,
        policy: PolicySetup | None = None,
        max_chunk: int = _RUN.max_chunk,
    ):
        self.shard_id, self.llm, self.run_id, self.catalogue = shard_id, llm, run_id, catalogue
        self.max_chunk = max_chunk
        policy = policy or PolicySetup.prompt_only()
        self.agents = {p.user_id: policy.agent(p, seed=seed, history_size=policy.config.history_size)
                       for p in personas}

    async def decide(self, requests: list[PageRequest]) -> list[Event]:
        return list(await asyncio.gather(*(self._decide_one(r) for r in requests)))

    async def decide_stream(self, requests: list[PageRequest]) -> AsyncIterator[list[Event]]:
        """The same decisions, each handed back as soon as it is made (in chunks of what finished together)."""
        async for chunk in as_completed_chunks((self._decide_one(r) for r in requests), self.max_chunk):
            yield chunk

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
        return self.llm.snapshot()


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
    tries: int = 0  # transport failures of the current page in a row
    unfinished: bool = False  # given up after the outage budget: not done, left for `--resume`


@dataclass
class Driver:
    """Runs shards' agents, each page by page, pipelined (see the module docstring).

    `decide(shard_index, requests)` reaches a shard (in-process or actor) and returns all their events;
    `decide_stream(shard_index, requests)`, when given, returns them as they are made (an async iterator of
    event lists): give it when a call is costly (a Ray actor call). Without it the driver calls `decide`
    once per request, concurrently, so each agent still moves on by itself."""

    shards: dict[int, list[str]]  # shard index -> its agents' ids
    decide: Callable[[int, list[PageRequest]], Awaitable[list[Event]]]
    recommender: RecommenderPort
    event_log: EventLog
    page_cap: int
    items_per_page: int
    stats: MacroStats = field(default_factory=MacroStats)
    progress: dict[str, AgentProgress] = field(default_factory=dict)
    on_events: Callable[[list[Event]], None] | None = None
    decide_stream: Callable[[int, list[PageRequest]], AsyncIterator[list[Event]]] | None = None
    max_batch: int = _RUN.max_batch  # agents per recommender / decide call
    batch_window_s: float = _RUN.batch_window_s  # how long agents coming back are gathered into one batch
    outage_wait_s: float = _RUN.outage_wait_s  # how long the run goes on with no answer from the LLM server
    outage_backoff_s: float = _RUN.outage_backoff_s  # first wait of a page whose call failed in transport

    def __post_init__(self) -> None:
        for ids in self.shards.values():
            for agent_id in ids:
                self.progress.setdefault(agent_id, AgentProgress())
        self._pending: dict[str, PageRequest] = {}
        self._outage_since: float | None = None  # first transport failure since the last answer (monotonic)
        self._gave_up = False  # a session was left unfinished (said once in the log)
        self.replayed = 0  # events taken as done from an earlier part of the run (resume)

    def session_over(self, event: Event) -> bool:
        return event.action == "exit" or event.failure is not None or event.page + 1 >= self.page_cap

    def replay(self, events: list[Event]) -> list[list[tuple[str, dict[str, float | None], list[str]]]]:
        """Take logged events as done (resume): progress and statistics. Returns their feedback grouped by
        page round, in order, for the recommender to re-serve and re-apply."""
        rounds: dict[tuple[int, int], list] = {}
        for event in sorted(events, key=lambda e: (e.session, e.page, e.agent_id)):
            self._advance(event)
            self.replayed += 1
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

    @property
    def unfinished(self) -> list[str]:
        """Agents whose session was left unfinished by an outage (retried by `--resume`)."""
        return sorted(a for a, p in self.progress.items() if p.unfinished)

    async def run(self) -> MacroStats:
        feeders = [asyncio.ensure_future(self._run_shard(shard, ids)) for shard, ids in self.shards.items()]
        try:
            await asyncio.gather(*feeders)
        finally:  # one shard's failure stops the others
            for feeder in feeders:
                feeder.cancel()
        self.stats.sessions_unfinished = len(self.unfinished)
        return self.stats

    async def _run_shard(self, shard: int, agent_ids: list[str]) -> None:
        """One shard's feeder: agents ready for a page wait on `ready`; each batch of them gets its pages and
        goes to the shard as one decide stream, which puts each agent back on `ready` once it is logged."""
        ready: asyncio.Queue[Any] = asyncio.Queue()
        for agent_id in agent_ids:
            if not self.progress[agent_id].done:
                ready.put_nowait(agent_id)
        streams: set[asyncio.Task[None]] = set()

        def track(task: asyncio.Task[None]) -> None:
            task.add_done_callback(ready.put_nowait)  # the ended task itself is a message
            streams.add(task)

        try:
            while streams or not ready.empty():
                batch: list[str] = []
                self._take(await ready.get(), batch, streams)
                if streams and self.batch_window_s:  # others are about to come back: one call for all
                    await asyncio.sleep(self.batch_window_s)
                while not ready.empty() and len(batch) < self.max_batch:
                    self._take(ready.get_nowait(), batch, streams)
                if not batch:
                    continue
                requests = await self._serve(batch)
                if requests:
                    track(asyncio.create_task(self._decide_and_log(shard, requests, ready, track)))
        finally:
            for task in streams:
                task.cancel()

    @staticmethod
    def _take(message: Any, batch: list[str], streams: set[asyncio.Task[None]]) -> None:
        if isinstance(message, asyncio.Task):
            streams.discard(message)
            message.result()  # a stream that failed fails the run
        else:
            batch.append(message)

    async def _serve(self, agent_ids: list[str]) -> list[PageRequest]:
        """Pages for agents that have none pending (one recommender call); an agent with nothing left to
        recommend ends its session without a decision."""
        need = [a for a in agent_ids if a not in self._pending]
        if need:
            served = await self.recommender.pages(need, self.items_per_page)
            for agent_id in need:
                p = self.progress[agent_id]
                self._pending[agent_id] = PageRequest(agent_id, p.session, p.page, tuple(served[agent_id]))
        requests = []
        for agent_id in agent_ids:
            request = self._pending[agent_id]
            if request.items:
                requests.append(request)
            else:
                self.progress[agent_id].done = True
                del self._pending[agent_id]
        return requests

    async def _decide_and_log(self, shard: int, requests: list[PageRequest], ready: asyncio.Queue[Any],
                              track: Callable[[asyncio.Task[None]], None]) -> None:
        waiting = {r.agent_id for r in requests}
        async for answered in self._stream(shard, requests):
            events = []
            for event in answered:
                waiting.discard(event.agent_id)
                if is_transient(event.failure):
                    self._park(event.agent_id, ready, track)
                else:
                    events.append(event)
            if not events:
                continue
            self._outage_since = None  # the server answers
            fresh = self.event_log.append(events)
            for event in events:
                self._pending.pop(event.agent_id, None)
                self.progress[event.agent_id].tries = 0
            for event in fresh:
                self._advance(event)
            if self.on_events is not None:
                self.on_events(fresh)
            await self.recommender.feedback([feedback_of(e) for e in fresh])  # before their next pages
            for event in events:
                if not self.progress[event.agent_id].done:
                    ready.put_nowait(event.agent_id)
        if waiting:
            raise RuntimeError(f"shard {shard} returned no decision for {len(waiting)} of its requests")

    def _park(self, agent_id: str, ready: asyncio.Queue[Any], track: Callable[[asyncio.Task[None]], None]) -> None:
        """The agent's call failed in transport: ask again on the same page (kept in `_pending`) after a
        backoff, or give its session up once the run has had no answer for `outage_wait_s`."""
        p = self.progress[agent_id]
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            log.warning("LLM calls fail in transport; parked pages are asked again for up to %g s",
                        self.outage_wait_s)
        left = self._outage_since + self.outage_wait_s - now
        if left <= 0:
            if not self._gave_up:
                self._gave_up = True
                log.warning("no LLM answer for %g s: sessions whose page still fails are left unfinished "
                            "(`--resume` retries them)", self.outage_wait_s)
            p.unfinished = True
            return
        p.tries += 1
        self.stats.transport_retries += 1
        wait = min(self.outage_backoff_s * 2 ** (p.tries - 1), OUTAGE_BACKOFF_MAX_S) * random.uniform(0.75, 1.0)
        track(asyncio.create_task(_requeue(agent_id, min(wait, left), ready)))

    async def _stream(self, shard: int, requests: list[PageRequest]) -> AsyncIterator[list[Event]]:
        if self.decide_stream is not None:
            async for events in self.decide_stream(shard, requests):
                yield events
            return
        async for chunks in as_completed_chunks(self.decide(shard, [r]) for r in requests):
            yield [event for chunk in chunks for event in chunk]


async def _requeue(agent_id: str, delay_s: float, ready: asyncio.Queue[Any]) -> None:
    await asyncio.sleep(delay_s)
    ready.put_nowait(agent_id)
