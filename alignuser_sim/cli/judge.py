"""`alignuser-sim judge RUN_DIR`: a judge model's human-likeness score of the run's sessions beside the humans',
and the thought-action consistency of its decisions.

The numbers are `evaluation/judge.judge`'s (written to RUN_DIR/judge.json, the ones `report` shows). The
judge is `judge.model` on `judge.endpoints`, else the scenario's model and endpoints, else the embedded
server started for the command. Resumable: judgements are stored as they come; re-run to finish.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from alignuser_sim.cli.common import Bar, err, exit_on_interrupt, reporter
from alignuser_sim.cli.common import out_wide as out


def judge_cmd(
    run_dir: Path = typer.Argument(..., help="A simulation run folder (events.parquet, scenario.yaml)"),
    sessions: int | None = typer.Option(None, "--sessions", min=1, help="Sessions judged per side, one per user "
                                        "(default: judge.sessions)"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap draws for the intervals"),
    thoughts: bool = typer.Option(False, "--thoughts", help="Show the agents' thoughts in the human-likeness "
                                  "prompt (humans have none: the judge can then tell the sides apart)"),
) -> None:
    """Human-likeness judge: a judge model scores simulated and human sessions of the same users 1-5 (not told
    which is which); means with 95% bootstrap intervals and their paired difference. Thought-action
    consistency: the share of simulated decisions whose thought supports the action. Resumable."""
    from alignuser_sim.evaluation.judge import judge

    interrupted = f"interrupted: the judgements made are kept; re-run the same command to finish ({run_dir})"
    with exit_on_interrupt(interrupted), Bar("judge calls", "failures {task.fields[failures]}", failures=0) as bar:
        result = judge(run_dir, sessions=sessions, thoughts=thoughts, draws=bootstrap, note=reporter.note,
                       on_progress=bar)
    print_judge(result)
    out.print(f"written: {Path(run_dir) / 'judge.json'} (report: alignuser-sim report {run_dir})", highlight=False)


def print_judge(result: dict) -> None:
    from alignuser_sim.evaluation.report import ci

    like = result["likeness"]
    out.print(f"{result['scenario']} ({result['dataset']}, policy {result['policy']}): judge {result['model']}, "
              f"{result['judged_users']} of {result['eligible_users']} users with sessions on both sides; 95% "
              f"bootstrap over users ({result['draws']} draws)", highlight=False)
    table = Table(title="human-likeness (1-5), the same judge and prompt on both sides", header_style="bold")
    for col in ("sessions", "judged", "mean score [95%]"):
        table.add_column(col, justify="left" if col == "sessions" else "right")
    table.add_row("simulated", str(like["sessions"]["simulated"]), ci(like["simulated"], 2))
    table.add_row("human", str(like["sessions"]["human"]), ci(like["human"], 2))
    table.add_row("simulated - human (paired)", str(like["paired_users"]), ci(like["difference"], 2))
    out.print(table)
    consistency = result["consistency"]
    if consistency.get("skipped"):
        out.print(f"thought-action consistency: {consistency['skipped']}", highlight=False)
    else:
        out.print(f"thought-action consistency: {ci(consistency['share'])} of {consistency['decisions']} decisions "
                  f"with a thought", highlight=False)
    if result.get("failed"):
        err.print(f"failed judge replies (left out): {result['failed']}", highlight=False)
    if result.get("missing"):
        err.print(f"not judged yet (transport failures; re-run to finish): {result['missing']}", highlight=False)
