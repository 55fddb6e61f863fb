"""A run: its folder, its plan (population, personas, recommender, shards) and its results.

A run folder (`store.RunFolder` names its files) holds `scenario.yaml` (the resolved scenario), `run.json`
(run id, shard layout, status), `events/` parts while it runs, then `events.parquet`, `stats.json` and
`run.log`. Everything needed to resume an interrupted run is in the folder; the completion cache makes the
replayed pages identical. The scenario's `run:` section paces the loop (`RunPlan.driver`, `RunPlan.event_log`).

`run_local` drives a run in this process (tests, notebooks); `actors/launch.py` drives the same plan
on Ray. Both use `simulation.driver.Driver`, and both read the servers' prefix-cache counters around the
loop (`llm.metrics.PrefixCacheProbe`) for stats.json's `llm.prefix_cache`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignuser_sim import store
from alignuser_sim.agent.policy import PolicySetup, serve_adapters
from alignuser_sim.config import Scenario, dump_scenario, load_scenario
from alignuser_sim.core import Catalogue
from alignuser_sim.data import Dataset, load_dataset
from alignuser_sim.data.item_stats import with_agent_items
from alignuser_sim.data.personas import Persona, build_personas
from alignuser_sim.data.population import select_population
from alignuser_sim.errors import UserError
from alignuser_sim.llm.metrics import PrefixCacheProbe, endpoint_urls, prefix_cache_result
from alignuser_sim.llm.protocol import StructuredLLM
from alignuser_sim.recommenders.plugins import check_recommender
from alignuser_sim.simulation.driver import Driver, LocalRecommender, PageRequest, RecommenderPort, ShardCore
from alignuser_sim.simulation.events import Event, EventLog, MacroStats
from alignuser_sim.store import RunFolder

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """A run's plan. `dataset.items` carries what agents see of each item, the training split's rating stats
    included (`data/item_stats.py`, `pages.show_item_stats`): it travels as is to the shards."""

    scenario: Scenario
    run_dir: Path
    run_id: str
    dataset: Dataset
    personas: list[Persona]
    shards: dict[int, list[str]]
    policy: PolicySetup

    @property
    def agents(self) -> int:
        return len(self.personas)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    def event_log(self) -> EventLog:
        """The run's event log, flushed as the scenario's `run:` section says."""
        run = self.scenario.run
        return EventLog(self.run_dir, flush_s=run.event_flush_s, flush_events=run.event_flush_events)

    def driver(self, decide: Callable[[int, list[PageRequest]], Awaitable[list[Event]]],
               recommender: RecommenderPort, event_log: EventLog,
               decide_stream: Callable[[int, list[PageRequest]], AsyncIterator[list[Event]]] | None = None,
               on_events: Callable[[list[Event]], None] | None = None) -> Driver:
        """The page loop over this plan's shards, paced by the scenario's `pages:` and `run:` sections."""
        scenario = self.scenario
        return Driver(shards=self.shards, decide=decide, decide_stream=decide_stream, recommender=recommender,
                      event_log=event_log, page_cap=scenario.pages.count,
                      items_per_page=scenario.pages.items_per_page, on_events=on_events,
                      max_batch=scenario.run.max_batch, batch_window_s=scenario.run.batch_window_s)


def shard_layout(user_ids: list[str], n_shards: int) -> dict[int, list[str]]:
    """Round-robin: shards of near-equal size whatever the population's order."""
    n_shards = max(1, min(n_shards, len(user_ids)))
    return {i: user_ids[i::n_shards] for i in range(n_shards)}


def new_run_dir(scenario: Scenario, out: Path | None) -> tuple[Path, str]:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    run_dir = out if out is not None else scenario.run_dir() / run_id
    if RunFolder(run_dir).exists():
        raise UserError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, run_id


def plan_run(scenario: Scenario, out: Path | None, n_shards: int) -> RunPlan:
    """Load data, draw the population, build personas, lay out shards, and write the run folder."""
    run_dir, run_id = new_run_dir(scenario, out)
    ds = with_agent_items(load_dataset(scenario.dataset), scenario.pages.show_item_stats)
    users = select_population(ds.interactions, scenario.population, scenario.population_seed)
    personas = build_personas(ds, users)
    policy = PolicySetup.for_scenario(scenario, users)  # before writing anything: a missing folder is an error
    check_recommender(scenario.recommender)  # a plug-in lacking part of the contract, a service not reachable
    shards = shard_layout(users, n_shards)
    folder = RunFolder(run_dir)
    store.write_text(folder.scenario, dump_scenario(scenario))
    folder.write_meta({"run_id": run_id, "shards": shards, "status": "running", "started": time.time()})
    serve_adapters(scenario, policy)
    return RunPlan(scenario, run_dir, run_id, ds, personas, shards, policy)


def resume_plan(run_dir: Path) -> RunPlan:
    """The plan of an interrupted run, from its folder."""
    folder = RunFolder(run_dir)
    if not folder.exists():
        raise UserError(f"{run_dir}: not a run folder (no run.json)")
    meta = folder.meta()
    scenario = load_scenario(folder.scenario)
    ds = with_agent_items(load_dataset(scenario.dataset), scenario.pages.show_item_stats)
    shards = folder.shards()
    users = [u for ids in shards.values() for u in ids]
    personas = build_personas(ds, sorted(users))
    policy = PolicySetup.for_scenario(scenario, users)
    check_recommender(scenario.recommender)
    serve_adapters(scenario, policy)
    return RunPlan(scenario, folder.path, meta["run_id"], ds, personas, shards, policy)


def finish_run(plan: RunPlan, event_log: EventLog, stats: MacroStats, llm: dict[str, Any], elapsed_s: float,
               agents_done: int, prefix_cache: dict[str, Any] | None = None,
               recommender: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the events, write stats.json, mark the run complete; returns the summary printed to the user.
    `prefix_cache` (`llm.metrics.PrefixCacheProbe.stop()`: the servers' prefix-cache hits over the loop) goes
    to stats.json as `llm.prefix_cache` and its hit rate to the summary; nulls where it was not measured.
    `recommender` (`recommenders.recommender_stats`: an HTTP service's latency and reply problems) goes to
    stats.json and the summary as `recommender`."""
    path = event_log.finalize()
    summary = stats.summary()
    summary.update({
        "run_id": plan.run_id, "agents": plan.agents, "agents_done": agents_done,
        "shards": len(plan.shards), "elapsed_s": round(elapsed_s, 2),
        "decisions_per_s": round(stats.decisions / elapsed_s, 2) if elapsed_s else None,
        "duplicate_events_dropped": event_log.duplicates,
    })
    cache = prefix_cache or prefix_cache_result(None, None, 0, 0)
    summary["prefix_cache_hit_rate"] = cache["hit_rate"]
    summary["recommender"] = recommender or {}
    folder = plan.folder
    store.write_json(folder.stats, {**stats.to_dict(), "summary": summary, "llm": {**llm, "prefix_cache": cache},
                                    "recommender": recommender or {}}, default=str)
    folder.update_meta(status="complete", finished=time.time(), events=str(path))
    return summary


async def run_local(plan: RunPlan, llm: StructuredLLM,
                    on_events: Callable[[list[Event]], None] | None = None) -> dict[str, Any]:
    """The whole run in this process: one ShardCore per planned shard, the recommender in-process."""
    with plan.folder.lock():
        return await _run_local(plan, llm, on_events)


async def _run_local(plan: RunPlan, llm: StructuredLLM,
                     on_events: Callable[[list[Event]], None] | None) -> dict[str, Any]:
    from alignuser_sim.recommenders import make_recommender, recommender_stats, replay

    scenario = plan.scenario
    catalogue = Catalogue(plan.dataset.items)
    by_id = {p.user_id: p for p in plan.personas}
    cores = {
        i: ShardCore(i, [by_id[u] for u in ids], catalogue, llm, plan.run_id, seed=scenario.seed,
                     policy=plan.policy.subset(ids), max_chunk=scenario.run.max_chunk)
        for i, ids in plan.shards.items()
    }
    recommender = make_recommender(scenario.recommender, seed=scenario.seed, run_id=plan.run_id).fit(
        plan.dataset.interactions, plan.dataset.items)
    event_log = plan.event_log()
    driver = plan.driver(lambda i, requests: cores[i].decide(requests), LocalRecommender(recommender), event_log,
                         on_events=on_events)
    existing = event_log.load_existing()
    if existing:
        replay(recommender, driver.replay(existing), scenario.pages.items_per_page)
        for i, core in cores.items():
            core.restore([e for e in existing if e.agent_id in set(plan.shards[i])])
    probe = await asyncio.to_thread(PrefixCacheProbe(endpoint_urls(llm)).start)
    t0 = time.perf_counter()
    stats = await driver.run()
    elapsed = time.perf_counter() - t0
    prefix_cache = await asyncio.to_thread(probe.stop, endpoint_urls(llm))
    getattr(recommender, "flush", lambda: None)()  # an HTTP service: feedback kept after a failure, once more
    return finish_run(plan, event_log, stats, llm.snapshot(), elapsed, driver.agents_done, prefix_cache,
                      recommender_stats(recommender))
