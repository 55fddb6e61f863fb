"""The training card written beside the adapters: what was trained on, how it went, what it is.

card.md for people, card.json for tools, loss.png for the loss curves of every stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alignuser_sim import store
from alignuser_sim.agent.adapters import AdapterSet
from alignuser_sim.config import Scenario
from alignuser_sim.learning.training_data import POLICY, WORLD_MODEL

if TYPE_CHECKING:
    from alignuser_sim.learning.training import StageResult
    from alignuser_sim.learning.training_set import TrainingSet


def write_card(folder: Path, scenario: Scenario, adapters: AdapterSet, stages: list[StageResult], data: TrainingSet,
               seconds: float, base: str) -> None:
    """The training card: what was trained on, how it went, what it is (card.md, card.json, loss.png)."""
    tokens = sum(s.tokens for s in stages)
    train_seconds = sum(s.seconds for s in stages)
    card = {
        "scenario": scenario.name, "dataset": scenario.dataset.name, "reasoning": scenario.policy.reasoning,
        "base_model": adapters.base_model or "embedded (SmolLM2-135M-Instruct)", "base_path": base,
        "base_checksum": adapters.base_checksum, "adapters": adapters.adapters, "default": adapters.default,
        "clusters": len(adapters.adapters), "examples": {WORLD_MODEL: len(data.world_model), POLICY: len(data.policy)},
        "heldout_examples": {WORLD_MODEL: len(data.heldout_world_model), POLICY: len(data.heldout_policy)},
        "dropped_for_heldout_items": data.dropped, "wall_s": round(seconds, 1), "train_s": round(train_seconds, 1),
        "tokens": tokens, "tokens_per_s": round(tokens / train_seconds, 1) if train_seconds else None,
        "lora": {"r": scenario.train.lora_r, "alpha": scenario.train.lora_alpha},
        "stages": [{k: v for k, v in s.to_json().items() if k != "log"} for s in stages],
    }
    store.write_json(folder / "card.json", card)
    _plot_losses(stages, folder / "loss.png")
    lines = [f"# Training card: {scenario.name}", "",
             f"- base model: {card['base_model']} (sha256 {adapters.base_checksum[:16]}...)",
             f"- examples: stage 1 (world model) {len(data.world_model):,}, stage 2 (policy) {len(data.policy):,}; "
             f"held-out users' examples {len(data.heldout_world_model)} + {len(data.heldout_policy)}; "
             f"{data.dropped} world-model examples dropped because they showed a held-out item",
             f"- training time {train_seconds / 60:.1f} min over the stages (the last command took "
             f"{seconds / 60:.1f} min; a stage whose settings did not change is kept from an earlier run), "
             f"{tokens:,} training tokens, {card['tokens_per_s']} tokens/s",
             f"- LoRA r={scenario.train.lora_r}, alpha={scenario.train.lora_alpha}",
             f"- adapters: {', '.join(adapters.adapters)}", "",
             "| stage | examples | steps | held-out loss before | after |", "|---|---:|---:|---:|---:|"]
    for s in stages:
        lines.append(f"| {s.label} | {s.examples:,} | {s.steps} | {_loss(s.heldout_loss_before)} | "
                     f"{_loss(s.heldout_loss)} |")
    lines += ["", "![loss curves](loss.png)", ""]
    store.write_text(folder / "card.md", "\n".join(lines))


def _loss(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def _plot_losses(stages: list[StageResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(4.5 * max(1, len(stages)), 3.2), squeeze=False)
    for ax, s in zip(axes[0], stages, strict=False):
        train = [(r["step"], r["loss"]) for r in s.log if "loss" in r]
        held = [(r["step"], r["eval_loss"]) for r in s.log if "eval_loss" in r]
        if s.heldout_loss_before is not None:  # before training: step 0
            held = [(0, s.heldout_loss_before), *held]
        if train:
            ax.plot(*zip(*train, strict=True), lw=1, label="training loss")
        if held:
            ax.plot(*zip(*held, strict=True), "o-", label="held-out loss")
        ax.set_title(s.label, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
