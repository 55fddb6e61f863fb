"""The `learning:` block of a scenario: how `learn` draws transitions, counterfactuals and lessons."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from alignuser_sim.config.base import Strict


class LearningConfig(Strict):
    """AlignUSER learning from the human rollouts (`alignuser-sim learn`)."""

    transitions_per_persona: Annotated[int, Field(gt=0)] = 4
    counterfactuals_per_step: Annotated[int, Field(ge=0, le=16)] = 3
    lessons_per_persona: Annotated[int, Field(gt=0, le=500)] = Field(
        default=20, description="Size cap of a persona's lesson memory (eviction rule: see memory.py)")
    counterfactual_temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    counterfactual_policy: Literal["lessons", "prompt-only"] = Field(
        default="lessons",
        description="Who proposes the counterfactual actions: the persona with the lessons it learned on its "
                    "earlier transitions (lessons; a persona's transitions then run in order), or the bare "
                    "persona prompt (prompt-only; transitions run independently)")
    world_model_examples: Annotated[int, Field(ge=0, le=16)] = Field(
        default=2, description="In-context (state, action) -> next state examples per world-model prompt")
    embedder: Literal["auto", "minilm", "lexical"] = Field(
        default="auto", description="Lesson retrieval: all-MiniLM-L6-v2 if installed (auto), else lexical")
    taste: Literal["auto", "off"] = Field(
        default="auto", description="auto: the LLM writes taste text for personas without one (training split)")
    folder: Path | None = Field(default=None, description="Learning folder; None: OUTPUT_DIR/NAME/learning")
    concurrency: Annotated[int, Field(gt=0, le=4096)] | None = Field(
        default=8,
        description="LLM requests in flight during `learn` (at most llm.concurrency); None: llm.concurrency. "
                    "Reflections are long replies: on a 2-core CPU server, 32-64 of them in flight share ~90 "
                    "tokens/s, pass llm.timeout_s and are sent again from scratch. Raise it for a GPU server")
