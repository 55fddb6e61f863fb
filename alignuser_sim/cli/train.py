"""`alignuser-sim train SCENARIO`: AlignUSER's two training stages (world model, then policy) as LoRA adapters.

Reads the scenario's learning folder (`alignuser-sim learn` first) and the training split; writes
LEARNING_DIR/adapters/ (served by `policy: alignuser+`) and a training card. Resumable: run the same command
again after an interruption and it goes on from the last checkpoint. torch, peft and trl are imported when
training starts, so `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from alignuser_sim.cli.common import err, exit_on_interrupt, out, progress_bar, table


def train_cmd(
    scenario_file: Path = typer.Argument(..., help="Scenario YAML", metavar="SCENARIO"),
    clusters: int | None = typer.Option(None, "--clusters", min=1, max=64,
                                        help="Per-persona-cluster adapters (default: the scenario's train.clusters)."),
    users: int | None = typer.Option(None, "--users", min=1, help="Only the first N users of the population."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1,
                                         help="Stop each stage after N optimizer steps (smoke tests)."),
    folder: Path | None = typer.Option(None, "--folder", help="Learning folder (default: the scenario's)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over the stages whose examples or settings changed "
                               "(an unchanged stage is kept)."),
    merge: bool = typer.Option(False, "--merge", help="Also write each adapter merged into the base model "
                               "(LEARNING_DIR/merged/NAME): CPU serving without vLLM's slow LoRA path."),
) -> None:
    """Train the policy model: stage 1 world model (next-state prediction), stage 2 the human's decisions."""
    from alignuser_sim.config import load_scenario
    from alignuser_sim.learning.adapter_merge import merge_adapters
    from alignuser_sim.learning.training import train

    scenario = load_scenario(scenario_file)
    if folder is not None:
        scenario.learning.folder = folder
    progress = progress_bar(err, "{task.fields[rate]}")
    tasks: dict[str, Any] = {}

    def on_progress(label: str, step: int, steps: int, fields: dict[str, Any]) -> None:
        if label not in tasks:
            if not tasks:
                progress.start()
            tasks[label] = progress.add_task(label, total=steps, rate="")
        seconds = fields.get("seconds") or 0
        rate = f"{fields['tokens'] / seconds:,.0f} tokens/s" if seconds else ""
        progress.update(tasks[label], completed=step, total=steps, rate=rate)

    where = scenario.learning_dir()
    try:
        with exit_on_interrupt(f"interrupted: checkpoints are kept in {where}/training; run the same command again "
                               "to resume"):
            result = train(scenario, users=users, clusters=clusters, fresh=fresh, max_steps=max_steps,
                           on_progress=on_progress, on_note=err.print)
    finally:
        progress.stop()
    rows: dict[str, object] = {}
    for stage in result.stages:
        before = f"{stage.heldout_loss_before:.3f}" if stage.heldout_loss_before is not None else "-"
        after = f"{stage.heldout_loss:.3f}" if stage.heldout_loss is not None else "-"
        rows[stage.label] = f"{stage.examples:,} examples, {stage.steps} steps, held-out loss {before} -> {after}"
    seconds = sum(s.seconds for s in result.stages)
    rows["training tokens/s"] = f"{sum(s.tokens for s in result.stages) / seconds:,.0f}" if seconds else "-"
    rows["training time"] = f"{seconds / 60:.1f} min over the stages (this command: {result.seconds / 60:.1f} min)"
    rows["adapters"] = ", ".join(result.adapters.adapters)
    out.print(table("training", rows))
    out.print(f"training card: {result.card}\nuse it: policy: alignuser+ (or eval --policies prompt-only,alignuser+)")
    if merge:
        for name, path in merge_adapters(scenario, on_note=err.print).items():
            out.print(f"merged: {path}\n  serve it on a CPU: alignuser-sim llm serve --model {path} "
                      f"--served-model-name {name} --port 8731, then eval --policies alignuser+ "
                      "--endpoint http://127.0.0.1:8731/v1 (or llm.endpoints in the scenario)")
