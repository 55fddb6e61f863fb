"""Simulation throughput on Ray: agent-page decisions/s, and memory per agent.

Modes:
- `cache` (default): each population size runs twice against a scripted fake user behind a local HTTP
  socket; the first run fills a fresh completion cache, the second (measured) one is answered entirely from
  it: the framework's own cost per decision (prompt, schema, cache lookup, validation, recommender pages,
  events, statistics), with no LLM work.
- `live --endpoint URL`: the same run against a live server (e.g. the CPU vLLM server), cache off:
  decisions/s and tokens/s.

Memory per agent: tracemalloc over building a shard's agents (persona + agent objects), and the RSS of the
shard actors after the run divided by their agents.

    .venv/bin/python benchmarks/bench_simulation.py --agents 1000 10000 --pages 3
    .venv/bin/python benchmarks/bench_simulation.py live --endpoint http://127.0.0.1:8031/v1 --agents 32 --pages 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def scenario_for(agents: int, pages: int, endpoint: str, cache: str, out: Path, model: str = "smollm2"):
    from alignuser_sim.config import scenario_from_dict

    return scenario_from_dict({
        "seed": 1, "dataset": {"name": "steam" if agents > 943 else "ml-100k"},
        "population": {"size": agents, "sampling": "first"},
        "recommender": {"algorithm": "pop"}, "pages": {"count": pages, "items_per_page": 4},
        "llm": {"endpoints": [endpoint], "cache": cache, "concurrency": 256, "model": model},
        "output_dir": str(out),
    })


def memory_per_agent(agents: int) -> float:
    """Bytes allocated per hosted agent (persona + PersonaAgent + its share of the shard's dicts)."""
    from alignuser_sim.config import scenario_from_dict
    from alignuser_sim.core import Catalogue
    from alignuser_sim.data import load_dataset
    from alignuser_sim.data.personas import build_personas
    from alignuser_sim.data.population import select_population
    from alignuser_sim.simulation.driver import ShardCore

    sc = scenario_from_dict({"dataset": {"name": "steam"}, "population": {"size": agents, "sampling": "first"}})
    ds = load_dataset(sc.dataset)
    users = select_population(ds.interactions, sc.population, 0)
    catalogue = Catalogue(ds.items)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    personas = build_personas(ds, users)
    base = tracemalloc.get_traced_memory()[0]
    shard = ShardCore(0, personas, catalogue, llm=None, run_id="x")
    # five watched items each, as after a few pages
    for agent in shard.agents.values():
        for n in range(5):
            agent.history.append((f"Some Movie Title ({n})", 4))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del shard
    return (after - before) / agents, (base - before) / agents


def shard_rss(coordinator) -> dict[int, int]:
    import psutil
    import ray

    handles = ray.get(coordinator.shard_handles.remote())
    pids = ray.get([h.ping.remote() for h in handles.values()])
    return {i: psutil.Process(pid).memory_info().rss for i, pid in zip(handles, pids, strict=True)}


def _run(scenario, out: Path, **runner_options):
    """(plan, summary) of one run on Ray: the library plans it, actors/ places it."""
    from actors.launch import RayRunner
    from alignuser_sim.simulation.runs import plan_run

    runner = RayRunner(**runner_options)
    plan = plan_run(scenario, out, runner.shard_count(scenario.population.max_agents))
    return plan, runner(plan)


def run_once(scenario, out: Path, rss: dict):
    def grab(plan, coordinator):
        rss["coordinator"] = coordinator

    plan, summary = _run(scenario, out, on_start=grab)
    rss["shards"] = shard_rss(rss["coordinator"])
    return plan, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["cache", "live"], default="cache")
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--pages", type=int, default=3)
    parser.add_argument("--endpoint")
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()

    import ray

    from alignuser_sim.testing.fake_users import fake_user_server

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    for n in args.agents:
        rss: dict = {}
        if args.mode == "cache":
            with fake_user_server() as server:
                cache = str(work / f"cache-{n}.sqlite")
                sc = scenario_for(n, args.pages, server.base_url, "read_write", work)
                _, fill = _run(sc, work / f"fill-{n}", cache_path=cache)
                t0 = time.perf_counter()
                plan, summary = _run(sc, work / f"measured-{n}", cache_path=cache,
                                     on_start=lambda p, c, rss=rss: rss.__setitem__("coordinator", c))
                wall = time.perf_counter() - t0
                rss["shards"] = shard_rss(rss["coordinator"])
                assert summary["from_cache"] == summary["decisions"], "not every decision came from the cache"
        else:
            sc = scenario_for(n, args.pages, args.endpoint, "off", work, args.model)
            t0 = time.perf_counter()
            plan, summary = run_once(sc, work / f"live-{n}", rss)
            wall = time.perf_counter() - t0
        per_agent, persona_share = memory_per_agent(n)
        shard_total = sum(rss["shards"].values())
        rows.append({
            "mode": args.mode, "agents": n, "pages_cap": args.pages, "shards": len(plan.shards),
            "decisions": summary["decisions"], "loop_s": summary["elapsed_s"], "wall_s": round(wall, 2),
            "decisions_per_s": summary["decisions_per_s"],
            "completion_tokens_per_s": round(summary["completion_tokens"] / summary["elapsed_s"], 1),
            "latency_p50_s": summary["latency_p50_s"], "latency_p99_s": summary["latency_p99_s"],
            "failures": summary["failures"],
            "agent_bytes_traced": round(per_agent), "persona_bytes_traced": round(persona_share),
            "shard_rss_mb_total": round(shard_total / 2**20, 1),
            "shard_rss_kb_per_agent": round(shard_total / n / 1024, 1),
        })
        print(json.dumps(rows[-1]))
    ray.shutdown()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    cols = list(rows[0])
    table = "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                      + ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows])
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"simulation-{args.mode}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    (RESULTS / f"simulation-{args.mode}.md").write_text(f"machine: {machine}\n\n{table}\n")


if __name__ == "__main__":
    main()
