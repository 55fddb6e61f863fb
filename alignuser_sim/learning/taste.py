"""Taste text: 2-3 sentences an LLM writes about a persona whose dataset gives none.

Written once per persona from what it liked and disliked in the TRAINING split (never from held-out
items), journaled like everything learning produces, and consolidated into `tastes.parquet`, which the
policy reads back (`agent.policy.load_tastes`) so the simulated agent describes the same person.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from alignuser_sim.core import MOVIES, Domain, ItemView, short_title
from alignuser_sim.data.personas import Persona
from alignuser_sim.learning.inputs import Consumed
from alignuser_sim.learning.wording import shared_genres
from alignuser_sim.llm.prompts import build_messages

TASTE_MAX = 300
MAX_LIKED = 15
MAX_DISLIKED = 8

TASTE_SYSTEM = (
    "You write the taste profile of a real user of a recommender system from the items they liked and "
    "disliked. Write 2 or 3 sentences in the second person (\"You love ...\"): genres, moods, eras, and what "
    "they avoid. Name at most two titles. Answer with JSON only, in plain ASCII."
)


class Taste(BaseModel):
    model_config = ConfigDict(extra="forbid")
    taste: str = Field(max_length=TASTE_MAX)


def liked_and_disliked(consumed: Sequence[Consumed], views: dict[str, ItemView]) -> tuple[list[ItemView],
                                                                                           list[ItemView]]:
    """The most recent liked and disliked items (the dataset's like flag, else a rating of 4+ / 2-; an item
    without either counts as liked: the user chose it)."""
    liked: list[ItemView] = []
    disliked: list[ItemView] = []
    for item, rating, like in reversed(consumed):
        view = views.get(item)
        if view is None:
            continue
        good = like if like is not None else (rating >= 4 if rating is not None else True)
        bad = (like is False) or (like is None and rating is not None and rating <= 2)
        if bad and len(disliked) < MAX_DISLIKED:
            disliked.append(view)
        elif good and not bad and len(liked) < MAX_LIKED:
            liked.append(view)
    return liked, disliked


def taste_messages(persona: Persona, liked: list[ItemView], disliked: list[ItemView],
                   domain: Domain = MOVIES) -> list[dict[str, str]]:
    """Static first (system, persona in the domain's words), then the items: titles with at most two genres each,
    the genres all of them share said once (a dataset's top category levels would otherwise fill every line)."""
    common = shared_genres([*liked, *disliked])

    def lines(views: list[ItemView]) -> str:
        return "; ".join(short_title(v) + (f" ({', '.join(g)})" if (g := [x for x in v.genres if x not in common][:2])
                                           else "") for v in views)

    parts = [f"Every item below: {', '.join(common)}."] if common else []
    parts.append(f"Liked: {lines(liked)}" if liked else "Liked: nothing recorded")
    if disliked:
        parts.append(f"Disliked: {lines(disliked)}")
    return build_messages(TASTE_SYSTEM, "\n".join(parts) + "\nWrite the taste profile.",
                          persona=persona.describe(domain))
