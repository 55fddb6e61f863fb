"""`alignuser-sim learn ...`: AlignUSER learning from the human rollouts.

    alignuser-sim learn SCENARIO               taste, counterfactuals, world model, reflection -> lessons
    alignuser-sim learn worldmodel SCENARIO    next-state accuracy without / with in-context examples
    alignuser-sim learn export SCENARIO        chat JSONL for fine-tuning (world model, policy)

`learn SCENARIO` is the group's default command (`learn run SCENARIO` is the same): the group treats a first
argument that is not one of its commands as the scenario of `run`. When the scenario names no
`llm.endpoints`, the embedded vLLM server is started for the command (its log: LEARNING_DIR/vllm.log).
Heavy modules are imported inside the commands, so `alignuser-sim --help` stays fast.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from alignuser_sim.cli.common import Bar, err, exit_on_interrupt, llm_client, out, reporter
from alignuser_sim.errors import UserError
from alignuser_sim.store import LearningFolder


class _DefaultRun(TyperGroup):
    """A group whose unknown first argument (or a first option other than --help) belongs to `run`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultRun,
    help="AlignUSER learning: `learn SCENARIO` (lessons), `learn worldmodel SCENARIO`, `learn export SCENARIO`.",
    no_args_is_help=True,
    add_completion=False,
)

SCENARIO_ARG = typer.Argument(..., help="Scenario YAML", metavar="SCENARIO")
USERS_OPT = typer.Option(None, "--users", min=1, help="Only the first N users of the population (quick runs).")
FOLDER_OPT = typer.Option(None, "--folder", help="Learning folder (default: the scenario's learning.folder or "
                                                 "OUTPUT_DIR/NAME/learning).")


def _scenario(path: Path, folder: Path | None, llm: bool = True):
    """The scenario; its named endpoints are checked first (before minutes of data preparation)."""
    from alignuser_sim.config import load_scenario
    from alignuser_sim.llm.endpoints import check_endpoints

    scenario = load_scenario(path)
    if folder is not None:
        scenario.learning.folder = folder
    if llm and scenario.llm.endpoints:
        check_endpoints(scenario.llm.endpoints, api_key_env=scenario.llm.api_key_env)
    return scenario


def _bar(label: str) -> Bar:
    return Bar(label, "LLM calls {task.fields[calls]:,} ({task.fields[failed]:,} failed)", calls=0, failed=0)


def _calls(bar: Bar) -> Any:
    """The learner reports the LLM accounting; the bar shows its calls and failures."""

    def on_progress(done: int, total: int | None, llm: dict[str, Any]) -> None:
        shown = {"calls": llm.get("calls", 0), "failed": llm.get("failed", 0)}
        bar(done, total, {**shown, "personas": llm["personas"]} if "personas" in llm else shown)

    return on_progress


def _interrupted(folder: Path) -> str:
    return f"interrupted: {folder} keeps what was done; run the same command again to go on"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="learning", header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in ("personas", "transitions", "transitions_this_run", "llm_calls_this_run", "llm_requests_this_run",
                "cache_hits_this_run", "calls_per_persona_this_run", "wall_s", "tastes_written",
                "alternatives_sampled", "alternatives_distinct", "alternatives_same_as_human", "reflections_skipped",
                "lessons_raw", "lessons_dropped", "lessons_written", "embedder"):
        table.add_row(key.replace("_", " "), _fmt(summary[key]))
    failures = summary["failures"]
    table.add_row("failures", ", ".join(f"{k}: {v}" for k, v in failures.items()) if failures else "0")
    return table


def _scores_table(title: str, rows: dict[str, dict[str, Any]]) -> Table:
    from alignuser_sim.learning.world_model import SCORE_KEYS

    table = Table(title=title, header_style="bold")
    table.add_column("")
    for column in ("n", "failed", *SCORE_KEYS):
        table.add_column(column.replace("_", " "), justify="right")
    for name, scores in rows.items():
        table.add_row(name, *(_fmt(scores[c]) for c in ("n", "failed", *SCORE_KEYS)))
    return table


@app.command("run")
def run(
    scenario_file: Path = SCENARIO_ARG,
    users: int | None = USERS_OPT,
    folder: Path | None = FOLDER_OPT,
) -> None:
    """Learn the population's lessons: taste, counterfactuals, world model, reflection (resumable)."""
    from alignuser_sim.api import learn

    scenario = _scenario(scenario_file, folder, llm=False)  # learn() checks the named endpoints first
    where = scenario.learning_dir()
    with exit_on_interrupt(_interrupted(where)), _bar("learning {personas:,} personas") as bar:
        summary = learn(scenario, users=users, reporter=reporter, on_progress=_calls(bar)).summary
    out.print(_summary_table(summary))
    out.print(_scores_table("world model (with examples), next-state accuracy", {
        "human actions": summary["worldmodel_human"], "counterfactual actions": summary["worldmodel_alternatives"]}))
    out.print(f"learning folder: {where}")


@app.command("worldmodel")
def worldmodel(
    scenario_file: Path = SCENARIO_ARG,
    users: int | None = USERS_OPT,
    examples: int | None = typer.Option(None, "--examples", min=1,
                                        help="In-context examples (default: learning.world_model_examples)."),
    folder: Path | None = FOLDER_OPT,
) -> None:
    """Next-state accuracy of the world model on the human transitions, without and with examples."""
    from alignuser_sim.learning.inputs import prepare
    from alignuser_sim.learning.learner import run_world_model_eval

    scenario = _scenario(scenario_file, folder)
    n = examples if examples is not None else scenario.learning.world_model_examples
    if n < 1:
        raise UserError("learning.world_model_examples: is 0; give --examples N to compare with examples")
    with err.status("loading data, replaying the training split, fitting the recommender"):
        inputs = prepare(scenario, users)
    where = scenario.learning_dir()
    with (exit_on_interrupt(_interrupted(where)), llm_client(scenario.learning_llm(), where) as llm,
          _bar("world model") as bar):
        summary = asyncio.run(run_world_model_eval(inputs, llm, n, where, on_progress=_calls(bar)))
    scores = summary["scores"]
    out.print(_scores_table(f"world model: next-state accuracy ({summary['personas']} personas)", {
        "without examples": scores[0], f"with up to {n} examples": scores[n]}))
    calls = summary["llm"].get("calls", 0)
    out.print(f"LLM calls {calls:,} in {summary['wall_s']:.1f}s; written: {where / LearningFolder.WORLD_MODEL_EVAL}")


@app.command("export")
def export(
    scenario_file: Path = SCENARIO_ARG,
    out_dir: Path | None = typer.Option(None, "--out", help="Output folder (default: LEARNING_DIR/sft)."),
    max_pages: int | None = typer.Option(None, "--max-pages", min=1,
                                         help="World-model examples: at most N human pages per persona."),
    users: int | None = USERS_OPT,
    folder: Path | None = FOLDER_OPT,
) -> None:
    """Chat JSONL for fine-tuning: world-model pretraining and policy learning ("messages" format)."""
    from alignuser_sim.learning.finetune_data import export_sft

    scenario = _scenario(scenario_file, folder, llm=False)
    result = export_sft(scenario, out_dir, max_pages=max_pages, users_limit=users)
    table = Table(title="fine-tuning data", header_style="bold")
    table.add_column("file")
    table.add_column("examples", justify="right")
    for path, count in result["files"].items():
        table.add_row(path, f"{count:,}")
    out.print(table)
    out.print(f"serve a LoRA trained on it: vllm serve BASE --enable-lora --lora-modules alignuser=ADAPTER_DIR "
              f"(see {result['readme']})")
