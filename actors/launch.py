"""Run a scenario on Ray: join or start a cluster, start the embedded vLLM server when the scenario names
no endpoint, plan (or resume) the run, start the coordinator and draw its progress until it is done.

This is the only place the CLI reaches Ray; `alignuser_sim` itself never imports it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from alignuser_sim.config import Scenario
from alignuser_sim.errors import UserError
from alignuser_sim.llm.launcher import embedded_endpoints
from alignuser_sim.runs import RunPlan, plan_run, resume_plan

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
    on_start: Any = None,
) -> tuple[RunPlan, dict[str, Any]]:
    """Run (or resume) a scenario; returns the plan and the summary. Ctrl-C leaves a resumable folder."""
    import ray

    from .coordinator import Coordinator, size_shards

    console = console or Console(stderr=True)
    _init_ray(address, num_cpus)
    if resume is not None:
        plan = resume_plan(resume)
    else:
        assert scenario is not None
        cpus = ray.cluster_resources().get("CPU", 1)
        n_agents = scenario.population.size or 10**9
        plan = plan_run(scenario, out, size_shards(cpus, n_agents))
    handler = _file_log(plan.run_dir)
    console.print(f"run {plan.run_id}: {plan.agents:,} agents in {len(plan.shards)} shards; folder {plan.run_dir} "
                  f"(resume with `alignuser-sim run --resume {plan.run_dir}`)")
    log.info("run %s: %d agents in %d shards -> %s", plan.run_id, plan.agents, len(plan.shards), plan.run_dir)
    try:
        with embedded_endpoints(plan.scenario.llm, log_path=plan.run_dir / "vllm.log") as endpoints:
            check_endpoints(endpoints)
            coordinator = Coordinator.remote(plan, endpoints, cache_path, shard_options)
            ref = coordinator.run.remote()
            if on_start is not None:
                on_start(plan, coordinator)
            summary = _follow(coordinator, ref, plan, console)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return plan, summary


def _follow(coordinator: Any, ref: Any, plan: RunPlan, console: Console) -> dict[str, Any]:
    import ray

    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("pages {task.fields[pages]:,}"), TextColumn("{task.fields[rate]:.1f} LLM calls/s"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
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
