"""The world model: what the recommender serves after an action, predicted by the LLM, scored against the truth.

A transition is (state, action) -> next state. The state is a persona's place in its human rollout (the
training split only): its history up to a page, and that page. An action is what a user does on the page:
the items watched (with ratings), then `next_page` or `exit`. The next state is what the scenario's real
recommender serves after that action (its next page and the page's dominant genres), whether the session
goes on, and the change of the history (the items watched). Because the recommender is real code, the truth
is known for ANY action, the human's or a counterfactual one: `true_next_state` asks a fitted recommender,
under a throw-away user id that holds only the history up to the page, and restores the recommender's
state afterwards, so no user or action leaks into another.

The LLM predicts the next state in structured form: which of a set of candidate items (the true next
pages of the actions asked about, mixed with as many other plausible items) the next page holds, its
dominant genres, and whether the session goes on. Several actions of one state are predicted in ONE call.
The reply names candidates and genres by their number in the prompt's lists (`Question`), so its length, and
the token budget sized from its schema's worst case, do not depend on the dataset's ids or genre names.
`score` compares a prediction with the truth (item Jaccard / precision / recall, genre Jaccard, continue
accuracy). In-context examples are other transitions of the same persona with their true outcome.

What the simulation's agents get from the transitions learned here is in `agent/world_hints.py`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from alignuser_sim.agent.persona_agent import HISTORY_SIZE
from alignuser_sim.core import MOVIES, Action, Domain, ItemView, NextState, State, user_rng
from alignuser_sim.learning.wording import describe_action, page_tags, title
from alignuser_sim.llm.prompts import build_messages
from alignuser_sim.llm.schemas import reply_budget
from alignuser_sim.recommenders.base import Recommender

MAX_GENRES = 3



def world_model_system(domain: Domain = MOVIES) -> str:
    """The world model's system prompt in the domain's words (static for a run)."""
    return (
        "You are the world model of a recommender system. Given a user's state and an action the user "
        "takes on the current page, you predict what happens next. The recommender ranks the items the user has "
        f"not seen by what the user {domain.consumed}: {domain.consuming} an item brings similar items up, and an "
        "item already shown is never shown again. Items and genres are numbered, and you answer with their "
        "numbers. For each action (a1, a2, ...), give in \"next\" the numbers of the candidates on the next page, "
        "in \"genres\" the numbers of the next page's dominant genres (at most 3), and in \"continues\" whether "
        "the session goes on (false when the action is exit). Answer with JSON only."
    )


WORLD_MODEL_SYSTEM = world_model_system()  # the movie domain's


def dominant_genres(views: Sequence[ItemView], top: int = MAX_GENRES) -> list[str]:
    """The genres on at least half of the page's items; if none is, the most frequent one(s). At most `top`,
    by count, then name."""
    counts = Counter(g for view in views for g in dict.fromkeys(view.genres))
    if not counts:
        return []
    need = math.ceil(len(views) / 2)
    ranked = sorted(counts.items(), key=lambda gc: (-gc[1], gc[0]))
    chosen = [g for g, c in ranked if c >= need]
    if not chosen:
        best = ranked[0][1]
        chosen = [g for g, c in ranked if c == best]
    return chosen[:top]


# --- the truth, from the recommender -------------------------------------------------------------------


def true_next_state(recommender: Recommender, state: State, action: Action, k: int,
                    views: dict[str, ItemView], near: int = 0) -> NextState:
    """What `recommender` (fitted) serves after `action` on `state`'s page; its state is left unchanged.

    A throw-away user (`user#step`) gets the history up to the page, then the action as feedback (the
    page's items shown, the watched ones added), then its top `k` items are the next page; after an exit,
    the page the next visit starts with (the feedback is the same, the session just ends)."""
    pseudo = f"{state.user_id}#wm{state.step}"
    snapshot = recommender.state_dict()
    try:
        if state.history:
            recommender.feedback(pseudo, dict(state.history), shown=[])
        recommender.feedback(pseudo, dict(action.watched), shown=list(state.page))
        codes = recommender.rank([pseudo], k + near)[0]
    finally:
        recommender.load_state_dict(snapshot)
    ranked = [str(recommender.item_ids[c]) for c in codes]
    items = ranked[:k]
    page_views = [views[i] for i in items if i in views]
    return NextState(items=items, genres=dominant_genres(page_views), continues=not action.exit,
                     added=action.watched_ids, hits=sum(i in state.future for i in items), near=ranked[k:])


def candidate_items(truths: Sequence[NextState], state: State, k: int, catalogue_ids: Sequence[str],
                    seed: int) -> list[str]:
    """The items a prediction chooses from: the true next pages of the actions asked about, plus as many
    other plausible items as one page holds: half the recommender's next-ranked items after the first
    action (near misses), half random items the user has not seen. Shuffled, seeded per state."""
    rng = user_rng(seed, state.user_id, state.step)
    pool = list(dict.fromkeys(i for t in truths for i in t.items))
    taken = set(pool) | set(state.page) | {i for i, _ in state.history}
    fillers = [i for t in truths for i in t.near if i not in taken][: k - k // 2]
    taken |= set(fillers)
    while len(fillers) < k and len(taken) < len(catalogue_ids):
        pick = catalogue_ids[int(rng.integers(len(catalogue_ids)))]
        if pick not in taken:
            fillers.append(pick)
            taken.add(pick)
    candidates = pool + fillers
    rng.shuffle(candidates)
    return candidates


# --- the LLM's prediction ---------------------------------------------------------------------------------


class PredictedOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")
    next: list[int]  # candidate numbers (1-based, as the prompt lists them) on the next page
    genres: list[int] = Field(max_length=MAX_GENRES)  # genre numbers (1-based) of its dominant genres
    continues: bool


class Prediction(BaseModel):
    """The world model's answer: one outcome per action label (a1, a2, ...)."""

    model_config = ConfigDict(extra="forbid")
    outcomes: dict[str, PredictedOutcome]


def labels_for(n: int) -> list[str]:
    return [f"a{i + 1}" for i in range(n)]


def candidate_genres(candidates: Iterable[str], views: dict[str, ItemView]) -> list[str]:
    return sorted({g for c in candidates if c in views for g in views[c].genres})


@dataclass
class Predicted:
    """One action's predicted outcome, mapped back to ids and genre names."""

    items: list[str]
    genres: list[str]
    continues: bool
    invalid: int = 0  # numbers not offered or repeated (a server that does not enforce the schema)

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "genres": self.genres, "continues": self.continues, "invalid": self.invalid}


@dataclass
class Question:
    """What one world-model call asks, as numbered lists: a reply names candidates and genres by their number
    in the prompt (1-based), never by id or name, so no reply can grow with the length of a dataset's ids
    (Amazon's ten-character ASINs) or genre names (five-level category paths). `check` maps the numbers back
    to ids and names before scoring, so the scores are those of the ids."""

    labels: list[str]  # a1, a2, ...: one per action, the human's first
    candidates: list[str]  # candidate n is candidates[n - 1]
    genres: list[str]  # every genre of the page and the candidates; genre n is genres[n - 1]
    allowed: list[int]  # the genre numbers an answer may name: the candidates' (a next page's genres are theirs)
    k: int  # how many candidates each next page holds

    @classmethod
    def build(cls, state: State, n_actions: int, candidates: Sequence[str], k: int,
              views: dict[str, ItemView]) -> Question:
        genres = candidate_genres([*state.page, *candidates], views)
        theirs = set(candidate_genres(candidates, views))
        return cls(labels_for(n_actions), list(candidates), genres,
                   [n + 1 for n, g in enumerate(genres) if g in theirs], min(k, len(candidates)))

    def schema(self) -> dict[str, Any]:
        """Prediction's schema narrowed to this call: each label a required key, exactly k candidate numbers,
        at most 3 of the allowed genre numbers (what a grammar-constrained server cannot get wrong)."""
        numbers = list(range(1, len(self.candidates) + 1))
        genre_items: dict[str, Any] = {"type": "integer", "enum": self.allowed} if self.allowed else {"type": "integer"}
        outcome = {
            "type": "object",
            "properties": {
                "next": {"type": "array", "items": {"type": "integer", "enum": numbers} if numbers else
                         {"type": "integer"}, "minItems": self.k, "maxItems": self.k},
                "genres": {"type": "array", "items": genre_items,
                           "maxItems": min(MAX_GENRES, len(self.allowed))},
                "continues": {"type": "boolean"},
            },
            "required": ["next", "genres", "continues"],
            "additionalProperties": False,
        }
        ref = {"$ref": "#/$defs/Outcome"}
        return {
            "$defs": {"Outcome": outcome},
            "type": "object",
            "properties": {"outcomes": {"type": "object", "properties": {label: ref for label in self.labels},
                                        "required": list(self.labels), "additionalProperties": False}},
            "required": ["outcomes"],
            "additionalProperties": False,
        }

    def sampling(self, fallback: int) -> dict[str, Any]:
        """Greedy (a predictor, not a persona: its most likely answer), and room for the longest reply the
        schema admits: numbers and booleans only, so a few tokens per action whatever the dataset."""
        return {"temperature": 0.0, "max_tokens": reply_budget(self.schema(), fallback=fallback)}

    def check(self, reply: Prediction) -> list[Predicted | None]:
        """The reply's outcome per label (None where the label is missing), numbers mapped back to ids and
        genre names; numbers not offered, or repeated, are dropped and counted."""
        allowed = set(self.allowed)
        out: list[Predicted | None] = []
        for label in self.labels:
            outcome = reply.outcomes.get(label)
            if outcome is None:
                out.append(None)
                continue
            picks = [n for n in dict.fromkeys(outcome.next) if 1 <= n <= len(self.candidates)]
            kept = [n for n in dict.fromkeys(outcome.genres) if n in allowed]
            bad = len(outcome.next) - len(picks) + len(outcome.genres) - len(kept)
            out.append(Predicted([self.candidates[n - 1] for n in picks], [self.genres[n - 1] for n in kept],
                                 outcome.continues, bad))
        return out

    def answer(self, truths: Sequence[NextState]) -> Prediction:
        """The reply a perfect world model gives (the fine-tuning target)."""
        where = {c: n + 1 for n, c in enumerate(self.candidates)}
        number = {g: n + 1 for n, g in enumerate(self.genres)}
        outcomes = {}
        for label, truth in zip(self.labels, truths, strict=True):
            outcomes[label] = PredictedOutcome(
                next=[where[i] for i in truth.items if i in where],
                genres=[number[g] for g in truth.genres[:MAX_GENRES] if g in number],
                continues=truth.continues)
        return Prediction(outcomes=outcomes)


@dataclass
class Example:
    """An in-context example: another transition of the same persona with its true outcome."""

    state: State
    action: Action
    truth: NextState


def example_text(example: Example, views: dict[str, ItemView], domain: Domain = MOVIES) -> str:
    page = "; ".join(title(i, views) for i in example.state.page)
    nxt = "; ".join(title(i, views) for i in example.truth.items)
    genres = ", ".join(example.truth.genres) or "no clear genre"
    return (f"Page: {page}. You {describe_action(example.action, lambda i: title(i, views), domain)}. "
            f"Next page: {nxt}. Mostly: {genres}.")


def prediction_messages(persona_text: str, state: State, actions: Sequence[Action], question: Question,
                        views: dict[str, ItemView], examples: Sequence[Example] = (),
                        history_size: int = HISTORY_SIZE, domain: Domain = MOVIES) -> list[dict[str, str]]:
    """The world-model prompt, static first: system, persona; examples; then the state, actions, candidates.
    Each genre is named once, in the numbered genre list; items carry their genre numbers; the actions name
    page items by their place on the page (P1, P2, ...). In the domain's words."""
    context = []
    if examples:
        context.append("How this recommender reacted before:\n" + "\n".join(
            f"{n + 1}. {example_text(e, views, domain)}" for n, e in enumerate(examples)))
    context.append(state.recent(views, n=history_size, domain=domain))
    number = {g: n + 1 for n, g in enumerate(question.genres)}

    def line(tag: str, item_id: str) -> str:
        view = views.get(item_id)
        tags = ",".join(str(number[g]) for g in dict.fromkeys(view.genres) if g in number) if view else ""
        return f"{tag}. {title(item_id, views)}" + (f" [{tags}]" if tags else "")

    on_page = page_tags(state.page)
    genres = "; ".join(f"{n + 1} {g}" for n, g in enumerate(question.genres)) or "none"
    page = "\n".join(line(on_page[i], i) for i in state.page)
    acts = "\n".join(f"- {label}: {describe_action(a, lambda i: on_page.get(i) or title(i, views), domain)}"
                     for label, a in zip(question.labels, actions, strict=True))
    cands = "\n".join(line(str(n + 1), c) for n, c in enumerate(question.candidates))
    dynamic = (f"Genres: {genres}\n\nCurrent page (genre numbers in brackets):\n{page}\n\n"
               f"Actions to predict:\n{acts}\n\n"
               f"Candidates for the next page ({question.k} of them are on it after each action):\n{cands}")
    return build_messages(world_model_system(domain), dynamic, persona=persona_text, context=context)


# --- scoring -----------------------------------------------------------------------------------------------


SCORE_KEYS = ("item_jaccard", "item_precision", "item_recall", "genre_jaccard", "continue_accuracy")


def _jaccard(a: set[str], b: set[str]) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def score(predicted: Predicted, truth: NextState) -> dict[str, float]:
    """How close a predicted next state is to the true one (each in [0, 1])."""
    pred, true = set(predicted.items), set(truth.items)
    hit = len(pred & true)
    return {
        "item_jaccard": _jaccard(pred, true),
        "item_precision": hit / len(pred) if pred else 0.0,
        "item_recall": hit / len(true) if true else 1.0,
        "genre_jaccard": _jaccard(set(predicted.genres), set(truth.genres)),
        "continue_accuracy": float(predicted.continues == truth.continues),
    }


def mean_scores(scores: Iterable[dict[str, float] | None]) -> dict[str, float | int | None]:
    """Means over the scored predictions (None when there is none); `n` scored, `failed` without a usable
    prediction."""
    rows = list(scores)
    ok = [s for s in rows if s is not None]
    out: dict[str, float | int | None] = {"n": len(ok), "failed": len(rows) - len(ok)}
    for key in SCORE_KEYS:
        out[key] = round(float(np.mean([s[key] for s in ok])), 4) if ok else None
    return out
