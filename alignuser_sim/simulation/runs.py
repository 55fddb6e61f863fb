"""A run: its folder, its plan (population, personas, recommender, shards) and its results.

A run folder holds `scenario.yaml` (the resolved scenario), `run.json` (run id, shard layout, status),
`events/` parts while it runs, then `events.parquet`, `stats.json` and `run.log`. Everything needed to
resume an interrupted run is in the folder; the completion cache makes the replayed pages identical.

`run_local` drives a run in this process (tests, notebooks); `actors/launch.py` drives the same plan
on Ray. Both use `simulation.Driver`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.config import Scenario, dump_scenario, load_scenario
from alignuser_sim.data import Dataset, load_dataset
from alignuser_sim.data.personas import Persona, build_personas
from alignuser_sim.data.population import select_population
from alignuser_sim.errors import UserError
from alignuser_sim.simulation.events import EventLog, MacroStats, RunLock, write_json

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
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


def shard_layout(user_ids: list[str], n_shards: int) -> dict[int, list[str]]:
    """Round-robin: shards of near-equal size whatever the population's order."""
    n_shards = max(1, min(n_shards, len(user_ids)))
    return {i: user_ids[i::n_shards] for i in range(n_shards)}


def new_run_dir(scenario: Scenario, out: Path | None) -> tuple[Path, str]:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    run_dir = out if out is not None else scenario.run_dir() / run_id
    if (run_dir / "run.json").exists():
        raise UserError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, run_id


def plan_run(scenario: Scenario, out: Path | None, n_shards: int) -> RunPlan:
    """Load data, draw the population, build personas, lay out shards, and write the run folder."""
    run_dir, run_id = new_run_dir(scenario, out)
    ds = load_dataset(scenario.dataset)
    users = select_population(ds.interactions, scenario.population, scenario.population_seed)
    personas = build_personas(ds, users)
    policy = PolicySetup.for_scenario(scenario, users)  # before writing anything: a missing folder is an error
    shards = shard_layout(users, n_shards)
    (run_dir / "scenario.yaml").write_text(dump_scenario(scenario))
    write_json(run_dir / "run.json", {"run_id": run_id, "shards": shards, "status": "running",
                                      "started": time.time()})
    return RunPlan(scenario, run_dir, run_id, ds, personas, shards, policy)


def resume_plan(run_dir: Path) -> RunPlan:
    """The plan of an interrupted run, from its folder."""
    meta_path = run_dir / "run.json"
    if not meta_path.exists():
        raise UserError(f"{run_dir}: not a run folder (no run.json)")
    meta = json.loads(meta_path.read_text())
    scenario = load_scenario(run_dir / "scenario.yaml")
    ds = load_dataset(scenario.dataset)
    shards = {int(k): v for k, v in meta["shards"].items()}
    users = [u for ids in shards.values() for u in ids]
    personas = build_personas(ds, sorted(users))
    policy = PolicySetup.for_scenario(scenario, users)
    return RunPlan(scenario, run_dir, meta["run_id"], ds, personas, shards, policy)


def finish_run(plan: RunPlan, event_log: EventLog, stats: MacroStats, llm: dict[str, Any], elapsed_s: float,
               agents_done: int) -> dict[str, Any]:
    """Merge the events, write stats.json, mark the run complete; returns the summary printed to the user."""
    path = event_log.finalize()
    summary = stats.summary()
    summary.update({
        "run_id": plan.run_id, "agents": plan.agents, "agents_done": agents_done,
        "shards": len(plan.shards), "elapsed_s": round(elapsed_s, 2),
        "decisions_per_s": round(stats.decisions / elapsed_s, 2) if elapsed_s else None,
        "duplicate_events_dropped": event_log.duplicates,
    })
    write_json(plan.run_dir / "stats.json", {**stats.to_dict(), "summary": summary, "llm": llm})
    meta = json.loads((plan.run_dir / "run.json").read_text())
    meta.update(status="complete", finished=time.time(), events=str(path))
    write_json(plan.run_dir / "run.json", meta)
    return summary


async def run_local(plan: RunPlan, llm: Any, on_events=None) -> dict[str, Any]:
    """The whole run in this process: one ShardCore per planned shard, the recommender in-process."""
    with RunLock(plan.run_dir):
        return await _run_local(plan, llm, on_events)


async def _run_local(plan: RunPlan, llm: Any, on_events=None) -> dict[str, Any]:
    from alignuser_sim.core import Catalogue
    from alignuser_sim.recommenders import make_recommender
    from alignuser_sim.simulation.driver import Driver, LocalRecommender, ShardCore

    scenario = plan.scenario
    catalogue = Catalogue(plan.dataset.items)
    by_id = {p.user_id: p for p in plan.personas}
    cores = {
        i: ShardCore(i, [by_id[u] for u in ids], catalogue, llm, plan.run_id, seed=scenario.seed,
                     policy=plan.policy.subset(ids))
        for i, ids in plan.shards.items()
    }
    recommender = make_recommender(scenario.recommender, seed=scenario.seed).fit(
        plan.dataset.interactions, plan.dataset.items)
    event_log = EventLog(plan.run_dir)
    driver = Driver(
        shards=plan.shards,
        decide=lambda i, requests: cores[i].decide(requests),
        recommender=LocalRecommender(recommender),
        event_log=event_log,
        page_cap=scenario.pages.count,
        items_per_page=scenario.pages.items_per_page,
        on_events=on_events,
    )
    existing = event_log.load_existing()
    if existing:
        for batch in driver.replay(existing):
            recommender.pages([u for u, _, _ in batch], scenario.pages.items_per_page)
            recommender.feedback_batch(batch)
        for i, core in cores.items():
            core.restore([e for e in existing if e.agent_id in set(plan.shards[i])])
    t0 = time.perf_counter()
    stats = await driver.run()
    snapshot = llm.snapshot() if hasattr(llm, "snapshot") else {}
    return finish_run(plan, event_log, stats, snapshot, time.perf_counter() - t0, driver.agents_done)
