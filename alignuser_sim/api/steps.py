"""The six steps (load, simulate, learn, evaluate, compare, report): each the exact work of its CLI command,
resumable as the command is. The library is imported inside each step: importing the API stays light.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alignuser_sim.api.hooks import LogReporter, OnProgress, Reporter, Runner
from alignuser_sim.api.results import CompareResult, EvalResult, LearningResult, ReportResult, SimulationResult
from alignuser_sim.config import Scenario, load_scenario
from alignuser_sim.errors import UserError
from alignuser_sim.store import VLLM_LOG

if TYPE_CHECKING:
    from alignuser_sim.config import LLMConfig
    from alignuser_sim.llm.client import LLMClient
    from alignuser_sim.llm.protocol import StructuredLLM
    from alignuser_sim.simulation.runs import RunPlan

R = TypeVar("R")


# --- shared plumbing -------------------------------------------------------------------------------------


def _scenario(scenario: Scenario | str | Path) -> Scenario:
    """A private copy: a step's overrides (ratios, users, folders) never leak into the caller's scenario."""
    if isinstance(scenario, Scenario):
        return scenario.model_copy(deep=True)
    return load_scenario(Path(scenario))


async def _closing(work: Coroutine[Any, Any, R], llm: LLMClient) -> R:
    try:
        return await work
    finally:
        await llm.aclose()


def _with_llm(config: LLMConfig, folder: Path, llm: StructuredLLM | None, reporter: Reporter,
              work: Callable[[StructuredLLM], Coroutine[Any, Any, R]]) -> R:
    """`work(llm)` run to its end: on the given model, or on a client of the scenario's endpoints (the
    embedded server started when it names none) opened and closed around it."""
    from alignuser_sim.llm.endpoints import open_client

    if llm is not None:
        return asyncio.run(work(llm))
    with open_client(config, folder, reporter.note) as client:
        return asyncio.run(_closing(work(client), client))


@dataclass
class LocalRunner:
    """Runs a plan in this process (`simulation.runs.run_local`): every shard's agents in one event loop."""

    llm: StructuredLLM | None = None
    shards: int = 1
    reporter: Reporter = field(default_factory=LogReporter)

    def shard_count(self, agents: int) -> int:
        return self.shards

    def __call__(self, plan: RunPlan, on_progress: OnProgress | None = None) -> dict[str, Any]:
        from alignuser_sim.simulation.runs import run_local

        on_events = None
        if on_progress is not None:
            done, pages, cap = 0, 0, plan.scenario.pages.count

            def on_events(events: list) -> None:
                nonlocal done, pages
                pages += len(events)
                done += sum(e.action == "exit" or e.failure is not None or e.page + 1 >= cap for e in events)
                on_progress(done, plan.agents, {"pages": pages})

        return _with_llm(plan.scenario.llm, plan.run_dir, self.llm, self.reporter,
                         lambda llm: run_local(plan, llm, on_events))


# --- the steps -----------------------------------------------------------------------------------------------


def simulate(scenario: Scenario | str | Path | None = None, *, out: Path | None = None, resume: Path | None = None,
             llm: StructuredLLM | None = None, runner: Runner | None = None, reporter: Reporter | None = None,
             on_progress: OnProgress | None = None) -> SimulationResult:
    """Simulate the scenario's population against its recommender (or finish the interrupted run in
    `resume`); writes a run folder (`out`, default OUTPUT_DIR/NAME/RUN_ID). `llm` is the model of the
    default in-process runner; a given `runner` (e.g. Ray's) reaches the scenario's endpoints itself."""
    from alignuser_sim.simulation.runs import NothingToResume, plan_run, resume_plan

    if (scenario is None) == (resume is None):
        raise UserError("simulate: give a scenario or resume=RUN_DIR (one of the two)")
    reporter = reporter or LogReporter()
    runner = runner or LocalRunner(llm, reporter=reporter)
    if resume is not None:
        try:
            plan = resume_plan(Path(resume))
        except NothingToResume as done:  # a finished run: report it, run and write nothing
            reporter.note(str(done))
            return SimulationResult(done.run_dir, done.run_id, done.summary)
        runner = _runner_for(plan.scenario, runner, reporter)
    else:
        sc = _scenario(scenario)  # type: ignore[arg-type]
        runner = _runner_for(sc, runner, reporter)
        plan = plan_run(sc, Path(out) if out is not None else None, runner.shard_count(sc.population.max_agents))
    reporter.note(f"run {plan.run_id}: {plan.agents:,} agents in {len(plan.shards)} shards; folder {plan.run_dir} "
                  f"(resume with `alignuser-sim run --resume {plan.run_dir}`)")
    summary = runner(plan, on_progress)
    return SimulationResult(plan.run_dir, plan.run_id, summary)


def _runner_for(sc: Scenario, runner: Runner, reporter: Reporter) -> Runner:
    """A policy without an LLM (the popularity reference) decides in microseconds: it runs in this process,
    with no server to start and no cluster to reach, whatever runner was asked for."""
    if sc.policy.uses_llm:
        return runner
    from alignuser_sim.llm.protocol import NoLLM

    return LocalRunner(NoLLM(), reporter=reporter)  # type: ignore[arg-type]


def learn(scenario: Scenario | str | Path, *, users: int | None = None, folder: Path | None = None,
          llm: StructuredLLM | None = None, reporter: Reporter | None = None,
          on_progress: OnProgress | None = None) -> LearningResult:
    """AlignUSER learning from the human rollouts: taste, counterfactuals, world model, reflection, lessons
    (into `folder`, default the scenario's learning folder). `users`: only the first N of the population.
    `on_progress(done, total, fields)` gets the LLM accounting's counters (calls, failed, ...) as fields; its
    first call, before any answer, `{"personas": N}`."""
    from alignuser_sim.learning.inputs import prepare
    from alignuser_sim.learning.learner import run_learning
    from alignuser_sim.llm.endpoints import check_endpoints

    sc = _scenario(scenario)
    if not sc.policy.uses_llm:
        raise UserError("learn: policy popularity makes no LLM call, so there is nothing to learn; set policy.kind "
                        "to prompt-only, alignuser or alignuser+")
    reporter = reporter or LogReporter()
    if folder is not None:
        sc.learning.folder = Path(folder)
    if llm is None and sc.llm.endpoints:
        check_endpoints(sc.llm.endpoints, api_key_env=sc.llm.api_key_env)  # before minutes of data preparation
    with reporter.status("loading data, replaying the training split, fitting the recommender"):
        inputs = prepare(sc, users)
    where = sc.learning_dir()

    async def work(client: StructuredLLM) -> dict[str, Any]:
        if on_progress is not None:  # the bar shows once the model is up, before the first answer
            on_progress(0, None, {"personas": len(inputs.users)})
        return await run_learning(inputs, client, where, on_progress=on_progress)

    summary = _with_llm(sc.learning_llm(), where, llm, reporter, work)
    return LearningResult(where, summary)


def evaluate(scenario: Scenario | str | Path, *, policies: Sequence[str] | None = None,
             ratios: Sequence[int] | None = None, users: int | None = None, bootstrap: int | None = None,
             ratings: bool = True, references: bool = True, out: Path | None = None,
             llm: StructuredLLM | None = None, reporter: Reporter | None = None,
             on_progress: OnProgress | None = None) -> EvalResult:
    """Micro evaluation on the held-out items (`out`, default OUTPUT_DIR/NAME/eval): each policy on the same
    users and pages; `ratios`, `users`, `bootstrap` override the scenario's `eval:`. `references`: also the
    reference policies without an LLM (always-watch, random, popularity, rating means; cheap, written
    before the LLM calls, what the folder lacks)."""
    from alignuser_sim.agent.policy import serve_adapters
    from alignuser_sim.evaluation.micro import open_stores, pending_tasks, plan_eval, run_eval
    from alignuser_sim.evaluation.references import write_references
    from alignuser_sim.evaluation.summary import summarize, write_summary

    sc = _scenario(scenario)
    reporter = reporter or LogReporter()
    if ratios is not None:
        sc.eval.ratios = list(ratios)
    if users is not None:
        sc.eval.users = users
    if bootstrap is not None:
        sc.eval.bootstrap = bootstrap
    folder = Path(out) if out is not None else sc.run_dir() / "eval"
    with reporter.status(f"planning the evaluation of {sc.dataset.name}"):
        plan = plan_eval(sc, folder, list(policies) if policies else None, ratings)
    serve_adapters(sc, *plan.policies.values())  # alignuser+: the embedded server loads the trained adapters
    stores = open_stores(folder, sc.eval.flush_s)
    if references:
        with reporter.status("deciding with the reference policies (no LLM)"):
            written = write_references(plan, stores)
        if written:
            reporter.note(f"reference policies: {written} decisions and ratings written")
    tasks = pending_tasks(plan, stores[0].keys, stores[1].keys)
    reporter.note(f"eval folder {folder}: {len(plan.cases)} users ({plan.skipped_users} without held-out items "
                  f"skipped), policies {', '.join(plan.policies)}, ratios {', '.join(f'1:{r}' for r in plan.ratios)}; "
                  f"{len(tasks)} LLM calls to make")
    if tasks:
        failures = finished = 0

        def done(_task: Any, failure: str | None) -> None:
            nonlocal failures, finished
            failures += failure is not None
            finished += 1
            if on_progress is not None:
                on_progress(finished, len(tasks), {"failures": failures})

        async def work(client: StructuredLLM) -> None:
            if on_progress is not None:  # the bar shows once the model is up, before the first answer
                on_progress(0, len(tasks), {"failures": 0})
            await run_eval(plan, client, tasks, stores, done)

        _with_llm(sc.llm, folder, llm, reporter, work)
    decisions, rating_rows = (store.finalize() for store in stores)
    summary = summarize(folder)
    return EvalResult(folder, decisions, rating_rows, summary, write_summary(folder, summary))


def compare(scenario: Scenario | str | Path, *, recommenders: Sequence[str] | None = None,
            bootstrap: int | None = None, out: Path | None = None, llm: StructuredLLM | None = None,
            runner: Runner | None = None, reporter: Reporter | None = None, on_progress: OnProgress | None = None,
            on_run: Callable[[str, str], None] | None = None, references: bool = True) -> CompareResult:
    """Simulate the population against each recommender (`out`, default OUTPUT_DIR/NAME/compare); rank them by
    simulated outcomes and by offline Recall/NDCG; Kendall tau. `on_run(name, status)` before each run.
    `references`: an LLM policy's compare also runs the no-LLM popularity user on the same recommenders
    (`folder/reference-popularity`, seconds), so its taus are read against that user's."""
    from alignuser_sim.evaluation.offline import check_algorithms
    from alignuser_sim.evaluation.ranking import (
        offline_per_user,
        run_status,
        simulate_all,
        summarize_compare,
        write_compare,
        write_plan,
    )

    sc = _scenario(scenario)
    reporter = reporter or LogReporter()
    names = check_algorithms(list(recommenders)) if recommenders else list(sc.eval.recommenders)
    if len(names) < 2:
        raise UserError("--recommenders: name at least two recommenders to rank")
    if bootstrap is not None:
        sc.eval.bootstrap = bootstrap
    folder = Path(out) if out is not None else sc.run_dir() / "compare"
    write_plan(folder, sc, names)
    with reporter.status("offline Recall/NDCG") as status:
        offline_per_user(sc, names, folder, on_fit=lambda n: status.update(f"offline Recall/NDCG: fitting {n}"))
    if references and sc.policy.uses_llm:
        _reference_runs(sc, names, folder, reporter, on_progress, on_run)
    if any(run_status(folder / n) != "complete" for n in names):
        runner = runner or LocalRunner(llm, reporter=reporter)

        def one_run(sub: Scenario | None, run_dir: Path) -> None:
            if sub is None:
                simulate(resume=run_dir, runner=runner, reporter=reporter, on_progress=on_progress)
            else:
                simulate(sub, out=run_dir, runner=runner, reporter=reporter, on_progress=on_progress)

        if llm is not None:
            simulate_all(sc, names, folder, one_run, on_start=on_run)
        else:
            _simulate_all_on_endpoints(sc, names, folder, one_run, reporter, on_run)
    summary = summarize_compare(folder)
    return CompareResult(folder, summary, write_compare(folder, summary))


def _reference_runs(sc: Scenario, names: list[str], folder: Path, reporter: Reporter,
                    on_progress: OnProgress | None, on_run: Callable[[str, str], None] | None) -> None:
    """The popularity user's runs on the same recommenders, in this process (no LLM: `_runner_for`)."""
    from alignuser_sim.evaluation.ranking import prepare_reference, reference_scenario, simulate_all

    ref = prepare_reference(sc, names, folder)

    def one_run(sub: Scenario | None, run_dir: Path) -> None:
        if sub is None:
            simulate(resume=run_dir, reporter=reporter, on_progress=on_progress)
        else:
            simulate(sub, out=run_dir, reporter=reporter, on_progress=on_progress)

    announce = (lambda name, status: on_run(f"{name} (popularity reference user)", status)) if on_run else None
    simulate_all(reference_scenario(sc), names, ref, one_run, on_start=announce)


def _simulate_all_on_endpoints(sc: Scenario, names: list[str], folder: Path, one_run: Callable[..., None],
                               reporter: Reporter, on_run: Callable[[str, str], None] | None) -> None:
    """Every run on the scenario's endpoints; one embedded server, shared by every run, when it names none."""
    from alignuser_sim.evaluation.ranking import simulate_all
    from alignuser_sim.llm.endpoints import embedded_note
    from alignuser_sim.llm.launcher import embedded_endpoints

    if not sc.policy.uses_llm:  # the popularity reference: no server at all
        simulate_all(sc, names, folder, one_run, on_start=on_run)
        return
    if not sc.llm.endpoints:
        reporter.note(embedded_note(folder / VLLM_LOG))
    if sc.policy.use_adapter:  # alignuser+: the one shared server loads the trained adapters
        from alignuser_sim.agent.adapters import load_adapters

        sc.llm.adapters = {**load_adapters(sc.learning_dir()).paths(), **sc.llm.adapters}
    with embedded_endpoints(sc.llm, log_path=folder / VLLM_LOG) as endpoints:
        simulate_all(sc, names, folder, one_run, endpoints, on_start=on_run)


def report(run_dir: Path | str, *, eval_dir: Path | None = None, compare_dir: Path | None = None,
           out: Path | None = None, reporter: Reporter | None = None) -> ReportResult:
    """report.md, report.html and plots/ (in `out`, default `run_dir`) from a run, eval or compare folder and
    whichever of the others are found beside it: macro, micro and recommender ranking sections."""
    from alignuser_sim.evaluation.report import build_report, find_inputs

    reporter = reporter or LogReporter()
    inputs = find_inputs(Path(run_dir), eval_dir, compare_dir)
    target = Path(out) if out is not None else Path(run_dir)
    with reporter.status("computing and plotting"):
        data = build_report(inputs, target)
    return ReportResult(target, data)
