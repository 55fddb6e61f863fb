"""A page-decision schema and synthetic page prompts, for LLM tests and benchmarks.

The schema mirrors what a persona agent returns for one recommendation page, designed to be easy for a
small model under grammar-constrained decoding: the item ids are an enum of the page's own ids, the
items list has exactly one entry per item on the page, ratings are an enum (1..5 or null), and the
free-text fields have tight `maxLength`s, so a completion cannot wander past `max_tokens`.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from alignuser_sim.llm.prompts import build_messages

THOUGHT_MAX = 200
FEELING_MAX = 80

MOVIES = [
    ("m1", "Toy Story (1995)", "Animation|Children's|Comedy"),
    ("m2", "Heat (1995)", "Action|Crime|Thriller"),
    ("m3", "Sense and Sensibility (1995)", "Drama|Romance"),
    ("m4", "Twelve Monkeys (1995)", "Drama|Sci-Fi"),
    ("m5", "Babe (1995)", "Children's|Comedy|Drama"),
    ("m6", "The Usual Suspects (1995)", "Crime|Thriller"),
    ("m7", "Braveheart (1995)", "Action|Drama|War"),
    ("m8", "Apollo 13 (1995)", "Drama"),
    ("m9", "Star Wars (1977)", "Action|Adventure|Romance|Sci-Fi|War"),
    ("m10", "Pulp Fiction (1994)", "Crime|Drama"),
    ("m11", "The Lion King (1994)", "Animation|Children's|Musical"),
    ("m12", "Forrest Gump (1994)", "Comedy|Romance|War"),
    ("m13", "Jurassic Park (1993)", "Action|Adventure|Sci-Fi"),
    ("m14", "Schindler's List (1993)", "Drama|War"),
    ("m15", "Fargo (1996)", "Crime|Drama|Thriller"),
    ("m16", "Alien (1979)", "Action|Horror|Sci-Fi|Thriller"),
]

PERSONAS = [
    "You are user 17: a 25-34 year old engineer. You watch a lot, mostly action and science fiction, "
    "and you rate generously. You rarely watch romance.",
    "You are user 42: a 45-49 year old teacher. You watch a few films a month, prefer drama and "
    "historical films, and rate strictly. Children's films bore you.",
    "You are user 8: an 18-24 year old student. You follow what is popular, love comedies and animation, "
    "and leave quickly when a page does not interest you.",
    "You are user 93: a 35-44 year old doctor. You like crime and thrillers with clever plots; you rate "
    "carefully and explore several pages before leaving.",
]

SYSTEM = (
    "You simulate a real user of a movie recommender. Each turn you see one page of recommended movies. "
    "For every movie on the page decide whether you watch it, your rating from 1 to 5 if you watch it "
    "(null if you do not), and a short feeling. Then choose the action: next_page to see more, or exit "
    "to leave. Answer with JSON only, in this form: "
    '{"thought": "...", "items": [{"item_id": "...", "watch": true, "rating": 4, "feeling": "..."}], '
    '"action": "next_page"}. Keep the thought under 30 words and each feeling under 12 words.'
)


@lru_cache(maxsize=256)
def page_decision_model(item_ids: tuple[str, ...]) -> type[BaseModel]:
    """The PageDecision model for a page showing `item_ids` (cached per page)."""
    item_id_type: Any = Literal[item_ids]  # type: ignore[valid-type]
    strict = ConfigDict(extra="forbid")
    item = create_model(
        "ItemDecision",
        __config__=strict,
        item_id=(item_id_type, ...),
        watch=(bool, ...),
        rating=(Literal[1, 2, 3, 4, 5] | None, ...),
        feeling=(str, Field(..., max_length=FEELING_MAX)),
    )
    n = len(item_ids)
    return create_model(
        "PageDecision",
        __config__=strict,
        thought=(str, Field(..., max_length=THOUGHT_MAX)),
        items=(list[item], Field(..., min_length=n, max_length=n)),  # type: ignore[valid-type]
        action=(Literal["next_page", "exit"], ...),
    )


def page_text(items: list[tuple[str, str, str]], page: int, history: list[str] | None = None) -> str:
    lines = [f"Page {page}. Recommended movies:"]
    lines += [f"- id {item_id}: {title}, genres {genres.replace('|', ', ')}" for item_id, title, genres in items]
    if history:
        lines.insert(0, "Recently watched: " + "; ".join(history))
    return "\n".join(lines)


def page_call(index: int, items_per_page: int = 4, tag: str = "") -> tuple[list[dict[str, str]], type[BaseModel]]:
    """The messages and output model of synthetic page call number `index` (deterministic).

    Static first: the shared system text, then the persona (one of 4), then the page (dynamic). `tag`
    is appended to the dynamic part (benchmarks use it to make prompts unique per run).
    """
    rng = random.Random(index)
    persona = PERSONAS[index % len(PERSONAS)]
    items = rng.sample(MOVIES, items_per_page)
    history = [title for _, title, _ in rng.sample(MOVIES, 2)]
    text = page_text(items, 1 + index % 5, history)
    if tag:
        text += f"\n(session {tag})"
    model = page_decision_model(tuple(item_id for item_id, _, _ in items))
    return build_messages(SYSTEM, text, persona=persona), model
