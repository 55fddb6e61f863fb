"""Scale benchmarks on Ray: the real simulation path (coordinator, shards, recommender actor) measured from
outside, with the CPU time and memory of its actor processes.

`simulate(scenario, out)` runs one simulation with `RayRunner` while `ProcessSampler` reads the actor
processes' CPU and RSS from /proc (Ray titles them `ray::PersonaShard...`, `ray::Coordinator...`); the row
it returns has the run's totals, rates, latency percentiles and cost per agent. `cli/bench.py` drives it for
the scaling curve (against `alignuser_sim.bench.fake_server.FakeServer`), the live comparison with vLLM's own
benchmark and the naive loop.
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path
from typing import Any

from alignuser_sim.bench.naive import rates
from alignuser_sim.bench.sampler import ProcessSampler
from alignuser_sim.config import Scenario, scenario_from_dict
from alignuser_sim.simulation.runs import RunPlan, plan_run

ACTOR_GROUPS = (("ray::PersonaShard", "shards"), ("ray::Coordinator", "coordinator"),
                ("ray::RecommenderActor", "recommender"))


def scale_scenario(agents: int, pages: int, endpoint: str, out: Path, *, concurrency: int, dataset: str = "steam",
                   model: str = "smollm2", cache: str = "off", sampling: dict[str, Any] | None = None,
                   seed: int = 1, reasoning: str | None = None) -> Scenario:
    """The benchmark's scenario: the dataset's first `agents` users, Pop, 4 items a page; `reasoning` sets
    `policy.reasoning` (the decision format; None: the scenario default)."""
    llm: dict[str, Any] = {"endpoints": [endpoint], "cache": cache, "concurrency": concurrency, "model": model,
                           "timeout_s": 900}
    if sampling:
        llm["sampling"] = sampling
    extra: dict[str, Any] = {"policy": {"reasoning": reasoning}} if reasoning is not None else {}
    return scenario_from_dict({
        **extra, "name": f"bench-{agents}", "seed": seed, "dataset": {"name": dataset},
        "population": {"size": agents, "sampling": "first"},
        "recommender": {"algorithm": "pop"}, "pages": {"count": pages, "items_per_page": 4},
        "llm": llm, "output_dir": str(out),
    })


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat[stat.rfind(")") + 2:].split()[1])
        if pid == ancestor:
            return True
    return False


def simulate(scenario: Scenario, out: Path, *, n_shards: int | None = None, server_pid: int | None = None,
             cache_path: str | None = None) -> tuple[RunPlan, dict[str, Any]]:
    """One run on a local Ray cluster started by this process (the actors measured are its descendants: other
    Ray instances on the machine are left out); returns the plan and a benchmark row."""
    from .launch import RayRunner

    def classify(pid: int, cmdline: str) -> str | None:
        if pid == server_pid:
            return "llm_server"
        if pid in earlier or not descends_from(pid, me):  # a previous run's actor, or another Ray on the machine
            return None
        for prefix, group in ACTOR_GROUPS:
            if cmdline.startswith(prefix):
                return group
        return None

    me = os.getpid()  # the local Ray this process started: its raylet, and so every actor, descends from here

    earlier: set[int] = set()
    before = ProcessSampler(lambda pid, cmd: "old" if cmd.startswith(tuple(p for p, _ in ACTOR_GROUPS)) else None)
    before.sample()
    earlier.update(before.tracks)
    sampler = ProcessSampler(classify)
    runner = RayRunner(n_shards=n_shards, cache_path=cache_path, on_start=lambda _plan, _coordinator: sampler.start())
    plan = plan_run(scenario, out, runner.shard_count(scenario.population.max_agents))
    summary = runner(plan)
    sampler.stop()
    gc.collect()  # drop this run's actor handles now (a cycle may hold the coordinator's): its actors exit
    t0, t1 = summary["loop_wall_clock"]["started"], summary["loop_wall_clock"]["ended"]
    usage = sampler.usage(t0, t1)
    stats = json.loads((plan.run_dir / "stats.json").read_text())
    llm = stats.get("llm", {})
    framework_cpu = sum(usage.get(g, {}).get("cpu_s", 0.0) for _, g in ACTOR_GROUPS)
    shard_rss = usage.get("shards", {}).get("rss_peak_mb", 0.0)
    row: dict[str, Any] = {
        "mode": "simulation", "agents": plan.agents, "shards": len(plan.shards),
        "concurrency": scenario.llm.concurrency * len(plan.shards), "pages_cap": scenario.pages.count,
        "decisions": summary["decisions"], "llm_requests": llm.get("requests", summary["decisions"]),
        "failures": summary["failures"], "elapsed_s": summary["elapsed_s"],
        "prompt_tokens": summary["prompt_tokens"], "completion_tokens": summary["completion_tokens"],
        "latency_p50_s": summary["latency_p50_s"], "latency_p99_s": summary["latency_p99_s"],
        "startup_s": summary.get("startup_s"), "shard_restarts": summary.get("shard_restarts", 0),
        "prefix_cache_hit_rate": (llm.get("prefix_cache") or {}).get("hit_rate"),
        "cpu_s": round(framework_cpu, 2),
        "cpu_ms_per_agent": round(framework_cpu / plan.agents * 1000, 3),
        "cpu_ms_per_decision": round(framework_cpu / max(1, summary["decisions"]) * 1000, 3),
        "rss_mb_shards": round(shard_rss, 1),
        "rss_kb_per_agent": round(shard_rss * 1024 / plan.agents, 1),
        "cpu_by_process": {g: round(u["cpu_s"], 2) for g, u in usage.items()},
        "rss_mb_by_process": {g: round(u["rss_peak_mb"], 1) for g, u in usage.items()},
        "processes": {g: u["processes"] for g, u in usage.items()},
        "pid": os.getpid(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    row.update(rates(row))
    return plan, row
