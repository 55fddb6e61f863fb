"""Place a run's plan on Ray: join or start a cluster, find the LLM endpoints, start the coordinator and
report its progress until it is done. The plan itself (population, personas, policy, shard layout) is made
by the library (`alignuser_sim.simulation.runs`); this module only decides where things run.

    runner = RayRunner(address="auto")
    result = alignuser_sim.simulate(scenario, runner=runner)       # what `alignuser-sim run` does

`RayRunner.shard_count` sizes the shards from the cluster before the plan is made; `run_on_ray(plan)`
places and starts it. Progress goes to an `on_progress(done, total, fields)` callback; drawing it is the
CLI's business.

Endpoints, in order: the scenario's `llm.endpoints`; else `serve.replicas` vLLM replicas started as actors
on the cluster's GPU nodes (`llm_server.ReplicaPool`, health-checked, a dead one replaced and the shards
told its new URL); else the embedded vLLM server on this machine (bound to this node's IP when the cluster
has other nodes, so their shards reach it).

Security: Ray's token authentication stays as Ray sets it (Ray 2.60: on for a local cluster this starts,
its token in ~/.ray/auth_token; a cluster joined by address needs RAY_AUTH_MODE=token and its token, see
docs/scale.md); only the tests' private clusters turn it off. A scenario's `llm.api_key_env` names the
variable holding the LLM servers' key: the replicas and the embedded server require it, and the coordinator
(so its shards, wherever they run) gets the variable through its runtime environment.

Placement: the coordinator runs on this (the driver's) node, since it writes the run folder here, and
the recommender beside it; shards go where Ray puts them. A cluster whose nodes offer the custom resource
`shard_slots` (cluster.yaml gives it to the CPU workers) gets one shard per slot, spread over the nodes
with slots, each shard taking a slot (so a lost node's shards restart on another node with free slots).

Of the library only `alignuser_sim.cli` imports this package; `alignuser_sim` itself never imports Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignuser_sim.errors import UserError
from alignuser_sim.llm.endpoints import check_endpoints
from alignuser_sim.llm.launcher import embedded_endpoints
from alignuser_sim.llm.server_command import server_key_env
from alignuser_sim.llm.transport import api_key_from_env
from alignuser_sim.simulation.runs import RunPlan
from alignuser_sim.store import VLLM_LOG, RunFolder

log = logging.getLogger(__name__)


OnProgress = Callable[[int, "int | None", dict[str, Any]], None]  # alignuser_sim.api.OnProgress


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local one with `num_cpus` CPUs. Ray's token
    authentication is left as Ray and the environment set it (see the module docstring)."""
    import ray
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    except (AuthenticationError, ConnectionError) as exc:  # Ray 2.60 wraps a refused token in a ConnectionError
        if not _auth_refused(exc):
            raise
        raise UserError(
            f"Ray cluster {address or '(local)'}: token authentication failed; set RAY_AUTH_MODE=token and the "
            "cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head node prints "
            "it; see docs/scale.md)") from None


def _auth_refused(exc: BaseException) -> bool:
    """Whether Ray refused this driver's token: an AuthenticationError somewhere in the chain, or the
    authentication message Ray puts in the error it wraps."""
    from ray.exceptions import AuthenticationError

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, AuthenticationError) or "RAY_AUTH_MODE" in str(seen) or "auth_token" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _file_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(RunFolder(run_dir).log)
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

        serve = scenario.serve
        if scenario.llm.adapters:  # the trained adapters beside the base model (their folders must be on every node)
            from alignuser_sim.llm.server_command import lora_args

            serve = serve.model_copy(update={"extra_args": [*serve.extra_args, *lora_args(scenario.llm.adapters)]})
        overrides = dict(serve_overrides or {})
        overrides["env"] = {**(overrides.get("env") or {}), **server_key_env(scenario.llm.api_key_env)}
        with ReplicaPool(serve, served_model_name=scenario.llm.model, **overrides) as pool:
            yield pool.endpoints(), pool
        return
    host = ray.util.get_node_ip_address() if len(alive_nodes()) > 1 else "127.0.0.1"
    with embedded_endpoints(scenario.llm, log_path=plan.run_dir / VLLM_LOG, host=host) as endpoints:
        yield endpoints, None


def key_runtime_env(plan: RunPlan) -> dict[str, Any]:
    """The coordinator's actor options that hand it (and the shards it starts: Ray's runtime environments are
    inherited) the variable `llm.api_key_env` names: the shards' clients read it on nodes that lack it."""
    name = plan.scenario.llm.api_key_env
    key = api_key_from_env(name)
    return {"runtime_env": {"env_vars": {name: key}}} if name and key else {}


@dataclass
class RayRunner:
    """The `runner` of `alignuser_sim.simulate`: the plan's shards sized from the cluster, then placed on it.
    `serve_overrides` go to `ReplicaPool` (tests: a stand-in server's argv, num_gpus=0); `on_start(plan,
    coordinator)` is called once the coordinator runs (tests kill actors from it)."""

    address: str | None = None
    num_cpus: int | None = None
    n_shards: int | None = None
    shard_options: dict[str, Any] | None = None
    cache_path: str | None = None
    serve_overrides: dict[str, Any] | None = None
    on_start: Callable[[RunPlan, Any], None] | None = None

    def shard_count(self, agents: int) -> int:
        init_ray(self.address, self.num_cpus)
        return shard_placement(self.n_shards, agents, self.shard_options)[0]

    def __call__(self, plan: RunPlan, on_progress: OnProgress | None = None) -> dict[str, Any]:
        init_ray(self.address, self.num_cpus)
        return run_on_ray(plan, shard_options=self.shard_options, cache_path=self.cache_path,
                          serve_overrides=self.serve_overrides, on_start=self.on_start, on_progress=on_progress)


def run_on_ray(
    plan: RunPlan,
    *,
    shard_options: dict[str, Any] | None = None,
    cache_path: str | None = None,
    serve_overrides: dict[str, Any] | None = None,
    on_start: Callable[[RunPlan, Any], None] | None = None,
    on_progress: OnProgress | None = None,
) -> dict[str, Any]:
    """Run (or resume) a planned run on the cluster Ray is connected to; returns its summary. Ctrl-C leaves a
    resumable folder."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .coordinator import Coordinator

    _, shard_options = shard_placement(len(plan.shards), plan.agents, shard_options)
    handler = _file_log(plan.run_dir)
    log.info("run %s: %d agents in %d shards -> %s", plan.run_id, plan.agents, len(plan.shards), plan.run_dir)
    try:
        with llm_endpoints(plan, serve_overrides) as (endpoints, pool):
            check_endpoints(endpoints, api_key_env=plan.scenario.llm.api_key_env)
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            coordinator = Coordinator.options(scheduling_strategy=here, **key_runtime_env(plan)).remote(
                plan, endpoints, cache_path, shard_options)
            if pool is not None:
                pool.on_change = lambda urls: coordinator.set_endpoints.remote(urls)
            ref = coordinator.run.remote()
            if on_start is not None:
                on_start(plan, coordinator)
            summary = _follow(coordinator, ref, plan, on_progress)
            if pool is not None:
                summary["llm_replicas_replaced"] = pool.replaced
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return summary


def _follow(coordinator: Any, ref: Any, plan: RunPlan, on_progress: OnProgress | None) -> dict[str, Any]:
    """Wait for the run, reporting progress (best effort: the run's result decides) every half second."""
    import ray

    while True:
        ready, _ = ray.wait([ref], timeout=0.5)
        if on_progress is not None:
            try:
                p = ray.get(coordinator.progress.remote(), timeout=5)
            except Exception:
                p = None
            if p is not None:
                rate = p["llm_calls"] / p["elapsed_s"] if p["elapsed_s"] else 0.0
                on_progress(p["agents_done"], plan.agents, {"pages": p["decisions"], "rate": rate})
        if ready:
            break
    try:
        summary = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the coordinator's one-line error, without Ray's traceback
        if isinstance(exc.cause, UserError):
            raise exc.cause from None
        raise
    if on_progress is not None:
        on_progress(summary.get("agents_done", plan.agents), plan.agents, {})
    return summary
