"""The policy setting: what a simulated user's prompt holds besides its persona.

`prompt-only` (the Agent4Rec-style baseline) gives the agent its persona and nothing learned;
`alignuser` adds the persona's lesson memory (retrieved per page) and its world-model context, both read
from the scenario's learning folder (`alignuser-sim learn`); `popularity` is the no-LLM reference user
(`agent/reference_policy.py`), built from the training split's statistics. The simulation, the micro evaluation and the
comparison all build their agents through `PolicySetup`, so a switch in the scenario changes every one of
them the same way (ablations: `policy.lessons` / `policy.world_model`).

A `PolicySetup` is plain data (picklable): the driver loads it once and ships each shard its agents' part,
so shards on other nodes need no shared file system. Its config also names the agents' decision format
(`policy.reasoning`, `agent/decision.py`) and how it chooses (`policy.choice`: `score` asks per item,
`agent/item_scoring.py`). Everything it reads from the learning folder (tastes,
lessons, world-model hints) is read by agent code, never by importing learning: learning writes those files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from alignuser_sim.agent.adapters import check_base, load_adapters
from alignuser_sim.agent.decision import decision_format
from alignuser_sim.agent.item_scoring import ScoringAgent
from alignuser_sim.agent.memory import load_lesson_memories
from alignuser_sim.agent.persona_agent import (
    MAX_TOKENS,
    LessonMemory,
    NoLessons,
    NoWorldModel,
    PersonaAgent,
    WorldModelContext,
)
from alignuser_sim.agent.rating import RATING_FORMATS
from alignuser_sim.agent.reference_policy import PopularityAgent
from alignuser_sim.agent.world_hints import load_world_model_context
from alignuser_sim.config import PolicyConfig, Scenario
from alignuser_sim.core import MOVIES, Domain
from alignuser_sim.data.domain import dataset_domain
from alignuser_sim.data.personas import Persona
from alignuser_sim.data.training_stats import TrainingStats, training_stats
from alignuser_sim.errors import UserError
from alignuser_sim.store import LearningFolder

TASTES_FILE = LearningFolder.TASTES


def load_tastes(folder: Path, user_ids: list[str]) -> dict[str, str]:
    """LLM-written taste text of `user_ids` from a learning folder ({} when none was written). Learning writes
    the file (`learning/taste.py`); it is read here so that agents never import learning."""
    path = Path(folder) / TASTES_FILE
    if not path.is_file():
        return {}
    wanted = set(user_ids)
    return {r["user_id"]: r["taste"] for r in pq.read_table(path, columns=["user_id", "taste"]).to_pylist()
            if r["user_id"] in wanted and r["taste"]}


@dataclass
class PolicySetup:
    config: PolicyConfig
    lessons: dict[str, LessonMemory] = field(default_factory=dict)
    world_model: dict[str, WorldModelContext] = field(default_factory=dict)
    tastes: dict[str, str] = field(default_factory=dict)
    max_tokens: int = MAX_TOKENS  # the scenario's `llm.sampling.max_tokens`: the budget of an unbounded reply
    domain: Domain = MOVIES  # the words of the agents' prompts (the scenario's `dataset.domain`)
    models: dict[str, str] = field(default_factory=dict)  # user -> the adapter's served name (alignuser+)
    adapter_paths: dict[str, Path] = field(default_factory=dict)  # served name -> adapter folder (to serve)
    reference: TrainingStats | None = None  # the popularity policy's knowledge (no LLM); `choice: score`'s rates

    @classmethod
    def prompt_only(cls) -> PolicySetup:
        return cls(PolicyConfig())

    @classmethod
    def for_scenario(cls, scenario: Scenario, user_ids: list[str]) -> PolicySetup:
        """Load what the scenario's policy needs for these users from its learning folder."""
        config = scenario.policy
        folder = scenario.learning_dir()
        setup = cls(config, max_tokens=scenario.llm.sampling.max_tokens, domain=dataset_domain(scenario.dataset))
        if not config.uses_llm or config.choice == "score":  # both decide how many from the human's training
            from alignuser_sim.data import load_dataset

            setup.reference = training_stats(load_dataset(scenario.dataset), user_ids, scenario.pages, scenario.seed)
        if not config.uses_llm:
            return setup
        needs_learning = config.use_lessons or config.use_world_model
        if needs_learning and not folder.is_dir():
            raise UserError(
                f"policy '{config.label}' needs the learning folder {folder}, which does not exist: "
                f"run `alignuser-sim learn SCENARIO` first (or set policy: prompt-only)")
        if folder.is_dir():
            setup.tastes = load_tastes(folder, user_ids)
        if config.use_lessons:
            setup.lessons = load_lesson_memories(folder, user_ids, embedder=scenario.learning.embedder)
        if config.use_world_model:
            setup.world_model = load_world_model_context(folder, user_ids)
        if config.use_adapter:
            setup.use_adapters(scenario, user_ids)
        return setup

    def use_adapters(self, scenario: Scenario, user_ids: list[str]) -> None:
        """Each user asks its cluster's trained adapter. Served by the embedded server or the replicas, the
        adapters must have been trained on the model they serve (checked); external endpoints must serve
        them under these names themselves (docs/learning.md)."""
        from alignuser_sim.llm.model_prep import base_model_checksum

        adapters = load_adapters(scenario.learning_dir())
        if not scenario.llm.endpoints:
            serving = scenario.serve.model if scenario.serve.replicas else None
            check_base(adapters, serving, base_model_checksum(serving))
        self.models = {u: adapters.name_for(u) for u in user_ids}
        self.adapter_paths = adapters.paths()

    def subset(self, user_ids: list[str]) -> PolicySetup:
        """The part of the setup one shard needs."""
        keep = set(user_ids)
        return PolicySetup(
            self.config,
            {u: m for u, m in self.lessons.items() if u in keep},
            {u: w for u, w in self.world_model.items() if u in keep},
            {u: t for u, t in self.tastes.items() if u in keep},
            self.max_tokens,
            domain=self.domain,
            models={u: m for u, m in self.models.items() if u in keep},
            adapter_paths=dict(self.adapter_paths),
            reference=self.reference.for_users(user_ids) if self.reference is not None else None,
        )

    def persona(self, persona: Persona) -> Persona:
        """The persona with its LLM-written taste where the dataset gave none."""
        taste = self.tastes.get(persona.user_id)
        return replace(persona, taste=taste) if taste and not persona.taste else persona

    def agent(self, persona: Persona, **kwargs: Any) -> PersonaAgent:
        """The persona's agent under this policy (`kwargs` go to PersonaAgent: seed, or a history_size other than
        the policy's; `rating_format=None` where the ratings are asked separately, as the evaluation does)."""
        uid = persona.user_id
        kwargs.setdefault("history_size", self.config.history_size)
        if not self.config.uses_llm:
            return PopularityAgent(self.persona(persona), domain=self.domain, stats=self.reference, **kwargs)
        kwargs.setdefault("rating_format", RATING_FORMATS[self.config.reasoning] if self.config.rate_watched else None)
        if self.config.choice == "score":
            kwargs["stats"] = self.reference
        return (ScoringAgent if self.config.choice == "score" else PersonaAgent)(
            self.persona(persona),
            lessons=self.lessons.get(uid, NoLessons()) if self.config.use_lessons else NoLessons(),
            lessons_k=self.config.lessons_k,
            world_model=self.world_model.get(uid, NoWorldModel()) if self.config.use_world_model else NoWorldModel(),
            world_model_k=self.config.world_model_k,
            decision_format=decision_format(self.config.reasoning),
            max_tokens=self.max_tokens,
            domain=self.domain,
            model=self.models.get(uid),
            **kwargs,
        )


def serve_adapters(scenario: Scenario, *setups: PolicySetup) -> None:
    """Name the policies' adapters in the scenario's `llm.adapters`, so the embedded server and the replicas
    started for it load them (an adapter the scenario names itself is kept)."""
    for setup in setups:
        for name, path in setup.adapter_paths.items():
            scenario.llm.adapters.setdefault(name, path)
