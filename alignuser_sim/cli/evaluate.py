"""`alignuser-sim eval | compare | report`: the evaluation commands, over `alignuser_sim.evaluate`, `compare`
and `report`.

Kept light to import (the CLI's --help must stay fast): the evaluation modules, matplotlib and Ray are
imported inside the commands. All three are resumable: a re-run does only what its folder lacks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from alignuser_sim.cli.common import ENDPOINT_OPT, Bar, err, exit_on_interrupt, reporter, with_endpoints
from alignuser_sim.cli.common import out_wide as out
from alignuser_sim.cli.run import ADDRESS_OPT, NUM_CPUS_OPT, ray_runner, run_bar
from alignuser_sim.config import load_scenario
from alignuser_sim.errors import UserError


def _ints(text: str, option: str, low: int, high: int) -> list[int]:
    """`1,3` or `1:1,1:3` -> [1, 3]."""
    try:
        values = [int(part.strip().removeprefix("1:").strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{option}: '{text}' is not a comma-separated list of integers") from None
    if not values or any(not low <= v <= high for v in values):
        raise UserError(f"{option}: '{text}': each value must be between {low} and {high}")
    return sorted(set(values))


def compare_folder_name(label: str) -> str:
    """compare-LABEL, one path level: `alignuser+/score` -> compare-alignuser+-score (a slash would nest two
    folders, a space would need quoting in every command that names it)."""
    return "compare-" + re.sub(r"[/\s]+", "-", label)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


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
    references: bool = typer.Option(
        True, "--references/--no-references", help="Also the reference policies without an LLM on the same pages "
        "(always-watch, random, popularity, popularity-oracle, least-popular; global/item/user mean ratings)"),
    endpoints: list[str] | None = ENDPOINT_OPT,
) -> None:
    """Micro evaluation: held-out positives mixed with never-seen negatives at each ratio; accuracy, precision,
    recall, F1, rating RMSE/MAE with 95% bootstrap intervals, beside reference policies that use no LLM.
    Resumable: re-run to finish."""
    from alignuser_sim.api import evaluate
    from alignuser_sim.store import EvalFolder

    scenario = with_endpoints(load_scenario(scenario_file), endpoints)
    folder = out_dir or scenario.run_dir() / "eval"
    ratio_list = _ints(ratios, "--ratios", 1, 9) if ratios is not None else None
    interrupted = f"interrupted: what is decided is kept; re-run the same command to finish ({folder})"
    with EvalFolder(folder).lock(), exit_on_interrupt(interrupted), \
            Bar("eval calls", "failures {task.fields[failures]}", failures=0) as bar:  # one eval per folder
        result = evaluate(scenario, policies=_names(policies) if policies else None, ratios=ratio_list, users=users,
                          bootstrap=bootstrap, ratings=ratings, references=references, out=folder, reporter=reporter,
                          on_progress=bar)
    print_eval(result.summary)
    out.print(f"written: {result.path} (report: alignuser-sim report {folder})")


def _difference(d: dict[str, Any]) -> str:
    return f"{d['policy']} - {d['baseline']}" + (" (best reference)" if d.get("against") == "best reference" else "")


def print_eval(summary: dict[str, Any]) -> None:
    from alignuser_sim.evaluation.report import ci

    table = Table(title=f"micro evaluation: {summary['dataset']}, {summary['users']} users, 95% bootstrap "
                        f"({summary['bootstrap']} draws); references use no LLM", header_style="bold")
    for col in ("policy", "kind", "ratio", "items", "accuracy", "precision", "recall", "F1", "failed pages"):
        table.add_column(col, justify="left" if col in ("policy", "kind") else "right")
    for r in summary["micro"]:
        table.add_row(r["policy"], r.get("kind", "llm"), f"1:{r['ratio']}", str(r["items"]), ci(r["accuracy"]),
                      ci(r["precision"]), ci(r["recall"]), ci(r["f1"]), str(r["failed_pages"]))
    out.print(table)
    if summary.get("deltas"):
        table = Table(title="each LLM policy minus the first and minus the best reference (highest accuracy at "
                            "that ratio), paired on the same users", header_style="bold")
        for col in ("difference", "ratio", "users", "accuracy", "F1"):
            table.add_column(col, justify="left" if col == "difference" else "right")
        for d in summary["deltas"]:
            table.add_row(_difference(d), f"1:{d['ratio']}", str(d["users"]), ci(d["accuracy"]), ci(d["f1"]))
        out.print(table)
    if summary["ratings"]:
        table = Table(title="rating prediction (KL: human || predicted rating histograms)", header_style="bold")
        for col in ("policy", "kind", "users", "items asked", "coverage", "RMSE", "MAE", "KL", "failed calls"):
            table.add_column(col, justify="left" if col in ("policy", "kind") else "right")
        for r in summary["ratings"]:
            coverage = "n/a" if r["coverage"] is None else f"{r['coverage']:.2f}"
            kl = "n/a" if r.get("kl") is None else f"{r['kl']:.3f}"
            table.add_row(r["policy"], r.get("kind", "llm"), str(r["users"]), str(r["asked"]), coverage, ci(r["rmse"]),
                          ci(r["mae"]), kl, str(r["failed_calls"]))
        out.print(table)
    if summary.get("rating_deltas"):
        table = Table(title="rating error: each LLM policy minus the first and minus the best rating reference "
                            "(lowest RMSE), paired on the same users", header_style="bold")
        for col in ("difference", "users", "RMSE", "MAE"):
            table.add_column(col, justify="left" if col == "difference" else "right")
        for d in summary["rating_deltas"]:
            table.add_row(_difference(d), str(d["users"]), ci(d["rmse"]), ci(d["mae"]))
        out.print(table)


# --- compare ---------------------------------------------------------------------------------------------------


def compare_cmd(
    scenario_file: Path = typer.Argument(..., help="Scenario YAML"),
    recommenders: str | None = typer.Option(
        None, "--recommenders", "-r", help="Comma-separated algorithms (default: eval.recommenders)"),
    out_dir: Path | None = typer.Option(None, "--out", help="Compare folder (default: OUTPUT_DIR/NAME/compare)"),
    bootstrap: int | None = typer.Option(None, "--bootstrap", min=0, help="Bootstrap draws (default: eval.bootstrap)"),
    policy: str | None = typer.Option(
        None, "--policy", help="The simulated users' policy instead of the scenario's: prompt-only, alignuser, "
        "alignuser+, ... or popularity (the no-LLM reference). Default folder: OUTPUT_DIR/NAME/compare-POLICY"),
    no_references: bool = typer.Option(
        False, "--no-references", help="Skip the no-LLM popularity user run beside an LLM policy's compare"),
    endpoints: list[str] | None = ENDPOINT_OPT,
    address: str | None = ADDRESS_OPT,
    num_cpus: int | None = NUM_CPUS_OPT,
) -> None:
    """Simulate the population against several recommenders; rank them by simulated outcomes and by offline
    Recall@K / NDCG@K; Kendall tau with bootstrap intervals. Resumable: re-run to finish."""
    from alignuser_sim.api import compare
    from alignuser_sim.store import CompareFolder

    scenario = with_endpoints(load_scenario(scenario_file), endpoints)
    folder = out_dir or scenario.run_dir() / "compare"
    if policy is not None:
        from alignuser_sim.evaluation.cases import policy_variant

        scenario = policy_variant(scenario, policy, "--policy")
        folder = out_dir or scenario.run_dir() / compare_folder_name(scenario.policy.label)
    bar = run_bar()

    def announce(name: str, status: str) -> None:
        bar.close()  # each run draws its own bar
        err.print(f"[bold]{name}[/bold]: {'resuming' if status == 'running' else 'simulating'}")

    interrupted = f"interrupted: re-run the same command to finish ({folder})"
    with CompareFolder(folder).lock(), exit_on_interrupt(interrupted), bar:  # one compare per folder
        result = compare(scenario, recommenders=_names(recommenders) if recommenders else None, bootstrap=bootstrap,
                         out=folder, runner=ray_runner(address, num_cpus), reporter=reporter, on_progress=bar,
                         on_run=announce, references=not no_references)
    print_compare(result.summary)
    out.print(f"written: {result.path} (report: alignuser-sim report {folder})")


def print_compare(summary: dict[str, Any]) -> None:
    from alignuser_sim.evaluation.ranking import OUTCOMES
    from alignuser_sim.evaluation.report import ci

    k = summary["k"]
    policy = f" ({summary['policy']})" if summary.get("policy") else ""
    table = Table(title=f"recommenders on {summary['dataset']}: {summary['simulated_users']} simulated users{policy}",
                  header_style="bold")
    for col in ("recommender", *OUTCOMES, f"ndcg@{k}", f"recall@{k}"):
        table.add_column(col, justify="left" if col == "recommender" else "right")
    for r in summary["rows"]:
        table.add_row(r["recommender"], *(ci(r[o]) for o in OUTCOMES), ci(r[f"ndcg@{k}"], 4), ci(r[f"recall@{k}"], 4))
    out.print(table)
    reference = summary.get("reference")
    title = "Kendall tau-b: offline ranking vs simulated ranking (95% bootstrap)"
    table = Table(title=title + (f"; beside it the no-LLM {reference['policy']} user's" if reference else ""),
                  header_style="bold")
    for col in ("offline", "outcome", f"tau, {summary.get('policy') or 'simulated'}",
                *([f"tau, {reference['policy']} reference"] if reference else [])):
        table.add_column(col)
    ref_tau = {(t["offline"], t["outcome"]): t for t in reference["tau"]} if reference else {}
    for t in summary["tau"]:
        extra = [ci(ref_tau[(t["offline"], t["outcome"])], 2)] if reference else []
        table.add_row(t["offline"], t["outcome"], ci(t, 2), *extra)
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
    from alignuser_sim.api import report

    result = report(run_dir, eval_dir=eval_dir, compare_dir=compare_dir, out=out_dir, reporter=reporter)
    target = result.folder
    out.print(f"sections: {', '.join(result.sections)}; written: {target / 'report.md'}, {target / 'report.html'}, "
              f"{target / 'plots'}/")
