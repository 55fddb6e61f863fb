"""AlignUSER learning over a population: taste text, world model, counterfactual reflection, lesson memories.

    inputs = prepare(scenario)                        # learning/inputs.py: training split, rollouts, personas
    summary = asyncio.run(run_learning(inputs, llm))  # -> scenario.learning_dir(): lessons.parquet, ...

Per persona, `learning.transitions_per_persona` pages of its rollout are drawn (seeded per user); each one
is a pipeline of LLM calls: K counterfactual policy samples (reflection.py), then, side by side, one
world-model call predicting the outcomes of the human action and the alternatives (world_model.py) and one
reflection call (reflection.py). So a persona costs about T * (K + 2) calls, plus one for its taste (taste.py).

**Resumable.** Everything produced is appended to the journal (journal.py) as soon as it is produced,
keyed by (kind, persona, transition); a re-run skips what the journal holds, so Ctrl-C leaves a folder that
the next `alignuser-sim learn` completes. Calls that failed in transport (`llm.protocol.is_transient`:
timeout, connection, 5xx, 429) are not journaled and are tried again by the next run; malformed replies are
journaled as counted failures (their completion is cached anyway). The completion cache also makes a
re-run with the same seed replay the same answers. At the end the journal is consolidated into the
folder's Parquet files and `summary.json` (outputs.py). One `learn` at a time per folder (a lock file).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from alignuser_sim import store
from alignuser_sim.agent.decision import decision_format
from alignuser_sim.agent.memory import build_memory, resolve_embedder
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.agent.world_hints import hint_genres, hint_text
from alignuser_sim.core import Action, NextState, State, call_seed
from alignuser_sim.data.personas import Persona
from alignuser_sim.learning.inputs import LearningInputs
from alignuser_sim.learning.journal import Journal, action_ids
from alignuser_sim.learning.outputs import (
    SUMMARY_FILE,
    WORLD_MODEL_EVAL_FILE,
    consolidate,
    summarize,
    write_lessons,
)
from alignuser_sim.learning.reflection import (
    Reflection,
    clean_lessons,
    reflection_messages,
    reflection_seed,
    sample_alternatives,
)
from alignuser_sim.learning.taste import Taste, liked_and_disliked, taste_messages
from alignuser_sim.learning.world_model import (
    Prediction,
    Question,
    candidate_items,
    mean_scores,
    prediction_messages,
    score,
)
from alignuser_sim.llm.protocol import StructuredLLM, is_transient
from alignuser_sim.llm.schemas import json_schema_for, reply_budget
from alignuser_sim.store import LearningFolder

# --- the learner ----------------------------------------------------------------------------------------


@dataclass
class RunCounts:
    """What happened in THIS run (the journal's totals are in the summary)."""

    transitions_done: int = 0
    retry_later: Counter = field(default_factory=Counter)  # transient failures by kind: the next run retries them


class Learner:
    """The per-persona pipelines; every result goes to the journal as it is produced."""

    def __init__(self, inputs: LearningInputs, llm: StructuredLLM, journal: Journal, embedder: str = "lexical"):
        self.inputs, self.llm, self.journal, self.embedder = inputs, llm, journal, embedder
        self.cfg = inputs.scenario.learning
        self.seed = inputs.scenario.seed
        # every reply budget is its schema's worst case (none can be cut at it); the scenario's max_tokens
        # only stands in for a schema that admits unbounded replies (none of learning's does)
        self.max_tokens = inputs.scenario.llm.sampling.max_tokens
        self.taste_tokens = reply_budget(json_schema_for(Taste), fallback=self.max_tokens)
        self.reflection_tokens = reply_budget(json_schema_for(Reflection), fallback=self.max_tokens)
        self.counts = RunCounts()
        self._tastes: dict[str, asyncio.Task[str]] = {}

    # -- taste --
    async def persona(self, user_id: str) -> Persona:
        """The persona with its taste (the dataset's, or one the LLM writes from the training split)."""
        persona = self.inputs.personas[user_id]
        if persona.taste or self.cfg.taste == "off":
            return persona
        if user_id not in self._tastes:
            self._tastes[user_id] = asyncio.ensure_future(self._write_taste(persona))
        taste = await self._tastes[user_id]
        return replace(persona, taste=taste) if taste else persona

    async def _write_taste(self, persona: Persona) -> str:
        done = self.journal.get("taste", persona.user_id, -1)
        if done is not None:
            return done["taste"] or ""
        liked, disliked = liked_and_disliked(self.inputs.consumed.get(persona.user_id, []), self.inputs.views)
        result = await self.llm.call(taste_messages(persona, liked, disliked, self.inputs.domain), Taste,
                                     seed=call_seed(self.seed, "taste", persona.user_id),
                                     sampling={"max_tokens": self.taste_tokens})
        if is_transient(result.failure):
            self.counts.retry_later[result.failure] += 1
            return ""
        taste = " ".join(result.value.taste.split()) if result.value is not None else ""
        self.journal.put({"kind": "taste", "user_id": persona.user_id, "step": -1, "taste": taste,
                          "failure": result.failure})
        return taste

    def lessons_so_far(self, user_id: str, step: int) -> list[tuple[str, str]]:
        """The lessons (text, tag) this persona wrote on its transitions before `step`, oldest first."""
        out: list[tuple[str, str]] = []
        for s in self.inputs.sampled_steps(user_id):
            if s >= step:
                break
            record = self.journal.get("reflection", user_id, s)
            if record is not None:
                out.extend((x["text"], x["tag"]) for x in record["lessons"])
        return out

    def policy_agent(self, persona: Persona, state: State) -> PersonaAgent:
        """The current policy at this state: its short history is the human's; with `counterfactual_policy:
        lessons` it also holds the lessons learned so far, so the alternatives it proposes are the mistakes
        it still makes, not the ones an earlier reflection already corrected."""
        views = self.inputs.views_for(state.user_id)
        history = [(views[i].title if i in views else i, None if r is None else int(round(r)))
                   for i, r in state.history]
        agent = PersonaAgent(persona, seed=self.seed, history=history, history_size=self.inputs.history_size,
                             decision_format=decision_format(self.inputs.scenario.policy.reasoning),
                             max_tokens=self.max_tokens, domain=self.inputs.domain)
        if self.cfg.counterfactual_policy == "lessons":
            learned = self.lessons_so_far(state.user_id, state.step)
            if learned:
                agent.lessons = build_memory(state.user_id, learned, self.cfg.lessons_per_persona, self.embedder)
                agent.lessons_k = self.inputs.scenario.policy.lessons_k
        return agent

    # -- one transition: counterfactuals, then world model and reflection side by side --
    async def transition(self, user_id: str, step: int) -> bool:
        """Whether this transition's reflection is in the journal (so a later one may use its lessons)."""
        inputs = self.inputs
        state, human = inputs.state(user_id, step), inputs.human_action(user_id, step)
        persona = await self.persona(user_id)
        record = self.journal.get("counterfactuals", user_id, step)
        if record is None:
            record = await self._counterfactuals(persona, state, human)
            if record is None:
                return False
        actions = [Action.from_dict(a) for a in record["actions"]]
        truths = [NextState.from_dict(t) for t in record["truths"]]
        text = persona.describe(inputs.domain)
        await asyncio.gather(self._world_model(text, state, actions, truths),
                             self._reflect(text, state, actions, truths))
        self.counts.transitions_done += 1
        return self.journal.get("reflection", user_id, step) is not None

    async def _counterfactuals(self, persona: Persona, state: State, human: Action) -> dict[str, Any] | None:
        inputs = self.inputs
        agent = self.policy_agent(persona, state)
        views = inputs.views_for(state.user_id)  # the page as the user saw it: their own ratings not in its stats
        alts = await sample_alternatives(
            self.llm, agent, state, human, views,
            self.cfg.counterfactuals_per_step, self.cfg.counterfactual_temperature, self.seed)
        later = [f for f in alts.failures if is_transient(f)]
        if later:
            self.counts.retry_later.update(later)
            return None
        actions = [human, *alts.actions]
        truths = [inputs.truth(state, a, near=inputs.k) for a in actions]
        record = {
            "kind": "counterfactuals", "user_id": state.user_id, "step": state.step, "session": state.session,
            "page": state.page_no, "items": state.page,
            "actions": [a.to_dict() for a in actions], "truths": [t.to_dict() for t in truths],
            "hints": [hint_text(a, t, views, human=n == 0, domain=inputs.domain)
                      for n, (a, t) in enumerate(zip(actions, truths, strict=True))],
            "hint_genres": [hint_genres(state, a, views) for a in actions],
            "samples": alts.samples, "failures": alts.failures, "same_as_human": alts.same_as_human,
            "duplicates": alts.duplicates, "lessons_used": len(agent.lessons),
        }
        self.journal.put(record)
        return record

    async def _world_model(self, persona_text: str, state: State, actions: list[Action],
                           truths: list[NextState], kind: str = "worldmodel", n_examples: int | None = None) -> None:
        if self.journal.get(kind, state.user_id, state.step) is not None:
            return
        inputs = self.inputs
        n_examples = self.cfg.world_model_examples if n_examples is None else n_examples
        examples = inputs.examples(state.user_id, state.step, n_examples)
        candidates = candidate_items(truths, state, inputs.k, inputs.catalogue_ids, self.seed)
        views = inputs.views_for(state.user_id)
        question = Question.build(state, len(actions), candidates, inputs.k, views)
        messages = prediction_messages(persona_text, state, actions, question, views, examples,
                                       history_size=inputs.history_size, domain=inputs.domain)
        result = await self.llm.call(
            messages, Prediction, schema=question.schema(), sampling=question.sampling(self.max_tokens),
            seed=call_seed(self.seed, kind, state.user_id, state.step))
        if is_transient(result.failure):
            self.counts.retry_later[result.failure] += 1
            return
        predicted = question.check(result.value) if result.value is not None else [None] * len(actions)
        self.journal.put({
            "kind": kind, "user_id": state.user_id, "step": state.step, "examples": len(examples),
            "action_ids": action_ids(len(actions)), "candidates": candidates,
            "predicted": [p.to_dict() if p else None for p in predicted],
            "scores": [score(p, t) if p else None for p, t in zip(predicted, truths, strict=True)],
            "failure": result.failure,
        })

    async def _reflect(self, persona_text: str, state: State, actions: list[Action], truths: list[NextState]) -> None:
        if self.journal.get("reflection", state.user_id, state.step) is not None:
            return
        base = {"kind": "reflection", "user_id": state.user_id, "step": state.step, "alternatives": len(actions) - 1}
        if len(actions) < 2:  # the policy only did what the human did (or failed): nothing to contrast
            self.journal.put({**base, "skipped": "no_alternatives", "reasoning": None, "mistakes": None,
                              "lessons": [], "dropped": 0, "failure": None})
            return
        views = self.inputs.views_for(state.user_id)
        messages = reflection_messages(persona_text, state, actions[0], truths[0], actions[1:], truths[1:], views,
                                       history_size=self.inputs.history_size, domain=self.inputs.domain)
        result = await self.llm.call(messages, Reflection, seed=reflection_seed(self.seed, state.user_id, state.step),
                                     sampling={"max_tokens": self.reflection_tokens})
        if is_transient(result.failure):
            self.counts.retry_later[result.failure] += 1
            return
        lessons, dropped = [], 0
        if result.value is not None:  # no lesson may name an item the prompt showed (the page, the next pages)
            shown = dict.fromkeys([*state.page, *(i for t in truths for i in t.items)])
            kept, dropped = clean_lessons(result.value, [views[i] for i in shown if i in views])
            lessons = [lesson.model_dump() for lesson in kept]
        self.journal.put({
            **base, "skipped": None, "failure": result.failure,
            "reasoning": result.value.reasoning if result.value else None,
            "mistakes": result.value.mistakes if result.value else None,
            "lessons": lessons, "dropped": dropped,
        })

    # -- world-model evaluation: the human action, with and without examples --
    async def evaluate(self, user_id: str, step: int, n_examples: int) -> None:
        state, human = self.inputs.state(user_id, step), self.inputs.human_action(user_id, step)
        persona = await self.persona(user_id)
        await self._world_model(persona.describe(self.inputs.domain), state, [human], [self.inputs.truth(state, human,
                                                                                        near=self.inputs.k)],
                                kind=f"wm_eval:{n_examples}", n_examples=n_examples)
        self.counts.transitions_done += 1


Progress = Callable[[int, int, dict[str, Any]], None]


async def _drain(chains: list[list[Callable[[], Awaitable[Any]]]], workers: int, llm: StructuredLLM,
                 on_progress: Progress | None) -> None:
    """Run the chains `workers` at a time, the jobs of a chain in order, reporting (done, total, LLM
    accounting) after each job. A job that returns False ends its chain (the rest waits for the next run)."""
    total, done = sum(len(c) for c in chains), 0
    pending = list(reversed(chains))

    async def worker() -> None:
        nonlocal done
        while pending:
            for job in pending.pop():
                ok = await job()
                done += 1
                if on_progress:
                    on_progress(done, total, llm.snapshot())
                if ok is False:
                    break

    if on_progress:
        on_progress(0, total, llm.snapshot())
    await asyncio.gather(*(worker() for _ in range(max(1, min(workers, len(chains))))))


async def run_learning(inputs: LearningInputs, llm: StructuredLLM, folder: Path | None = None,
                       on_progress: Progress | None = None) -> dict[str, Any]:
    """Taste, counterfactuals, world model and reflection for every persona; then the lesson memories."""
    folder = Path(folder or inputs.scenario.learning_dir())
    embedder = resolve_embedder(inputs.scenario.learning.embedder)  # an impossible choice fails before any call
    started = time.perf_counter()
    with LearningFolder(folder).lock():
        journal = Journal(folder)
        try:
            learner = Learner(inputs, llm, journal, embedder)
            jobs = {u: [(lambda u=u, s=s: learner.transition(u, s)) for s in inputs.sampled_steps(u)]
                    for u in inputs.users}
            if inputs.scenario.learning.counterfactual_policy == "lessons":
                # a persona's transitions in order (each one's policy holds the lessons of the ones before),
                # personas side by side
                chains = list(jobs.values())
            else:
                chains = [[job] for chain in jobs.values() for job in chain]
            await _drain(chains, inputs.scenario.learning_llm().concurrency, llm, on_progress)
            consolidate(journal, folder)
            lessons = write_lessons(journal, folder, inputs.scenario.learning.lessons_per_persona, embedder)
            summary = summarize(journal, inputs.users, learner.counts.transitions_done, learner.counts.retry_later,
                                llm.snapshot(), time.perf_counter() - started, lessons=lessons, embedder=embedder)
        finally:
            journal.close()
        store.write_json(folder / SUMMARY_FILE, summary, default=str)
    return summary


async def run_world_model_eval(inputs: LearningInputs, llm: StructuredLLM, n_examples: int, folder: Path | None = None,
                               on_progress: Progress | None = None) -> dict[str, Any]:
    """Next-state accuracy on the human transitions without and with `n_examples` in-context examples."""
    folder = Path(folder or inputs.scenario.learning_dir())
    started = time.perf_counter()
    with LearningFolder(folder).lock():
        journal = Journal(folder)
        try:
            learner = Learner(inputs, llm, journal)
            jobs = [[lambda u=u, s=s, n=n: learner.evaluate(u, s, n)]
                    for u in inputs.users for s in inputs.sampled_steps(u) for n in (0, n_examples)]
            await _drain(jobs, inputs.scenario.learning_llm().concurrency, llm, on_progress)
            consolidate(journal, folder)
            users = set(inputs.users)
            result = {}
            for n in (0, n_examples):
                rows = [r for r in journal.of_kind(f"wm_eval:{n}") if r["user_id"] in users]
                result[n] = mean_scores(r["scores"][0] for r in rows)
                result[n]["mean_examples"] = round(float(np.mean([r["examples"] for r in rows])), 2) if rows else 0.0
            summary = {"examples": n_examples, "scores": result, "llm": llm.snapshot(),
                       "retry_later": dict(learner.counts.retry_later),
                       "wall_s": round(time.perf_counter() - started, 1), "personas": len(inputs.users)}
        finally:
            journal.close()
        store.write_json(folder / WORLD_MODEL_EVAL_FILE, summary, default=str)
    return summary


