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
`score` compares a prediction with the truth (item Jaccard / precision / recall, genre Jaccard, continue
accuracy). In-context examples are other transitions of the same persona with their true outcome.

What the simulation's agents get from the transitions learned here is in `agent/world_hints.py`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from alignuser_sim.agent.persona_agent import HISTORY_SIZE
from alignuser_sim.core import Action, ItemView, NextState, State, short_title, user_rng
from alignuser_sim.llm.prompts import build_messages
from alignuser_sim.recommenders.base import Recommender

MAX_GENRES = 3

WORLD_MODEL_SYSTEM = (
    "You are the world model of a recommender system. Given a user's state and an action the user "
    "takes on the current page, you predict what happens next. The recommender ranks the items the user has "
    "not seen by what the user watched: watching an item brings similar items up, and an item already shown "
    "is never shown again. For each action, mark which candidate items are on the next page, list the next "
    "page's dominant genres (at most 3), and say whether the session goes on (false when the action is exit). "
    "Answer with JSON only."
)


def item_line(view: ItemView) -> str:
    genres = f" ({', '.join(view.genres[:MAX_GENRES])})" if view.genres else ""
    return f"- id {view.item_id}: {short_title(view)}{genres}"


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
    next: dict[str, bool]  # candidate id -> on the next page?
    genres: list[str] = Field(max_length=MAX_GENRES)
    continues: bool


class Prediction(BaseModel):
    """The world model's answer: one outcome per action label (a1, a2, ...)."""

    model_config = ConfigDict(extra="forbid")
    outcomes: dict[str, PredictedOutcome]


def prediction_schema(labels: Sequence[str], candidates: Sequence[str], genres: Sequence[str]) -> dict[str, Any]:
    """Prediction's schema narrowed to this call: each label and each candidate id a required key, genres an
    enum of the candidates' genres (what a grammar-constrained server cannot get wrong)."""
    genre_items: dict[str, Any] = {"type": "string", "enum": list(genres)} if genres else {"type": "string"}
    outcome = {
        "type": "object",
        "properties": {
            "next": {"type": "object", "properties": {c: {"type": "boolean"} for c in candidates},
                     "required": list(candidates), "additionalProperties": False},
            "genres": {"type": "array", "items": genre_items, "maxItems": MAX_GENRES if genres else 0},
            "continues": {"type": "boolean"},
        },
        "required": ["next", "genres", "continues"],
        "additionalProperties": False,
    }
    ref = {"$ref": "#/$defs/Outcome"}
    return {
        "$defs": {"Outcome": outcome},
        "type": "object",
        "properties": {"outcomes": {"type": "object", "properties": {label: ref for label in labels},
                                    "required": list(labels), "additionalProperties": False}},
        "required": ["outcomes"],
        "additionalProperties": False,
    }


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


@dataclass
class Example:
    """An in-context example: another transition of the same persona with its true outcome."""

    state: State
    action: Action
    truth: NextState


def example_text(example: Example, views: dict[str, ItemView]) -> str:
    page = "; ".join(_titled(i, views) for i in example.state.page)
    nxt = "; ".join(_titled(i, views) for i in example.truth.items)
    genres = ", ".join(example.truth.genres) or "no clear genre"
    return (f"Page: {page}. You {example.action.describe(views)}. Next page: {nxt}. "
            f"Mostly: {genres}.")


def _titled(item_id: str, views: dict[str, ItemView]) -> str:
    view = views.get(item_id)
    if view is None:
        return item_id
    return f"{short_title(view)} ({', '.join(view.genres[:2])})" if view.genres else short_title(view)


def labels_for(n: int) -> list[str]:
    return [f"a{i + 1}" for i in range(n)]


def prediction_messages(persona_text: str, state: State, actions: Sequence[Action], candidates: Sequence[str],
                        k: int, views: dict[str, ItemView], examples: Sequence[Example] = (),
                        history_size: int = HISTORY_SIZE) -> list[dict[str, str]]:
    """The world-model prompt, static first: system, persona; examples; then the state, actions, candidates."""
    context = []
    if examples:
        context.append("How this recommender reacted before:\n" + "\n".join(
            f"{n + 1}. {example_text(e, views)}" for n, e in enumerate(examples)))
    context.append(state.recent(views, n=history_size))
    page = "\n".join(item_line(views[i]) if i in views else f"- id {i}" for i in state.page)
    acts = "\n".join(f"- {label}: {a.describe(views)}" for label, a in zip(labels_for(len(actions)), actions,
                                                                             strict=True))
    cands = "\n".join(item_line(views[i]) if i in views else f"- id {i}" for i in candidates)
    dynamic = (f"Current page:\n{page}\n\nActions to predict:\n{acts}\n\n"
               f"Candidates for the next page ({k} of them are on it after each action):\n{cands}")
    return build_messages(WORLD_MODEL_SYSTEM, dynamic, persona=persona_text, context=context)


@dataclass
class Predicted:
    """One action's predicted outcome after checking it against the candidates."""

    items: list[str]
    genres: list[str]
    continues: bool
    invalid: int = 0  # ids or genres that were not offered (only a server without schemas produces them)

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "genres": self.genres, "continues": self.continues, "invalid": self.invalid}


def check_prediction(reply: Prediction, labels: Sequence[str], candidates: Sequence[str],
                     genres: Sequence[str]) -> list[Predicted | None]:
    """The reply's outcome per label (None where the label is missing); ids/genres not offered are dropped
    and counted."""
    offered, allowed = set(candidates), set(genres)
    out: list[Predicted | None] = []
    for label in labels:
        outcome = reply.outcomes.get(label)
        if outcome is None:
            out.append(None)
            continue
        items = [i for i, on in outcome.next.items() if on and i in offered]
        bad = sum(1 for i in outcome.next if i not in offered)
        kept = [g for g in dict.fromkeys(outcome.genres) if g in allowed]
        bad += len(outcome.genres) - len(kept)
        out.append(Predicted(items, kept, outcome.continues, bad))
    return out


def truth_reply(truths: Sequence[NextState], candidates: Sequence[str]) -> Prediction:
    """The reply a perfect world model gives (the fine-tuning target)."""
    outcomes = {}
    for label, truth in zip(labels_for(len(truths)), truths, strict=True):
        on = set(truth.items)
        outcomes[label] = PredictedOutcome(next={c: c in on for c in candidates}, genres=truth.genres[:MAX_GENRES],
                                           continues=truth.continues)
    return Prediction(outcomes=outcomes)


def candidate_genres(candidates: Iterable[str], views: dict[str, ItemView]) -> list[str]:
    return sorted({g for c in candidates if c in views for g in views[c].genres})


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
