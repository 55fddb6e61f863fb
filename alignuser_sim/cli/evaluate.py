"""`alignuser-sim eval | compare | report`: the evaluation commands.

Kept light to import (the CLI's --help must stay fast): the evaluation modules, matplotlib and Ray are
imported inside the commands. All three are resumable: a re-run does only what its folder lacks.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from alignuser_sim.cli.common import progress_bar
from alignuser_sim.config import load_scenario
from alignuser_sim.errors import UserError

out = Console(width=None if sys.stdout.isatty() else 160)  # a piped table keeps its intervals on one line
err = Console(stderr=True)


def _ints(text: str, option: str, low: int, high: int) -> list[int]:
    """`1,3` or `1:1,1:3` -> [1, 3]."""
    try:
        values = [int(part.strip().removeprefix("1:").strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{option}: '{text}' is not a comma-separated list of integers") from None
    if not values or any(not low <= v <= high for v in values):
        raise UserError(f"{option}: '{text}': each value must be between {low} and {high}")
    return sorted(set(values))


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _check_endpoints(endpoints: list[str]) -> None:
    from actors.launch import check_endpoints  # no Ray import at module level there

    check_endpoints(endpoints)


# --- eval ----------------------------------------------------------------------------------------------------


def eval_cmd(
    scenario_file: Path = typer.Argument(..., help="Scenario YAML"),
    policies: str | None = typer.Option(
        None, "--policies", help="Comma-separated policies to evaluate on the same users: prompt-only, alignuser, "
        "+lessons, +world-model (default: the scenario's policy)"),
    ratios: str | None = typer.Option(
        None, "--ratios", help="Negatives per positive, e.g. 1,2,3,9 (default: eval.ratios)"),
    users: int | None = typer.Option(None, "--users", min=1, help="Evaluate the first N users (default: eval.users)"),
    bootstrap: int | None = typer.Option(None, "--bootstrap", min=0, help="Bootstrap draws (default: eval.bootstrap)"),
    out_dir: Path | None = typer.Option(None, "--out", help="Eval folder (default: OUTPUT_DIR/NAME/eval)"),
    ratings: bool = typer.Option(True, "--ratings/--no-ratings", help="Also ask for ratings (RMSE/MAE)"),
) -> None:
    """Micro evaluation: held-out positives mixed with never-seen negatives at each ratio; accuracy, precision,
    recall, F1, rating RMSE/MAE with 95% bootstrap intervals. Resumable: re-run to finish."""
    from alignuser_sim.evaluation.micro import open_stores, pending_tasks, plan_eval, summarize, write_summary

    scenario = load_scenario(scenario_file)
    if ratios is not None:
        scenario.eval.ratios = _ints(ratios, "--ratios", 1, 9)
    if users is not None:
        scenario.eval.users = users
    if bootstrap is not None:
        scenario.eval.bootstrap = bootstrap
    folder = out_dir or scenario.run_dir() / "eval"
    with err.status(f"planning the evaluation of {scenario.dataset.name}"):
        plan = plan_eval(scenario, folder, _names(policies) if policies else None, ratings)
    decisions, rating_store = open_stores(folder)
    tasks = pending_tasks(plan, decisions.keys, rating_store.keys)
    err.print(f"eval folder {folder}: {len(plan.cases)} users ({plan.skipped_users} without held-out items "
              f"skipped), policies {', '.join(plan.policies)}, ratios {', '.join(f'1:{r}' for r in plan.ratios)}; "
              f"{len(tasks)} LLM calls to make")
    if tasks:
        _run_tasks(plan, tasks, (decisions, rating_store), folder)
    decisions.finalize()
    rating_store.finalize()
    summary = summarize(folder)
    path = write_summary(folder, summary)
    print_eval(summary)
    out.print(f"written: {path} (report: alignuser-sim report {folder})")


def _run_tasks(plan: Any, tasks: list, stores: tuple, folder: Path) -> None:
    from alignuser_sim.evaluation.micro import run_eval
    from alignuser_sim.llm.client import LLMClient
    from alignuser_sim.llm.launcher import embedded_endpoints

    scenario = plan.scenario
    if not scenario.llm.endpoints:
        err.print("starting the embedded vLLM server ...")
    with embedded_endpoints(scenario.llm, log_path=folder / "vllm.log") as endpoints:
        _check_endpoints(endpoints)
        llm = LLMClient.from_config(scenario.llm, endpoints=endpoints, run_dir=folder)
        bar = progress_bar(err, "failures {task.fields[failures]}")
        task = bar.add_task("eval calls", total=len(tasks), failures=0)
        failures = 0

        def done(_task: Any, failure: str | None) -> None:
            nonlocal failures
            failures += failure is not None
            bar.update(task, advance=1, failures=failures)

        try:
            with bar:
                asyncio.run(_run_and_close(run_eval(plan, llm, tasks, stores, done), llm))
        except KeyboardInterrupt:
            print(f"interrupted: what is decided is kept; re-run the same command to finish ({folder})",
                  file=sys.stderr)
            raise typer.Exit(130) from None
        finally:
            llm.close()


async def _run_and_close(work: Any, llm: Any) -> None:
    try:
        await work
    finally:
        await llm.aclose()


def print_eval(summary: dict[str, Any]) -> None:
    from alignuser_sim.evaluation.report import ci

    table = Table(title=f"micro evaluation: {summary['dataset']}, {summary['users']} users, 95% bootstrap "
                        f"({summary['bootstrap']} draws)", header_style="bold")
    for col in ("policy", "ratio", "items", "accuracy", "precision", "recall", "F1", "failed pages"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in summary["micro"]:
        table.add_row(r["policy"], f"1:{r['ratio']}", str(r["items"]), ci(r["accuracy"]), ci(r["precision"]),
                      ci(r["recall"]), ci(r["f1"]), str(r["failed_pages"]))
    out.print(table)
    if summary.get("deltas"):
        table = Table(title="each policy minus the first, paired on the same users", header_style="bold")
        for col in ("difference", "ratio", "users", "accuracy", "F1"):
            table.add_column(col, justify="left" if col == "difference" else "right")
        for d in summary["deltas"]:
            table.add_row(f"{d['policy']} - {d['baseline']}", f"1:{d['ratio']}", str(d["users"]), ci(d["accuracy"]),
                          ci(d["f1"]))
        out.print(table)
    if summary["ratings"]:
        table = Table(title="rating prediction", header_style="bold")
        for col in ("policy", "users", "items asked", "coverage", "RMSE", "MAE", "failed calls"):
            table.add_column(col, justify="left" if col == "policy" else "right")
        for r in summary["ratings"]:
            coverage = "n/a" if r["coverage"] is None else f"{r['coverage']:.2f}"
            table.add_row(r["policy"], str(r["users"]), str(r["asked"]), coverage, ci(r["rmse"]), ci(r["mae"]),
                          str(r["failed_calls"]))
        out.print(table)


# --- compare ---------------------------------------------------------------------------------------------------


def compare_cmd(
    scenario_file: Path = typer.Argument(..., help="Scenario YAML"),
    recommenders: str | None = typer.Option(
        None, "--recommenders", "-r", help="Comma-separated algorithms (default: eval.recommenders)"),
    out_dir: Path | None = typer.Option(None, "--out", help="Compare folder (default: OUTPUT_DIR/NAME/compare)"),
    bootstrap: int | None = typer.Option(None, "--bootstrap", min=0, help="Bootstrap draws (default: eval.bootstrap)"),
    address: str | None = typer.Option(
        None, "--address", envvar="RAY_ADDRESS", help="Join this Ray cluster ('auto' for the local one's head)"),
    num_cpus: int | None = typer.Option(None, help="CPUs of the local Ray cluster started when no --address"),
) -> None:
    """Simulate the population against several recommenders; rank them by simulated outcomes and by offline
    Recall@K / NDCG@K; Kendall tau with bootstrap intervals. Resumable: re-run to finish."""
    from alignuser_sim.evaluation.ranking import (
        offline_per_user,
        run_status,
        summarize_compare,
        write_compare,
        write_plan,
    )
    from alignuser_sim.recommenders.offline import check_algorithms

    scenario = load_scenario(scenario_file)
    names = check_algorithms(_names(recommenders)) if recommenders else list(scenario.eval.recommenders)
    if len(names) < 2:
        raise UserError("--recommenders: name at least two recommenders to rank")
    if bootstrap is not None:
        scenario.eval.bootstrap = bootstrap
    folder = out_dir or scenario.run_dir() / "compare"
    write_plan(folder, scenario, names)
    with err.status("offline Recall/NDCG") as status:
        offline_per_user(scenario, names, folder, on_fit=lambda n: status.update(f"offline Recall/NDCG: fitting {n}"))
    if any(run_status(folder / n) != "complete" for n in names):
        _simulate_all(scenario, names, folder, address, num_cpus)
    summary = summarize_compare(folder)
    path = write_compare(folder, summary)
    print_compare(summary)
    out.print(f"written: {path} (report: alignuser-sim report {folder})")


def _simulate_all(scenario: Any, names: list[str], folder: Path, address: str | None, num_cpus: int | None) -> None:
    from actors.launch import run_on_ray  # Ray lives in actors/, never in the library
    from alignuser_sim.evaluation.ranking import simulate_all
    from alignuser_sim.llm.launcher import embedded_endpoints

    def simulate(sub: Any, run_dir: Path) -> None:
        if sub is None:
            run_on_ray(resume=run_dir, address=address, num_cpus=num_cpus, console=err)
        else:
            run_on_ray(sub, out=run_dir, address=address, num_cpus=num_cpus, console=err)

    if not scenario.llm.endpoints:
        err.print("starting the embedded vLLM server (shared by every simulation) ...")
    try:
        with embedded_endpoints(scenario.llm, log_path=folder / "vllm.log") as endpoints:
            simulate_all(scenario, names, folder, simulate, endpoints, on_start=_announce)
    except KeyboardInterrupt:
        print(f"interrupted: re-run the same command to finish ({folder})", file=sys.stderr)
        raise typer.Exit(130) from None


def _announce(name: str, status: str) -> None:
    err.print(f"[bold]{name}[/bold]: {'resuming' if status == 'running' else 'simulating'}")


def print_compare(summary: dict[str, Any]) -> None:
    from alignuser_sim.evaluation.ranking import OUTCOMES
    from alignuser_sim.evaluation.report import ci

    k = summary["k"]
    table = Table(title=f"recommenders on {summary['dataset']}: {summary['simulated_users']} simulated users",
                  header_style="bold")
    for col in ("recommender", *OUTCOMES, f"ndcg@{k}", f"recall@{k}"):
        table.add_column(col, justify="left" if col == "recommender" else "right")
    for r in summary["rows"]:
        table.add_row(r["recommender"], *(ci(r[o]) for o in OUTCOMES), ci(r[f"ndcg@{k}"], 4), ci(r[f"recall@{k}"], 4))
    out.print(table)
    table = Table(title="Kendall tau-b: offline ranking vs simulated ranking (95% bootstrap)", header_style="bold")
    for col in ("offline", "outcome", "tau"):
        table.add_column(col)
    for t in summary["tau"]:
        table.add_row(t["offline"], t["outcome"], ci(t, 2))
    out.print(table)


# --- report ----------------------------------------------------------------------------------------------------


def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder (or an eval or compare folder)"),
    eval_dir: Path | None = typer.Option(None, "--eval", help="Eval folder (default: found beside the run)"),
    compare_dir: Path | None = typer.Option(None, "--compare", help="Compare folder (default: found beside the run)"),
    out_dir: Path | None = typer.Option(None, "--out", help="Where report.md/.html and plots/ go (default: RUN_DIR)"),
) -> None:
    """Write report.md and report.html (tables, PNG plots) computed from a run's files: macro (simulated vs
    human distributions), micro (eval results) and recommender ranking (compare results) when present."""
    from alignuser_sim.evaluation.report import build_report, find_inputs

    inputs = find_inputs(run_dir, eval_dir, compare_dir)
    target = out_dir or run_dir
    with err.status("computing and plotting"):
        data = build_report(inputs, target)
    out.print(f"sections: {', '.join(data)}; written: {target / 'report.md'}, {target / 'report.html'}, "
              f"{target / 'plots'}/")
