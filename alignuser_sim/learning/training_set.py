"""What each training stage learns from, built from the scenario's learning folder and the training split.

Stage 1: world-model examples over the human's and the counterfactual transitions; stage 2: the human's
decisions on rollout pages and judgment examples (eval-shaped pages from training-split positives and
never-touched negatives), in the prompts `alignuser+` builds. Held-out users give the held-out loss.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignuser_sim.agent.decision import decision_format
from alignuser_sim.agent.memory import load_lesson_memories
from alignuser_sim.agent.policy import PolicySetup, load_tastes
from alignuser_sim.agent.rating import RATING_FORMATS
from alignuser_sim.agent.world_hints import load_world_model_context
from alignuser_sim.config import PolicyConfig, Scenario
from alignuser_sim.core import user_rng
from alignuser_sim.data import load_dataset
from alignuser_sim.data.domain import dataset_domain
from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.data.taste_probes import build_cases
from alignuser_sim.learning.inputs import LearningInputs, heldout_items, prepare
from alignuser_sim.learning.journal import Journal
from alignuser_sim.learning.training_data import (
    SFTExample,
    judgment_examples,
    policy_examples,
    world_model_examples,
)

PURPOSE_TRAIN_SPLIT = 401  # core.user_rng purposes: the held-out-loss users
PURPOSE_TRAIN_SAMPLE = 402  # which examples fit the caps
PURPOSE_TRAIN_CASES = 410  # added to the evaluation's purposes: training's judgment cases (data/taste_probes.py)


# --- what is trained on --------------------------------------------------------------------------------------


@dataclass
class TrainingSet:
    world_model: list[SFTExample]
    policy: list[SFTExample]
    heldout_world_model: list[SFTExample]
    heldout_policy: list[SFTExample]
    clusters: dict[str, int]  # user -> cluster
    dropped: int  # world-model examples that would have shown a held-out item

    def digest(self) -> str:
        h = hashlib.sha256()
        for group in (self.world_model, self.policy, self.heldout_world_model, self.heldout_policy):
            for e in group:
                h.update(json.dumps(e.prompt_completion(), sort_keys=True).encode())
        h.update(json.dumps(self.clusters, sort_keys=True).encode())
        return h.hexdigest()[:16]


def _capped(examples: list[SFTExample], cap: int, seed: int) -> list[SFTExample]:
    """At most `cap` examples, drawn evenly over the population (seeded), in a stable order."""
    if len(examples) <= cap:
        return examples
    rng = np.random.default_rng([seed, PURPOSE_TRAIN_SAMPLE])
    keep = sorted(int(i) for i in rng.choice(len(examples), size=cap, replace=False))
    return [examples[i] for i in keep]


def persona_clusters(inputs: LearningInputs, personas: dict[str, Any], n: int, seed: int) -> dict[str, int]:
    """Users grouped by persona traits (activity, diversity, conformity) and taste (the genre shares of their
    training interactions): k-means on standardized features. One cluster when n == 1."""
    users = list(inputs.users)
    if n <= 1 or len(users) <= n:
        return dict.fromkeys(users, 0) if n <= 1 else {u: i % n for i, u in enumerate(users)}
    from sklearn.cluster import KMeans

    genres = sorted({g for v in inputs.views.values() for g in v.genres})
    column = {g: i for i, g in enumerate(genres)}
    rows = []
    for uid in users:
        p = personas[uid]
        shares = np.zeros(len(genres))
        for item, _rating, _liked in inputs.consumed.get(uid, []):
            view = inputs.views.get(item)
            for g in view.genres if view else ():
                shares[column[g]] += 1
        shares = shares / shares.sum() if shares.sum() else shares
        rows.append([p.activity, p.diversity, p.conformity or 0, *shares])
    x = np.array(rows, dtype=float)
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1)
    labels = KMeans(n_clusters=n, n_init=10, random_state=seed).fit_predict(x)
    return {u: int(c) for u, c in zip(users, labels, strict=True)}


def trained_policy(scenario: Scenario) -> PolicyConfig:
    """The policy the adapter is trained for and served under: the scenario's when it is alignuser+ (its
    ablation switches kept), else alignuser+ with the scenario's retrieval sizes and decision format. Its
    prompts (lessons and world-model lines included) are the ones the examples are written in."""
    if scenario.policy.kind == "alignuser+":
        return scenario.policy
    kept = scenario.policy.model_dump(include={"lessons_k", "world_model_k", "history_size", "reasoning", "choice"})
    return PolicyConfig(kind="alignuser+", **kept)


def build_training_set(scenario: Scenario, users_limit: int | None = None, clusters: int = 1) -> TrainingSet:
    """The two stages' examples from the learning folder and the training split, split by user into training
    and held-out-loss examples, capped by `train.*_examples`."""
    cfg = scenario.train
    folder = scenario.learning_dir()
    inputs = prepare(scenario, users_limit)
    journal = Journal(folder, write=False)
    config = trained_policy(scenario)
    setup = PolicySetup(config, tastes=load_tastes(folder, inputs.users), max_tokens=scenario.llm.sampling.max_tokens,
                        domain=dataset_domain(scenario.dataset))
    if config.use_lessons:
        setup.lessons = load_lesson_memories(folder, inputs.users, embedder=scenario.learning.embedder)
    if config.use_world_model:
        setup.world_model = load_world_model_context(folder, inputs.users)
    personas = {u: setup.persona(p) for u, p in inputs.personas.items()}
    held = {u for u in inputs.users
            if user_rng(scenario.seed, u, PURPOSE_TRAIN_SPLIT).random() < cfg.heldout_users}
    if len(held) == len(inputs.users):  # a tiny population: keep one user for training
        held.discard(inputs.users[0])
    wm, dropped = world_model_examples(inputs, journal, personas, heldout_items(scenario, inputs.users),
                                       domain=setup.domain)
    policy = policy_examples(inputs, journal, personas, domain=setup.domain, setup=setup)
    judgment = _judgment(scenario, inputs, setup) if cfg.judgment_examples else []
    groups = persona_clusters(inputs, inputs.personas, clusters, scenario.seed)

    def part(examples: list[SFTExample], cap: int, heldout: bool) -> list[SFTExample]:
        chosen = [e for e in examples if (e.user_id in held) == heldout]
        return _capped(chosen, cfg.heldout_examples if heldout else cap, scenario.seed)

    return TrainingSet(part(wm, cfg.world_model_examples, False),
                       part(policy, cfg.policy_examples, False) + part(judgment, cfg.judgment_examples, False),
                       part(wm, 0, True), part(policy + judgment, 0, True), groups, dropped)


def _judgment(scenario: Scenario, inputs: LearningInputs, setup: PolicySetup) -> list[SFTExample]:
    """The evaluation's questions on training items (`training_data.judgment_examples`): cases drawn from the
    training split like the evaluation draws its own from the held-out one, with the evaluation's negatives
    of each user left out (an item the evaluation shows as "never touched" is not taught as skipped)."""
    ds = load_dataset(scenario.dataset)
    train, heldout = split_dataset(ds)
    ev = scenario.eval
    asked, _ = build_cases(ds, heldout, inputs.users, ev.positives_per_user, scenario.seed)
    cases, _ = build_cases(ds, train.interactions, inputs.users, ev.positives_per_user, scenario.seed,
                           salt=PURPOSE_TRAIN_CASES, exclude={c.user_id: set(c.negatives) for c in asked})
    ratings = {u: {i: r for i, r, _liked in inputs.consumed.get(u, []) if r is not None} for u in inputs.users}
    agents = {c.user_id: setup.agent(inputs.personas[c.user_id], seed=scenario.seed, history_size=0) for c in cases}
    return judgment_examples(cases, agents, inputs.views_for, sorted(set(ev.ratios)), ev.items_per_page, scenario.seed,
                             ratings, decision_format(setup.config.reasoning), RATING_FORMATS[setup.config.reasoning])
