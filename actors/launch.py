"""Run a scenario on Ray: join or start a cluster, find the LLM endpoints, plan (or resume) the run, start
the coordinator and draw its progress until it is done.

Endpoints, in order: the scenario's `llm.endpoints`; else `serve.replicas` vLLM replicas started as actors
on the cluster's GPU nodes (`llm_server.ReplicaPool`, health-checked, a dead one replaced and the shards
told its new URL); else the embedded vLLM server on this machine (bound to this node's IP when the cluster
has other nodes, so their shards reach it).

Placement: the coordinator runs on this (the driver's) node, since it writes the run folder here, and
the recommender beside it; shards go where Ray puts them. A cluster whose nodes offer the custom resource
`shard_slots` (cluster.yaml gives it to the CPU workers) gets one shard per slot, spread over the nodes
with slots, each shard taking a slot (so a lost node's shards restart on another node with free slots).

This is the only place the CLI reaches Ray; `alignuser_sim` itself never imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from alignuser_sim.cli.common import progress_bar
from alignuser_sim.config import Scenario
from alignuser_sim.errors import UserError
from alignuser_sim.llm.launcher import embedded_endpoints
from alignuser_sim.simulation.runs import RunPlan, plan_run, resume_plan

log = logging.getLogger(__name__)


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def check_endpoints(endpoints: list[str], timeout_s: float = 10.0) -> None:
    """Fail before the run, in one line, when an endpoint does not answer at all (a typo, a server not
    started); a server that answers but is busy or erroring is the client's retries' business."""
    import httpx

    for url in endpoints:
        try:
            httpx.get(url.rstrip("/") + "/models", timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise UserError(f"llm.endpoints: {url}: not reachable ({type(exc).__name__}: {exc})") from None


def _file_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("alignuser_sim").setLevel(logging.INFO)
    logging.getLogger("actors").setLevel(logging.INFO)
    return handler


SHARD_SLOTS = "shard_slots"


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def shard_placement(n_shards: int | None, agents: int, shard_options: dict[str, Any] | None
                    ) -> tuple[int, dict[str, Any]]:
    """How many shards and their actor options (see the module docstring)."""
    import ray

    from .coordinator import size_shards

    resources = ray.cluster_resources()
    slots = int(resources.get(SHARD_SLOTS, 0))
    if n_shards is None:
        n_shards = size_shards(slots or resources.get("CPU", 1), agents)
    if shard_options is None and slots:
        shard_options = {"resources": {SHARD_SLOTS: 1}, "scheduling_strategy": "SPREAD"}
        n_shards = min(n_shards, slots)
    return n_shards, shard_options or {}


@contextlib.contextmanager
def llm_endpoints(plan: RunPlan, serve_overrides: dict[str, Any] | None = None) -> Iterator[tuple[list[str], Any]]:
    """(endpoint URLs, the replica pool or None) for the run's duration (see the module docstring)."""
    import ray

    scenario = plan.scenario
    if scenario.serve.replicas > 0 and not scenario.llm.endpoints:
        from .llm_server import ReplicaPool

        with ReplicaPool(scenario.serve, served_model_name=scenario.llm.model, **(serve_overrides or {})) as pool:
            yield pool.endpoints(), pool
        return
    host = ray.util.get_node_ip_address() if len(alive_nodes()) > 1 else "127.0.0.1"
    with embedded_endpoints(scenario.llm, log_path=plan.run_dir / "vllm.log", host=host) as endpoints:
        yield endpoints, None


def run_on_ray(
    scenario: Scenario | None = None,
    *,
    out: Path | None = None,
    resume: Path | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    cache_path: str | None = None,
    console: Console | None = None,
    shard_options: dict[str, Any] | None = None,
    n_shards: int | None = None,
    serve_overrides: dict[str, Any] | None = None,
    on_start: Any = None,
) -> tuple[RunPlan, dict[str, Any]]:
    """Run (or resume) a scenario; returns the plan and the summary. Ctrl-C leaves a resumable folder.
    `serve_overrides` go to `ReplicaPool` (tests: a stand-in server's argv, num_gpus=0)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .coordinator import Coordinator

    console = console or Console(stderr=True)
    _init_ray(address, num_cpus)
    if resume is not None:
        plan = resume_plan(resume)
        _, shard_options = shard_placement(len(plan.shards), plan.agents, shard_options)
    else:
        assert scenario is not None
        n_agents = scenario.population.size or 10**9
        n_shards, shard_options = shard_placement(n_shards, n_agents, shard_options)
        plan = plan_run(scenario, out, n_shards)
    handler = _file_log(plan.run_dir)
    console.print(f"run {plan.run_id}: {plan.agents:,} agents in {len(plan.shards)} shards; folder {plan.run_dir} "
                  f"(resume with `alignuser-sim run --resume {plan.run_dir}`)")
    log.info("run %s: %d agents in %d shards -> %s", plan.run_id, plan.agents, len(plan.shards), plan.run_dir)
    try:
        with llm_endpoints(plan, serve_overrides) as (endpoints, pool):
            check_endpoints(endpoints)
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            coordinator = Coordinator.options(scheduling_strategy=here).remote(
                plan, endpoints, cache_path, shard_options)
            if pool is not None:
                pool.on_change = lambda urls: coordinator.set_endpoints.remote(urls)
            ref = coordinator.run.remote()
            if on_start is not None:
                on_start(plan, coordinator)
            summary = _follow(coordinator, ref, plan, console)
            if pool is not None:
                summary["llm_replicas_replaced"] = pool.replaced
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return plan, summary


def _follow(coordinator: Any, ref: Any, plan: RunPlan, console: Console) -> dict[str, Any]:
    import ray

    with progress_bar(console, "pages {task.fields[pages]:,}", "{task.fields[rate]:.1f} LLM calls/s") as bar:
        task = bar.add_task("agents done", total=plan.agents, pages=0, rate=0.0)
        while True:
            ready, _ = ray.wait([ref], timeout=0.5)
            try:
                p = ray.get(coordinator.progress.remote(), timeout=5)
                rate = p["llm_calls"] / p["elapsed_s"] if p["elapsed_s"] else 0.0
                bar.update(task, completed=p["agents_done"], pages=p["decisions"], rate=rate)
            except Exception:  # progress is best effort; the run's result decides
                pass
            if ready:
                break
        summary = ray.get(ref)
        bar.update(task, completed=summary.get("agents_done", plan.agents))
    time.sleep(0)  # let the bar flush
    return summary
