"""Coordinator: drives every shard's agents page by page against the recommender actor.

It owns the run's event log and statistics (aggregated as events arrive), streams decisions back from the
shards as they are made (Ray streaming generators: the driver's per-agent pipelining), keeps backpressure
on the LLM server (each shard holds at most one request per agent; its client has a bounded semaphore),
survives a shard being killed or its node lost (the actor restarts, on another node if need be; its
agents are restored from the logged events, once per new process, and the requests not answered yet are
decided again on the same pages; a shard restarted more than `run.max_shard_restarts` times, a batch that
keeps crashing it, stops the run with one line, its logged events kept for `--resume`), and answers
`progress()` while it runs so the CLI can draw a progress bar. Around the loop it reads the LLM servers'
prefix-cache counters (`llm.metrics.PrefixCacheProbe`) for stats.json's `llm.prefix_cache`: the coordinator
is the one that knows the endpoints as they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from alignuser_sim.errors import UserError
from alignuser_sim.llm.accounting import Accounting, FailureLog
from alignuser_sim.llm.metrics import PrefixCacheProbe
from alignuser_sim.simulation.driver import Driver, PageRequest
from alignuser_sim.simulation.events import Event
from alignuser_sim.simulation.runs import RunPlan, checkpoint_llm_every, finish_run

from .recommender import RecommenderActor
from .shard import PersonaShard

log = logging.getLogger(__name__)
MIN_AGENTS_PER_SHARD = 8
RESTART_DEADLINE_S = 300.0  # a shard not back by then (no node with room for it) fails the run
STREAM_WATCH_S = 10.0  # how often a shard is pinged while its decision stream is silent


class ShardReplaced(Exception):
    """The shard answers from another process while a stream to it still waits: the stream is lost."""


def size_shards(cluster_cpus: float, agents: int, per_cpu: int = 1) -> int:
    """One shard per CPU of the cluster (an async shard keeps a core busy with many agents), never more
    shards than agents / MIN_AGENTS_PER_SHARD."""
    by_cpu = max(1, int(cluster_cpus) * per_cpu)
    return max(1, min(by_cpu, agents // MIN_AGENTS_PER_SHARD or 1))


async def next_or_dead(stream: Any, ping: Callable[[], Awaitable[int]], pid: int | None,
                       watch_s: float = STREAM_WATCH_S) -> Any:
    """The stream's next object ref (None at its end), watching the shard while waiting: a stream whose
    actor was killed at an unlucky moment can wait forever without raising (Ray streaming generators; the
    likely cause of a 300 s hang seen once in CI), so every `watch_s` of silence the shard is pinged, and an
    answer from a process other than `pid` counts as the shard's death. A ping that does not answer in time (a busy or
    restarting shard) only means looking again."""
    step = asyncio.ensure_future(stream.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({step}, timeout=watch_s)
            if done:
                try:
                    return step.result()
                except StopAsyncIteration:
                    return None
            try:
                now = await asyncio.wait_for(ping(), timeout=watch_s)
            except TimeoutError:
                continue
            if now != pid:
                raise ShardReplaced(f"the shard answers from a new process ({now}) while its stream waits")
    finally:
        if not step.done():
            step.cancel()


class _RemoteRecommender:
    def __init__(self, handle: Any):
        self.handle = handle

    async def pages(self, user_ids: list[str], k: int) -> dict[str, list[str]]:
        return await self.handle.pages.remote(user_ids, k)

    async def feedback(self, batch: list[tuple[str, dict[str, float | None], list[str]]]) -> None:
        if batch:
            await self.handle.feedback.remote(batch)


@ray.remote(num_cpus=0)
class Coordinator:
    def __init__(self, plan: RunPlan, endpoints: list[str], cache_path: str | None,
                 shard_options: dict[str, Any] | None = None):
        self.plan = plan
        self.endpoints = endpoints
        self.cache_path = cache_path
        self.shard_options = shard_options or {}
        self.event_log = plan.event_log()
        # what a restarted shard needs back: each agent's short history is its last `policy.history_size` watched
        # items, so its last that many events with a watch are enough (not every event of the run: memory stays
        # bounded per agent however long the run)
        self.recent: dict[str, deque[Event]] = {}
        self.keep_events = max(1, plan.scenario.policy.history_size)
        self.driver: Driver | None = None
        self.shards: dict[int, Any] = {}
        self.restarts = 0
        self.restarts_by_shard: dict[int, int] = {}
        self.shard_pids: dict[int, int] = {}  # the process each shard's agents were last restored in
        self._restore_locks: dict[int, asyncio.Lock] = {}
        self.started = time.time()
        self.calls_done = 0

    # --- progress, answered while run() goes ------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        d = self.driver
        return {
            "agents": self.plan.agents,
            "agents_done": d.agents_done if d else 0,
            "decisions": d.stats.decisions if d else 0,
            "llm_calls": self.calls_done,
            "elapsed_s": time.time() - self.started,
            "shard_restarts": self.restarts,
        }

    def shard_handles(self) -> dict[int, Any]:
        return self.shards

    async def set_endpoints(self, urls: list[str]) -> None:
        """The LLM endpoints changed (a vLLM replica was replaced): every shard balances over the new list, and
        a shard restarted later gets it too."""
        self.endpoints = list(urls)
        log.info("LLM endpoints now %s", ", ".join(urls))
        calls = [h.set_endpoints.remote(self.endpoints) for h in self.shards.values()]
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, Exception):  # a dead shard gets the list when it is restored
                log.warning("a shard did not take the new endpoints: %s", type(result).__name__)

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            if any(event.watched):
                recent = self.recent.get(event.agent_id)
                if recent is None:
                    recent = self.recent[event.agent_id] = deque(maxlen=self.keep_events)
                recent.append(event)
        self.calls_done += sum(not e.from_cache for e in events)

    def _history_events(self, shard: int) -> list[Event]:
        return [e for agent in self.plan.shards[shard] for e in self.recent.get(agent, ())]

    async def _decide(self, shard: int, requests: list[PageRequest]) -> list[Event]:
        return [event async for events in self._decide_stream(shard, requests) for event in events]

    async def _decide_stream(self, shard: int, requests: list[PageRequest]) -> AsyncIterator[list[Event]]:
        """Requests to a shard, decisions back as they are made; if the shard dies, wait for its restart,
        restore it, and send the requests not answered yet again (same pages)."""
        left = {r.agent_id: r for r in requests}
        while left:
            handle = self.shards[shard]
            try:
                stream = handle.decide_stream.options(num_returns="streaming").remote(list(left.values()))
                while True:
                    ref = await next_or_dead(stream, handle.ping.remote, self.shard_pids.get(shard))
                    if ref is None:
                        return
                    events = await ref
                    for event in events:
                        left.pop(event.agent_id, None)
                    yield events
            except (ActorDiedError, ActorUnavailableError, RayActorError, ShardReplaced) as exc:
                log.warning("shard %d failed (%s); waiting for its restart", shard, type(exc).__name__)
                await self._await_restart(shard)

    async def _await_restart(self, shard: int) -> None:
        """Wait until the shard answers again and restore its agents once per new process (several
        streams to one shard fail together; restoring twice would double the agents' histories)."""
        async with self._restore_locks.setdefault(shard, asyncio.Lock()):
            deadline = time.time() + RESTART_DEADLINE_S
            while time.time() < deadline:
                try:  # bounded: a ping caught in a kill may never answer, like a stream (above)
                    pid = await asyncio.wait_for(self.shards[shard].ping.remote(), timeout=STREAM_WATCH_S)
                    if self.shard_pids.get(shard) != pid:
                        self._count_restart(shard)
                        await self.shards[shard].restore.remote(self._history_events(shard))
                        await self.shards[shard].set_endpoints.remote(self.endpoints)
                        self.shard_pids[shard] = pid
                    return
                except (TimeoutError, ActorDiedError, ActorUnavailableError, RayActorError):
                    await asyncio.sleep(self.plan.scenario.run.shard_restart_wait_s)
            raise UserError(f"shard {shard} did not come back within {RESTART_DEADLINE_S:g} s (no node with room for "
                            f"it?): the run stopped; finish it with `alignuser-sim run --resume {self.plan.run_dir}`")

    def _count_restart(self, shard: int) -> None:
        """One more process of this shard; past `run.max_shard_restarts` the run stops (one line)."""
        self.restarts += 1
        n = self.restarts_by_shard[shard] = self.restarts_by_shard.get(shard, 0) + 1
        limit = self.plan.scenario.run.max_shard_restarts
        if n > limit:
            raise UserError(
                f"shard {shard} crashed {n} times (run.max_shard_restarts: {limit}): the run stopped; see "
                f"{self.plan.folder.log}, then finish it with `alignuser-sim run --resume {self.plan.run_dir}`")
        log.warning("shard %d restarted (%d of at most %d)", shard, n, limit)

    async def _llm_snapshot(self) -> dict[str, Any]:
        await self._collect_failures()
        snapshots = await asyncio.gather(*(h.llm_snapshot.remote() for h in self.shards.values()),
                                         return_exceptions=True)
        return Accounting.merge_snapshots(s for s in snapshots if isinstance(s, dict))

    async def _collect_failures(self) -> None:
        """The shards' failed-call lines appended to the run folder's llm_failures.jsonl on this (the head's)
        node, at every LLM checkpoint and at the end."""
        drained = await asyncio.gather(*(h.drain_failures.remote() for h in self.shards.values()),
                                       return_exceptions=True)
        lines = [line for d in drained if isinstance(d, tuple) for line in d[0]]
        dropped = sum(d[1] for d in drained if isinstance(d, tuple))
        if dropped:
            log.warning("%d failed-call lines did not fit a shard's buffer and are not in %s", dropped,
                        self.plan.folder.llm_failures.name)
        await asyncio.to_thread(FailureLog(self.plan.folder.llm_failures).append, lines)

    async def run(self) -> dict[str, Any]:
        with self.plan.folder.lock():  # a killed driver's coordinator may still be finishing a batch
            return await self._run()

    async def _run(self) -> dict[str, Any]:
        plan, scenario = self.plan, self.plan.scenario
        items_ref = ray.put(plan.dataset.items)
        # the recommender holds the run's state and is not restartable: it lives on the coordinator's node
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        recommender = RecommenderActor.options(scheduling_strategy=here).remote(
            scenario.recommender, scenario.seed, plan.dataset.interactions, items_ref, plan.run_id)
        by_id = {p.user_id: p for p in plan.personas}
        for i, ids in plan.shards.items():
            self.shards[i] = PersonaShard.options(**self.shard_options).remote(
                i, [by_id[u] for u in ids], items_ref, scenario.llm, self.endpoints, plan.run_id, scenario.seed,
                self.cache_path, str(plan.run_dir), plan.policy.subset(ids), scenario.run.max_chunk,
            )
        self.driver = plan.driver(self._decide, _RemoteRecommender(recommender), self.event_log,
                                  decide_stream=self._decide_stream, on_events=self._on_events)
        # wait for every actor to be up (imports, model fit) so the loop's timing is the simulation's own
        _, *pids = await asyncio.gather(recommender.ping.remote(), *(h.ping.remote() for h in self.shards.values()))
        self.shard_pids = dict(zip(self.shards, pids, strict=True))
        self.startup_s = time.time() - self.started
        existing = self.event_log.load_existing()
        if existing:  # resume: statistics, recommender state and agent histories from the logged events
            rounds = self.driver.replay(existing)
            await recommender.replay.remote(rounds, scenario.pages.items_per_page)
            self._on_events(existing)
            await asyncio.gather(*(self.shards[i].restore.remote(self._history_events(i)) for i in self.shards))
        probe = await asyncio.to_thread(PrefixCacheProbe(list(self.endpoints)).start)
        checkpoints = asyncio.create_task(checkpoint_llm_every(plan, self._llm_snapshot))
        t0, started_at = time.perf_counter(), time.time()
        try:
            stats = await self.driver.run()
        except BaseException:
            self.event_log.flush()  # what was decided stays decided: a resume starts from there
            raise
        finally:
            checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checkpoints
        elapsed, ended_at = time.perf_counter() - t0, time.time()
        prefix_cache = await asyncio.to_thread(probe.stop, list(self.endpoints))  # a replaced replica counts too
        llm = await self._llm_snapshot()
        summary = finish_run(plan, self.event_log, stats, llm, elapsed, self.driver.agents_done, prefix_cache,
                             await recommender.stats.remote(), replayed=self.driver.replayed)
        summary["shard_restarts"] = self.restarts
        summary["startup_s"] = round(self.startup_s, 2)
        summary["loop_wall_clock"] = {"started": started_at, "ended": ended_at}  # for benchmarks' CPU sampling
        return summary
