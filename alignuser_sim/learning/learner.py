"""AlignUSER learning over a population: taste text, world model, counterfactual reflection, lesson memories.

    inputs = prepare(scenario)                        # training split, rollouts, personas, fitted recommender
    summary = asyncio.run(run_learning(inputs, llm))  # -> scenario.learning_dir(): lessons.parquet, ...

What learning sees: the TRAINING split only (`data.holdout.split_dataset`): the human rollouts are built
from it, the recommender that gives the true transitions is fitted on it, and taste text is written from
it. Per persona, `learning.transitions_per_persona` pages of its rollout are drawn (seeded per user); each
one is a pipeline of LLM calls: K counterfactual policy samples (alignment.py), then, side by side, one
world-model call predicting the outcomes of the human action and the alternatives (worldmodel.py) and one
reflection call (alignment.py). So a persona costs about T * (K + 2) calls, plus one for its taste.

**Resumable.** Everything produced is appended to `journal.jsonl` in the learning folder as soon as it is
produced, keyed by (kind, persona, transition); a re-run skips what the journal holds, so Ctrl-C leaves a
folder that the next `alignuser-sim learn` completes. Calls that failed in transport (timeout, connection,
5xx, 429) are not journaled and are tried again by the next run; malformed replies are journaled as counted
failures (their completion is cached anyway). The completion cache also makes a re-run with the same seed
replay the same answers. At the end the journal is consolidated into Parquet files (`transitions`,
`worldmodel_predictions`, `reflections`, `tastes`, `lessons`) and `summary.json`. One `learn` at a time
per folder (a lock file).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from alignuser_sim import store
from alignuser_sim.agent.memory import LESSONS_FILE, build_memory, resolve_embedder, write_memories
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.config import Scenario
from alignuser_sim.core import (
    PURPOSE_LEARN_TRANSITIONS,
    Action,
    ItemView,
    NextState,
    State,
    call_seed,
    short_title,
    user_rng,
)
from alignuser_sim.data.personas import Persona
from alignuser_sim.errors import UserError
from alignuser_sim.learning.reflection import (
    Reflection,
    clean_lessons,
    reflection_messages,
    reflection_seed,
    sample_alternatives,
)
from alignuser_sim.learning.world_model import (
    MAX_GENRES,
    TRANSITIONS_FILE,
    Example,
    Prediction,
    candidate_genres,
    candidate_items,
    check_prediction,
    hint_genres,
    hint_text,
    labels_for,
    mean_scores,
    prediction_messages,
    prediction_schema,
    score,
    true_next_state,
)
from alignuser_sim.llm.prompts import build_messages

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.jsonl"
TASTES_FILE = "tastes.parquet"
PREDICTIONS_FILE = "worldmodel_predictions.parquet"
REFLECTIONS_FILE = "reflections.parquet"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".learn.lock"
TASTE_MAX = 300
# replies bounded by their schema need no more tokens than this (a smaller max_tokens also keeps prompt +
# max_tokens within a small server's context: vLLM rejects a request that could overflow it)
REFLECTION_MAX_TOKENS = 600
TASTE_MAX_TOKENS = 200


def world_model_sampling(max_tokens: int, labels: Sequence[str], candidates: Sequence[str],
                         genres: Sequence[str]) -> dict[str, Any]:
    """Greedy (a predictor, not a persona: its most likely answer); room for the schema's longest reply (no
    free text in it: ids, booleans, genre names), sized from its compact JSON: long ids (Amazon's ten-digit
    ISBNs) need more tokens than MovieLens's short ones. SmolLM2 measured ~2 characters per token on such
    replies; 1.5 leaves a margin."""
    longest = sorted(genres, key=len, reverse=True)[:MAX_GENRES]
    reply = {"outcomes": {label: {"next": dict.fromkeys(candidates, False), "genres": longest, "continues": False}
                          for label in labels}}
    chars = len(json.dumps(reply, separators=(",", ":")))
    return {"temperature": 0.0, "max_tokens": min(max_tokens, 32 + math.ceil(chars / 1.5))}


# --- taste text -----------------------------------------------------------------------------------------

TASTE_SYSTEM = (
    "You write the taste profile of a real user of a recommender system from the items they liked and "
    "disliked. Write 2 or 3 sentences in the second person (\"You love ...\"): genres, moods, eras, and what "
    "they avoid. Name at most two titles. Answer with JSON only, in plain ASCII."
)


class Taste(BaseModel):
    model_config = ConfigDict(extra="forbid")
    taste: str = Field(max_length=TASTE_MAX)


def taste_messages(persona: Persona, liked: list[ItemView], disliked: list[ItemView]) -> list[dict[str, str]]:
    def lines(views: list[ItemView]) -> str:
        return "; ".join(short_title(v) + (f" ({', '.join(v.genres[:2])})" if v.genres else "") for v in views)

    parts = [f"Liked: {lines(liked)}" if liked else "Liked: nothing recorded"]
    if disliked:
        parts.append(f"Disliked: {lines(disliked)}")
    return build_messages(TASTE_SYSTEM, "\n".join(parts) + "\nWrite the taste profile.",
                          persona=persona.describe())


def load_tastes(folder: Path, user_ids: list[str]) -> dict[str, str]:
    """LLM-written taste text of `user_ids` from a learning folder ({} when none was written)."""
    path = Path(folder) / TASTES_FILE
    if not path.is_file():
        return {}
    wanted = set(user_ids)
    return {r["user_id"]: r["taste"] for r in pq.read_table(path, columns=["user_id", "taste"]).to_pylist()
            if r["user_id"] in wanted and r["taste"]}


# --- inputs ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One page of a human rollout."""

    step: int
    session: int
    page_no: int
    items: list[str]
    watched: dict[str, float | None]
    exit: bool


@dataclass
class LearningInputs:
    """Everything learning reads, built once from the scenario (`prepare`)."""

    scenario: Scenario
    users: list[str]
    personas: dict[str, Persona]
    steps: dict[str, list[Step]]
    views: dict[str, ItemView]
    catalogue_ids: list[str]
    consumed: dict[str, list[tuple[str, float | None, bool | None]]]  # training interactions, oldest first
    recommender: Any = None  # fitted on the training split (None: `prepare(fit=False)`, export only)

    @property
    def k(self) -> int:
        return self.scenario.pages.items_per_page

    def state(self, user_id: str, step: int) -> State:
        steps = self.steps[user_id]
        here = steps[step]
        history = [(i, r) for s in steps[:step] for i, r in s.watched.items()]
        future = frozenset(i for s in steps[step + 1:] for i in s.watched)
        return State(user_id, step, here.session, here.page_no, history, list(here.items), future)

    def human_action(self, user_id: str, step: int) -> Action:
        here = self.steps[user_id][step]
        return Action.of(here.watched, here.exit)

    def sampled_steps(self, user_id: str) -> list[int]:
        """The transitions learned from, drawn per user (seeded by scenario seed and user id)."""
        n = len(self.steps[user_id])
        want = min(self.scenario.learning.transitions_per_persona, n)
        rng = user_rng(self.scenario.seed, user_id, PURPOSE_LEARN_TRANSITIONS)
        return sorted(int(s) for s in rng.choice(n, size=want, replace=False))

    def example_steps(self, user_id: str, step: int, n: int) -> list[int]:
        """In-context examples: the persona's `n` transitions just before this one (its experience so far;
        later ones would show pages built from its future). The first pages get fewer, or none."""
        return list(range(max(0, step - n), step))

    def truth(self, state: State, action: Action, near: int = 0) -> NextState:
        return true_next_state(self.recommender, state, action, self.k, self.views, near=near)

    def examples(self, user_id: str, step: int, n: int) -> list[Example]:
        out = []
        for s in self.example_steps(user_id, step, n):
            state, action = self.state(user_id, s), self.human_action(user_id, s)
            out.append(Example(state, action, self.truth(state, action)))
        return out


def _rollout_steps(rollouts: pa.Table) -> dict[str, list[Step]]:
    out: dict[str, list[Step]] = {}
    for row in rollouts.sort_by([("user_id", "ascending"), ("step", "ascending")]).to_pylist():
        watched = {i: (None if r is None or (isinstance(r, float) and math.isnan(r)) else float(r))
                   for i, w, r in zip(row["items"], row["watched"], row["ratings"], strict=True) if w}
        out.setdefault(row["user_id"], []).append(Step(row["step"], row["session"], row["page"], list(row["items"]),
                                                       watched, row["action"] == "exit"))
    return out


def _consumed(interactions: pa.Table, users: list[str]) -> dict[str, list[tuple[str, float | None, bool | None]]]:
    table = interactions.filter(pc.is_in(interactions["user_id"], value_set=pa.array(users, pa.string())))
    table = table.sort_by([("user_id", "ascending"), ("ts", "ascending"), ("seq", "ascending")])
    out: dict[str, list[tuple[str, float | None, bool | None]]] = {}
    for uid, item, rating, liked in zip(table["user_id"].to_pylist(), table["item_id"].to_pylist(),
                                        table["rating"].to_pylist(), table["liked"].to_pylist(), strict=True):
        out.setdefault(uid, []).append((item, rating, liked))
    return out


def prepare(scenario: Scenario, users_limit: int | None = None, fit: bool = True) -> LearningInputs:
    """Load the dataset, keep its training split, draw the population, replay it, fit the recommender."""
    from alignuser_sim.core import Catalogue
    from alignuser_sim.data import load_dataset
    from alignuser_sim.data.holdout import split_dataset
    from alignuser_sim.data.personas import build_personas
    from alignuser_sim.data.population import select_population
    from alignuser_sim.data.rollouts import build_rollouts
    from alignuser_sim.recommenders import make_recommender

    ds = load_dataset(scenario.dataset)
    train, _ = split_dataset(ds)
    users = select_population(ds.interactions, scenario.population, scenario.population_seed)
    trained = set(pc.unique(train.interactions["user_id"]).to_pylist())
    users = [u for u in users if u in trained]
    if users_limit is not None:
        users = users[:users_limit]
    if not users:
        raise UserError("population: no user of the population has training interactions to learn from")
    personas = {p.user_id: p for p in build_personas(ds, users)}  # as the simulation builds them
    rollouts = build_rollouts(train, users, scenario.pages, scenario.seed)
    catalogue = Catalogue(ds.items)
    recommender = None
    if fit:
        recommender = make_recommender(scenario.recommender, seed=scenario.seed).fit(train.interactions, train.items)
    return LearningInputs(
        scenario=scenario, users=users, personas=personas, steps=_rollout_steps(rollouts),
        views=catalogue.views, catalogue_ids=ds.items["item_id"].to_pylist(),
        consumed=_consumed(train.interactions, users), recommender=recommender,
    )


# --- the journal ----------------------------------------------------------------------------------------


class Journal:
    """Append-only JSONL of everything produced, keyed by (kind, user_id, step). A torn last line (a killed
    process) is skipped and counted."""

    def __init__(self, folder: Path, write: bool = True):
        self.path = folder / JOURNAL_FILE
        self.records: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.bad_lines = 0
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        record = json.loads(line)
                        self.records[(record["kind"], record["user_id"], int(record["step"]))] = record
                    except (ValueError, KeyError, TypeError):
                        self.bad_lines += 1
        self._fh = open(self.path, "a", encoding="utf-8") if write else None  # noqa: SIM115 - see close()
        if self._fh is not None and self.path.stat().st_size and not self._ends_with_newline():
            self._fh.write("\n")  # after a torn last line, the next record starts on a line of its own

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def get(self, kind: str, user_id: str, step: int) -> dict[str, Any] | None:
        return self.records.get((kind, user_id, step))

    def put(self, record: dict[str, Any]) -> None:
        assert self._fh is not None, "a read-only journal"
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        self.records[(record["kind"], record["user_id"], int(record["step"]))] = record

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for (k, _, _), r in sorted(self.records.items()) if k == kind]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder}: another `alignuser-sim learn` is working in this folder") from None
        yield


def retry_later(kind: str | None) -> bool:
    """Failures of transport (the server, not the reply): not journaled, tried again by the next run."""
    if kind is None:
        return False
    if kind in ("timeout", "connection"):
        return True
    if kind.startswith("http_") and kind[5:].isdigit():
        status = int(kind[5:])
        return status >= 500 or status in (408, 409, 425, 429)
    return False


# --- the learner ----------------------------------------------------------------------------------------


@dataclass
class RunCounts:
    """What happened in THIS run (the journal's totals are in the summary)."""

    transitions_done: int = 0
    retry_later: Counter = field(default_factory=Counter)


class Learner:
    """The per-persona pipelines; every result goes to the journal as it is produced."""

    def __init__(self, inputs: LearningInputs, llm: Any, journal: Journal, embedder: str = "lexical"):
        self.inputs, self.llm, self.journal, self.embedder = inputs, llm, journal, embedder
        self.cfg = inputs.scenario.learning
        self.seed = inputs.scenario.seed
        self.max_tokens = inputs.scenario.llm.sampling.max_tokens
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
        views = self.inputs.views
        liked, disliked = [], []
        for item, rating, like in reversed(self.inputs.consumed.get(persona.user_id, [])):
            view = views.get(item)
            if view is None:
                continue
            good = like if like is not None else (rating >= 4 if rating is not None else True)
            bad = (like is False) or (like is None and rating is not None and rating <= 2)
            if bad and len(disliked) < 8:
                disliked.append(view)
            elif good and not bad and len(liked) < 15:
                liked.append(view)
        result = await self.llm.call(taste_messages(persona, liked, disliked), Taste,
                                     seed=call_seed(self.seed, "taste", persona.user_id),
                                     sampling={"max_tokens": min(self.max_tokens, TASTE_MAX_TOKENS)})
        if retry_later(result.failure):
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
        views = self.inputs.views
        history = [(views[i].title if i in views else i, None if r is None else int(round(r)))
                   for i, r in state.history]
        agent = PersonaAgent(persona, seed=self.seed, history=history[-5:])
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
        text = persona.describe()
        await asyncio.gather(self._world_model(text, state, actions, truths),
                             self._reflect(text, state, actions, truths))
        self.counts.transitions_done += 1
        return self.journal.get("reflection", user_id, step) is not None

    async def _counterfactuals(self, persona: Persona, state: State, human: Action) -> dict[str, Any] | None:
        inputs = self.inputs
        agent = self.policy_agent(persona, state)
        alts = await sample_alternatives(
            self.llm, agent, state, human, inputs.views,
            self.cfg.counterfactuals_per_step, self.cfg.counterfactual_temperature, self.seed)
        later = [f for f in alts.failures if retry_later(f)]
        if later:
            self.counts.retry_later.update(later)
            return None
        actions = [human, *alts.actions]
        truths = [inputs.truth(state, a, near=inputs.k) for a in actions]
        record = {
            "kind": "counterfactuals", "user_id": state.user_id, "step": state.step, "session": state.session,
            "page": state.page_no, "items": state.page,
            "actions": [a.to_dict() for a in actions], "truths": [t.to_dict() for t in truths],
            "hints": [hint_text(a, t, inputs.views, human=n == 0) for n, (a, t) in enumerate(zip(actions, truths,
                                                                                                 strict=True))],
            "hint_genres": [hint_genres(state, a, inputs.views) for a in actions],
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
        genres = candidate_genres(candidates, inputs.views)
        labels = labels_for(len(actions))
        messages = prediction_messages(persona_text, state, actions, candidates, inputs.k, inputs.views, examples)
        result = await self.llm.call(
            messages, Prediction, schema=prediction_schema(labels, candidates, genres),
            sampling=world_model_sampling(self.max_tokens, labels, candidates, genres),
            seed=call_seed(self.seed, kind, state.user_id, state.step))
        if retry_later(result.failure):
            self.counts.retry_later[result.failure] += 1
            return
        predicted = (check_prediction(result.value, labels, candidates, genres) if result.value is not None
                     else [None] * len(actions))
        self.journal.put({
            "kind": kind, "user_id": state.user_id, "step": state.step, "examples": len(examples),
            "action_ids": _action_ids(len(actions)), "candidates": candidates,
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
        views = self.inputs.views
        messages = reflection_messages(persona_text, state, actions[0], truths[0], actions[1:], truths[1:], views)
        result = await self.llm.call(messages, Reflection, seed=reflection_seed(self.seed, state.user_id, state.step),
                                     sampling={"max_tokens": min(self.max_tokens, REFLECTION_MAX_TOKENS)})
        if retry_later(result.failure):
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
        await self._world_model(persona.describe(), state, [human], [self.inputs.truth(state, human,
                                                                                        near=self.inputs.k)],
                                kind=f"wm_eval:{n_examples}", n_examples=n_examples)
        self.counts.transitions_done += 1


def _action_ids(n: int) -> list[str]:
    return ["human"] + [f"alt{i}" for i in range(1, n)]


Progress = Callable[[int, int, dict[str, Any]], None]


async def _drain(chains: list[list[Callable[[], Any]]], workers: int, llm: Any,
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


async def run_learning(inputs: LearningInputs, llm: Any, folder: Path | None = None,
                       on_progress: Progress | None = None) -> dict[str, Any]:
    """Taste, counterfactuals, world model and reflection for every persona; then the lesson memories."""
    folder = Path(folder or inputs.scenario.learning_dir())
    embedder = resolve_embedder(inputs.scenario.learning.embedder)  # an impossible choice fails before any call
    started = time.perf_counter()
    with folder_lock(folder):
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
            await _drain(chains, llm.concurrency, llm, on_progress)
            consolidate(journal, folder)
            lessons = write_lessons(journal, folder, inputs.scenario.learning.lessons_per_persona, embedder)
            summary = summarize(journal, inputs.users, learner.counts, llm.snapshot(),
                                time.perf_counter() - started, lessons=lessons, embedder=embedder)
        finally:
            journal.close()
        store.write_json(folder / SUMMARY_FILE, summary, default=str)
    return summary


async def run_world_model_eval(inputs: LearningInputs, llm: Any, n_examples: int, folder: Path | None = None,
                               on_progress: Progress | None = None) -> dict[str, Any]:
    """Next-state accuracy on the human transitions without and with `n_examples` in-context examples."""
    folder = Path(folder or inputs.scenario.learning_dir())
    started = time.perf_counter()
    with folder_lock(folder):
        journal = Journal(folder)
        try:
            learner = Learner(inputs, llm, journal)
            jobs = [[lambda u=u, s=s, n=n: learner.evaluate(u, s, n)]
                    for u in inputs.users for s in inputs.sampled_steps(u) for n in (0, n_examples)]
            await _drain(jobs, llm.concurrency, llm, on_progress)
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
        store.write_json(folder / "worldmodel_eval.json", summary, default=str)
    return summary


# --- consolidation --------------------------------------------------------------------------------------


def consolidate(journal: Journal, folder: Path) -> None:
    """The journal as Parquet files (rewritten whole: they are views of the journal)."""
    tastes = journal.of_kind("taste")
    store.write_parquet(pa.table({"user_id": pa.array([r["user_id"] for r in tastes], pa.string()),
                                   "taste": pa.array([r["taste"] for r in tastes], pa.string()),
                                   "failure": pa.array([r["failure"] for r in tastes], pa.string())}),
                         folder / TASTES_FILE)

    rows: list[dict[str, Any]] = []
    for r in journal.of_kind("counterfactuals"):
        for n, (action, truth) in enumerate(zip(r["actions"], r["truths"], strict=True)):
            rows.append({"user_id": r["user_id"], "step": r["step"], "session": r["session"], "page": r["page"],
                         "action_id": _action_ids(len(r["actions"]))[n], "items": r["items"],
                         "watched": action["watched"], "ratings": action["ratings"], "action": action["action"],
                         "next_items": truth["items"], "next_genres": truth["genres"],
                         "continues": truth["continues"], "hits": truth["hits"], "hint": r["hints"][n],
                         "hint_genres": r["hint_genres"][n]})
    store.write_parquet(pa.Table.from_pylist(rows, schema=TRANSITIONS_SCHEMA), folder / TRANSITIONS_FILE)

    rows = []
    for kind in sorted({k for k, _, _ in journal.records if k == "worldmodel" or k.startswith("wm_eval:")}):
        for r in journal.of_kind(kind):
            for n, action_id in enumerate(r["action_ids"]):
                pred, sc = r["predicted"][n], r["scores"][n]
                rows.append({"kind": kind, "examples": r["examples"], "user_id": r["user_id"], "step": r["step"],
                             "action_id": action_id, "candidates": r["candidates"],
                             "pred_items": pred["items"] if pred else None,
                             "pred_genres": pred["genres"] if pred else None,
                             "pred_continues": pred["continues"] if pred else None, "failure": r["failure"],
                             **{key: (sc[key] if sc else None) for key in PREDICTION_SCORES}})
    store.write_parquet(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA), folder / PREDICTIONS_FILE)

    rows = [{k: r.get(k) for k in REFLECTIONS_SCHEMA.names} for r in journal.of_kind("reflection")]
    store.write_parquet(pa.Table.from_pylist(rows, schema=REFLECTIONS_SCHEMA), folder / REFLECTIONS_FILE)


PREDICTION_SCORES = ("item_jaccard", "item_precision", "item_recall", "genre_jaccard", "continue_accuracy")
_STRINGS = pa.list_(pa.string())
TRANSITIONS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("step", pa.int32()), ("session", pa.int32()), ("page", pa.int32()),
    ("action_id", pa.string()), ("items", _STRINGS), ("watched", _STRINGS), ("ratings", pa.list_(pa.float32())),
    ("action", pa.string()), ("next_items", _STRINGS), ("next_genres", _STRINGS), ("continues", pa.bool_()),
    ("hits", pa.int32()), ("hint", pa.string()), ("hint_genres", _STRINGS),
])
PREDICTIONS_SCHEMA = pa.schema([
    ("kind", pa.string()), ("examples", pa.int32()), ("user_id", pa.string()), ("step", pa.int32()),
    ("action_id", pa.string()), ("candidates", _STRINGS), ("pred_items", _STRINGS), ("pred_genres", _STRINGS),
    ("pred_continues", pa.bool_()), ("failure", pa.string()), *[(k, pa.float64()) for k in PREDICTION_SCORES],
])
REFLECTIONS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("step", pa.int32()), ("alternatives", pa.int32()), ("skipped", pa.string()),
    ("failure", pa.string()), ("reasoning", pa.string()), ("mistakes", pa.string()),
    ("lessons", pa.list_(pa.struct([("text", pa.string()), ("tag", pa.string())]))), ("dropped", pa.int32()),
])


def write_lessons(journal: Journal, folder: Path, cap: int, embedder: str) -> int:
    """Every persona's lesson memory, rebuilt from all its reflections (oldest transition first)."""
    by_user: dict[str, list[tuple[str, str]]] = {}
    for r in journal.of_kind("reflection"):  # sorted by (user, step)
        by_user.setdefault(r["user_id"], []).extend((x["text"], x["tag"]) for x in r["lessons"])
    memories = [build_memory(uid, lessons, cap, embedder) for uid, lessons in sorted(by_user.items())]
    return write_memories(memories, folder / LESSONS_FILE, embedder)


def summarize(journal: Journal, users: list[str], counts: RunCounts, llm: dict[str, Any], wall_s: float,
              lessons: int, embedder: str) -> dict[str, Any]:
    """What `learn` reports: this run's calls and time; the folder's transitions, failures, lessons, scores."""
    wanted = set(users)

    def mine(kind: str) -> list[dict[str, Any]]:
        return [r for r in journal.of_kind(kind) if r["user_id"] in wanted]

    cfs, wms, refl, tastes = mine("counterfactuals"), mine("worldmodel"), mine("reflection"), mine("taste")
    failures: Counter = Counter()
    for r in cfs:
        failures.update(f"counterfactual:{f}" for f in r["failures"])
    failures.update(f"worldmodel:{r['failure']}" for r in wms if r["failure"])
    failures.update(f"reflection:{r['failure']}" for r in refl if r["failure"])
    failures.update(f"taste:{r['failure']}" for r in tastes if r["failure"])
    failures.update(f"retry_later:{k}" for k in counts.retry_later.elements())
    complete = ({(r["user_id"], r["step"]) for r in cfs} & {(r["user_id"], r["step"]) for r in wms}
                & {(r["user_id"], r["step"]) for r in refl})
    human = [r["scores"][0] for r in wms]
    alternatives = [s for r in wms for s in r["scores"][1:]]
    calls = llm.get("calls", 0)
    return {
        "personas": len(users),
        "transitions": len(complete),
        "transitions_this_run": counts.transitions_done,
        "llm_calls_this_run": calls,
        "llm_requests_this_run": llm.get("requests", 0),
        "llm_retries_this_run": llm.get("retries", {}),
        "cache_hits_this_run": llm.get("cache_hits", 0),
        "calls_per_persona_this_run": round(calls / len(users), 2) if users else 0,
        "prompt_tokens_this_run": llm.get("prompt_tokens", 0),
        "completion_tokens_this_run": llm.get("completion_tokens", 0),
        "wall_s": round(wall_s, 1),
        "tastes_written": sum(1 for r in tastes if r["taste"]),
        "alternatives_sampled": sum(r["samples"] for r in cfs),
        "alternatives_distinct": sum(len(r["actions"]) - 1 for r in cfs),
        "alternatives_same_as_human": sum(r["same_as_human"] for r in cfs),
        "reflections_skipped": sum(1 for r in refl if r["skipped"]),
        "lessons_raw": sum(len(r["lessons"]) for r in refl),
        "lessons_dropped": sum(r["dropped"] for r in refl),
        "lessons_written": lessons,
        "embedder": embedder,
        "failures": dict(sorted(failures.items())),
        "journal_bad_lines": journal.bad_lines,
        "worldmodel_human": mean_scores(human),
        "worldmodel_alternatives": mean_scores(alternatives),
    }
