"""Coordinator: drives every shard's agents page by page against the recommender actor.

It owns the run's event log and statistics (aggregated as events arrive), keeps backpressure on the LLM
server (each shard's client has a bounded semaphore; a shard gets its next batch only when the previous
one is decided), survives a shard being killed (the actor restarts; its agents are restored from the
logged events and the unlogged batch is decided again on the same pages), and answers `progress()` while
it runs so the CLI can draw a progress bar.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from alignuser_sim.events import Event, EventLog, RunLock
from alignuser_sim.llm.accounting import Accounting
from alignuser_sim.runs import RunPlan, finish_run
from alignuser_sim.simulation import Driver, PageRequest

from .recommender import RecommenderActor
from .shard import PersonaShard

log = logging.getLogger(__name__)
MIN_AGENTS_PER_SHARD = 8


def size_shards(cluster_cpus: float, agents: int, per_cpu: int = 1) -> int:
    """One shard per CPU of the cluster (an async shard keeps a core busy with many agents), never more
    shards than agents / MIN_AGENTS_PER_SHARD."""
    by_cpu = max(1, int(cluster_cpus) * per_cpu)
    return max(1, min(by_cpu, agents // MIN_AGENTS_PER_SHARD or 1))


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
        self.event_log = EventLog(plan.run_dir)
        self.events_by_shard: dict[int, list[Event]] = {i: [] for i in plan.shards}
        self.shard_of = {u: i for i, ids in plan.shards.items() for u in ids}
        self.driver: Driver | None = None
        self.shards: dict[int, Any] = {}
        self.restarts = 0
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

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            self.events_by_shard[self.shard_of[event.agent_id]].append(event)
        self.calls_done += sum(not e.from_cache for e in events)

    async def _decide(self, shard: int, requests: list[PageRequest]) -> list[Event]:
        """A batch to a shard; if the shard dies, wait for its restart, restore it, send the batch again."""
        while True:
            try:
                return await self.shards[shard].decide.remote(requests)
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                self.restarts += 1
                log.warning("shard %d failed (%s); waiting for its restart", shard, type(exc).__name__)
                await self._await_restart(shard)

    async def _await_restart(self, shard: int) -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                await self.shards[shard].ping.remote()
                await self.shards[shard].restore.remote(self.events_by_shard[shard])
                return
            except (ActorDiedError, ActorUnavailableError, RayActorError):
                await asyncio.sleep(0.5)
        raise RuntimeError(f"shard {shard} did not come back within 300 s")

    async def run(self) -> dict[str, Any]:
        with RunLock(self.plan.run_dir):  # a killed driver's coordinator may still be finishing a batch
            return await self._run()

    async def _run(self) -> dict[str, Any]:
        plan, scenario = self.plan, self.plan.scenario
        items_ref = ray.put(plan.dataset.items)
        recommender = RecommenderActor.remote(scenario.recommender, scenario.seed, plan.dataset.interactions,
                                              items_ref)
        by_id = {p.user_id: p for p in plan.personas}
        for i, ids in plan.shards.items():
            self.shards[i] = PersonaShard.options(**self.shard_options).remote(
                i, [by_id[u] for u in ids], items_ref, scenario.llm, self.endpoints, plan.run_id, scenario.seed,
                self.cache_path, str(plan.run_dir), plan.policy.subset(ids),
            )
        self.driver = Driver(
            shards=plan.shards, decide=self._decide, recommender=_RemoteRecommender(recommender),
            event_log=self.event_log, page_cap=scenario.pages.count,
            items_per_page=scenario.pages.items_per_page, on_events=self._on_events,
        )
        # wait for every actor to be up (imports, model fit) so the loop's timing is the simulation's own
        await asyncio.gather(recommender.ping.remote(), *(h.ping.remote() for h in self.shards.values()))
        self.startup_s = time.time() - self.started
        existing = self.event_log.load_existing()
        if existing:  # resume: statistics, recommender state and agent histories from the logged events
            rounds = self.driver.replay(existing)
            await recommender.replay.remote(rounds, scenario.pages.items_per_page)
            self._on_events(existing)
            await asyncio.gather(*(self.shards[i].restore.remote(self.events_by_shard[i]) for i in self.shards))
        t0 = time.perf_counter()
        stats = await self.driver.run()
        elapsed = time.perf_counter() - t0
        snapshots = await asyncio.gather(*(h.llm_snapshot.remote() for h in self.shards.values()))
        llm = Accounting.merge_snapshots(snapshots)
        summary = finish_run(plan, self.event_log, stats, llm, elapsed, self.driver.agents_done)
        summary["shard_restarts"] = self.restarts
        summary["startup_s"] = round(self.startup_s, 2)
        return summary
