"""The evaluation's rating call (Agent4Rec's rating protocol): the persona rates items it consumed, in the
policy's decision format. It lives beside the page decision because training (`learning/training_data.py`)
builds the very same prompt for its rating examples as the evaluation asks with (`evaluation/micro.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from alignuser_sim.agent.decision import BRIEF_THOUGHT_MAX, Rating, id_lines, numbered_lines, positions
from alignuser_sim.core import ItemView
from alignuser_sim.llm.prompts import build_messages
from alignuser_sim.llm.schemas import json_schema_for

if TYPE_CHECKING:  # the agent asks this call itself (`policy.rate_watched`): no import at run time
    from alignuser_sim.agent.persona_agent import PersonaAgent

_RATE = (
    "You simulate one real user of a recommender system. You watched each item listed below. Rate each one "
    "from 1 (hated it) to 5 (loved it) the way this user would, using the whole scale honestly. "
)
RATING_SYSTEM = _RATE + "Answer with JSON only: an object whose `ratings` maps every listed item id to its rating."


class RatingReply(BaseModel):
    """`full`: item id -> rating."""

    model_config = ConfigDict(extra="forbid")
    ratings: dict[str, Rating]


class PositionRatings(BaseModel):
    """`none`: the number the item is listed under -> rating."""

    model_config = ConfigDict(extra="forbid")
    ratings: dict[str, Rating]


class BriefRatings(BaseModel):
    """`brief`: one short thought, then the ratings by number."""

    model_config = ConfigDict(extra="forbid")
    thought: str = Field(max_length=BRIEF_THOUGHT_MAX)
    ratings: dict[str, Rating]


def _narrowed(model: type[BaseModel], keys: Sequence[str]) -> dict[str, Any]:
    """`model`'s schema with exactly these keys as the required keys of `ratings`."""
    base = json_schema_for(model)
    value = base["properties"]["ratings"]["additionalProperties"]
    ratings = {"type": "object", "properties": {k: value for k in keys}, "required": list(keys),
               "additionalProperties": False}
    return {**base, "properties": {**base["properties"], "ratings": ratings}}


def rating_schema(item_ids: Sequence[str]) -> dict[str, Any]:
    """RatingReply's schema with exactly these ids as the required keys of `ratings`."""
    return _narrowed(RatingReply, item_ids)


@dataclass(frozen=True)
class RatingFormat:
    """The rating call in one decision format: its reply, instructions, and whether items go by position."""

    reply: type[BaseModel]
    system: str
    by_position: bool

    def schema(self, item_ids: Sequence[str]) -> dict[str, Any]:
        return _narrowed(self.reply, positions(len(item_ids)) if self.by_position else item_ids)

    def list_items(self, items: Sequence[ItemView]) -> str:
        return numbered_lines(items) if self.by_position else id_lines(items)

    def to_ratings(self, reply: BaseModel, item_ids: Sequence[str]) -> tuple[dict[str, int], int]:
        """(item id -> rating, answers about no listed item)."""
        answers: dict[str, int] = reply.ratings  # type: ignore[attr-defined]
        keys = positions(len(item_ids)) if self.by_position else list(item_ids)
        to_id = dict(zip(keys, item_ids, strict=True))
        return {to_id[k]: r for k, r in answers.items() if k in to_id}, sum(1 for k in answers if k not in to_id)


_BY_NUMBER = "The items are numbered. "
_RATINGS_BY_NUMBER = "`ratings` maps the number of every listed item to its rating. Answer with JSON only."
RATING_FORMATS = {
    "full": RatingFormat(RatingReply, RATING_SYSTEM, by_position=False),
    "brief": RatingFormat(BriefRatings, _RATE + _BY_NUMBER + "First `thought`: one short sentence (under 15 "
                          "words, plain ASCII) on how you liked them. Then " + _RATINGS_BY_NUMBER, by_position=True),
    "none": RatingFormat(PositionRatings, _RATE + _BY_NUMBER + _RATINGS_BY_NUMBER, by_position=True),
}


def rating_messages(agent: PersonaAgent, items: list, fmt: RatingFormat = RATING_FORMATS["full"],
                    ) -> list[dict[str, str]]:
    """Persona, the policy's lessons and world-model lines for these items, then the items (static first); in the
    agent's domain's words (the movie domain's are the format's own text)."""
    consumed = agent.domain.consumed
    system = fmt.system.replace("You watched each item", f"You {consumed} each item")
    dynamic = f"Items you {consumed}:\n" + fmt.list_items(items)
    return build_messages(system, dynamic, persona=agent.persona_text, context=agent.policy_context(items))
