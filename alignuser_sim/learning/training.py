"""`alignuser-sim train`: AlignUSER's two training stages as LoRA fine-tuning (peft, TRL's SFTTrainer).

1. World modeling: next-state prediction over the human rollouts and the counterfactual actions learning
   sampled (`training_data.world_model_examples`), so the model knows how the recommender reacts.
2. Counterfactual alignment: the policy on the human's decisions for every training page, with the
   reflection's reasoning as the thought where there is one (`training_data.policy_examples`); it starts from
   stage 1's adapter. With `--clusters N` stage 2 runs once per persona cluster (traits and taste), each from
   the same stage 1 adapter, and one vLLM serves every cluster's adapter (multi-LoRA).

The loss falls on the reply tokens only (TRL's prompt-completion format). A share of the population
(`train.heldout_users`) is kept out of training; their examples give the held-out loss of each stage.

Layout (LEARNING_DIR): `training/plan.json` (what the checkpoints were trained on: a resume with other data or
settings is refused), `training/<stage>/checkpoint-N/` (resumable, every `train.checkpoint_steps`),
`training/<stage>/adapter/` + `stage.json` once a stage is done (a re-run skips it); then
`adapters/<served name>/` (the adapters served), `adapters/adapters.json` (agent/adapters.py reads it) and
the training card: `adapters/card.md`, `card.json`, `loss.png`.

torch, transformers, peft and trl are imported when training starts: the rest of the library (and a
machine that only simulates) never needs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignuser_sim import store
from alignuser_sim.agent.adapters import AdapterSet, check_base
from alignuser_sim.config import Scenario, TrainConfig
from alignuser_sim.errors import UserError
from alignuser_sim.learning.training_card import write_card
from alignuser_sim.learning.training_data import (
    SFTExample,
)
from alignuser_sim.learning.training_set import TrainingSet, build_training_set, persona_clusters  # noqa: F401
from alignuser_sim.store import LearningFolder

PLAN_VERSION = 1
OnProgress = Callable[[str, int, int, dict[str, Any]], None]  # (stage label, step, steps, fields)


@dataclass
class StageResult:
    label: str
    examples: int
    heldout_examples: int
    steps: int
    tokens: int
    seconds: float
    heldout_loss: float | None
    heldout_loss_before: float | None
    log: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("label", "examples", "heldout_examples", "steps", "tokens", "seconds",
                                              "heldout_loss", "heldout_loss_before", "log")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageResult:
        return cls(**data)


# --- the training loop ---------------------------------------------------------------------------------------


def _require_training_libraries() -> None:
    missing = [m for m in ("torch", "transformers", "peft", "trl", "datasets")
               if __import__("importlib.util").util.find_spec(m) is None]
    if missing:
        raise UserError(f"training needs {', '.join(missing)}: run `make setup` (the cpu/gpu extras install them)")


def _base_path(base_model: str | None) -> str:
    if base_model is None:
        from alignuser_sim.llm.model_prep import model_dir, prepare_model

        return str(prepare_model() if not (model_dir() / "prepared.json").is_file() else model_dir())
    return base_model


def _latest_checkpoint(folder: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)",
                                                                                          p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def train_stage(label: str, base: str, init_adapter: Path | None, train: list[SFTExample],
                heldout: list[SFTExample], out: Path, cfg: TrainConfig, on_progress: OnProgress | None,
                max_steps: int | None = None) -> StageResult:
    """One stage with TRL's SFTTrainer on a LoRA adapter (fresh, or continuing `init_adapter`); resumes from
    the stage's last checkpoint; writes `out/adapter` and `out/stage.json` when done."""
    done = out / "stage.json"
    if done.is_file() and (out / "adapter" / "adapter_config.json").is_file():
        return StageResult.from_json(store.read_json(done))
    import datasets
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # the stage's bar is the one progress shown
    transformers.utils.logging.disable_progress_bar()
    gpu = torch.cuda.is_available()
    if not gpu:
        torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if init_adapter is not None:
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    else:
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    per_step = cfg.batch_size * cfg.gradient_accumulation
    steps = max_steps or max(1, int(np.ceil(len(train) * cfg.epochs / per_step)))
    started = time.monotonic()

    class Progress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if on_progress is not None:
                on_progress(label, state.global_step, state.max_steps,
                            {"tokens": int(state.num_input_tokens_seen or 0), "seconds": time.monotonic() - started})

    args = SFTConfig(
        output_dir=str(out), max_steps=steps, num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation, max_length=cfg.max_length,
        completion_only_loss=True, save_steps=cfg.checkpoint_steps, save_total_limit=2,
        eval_strategy="steps" if heldout and steps > cfg.eval_steps else "no", eval_steps=cfg.eval_steps,
        logging_steps=1,
        report_to="none", disable_tqdm=True, include_num_input_tokens_seen="non_padding", use_cpu=not gpu,
        bf16=dtype == torch.bfloat16, seed=0, lr_scheduler_type="cosine", warmup_steps=min(10, steps // 10),
    )
    trainer = SFTTrainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_list([e.prompt_completion() for e in train]),
        eval_dataset=Dataset.from_list([e.prompt_completion() for e in heldout]) if heldout else None,
        callbacks=[Progress()],
    )
    trainer.remove_callback(PrinterCallback)  # the progress bar reports; the card keeps the losses
    checkpoint = _latest_checkpoint(out)
    before = None
    if heldout and checkpoint is None:
        before = float(trainer.evaluate()["eval_loss"])
    elif checkpoint is not None and (out / "before.json").is_file():
        before = store.read_json(out / "before.json").get("heldout_loss")
    store.write_json(out / "before.json", {"heldout_loss": before})
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    after = float(trainer.evaluate()["eval_loss"]) if heldout else None
    trainer.save_model(str(out / "adapter"))
    state = trainer.state
    log = [{k: v for k, v in r.items() if k in ("step", "loss", "eval_loss")} for r in state.log_history]
    result = StageResult(label, len(train), len(heldout), int(state.global_step), int(state.num_input_tokens_seen or 0),
                         float(output.metrics.get("train_runtime", time.monotonic() - started)), after, before, log)
    store.write_json(done, result.to_json())
    return result


# --- the command ---------------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    adapters: AdapterSet
    stages: list[StageResult]
    card: Path
    seconds: float
    dropped: int


def _stage_keys(data: TrainingSet, cfg: TrainConfig, checksum: str, max_steps: int | None) -> dict[str, str]:
    """What each stage's checkpoints were trained on: its examples, the optimizer settings, the base model and,
    for stage 2, stage 1's key (it starts from stage 1's adapter). `--fresh` keeps a stage whose key holds."""
    settings = cfg.model_dump(mode="json", exclude={"clusters", "world_model_examples", "policy_examples",
                                                    "judgment_examples", "heldout_users", "heldout_examples"})

    def key(groups: list[list[SFTExample]], *more: Any) -> str:
        h = hashlib.sha256(json.dumps([settings, checksum, max_steps, *more], sort_keys=True).encode())
        for group in groups:
            for e in group:
                h.update(json.dumps(e.prompt_completion(), sort_keys=True).encode())
        return h.hexdigest()[:16]

    stage1 = key([data.world_model, data.heldout_world_model]) if data.world_model else "none"
    return {"stage1": stage1, "stage2": key([data.policy, data.heldout_policy], stage1, data.clusters)}


def _claim(folder: Path, plan: dict[str, Any], fresh: bool) -> None:
    """Checkpoints belong to one training set and setting: resuming with others would mix them. `fresh` starts
    over every stage whose examples or settings changed and keeps the others (a new policy set reuses a done
    world-model stage)."""
    path = folder / "plan.json"
    if fresh and folder.exists():
        old = store.read_json(path) if path.is_file() else {}
        kept = {k for k, v in old.get("stages", {}).items() if plan["stages"].get(k) == v}
        for child in folder.iterdir():
            stage = "stage2" if child.name.startswith("stage2") else child.name
            if child.is_dir() and stage not in kept:
                shutil.rmtree(child)
    if path.is_file():
        old = store.read_json(path)
        if old != plan and not fresh:
            raise UserError(f"{folder}: holds a training with other data or settings (the scenario, the learning "
                            "folder or train: changed); rerun with --fresh to start over (a stage whose data and "
                            "settings did not change is kept)")
    folder.mkdir(parents=True, exist_ok=True)
    store.write_json(path, plan)


def _served_name(adapter: Path, cluster: int | None) -> str:
    digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()[:8]
    return f"alignuser-{digest}" if cluster is None else f"alignuser-c{cluster}-{digest}"


def train(scenario: Scenario, *, users: int | None = None, clusters: int | None = None, fresh: bool = False,
          max_steps: int | None = None, on_progress: OnProgress | None = None,
          on_note: Callable[[str], None] | None = None) -> TrainingResult:
    """Both stages for the scenario's learning folder (see the module docstring); resumable."""
    from alignuser_sim.llm.model_prep import base_model_checksum

    note = on_note or (lambda _text: None)
    cfg = scenario.train
    layout = LearningFolder(scenario.learning_dir())
    if not (layout.path / LearningFolder.JOURNAL).is_file():
        raise UserError(f"{layout.path}: no learning folder (no {LearningFolder.JOURNAL}); run `alignuser-sim "
                        "learn SCENARIO` first: training learns from its counterfactuals and reflections")
    _require_training_libraries()
    n_clusters = clusters or cfg.clusters
    base = _base_path(cfg.base_model)
    checksum = base_model_checksum(cfg.base_model)
    if layout.adapters_manifest.is_file() and not fresh:
        from alignuser_sim.agent.adapters import load_adapters

        check_base(load_adapters(layout.path), cfg.base_model, checksum)
    started = time.monotonic()
    with layout.train_lock():
        note("building the training examples from the training split")
        data = build_training_set(scenario, users, n_clusters)
        if not data.policy:
            raise UserError("no training page to learn the policy from (is the population empty?)")
        plan = {"version": PLAN_VERSION, "data": data.digest(), "base": checksum, "clusters": n_clusters,
                "train": cfg.model_dump(mode="json", exclude={"clusters"}), "max_steps": max_steps,
                "stages": _stage_keys(data, cfg, checksum, max_steps)}
        _claim(layout.training, plan, fresh)
        note(f"stage 1 (world model): {len(data.world_model):,} examples; stage 2 (policy): {len(data.policy):,} "
             f"in {n_clusters} cluster(s); held-out loss on {len(data.heldout_world_model)} + "
             f"{len(data.heldout_policy)} examples of other users")
        stages = []
        init = None
        if data.world_model:
            s1 = train_stage("stage 1: world model", base, None, data.world_model, data.heldout_world_model,
                             layout.training / "stage1", cfg, on_progress, max_steps)
            stages.append(s1)
            init = layout.training / "stage1" / "adapter"
        adapters: dict[str, str] = {}
        user_names: dict[str, str] = {}
        sizes: dict[str, int] = {}
        staging = layout.path / (LearningFolder.ADAPTERS + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for c in range(n_clusters):
            members = {u for u, k in data.clusters.items() if k == c}
            mine = [e for e in data.policy if e.user_id in members]
            if not mine:
                continue
            label = "stage 2: policy" + (f" (cluster {c + 1}/{n_clusters})" if n_clusters > 1 else "")
            sub = layout.training / ("stage2" if n_clusters == 1 else f"stage2-c{c}")
            result = train_stage(label, base, init, mine, data.heldout_policy, sub, cfg, on_progress, max_steps)
            stages.append(result)
            name = _served_name(sub / "adapter", None if n_clusters == 1 else c)
            shutil.copytree(sub / "adapter", staging / name)
            adapters[name] = name
            sizes[name] = len(members)
            user_names.update(dict.fromkeys(sorted(members), name))
        default = max(sizes, key=lambda n: sizes[n])
        manifest = AdapterSet(layout.adapters, cfg.base_model, checksum, adapters,
                              user_names if n_clusters > 1 else {}, default, cfg.lora_r)
        seconds = time.monotonic() - started
        write_card(staging, scenario, manifest, stages, data, seconds, base)
        store.write_json(staging / LearningFolder.ADAPTERS_MANIFEST, manifest.to_json())
        old = layout.path / (LearningFolder.ADAPTERS + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if layout.adapters.exists():
            layout.adapters.rename(old)
        staging.rename(layout.adapters)
        shutil.rmtree(old, ignore_errors=True)
    return TrainingResult(manifest, stages, layout.adapters / "card.md", seconds, data.dropped)
