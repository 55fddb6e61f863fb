"""The knobs of what measures and trains the simulated users: `eval:` (and `compare`), `train:`, `judge:`."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator

from alignuser_sim.config.base import Seed, Strict
from alignuser_sim.config.params import recommender_name_problem


class EvalConfig(Strict):
    """Micro evaluation (`alignuser-sim eval`): held-out pages of rated items mixed with never-rated ones."""

    ratios: list[Annotated[int, Field(ge=1, le=9)]] = Field(default_factory=lambda: [1, 2, 3, 9])
    users: Annotated[int, Field(gt=0)] | None = Field(default=None, description="None: the whole population")
    positives_per_user: Annotated[int, Field(gt=0, le=50)] = 4
    items_per_page: Annotated[int, Field(ge=2, le=50)] = 10
    bootstrap: Annotated[int, Field(ge=0, le=100_000)] = 1000
    recommenders: list[str] = Field(
        default_factory=lambda: ["random", "pop", "itemknn", "mf", "lightgcn"],
        description="`alignuser-sim compare`: the recommenders ranked: built-ins, plug-ins (import path or "
                    "entry-point name; defaults params) and http (the scenario's own `recommender:` section)")

    @field_validator("recommenders")
    @classmethod
    def _recommender_names(cls, value: list[str]) -> list[str]:
        for name in value:
            problem = recommender_name_problem(name)
            if problem:
                raise ValueError(problem)
        return value
    k: Annotated[int, Field(gt=0, le=1000)] = 20
    flush_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=1.0, description="How often finished decisions are written as a Parquet part")


class TrainConfig(Strict):
    """`alignuser-sim train`: AlignUSER's two stages as LoRA fine-tuning of the policy model (learning/training.py).

    Defaults are sized for the embedded model on 2 CPU cores: about 1,200 examples of ~350 tokens at ~145
    training tokens/s, about an hour for ML-1M. On a GPU raise the caps and the batch (docs/learning.md)."""

    base_model: str | None = Field(default=None, description="Hugging Face model folder or hub name the adapter "
                                   "is trained on and served beside; None: the embedded model")
    world_model_examples: Annotated[int, Field(ge=0, le=10_000_000)] = Field(
        default=400, description="Stage 1 (next-state prediction) examples at most, drawn over the population")
    policy_examples: Annotated[int, Field(ge=0, le=10_000_000)] = Field(
        default=400, description="Stage 2 (the human's decision on a training page) examples at most")
    judgment_examples: Annotated[int, Field(ge=0, le=10_000_000)] = Field(
        default=400, description="Stage 2 examples of the evaluation's questions on TRAINING items (pages at "
        "eval.ratios and eval.items_per_page, the rating call) at most; 0: none (learning/training_data.py)")
    heldout_users: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.1, description="Share of the population whose examples are kept out for the held-out loss")
    heldout_examples: Annotated[int, Field(ge=0, le=100_000)] = Field(
        default=32, description="Held-out examples per stage for the held-out loss (evaluated before and after)")
    epochs: Annotated[float, Field(gt=0, le=100)] = 1.0
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 2e-4
    batch_size: Annotated[int, Field(gt=0, le=4096)] = 4
    gradient_accumulation: Annotated[int, Field(gt=0, le=4096)] = 1
    max_length: Annotated[int, Field(gt=16, le=131_072)] = Field(default=1024, description="Tokens per example")
    lora_r: Annotated[int, Field(gt=0, le=512)] = 16
    lora_alpha: Annotated[int, Field(gt=0, le=1024)] = 32
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    checkpoint_steps: Annotated[int, Field(gt=0, le=1_000_000)] = Field(
        default=25, description="A resumable checkpoint every this many optimizer steps")
    eval_steps: Annotated[int, Field(gt=0, le=1_000_000)] = Field(
        default=50, description="Held-out loss every this many steps (and at each stage's end)")
    clusters: Annotated[int, Field(ge=1, le=64)] = Field(
        default=1, description="Per-persona-cluster adapters: stage 2 once per cluster of personas (traits and "
        "taste), all served by one vLLM (multi-LoRA)")


class JudgeConfig(Strict):
    """The human-likeness judge and thought-action consistency (`alignuser-sim judge`): which model judges."""

    model: str | None = Field(default=None, description="Judge model's served name; None: the scenario's llm.model")
    endpoints: list[str] = Field(
        default_factory=list, description="OpenAI-compatible base URLs of the judge; empty: the scenario's "
        "llm.endpoints, or the embedded server")
    sessions: Annotated[int, Field(gt=0, le=1_000_000)] = Field(
        default=50, description="Sessions judged per side (simulated, human), one per user")
    seed: Seed | None = Field(default=None, description="Which users are judged; None: the scenario's seed")

    @field_validator("endpoints", mode="before")
    @classmethod
    def _one_endpoint(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"^https?://", url):
                raise ValueError(f"'{url}' is not an http(s) URL")
        return value
