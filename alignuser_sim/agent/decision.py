"""The decision format: what a persona agent answers for one page, and how that answer is checked.

The reply is constrained by a JSON schema whose `items` object has exactly the page's ids as its keys, all
required, no others: a schema-enforcing server (vLLM) answers each item exactly once. A server that does not
enforce schemas may still answer other ids: those are rejected and counted (`invalid_ids`), and page items
left unanswered count as not watched. The format lives apart from the agent because the same schema is
sampled for counterfactuals (learning), written as fine-tuning targets, and benchmarked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignuser_sim.core import ItemView
from alignuser_sim.llm.schemas import json_schema_for

THOUGHT_MAX = 200
FEELING_MAX = 80


class ItemDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    watch: bool
    rating: Literal[1, 2, 3, 4, 5] | None
    feeling: str = Field(max_length=FEELING_MAX)


class PageDecision(BaseModel):
    """What the LLM answers for one page (validated; ids are checked against the page afterwards)."""

    model_config = ConfigDict(extra="forbid")
    thought: str = Field(max_length=THOUGHT_MAX)
    items: dict[str, ItemDecision]  # item id -> the decision about it
    action: Literal["next_page", "exit"]


_BASE_SCHEMA = json_schema_for(PageDecision)
_ITEM_REF = {"$ref": "#/$defs/ItemDecision"}


def page_schema(item_ids: list[str]) -> dict[str, Any]:
    """PageDecision's schema with `items` holding exactly the page's ids as required keys.

    Builds only the dicts that change (a deep copy per page was a third of the cost of a cached
    decision); the rest is shared with the base schema and must not be mutated.
    """
    base = _BASE_SCHEMA
    items = {"type": "object", "properties": {i: _ITEM_REF for i in item_ids}, "required": list(item_ids),
             "additionalProperties": False}
    return {**base, "properties": {**base["properties"], "items": items}}


@dataclass
class Decision:
    """An agent's decision on one page, after checking it against the page."""

    ratings: dict[str, int | None]  # watched item -> rating (None: watched, no rating given)
    feelings: dict[str, str]
    thought: str | None
    action: str
    failure: str | None = None
    invalid_ids: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    from_cache: bool = False


def check_decision(reply: PageDecision, page: list[ItemView]) -> Decision:
    """Keep the answers about items on the page; count the others."""
    on_page = {item.item_id for item in page}
    ratings: dict[str, int | None] = {}
    feelings: dict[str, str] = {}
    invalid = 0
    for item_id, answer in reply.items.items():
        if item_id not in on_page:
            invalid += 1
            continue
        feelings[item_id] = answer.feeling
        if answer.watch:
            ratings[item_id] = answer.rating
    return Decision(ratings=ratings, feelings=feelings, thought=reply.thought, action=reply.action,
                    invalid_ids=invalid)
