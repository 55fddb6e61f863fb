"""A run: its folder, its plan (population, personas, recommender, shards) and its results.

A run folder (`store.RunFolder` names its files) holds `scenario.yaml` (the resolved scenario), `run.json`
(run id, shard layout, status), `events/` parts while it runs, then `events.parquet`, `stats.json` and
`run.log`. Everything needed to resume an interrupted run is in the folder; the completion cache makes the
replayed pages identical. The scenario's `run:` section paces the loop (`RunPlan.driver`, `RunPlan.event_log`).

How a run ends (run.json's `status`, `run_outcome`): `complete`; `degraded` when the failed pages (counted
failures plus sessions left unfinished by an LLM outage) exceed `run.max_failure_share` of the pages asked, or
some sessions are unfinished; `failed` when no call succeeded. A run with unfinished sessions (or pages a
recommender service failed to serve) can be resumed; any other finished run cannot (`resume_plan` says so).
run.json also keeps a digest of the learning files the policy read (a resume with other lessons would mix
two policies: refused) and the LLM accounting of every part of the run (`llm_parts`, checkpointed every
`LLM_CHECKPOINT_S`), so stats.json's `llm` covers the whole run after a resume.

`run_local` drives a run in this process (tests, notebooks); `actors/launch.py` drives the same plan
on Ray. Both use `simulation.driver.Driver`, and both read the servers' prefix-cache counters around the
loop (`llm.metrics.PrefixCacheProbe`) for stats.json's `llm.prefix_cache`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignuser_sim import store
from alignuser_sim.agent.policy import PolicySetup, serve_adapters
from alignuser_sim.config import Scenario, absolute_paths, dump_scenario, load_scenario
from alignuser_sim.core import Catalogue
from alignuser_sim.data import Dataset, load_dataset
from alignuser_sim.data.item_stats import with_agent_items
from alignuser_sim.data.personas import Persona, build_personas
from alignuser_sim.data.population import select_population
from alignuser_sim.errors import UserError
from alignuser_sim.llm.accounting import Accounting
from alignuser_sim.llm.metrics import PrefixCacheProbe, endpoint_urls, prefix_cache_result
from alignuser_sim.llm.protocol import StructuredLLM
from alignuser_sim.recommenders.plugins import check_recommender
from alignuser_sim.simulation.driver import Driver, LocalRecommender, PageRequest, RecommenderPort, ShardCore
from alignuser_sim.simulation.events import Event, EventLog, MacroStats
from alignuser_sim.store import LearningFolder, RunFolder

log = logging.getLogger(__name__)
FINISHED = ("complete", "degraded", "failed")  # run.json's status once the loop ended
LLM_CHECKPOINT_S = 5.0  # how often the LLM accounting of the running part is saved to run.json


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
    part: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # this process's part of the run

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
                      max_batch=scenario.run.max_batch, batch_window_s=scenario.run.batch_window_s,
                      outage_wait_s=scenario.run.outage_wait_s, outage_backoff_s=scenario.run.outage_backoff_s)

    def checkpoint_llm(self, snapshot: dict[str, Any]) -> None:
        """Save this part's LLM accounting in run.json (a killed part's calls still count after a resume)."""
        folder = self.folder
        parts = dict(folder.meta().get("llm_parts") or {})
        parts[self.part] = _accounting_only(snapshot)
        folder.update_meta(llm_parts=parts)

    def llm_total(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        """This part's accounting merged with the earlier parts' (run.json's `llm_parts`)."""
        parts = dict(self.folder.meta().get("llm_parts") or {})
        parts[self.part] = _accounting_only(snapshot)
        if len(parts) == 1:  # a run in one go: its client's own snapshot, as it is
            return _accounting_only(snapshot)
        return Accounting.merge_snapshots(parts.values())


def _accounting_only(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snapshot.items() if k != "prefix_cache"}


async def checkpoint_llm_every(plan: RunPlan, snapshot: Callable[[], Awaitable[dict[str, Any]]],
                               every_s: float = LLM_CHECKPOINT_S) -> None:
    """Run beside the loop (cancel it at the end): `plan.checkpoint_llm` every `every_s` seconds."""
    while True:
        await asyncio.sleep(every_s)
        try:
            plan.checkpoint_llm(await snapshot())
        except Exception as exc:  # a shard restarting, a full disk: the next one may do
            log.warning("LLM accounting checkpoint skipped: %s", exc)


def learning_digest(scenario: Scenario) -> dict[str, str]:
    """sha256 of each learning file the scenario's policy reads (`agent/policy.py: PolicySetup.for_scenario`)."""
    folder = scenario.learning_dir()
    if not folder.is_dir():
        return {}
    policy = scenario.policy
    names = [LearningFolder.TASTES]
    if policy.use_lessons:
        names.append(LearningFolder.LESSONS)
    if policy.use_world_model:
        names.append(LearningFolder.TRANSITIONS)
    if policy.use_adapter:
        names.append(f"{LearningFolder.ADAPTERS}/{LearningFolder.ADAPTERS_MANIFEST}")
    digest = {}
    for name in names:
        path = folder / name
        if path.is_file():
            h = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digest[name] = h.hexdigest()
    return digest


def shard_layout(user_ids: list[str], n_shards: int) -> dict[int, list[str]]:
    """Round-robin: shards of near-equal size whatever the population's order."""
    n_shards = max(1, min(n_shards, len(user_ids)))
    return {i: user_ids[i::n_shards] for i in range(n_shards)}


def new_run_dir(scenario: Scenario, out: Path | None) -> tuple[Path, str]:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    run_dir = out if out is not None else scenario.run_dir() / run_id
    RunFolder(run_dir).check_new()  # a run's own folder, or an existing one holding nothing to overwrite
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, run_id


def plan_run(scenario: Scenario, out: Path | None, n_shards: int) -> RunPlan:
    """Load data, draw the population, build personas, lay out shards, and write the run folder."""
    run_dir, run_id = new_run_dir(scenario, out)
    ds = with_agent_items(load_dataset(scenario.dataset), scenario.pages.show_item_stats,
                          scenario.pages.popularity_words)
    users = select_population(ds.interactions, scenario.population, scenario.population_seed)
    personas = build_personas(ds, users)
    policy = PolicySetup.for_scenario(scenario, users)  # before writing anything: a missing folder is an error
    check_recommender(scenario.recommender)  # a plug-in lacking part of the contract, a service not reachable
    shards = shard_layout(users, n_shards)
    folder = RunFolder(run_dir)
    store.write_text(folder.scenario, dump_scenario(absolute_paths(scenario)))  # a resume from any cwd
    folder.write_meta({"run_id": run_id, "shards": shards, "status": "running", "started": time.time(),
                       "learning_digest": learning_digest(scenario)})
    serve_adapters(scenario, policy)
    return RunPlan(scenario, run_dir, run_id, ds, personas, shards, policy)


class NothingToResume(UserError):
    """A finished run with no session left to retry. The command refuses the resume in one line (exit 2); the
    API reports that nothing is to be done and returns the run's recorded summary. Nothing is written."""

    def __init__(self, run_dir: Path, meta: dict[str, Any]):
        self.run_dir, self.run_id = Path(run_dir), str(meta.get("run_id", ""))
        stats = store.read_json(RunFolder(run_dir).stats) if RunFolder(run_dir).stats.exists() else {}
        self.summary: dict[str, Any] = stats.get("summary", {})
        super().__init__(f"{run_dir}: the run already ended ({meta.get('status')}) with no session left to retry: "
                         "nothing to resume (start a new run instead)")


def check_resumable(run_dir: Path) -> None:
    """Raise `NothingToResume` for a finished run with nothing left to do (an interrupted run, or one that left
    sessions unfinished, passes; a finished run whose events.parquet is gone is resumed to rebuild it)."""
    folder = RunFolder(run_dir)
    if not folder.exists():
        return  # not a run folder: `resume_plan` says so
    meta = folder.meta()
    if meta.get("status") in FINISHED and not meta.get("resumable") and folder.events.exists():
        raise NothingToResume(run_dir, meta)


def resume_plan(run_dir: Path) -> RunPlan:
    """The plan of an interrupted run (or one that left sessions unfinished), from its folder. A finished run
    with nothing left to do, or whose learning folder changed since it started, is refused."""
    folder = RunFolder(run_dir)
    if not folder.exists():
        raise UserError(f"{run_dir}: not a run folder (no run.json)")
    meta = folder.meta()
    check_resumable(run_dir)
    scenario = load_scenario(folder.scenario)
    if "learning_digest" in meta:
        then, now = meta["learning_digest"] or {}, learning_digest(scenario)
        changed = sorted(n for n in set(now) | set(then) if now.get(n) != then.get(n))
        if changed:
            raise UserError(f"{run_dir}: the learning folder {scenario.learning_dir()} changed since the run started "
                            f"({', '.join(changed)}); resuming would mix two policies: start a new run")
    ds = with_agent_items(load_dataset(scenario.dataset), scenario.pages.show_item_stats,
                          scenario.pages.popularity_words)
    shards = folder.shards()
    users = [u for ids in shards.values() for u in ids]
    personas = build_personas(ds, sorted(users))
    policy = PolicySetup.for_scenario(scenario, users)
    check_recommender(scenario.recommender)
    serve_adapters(scenario, policy)
    return RunPlan(scenario, folder.path, meta["run_id"], ds, personas, shards, policy)


def run_outcome(stats: MacroStats, max_failure_share: float) -> tuple[str, float]:
    """(status, failure share) of a finished loop (see the module docstring). The share is over the pages
    asked: each decision, plus the page each unfinished session is stuck on."""
    failed_calls = sum(stats.failures.values())
    failed = failed_calls + stats.sessions_unfinished
    asked = stats.decisions + stats.sessions_unfinished
    share = failed / asked if asked else 0.0
    if stats.decisions - failed_calls == 0:
        return "failed", share
    if share > max_failure_share or stats.sessions_unfinished:
        return "degraded", share
    return "complete", share


def status_line(summary: dict[str, Any], run_dir: Path) -> str | None:
    """One line for a run that did not end `complete` (None when it did)."""
    status = summary.get("status", "complete")
    if status == "complete":
        return None
    unfinished = summary.get("sessions_unfinished", 0)
    line = (f"run {status}: {summary.get('failures', 0)} failed pages, {unfinished} unfinished sessions of "
            f"{summary.get('agents', '?')} (failure share {summary.get('failure_share', 0):.1%}, "
            f"run.max_failure_share {summary.get('max_failure_share', 0):.1%})")
    if summary.get("resumable"):
        line += f"; retry them with `alignuser-sim run --resume {run_dir}`"
    return line + f"; see {RunFolder(run_dir).llm_failures.name} and {RunFolder(run_dir).log.name}"


def finish_run(plan: RunPlan, event_log: EventLog, stats: MacroStats, llm: dict[str, Any], elapsed_s: float,
               agents_done: int, prefix_cache: dict[str, Any] | None = None,
               recommender: dict[str, Any] | None = None, *, replayed: int = 0) -> dict[str, Any]:
    """Merge the events, write stats.json, mark the run ended (`run_outcome`); returns the summary printed to
    the user. `llm` is this part's accounting: stats.json's `llm` adds the earlier parts' (a resume's
    `replayed` events were decided by them). `prefix_cache` (`llm.metrics.PrefixCacheProbe.stop()`: the
    servers' prefix-cache hits over the loop) goes to stats.json as `llm.prefix_cache` and its hit rate to the
    summary; nulls where it was not measured. `recommender` (`recommenders.recommender_stats`: an HTTP
    service's latency and reply problems) goes to stats.json and the summary as `recommender`."""
    path = event_log.finalize()
    recommender = recommender or {}
    status, share = run_outcome(stats, plan.scenario.run.max_failure_share)
    resumable = bool(stats.sessions_unfinished or recommender.get("pages_failed"))
    summary = stats.summary()
    decided_now = stats.decisions - replayed
    summary.update({
        "status": status, "failure_share": round(share, 4), "max_failure_share": plan.scenario.run.max_failure_share,
        "resumable": resumable,
        "run_id": plan.run_id, "agents": plan.agents, "agents_done": agents_done,
        "shards": len(plan.shards), "elapsed_s": round(elapsed_s, 2), "decisions_replayed": replayed,
        "decisions_per_s": round(decided_now / elapsed_s, 2) if elapsed_s else None,  # this part's own pace
        "duplicate_events_dropped": event_log.duplicates,
    })
    cache = prefix_cache or prefix_cache_result(None, None, 0, 0)
    summary["prefix_cache_hit_rate"] = cache["hit_rate"]
    summary["recommender"] = recommender
    folder = plan.folder
    plan.checkpoint_llm(llm)
    total = plan.llm_total(llm)
    store.write_json(folder.stats, {**stats.to_dict(), "summary": summary, "llm": {**total, "prefix_cache": cache},
                                    "recommender": recommender}, default=str)
    folder.update_meta(status=status, finished=time.time(), events=str(path), unfinished=stats.sessions_unfinished,
                       resumable=resumable, failure_share=round(share, 4))
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

    async def snapshot() -> dict[str, Any]:
        return llm.snapshot()

    checkpoints = asyncio.create_task(checkpoint_llm_every(plan, snapshot))
    t0 = time.perf_counter()
    try:
        stats = await driver.run()
    finally:
        checkpoints.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checkpoints
        plan.checkpoint_llm(llm.snapshot())  # also when the loop failed: a resume counts these calls
    elapsed = time.perf_counter() - t0
    prefix_cache = await asyncio.to_thread(probe.stop, endpoint_urls(llm))
    getattr(recommender, "flush", lambda: None)()  # an HTTP service: feedback kept after a failure, once more
    return finish_run(plan, event_log, stats, llm.snapshot(), elapsed, driver.agents_done, prefix_cache,
                      recommender_stats(recommender), replayed=driver.replayed)
