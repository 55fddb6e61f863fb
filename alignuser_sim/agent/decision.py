"""The decision formats: what a persona agent may answer for one page, declared once per format.

Output tokens are what a simulation costs (a CPU or GPU server is decode-bound), so a scenario chooses how
much an agent writes per page (`policy.reasoning`):

- `full`: a thought, and per item on the page watch / rating / a short feeling, then the action
  (`PageDecision`, keyed by item id: about 240 output tokens for a 4-item page);
- `brief`: one short thought (the paper's thought-action consistency needs one), then the compact choice;
- `none`: the compact choice only, `{"watched":{"2":4},"exit":false}`: the page is listed numbered, and
  `watched` maps the 1-based positions of the items watched to their ratings. Nothing in the reply grows
  with id length or page size, only with the items watched (10 tokens for a page left alone, 26 for four
  watched, with the embedded model's tokenizer).

A `DecisionFormat` holds everything that differs between them: the reply model, its schema narrowed to the
page (a schema-enforcing server such as vLLM cannot answer an item twice, nor one that is not on the page),
the format's part of the system prompt (static for a run, so the prefix cache keeps serving it; in the words
of the scenario's domain, `core.Domain`, while JSON keys stay `watch` / `watched`), how the page is
listed, and the two mappings between a reply and a `Decision` (which always speaks of item ids). The
format lives apart from the agent because the same replies are sampled for counterfactuals (learning),
written as fine-tuning targets, evaluated and benchmarked.

A server that does not enforce schemas may still answer ids or positions not on the page: those are
rejected and counted (`invalid_ids`); items left unanswered count as not watched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignuser_sim.core import MOVIES, Domain, ItemView
from alignuser_sim.llm.schemas import json_schema_for

Reasoning = Literal["none", "brief", "full"]
REASONINGS: tuple[str, ...] = Reasoning.__args__  # type: ignore[attr-defined]
THOUGHT_MAX = 200
BRIEF_THOUGHT_MAX = 100
FEELING_MAX = 80
Rating = Literal[1, 2, 3, 4, 5]

# --- the replies -----------------------------------------------------------------------------------------


class ItemDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    watch: bool
    rating: Rating | None
    feeling: str = Field(max_length=FEELING_MAX)


class PageDecision(BaseModel):
    """`full`: what the LLM answers for one page (validated; ids are checked against the page afterwards)."""

    model_config = ConfigDict(extra="forbid")
    thought: str = Field(max_length=THOUGHT_MAX)
    items: dict[str, ItemDecision]  # item id -> the decision about it
    action: Literal["next_page", "exit"]


class CompactDecision(BaseModel):
    """`none`: the watched page positions ("1" is the first item listed) with their ratings, and the action."""

    model_config = ConfigDict(extra="forbid")
    watched: dict[str, Rating | None]  # null: watched, no rating given (as `full` allows)
    exit: bool


class BriefDecision(BaseModel):
    """`brief`: one short thought first (the choice follows from it), then the compact choice."""

    model_config = ConfigDict(extra="forbid")
    thought: str = Field(max_length=BRIEF_THOUGHT_MAX)
    watched: dict[str, Rating | None]
    exit: bool


@dataclass
class Decision:
    """An agent's decision on one page, after checking it against the page: always in item ids."""

    ratings: dict[str, int | None]  # watched item -> rating (None: watched, no rating given)
    feelings: dict[str, str]  # empty unless the format asks for feelings (`full`)
    thought: str | None  # None when the format has no thought (`none`) or the call failed
    action: str  # next_page | exit
    failure: str | None = None
    invalid_ids: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    from_cache: bool = False


# --- schemas narrowed to the page ---------------------------------------------------------------------------

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


def positions(n: int) -> list[str]:
    """The keys a compact reply may use for a page of `n` items: "1" .. "n"."""
    return [str(i) for i in range(1, n + 1)]


@lru_cache(maxsize=64)
def _watched_schema(model: type[BaseModel], n: int) -> dict[str, Any]:
    """`model`'s schema with `watched` open to the page's positions only, each optional (cached per size:
    the schema depends on how many items the page has, not which). Callers must not mutate it."""
    base = json_schema_for(model)
    value = base["properties"]["watched"]["additionalProperties"]
    watched = {"type": "object", "properties": {p: value for p in positions(n)}, "required": [],
               "additionalProperties": False}
    return {**base, "properties": {**base["properties"], "watched": watched}}


def _full_schema(page: Sequence[ItemView]) -> dict[str, Any]:
    return page_schema([i.item_id for i in page])


def _brief_schema(page: Sequence[ItemView]) -> dict[str, Any]:
    return _watched_schema(BriefDecision, len(page))


def _none_schema(page: Sequence[ItemView]) -> dict[str, Any]:
    return _watched_schema(CompactDecision, len(page))


# --- how the page is listed ---------------------------------------------------------------------------------


def id_lines(page: Sequence[ItemView]) -> str:
    """`- id 42: Title (genres) - rated 4.1/5 by 1,234 users. Description`: the items named by id (`full` answers
    by id)."""
    return "\n".join(item.line() for item in page)


def numbered_lines(page: Sequence[ItemView]) -> str:
    """`1. Title (genres) - rated 4.1/5 by 1,234 users. Description`: the items by position, no ids (compact
    replies answer by position); the stats where the catalogue has them (`ItemView.stats`)."""
    return "\n".join(f"{n}. {item.text()}" for n, item in enumerate(page, 1))


# --- replies <-> decisions -----------------------------------------------------------------------------------


def check_decision(reply: PageDecision, page: Sequence[ItemView]) -> Decision:
    """`full`: keep the answers about items on the page; count the others."""
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


def full_reply(decision: Decision, page: Sequence[ItemView]) -> PageDecision:
    items = {i.item_id: ItemDecision(watch=i.item_id in decision.ratings, rating=decision.ratings.get(i.item_id),
                                     feeling=decision.feelings.get(i.item_id, "")[:FEELING_MAX]) for i in page}
    return PageDecision(thought=clip_thought(decision.thought or "", THOUGHT_MAX), items=items,
                        action="exit" if decision.action == "exit" else "next_page")


def compact_decision(reply: CompactDecision | BriefDecision, page: Sequence[ItemView]) -> Decision:
    """Positions back to the page's ids; a position not on the page is counted, not kept."""
    ratings: dict[str, int | None] = {}
    invalid = 0
    for position, rating in reply.watched.items():
        n = int(position) if position.isdigit() else 0
        if not 1 <= n <= len(page):
            invalid += 1
            continue
        ratings[page[n - 1].item_id] = rating
    return Decision(ratings=ratings, feelings={}, thought=getattr(reply, "thought", None),
                    action="exit" if reply.exit else "next_page", invalid_ids=invalid)


def _watched_positions(decision: Decision, page: Sequence[ItemView]) -> dict[str, int | None]:
    return {str(n): decision.ratings[item.item_id] for n, item in enumerate(page, 1)
            if item.item_id in decision.ratings}


def compact_reply(decision: Decision, page: Sequence[ItemView]) -> CompactDecision:
    return CompactDecision(watched=_watched_positions(decision, page), exit=decision.action == "exit")


def brief_reply(decision: Decision, page: Sequence[ItemView]) -> BriefDecision:
    return BriefDecision(thought=clip_thought(decision.thought or "", BRIEF_THOUGHT_MAX),
                         watched=_watched_positions(decision, page), exit=decision.action == "exit")


def clip_thought(text: str, limit: int) -> str:
    """`text` on one line, cut at the last word boundary that fits `limit` characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


# --- the formats ---------------------------------------------------------------------------------------------

ROLE = (
    "You simulate one real user of a recommender system. Each turn you see one page of recommended "
    "items. Decide like this user would, not like an assistant: real users skip most items and rate "
    "honestly. "
)
# The examples are compact JSON on purpose: a model that has seen the exact shape writes its canonical tokens
# (without them the embedded model spent ~5 tokens a reply more on the same text, 29-30 instead of 22 per page).


def _compact_choice(d: Domain) -> str:
    return (f"`watched` maps the number of each item you {d.consume} to your rating from 1 (hated it) to 5 (loved "
            "it); leave out the items you skip. `exit` is true to leave, false to see the next page. Answer with "
            "JSON only")


def _full_instructions(d: Domain) -> str:
    # the key is `watch` in every domain: where the verb is another, say what it means
    watch = "watch (true or false)" if d.consume == "watch" else f"watch (true if you {d.consume} it, else false)"
    return (f"For every item on the page give: {watch}, your rating from 1 to 5 if you {d.consume} "
            "it (null if you do not), and a short feeling. Then choose the action: next_page to see more items, or "
            "exit to leave. Answer with JSON only, in plain ASCII without emoji. Keep the thought under 30 words "
            "and each feeling under 12 words.")


def _brief_instructions(d: Domain) -> str:
    return ("The items are numbered. First `thought`: one short sentence (under 15 words, plain ASCII) on what "
            "you pick and why. Then " + _compact_choice(d) + ', e.g. {"thought":"Nothing here for me.",'
            '"watched":{},"exit":true} or {"thought":"Two ' + d.spoken_items + ' I like.","watched":{"1":2,"3":5},'
            '"exit":false}.')


def _none_instructions(d: Domain) -> str:
    return ("The items are numbered. " + _compact_choice(d)
            + ', e.g. {"watched":{},"exit":false} or {"watched":{"1":2,"3":5},"exit":true}.')


@dataclass(frozen=True, kw_only=True)
class DecisionFormat:
    """One way of answering a page (see the module docstring). Plain data: every field is declared here."""

    name: Reasoning
    reply: type[BaseModel]  # the pydantic model a reply validates against
    instructions: Callable[[Domain], str]  # the format's part of the system prompt (after ROLE), in a domain's words
    thought_max: int | None  # longest thought in characters; None: the reply has no thought
    schema: Callable[[Sequence[ItemView]], dict[str, Any]]  # the reply's schema narrowed to this page
    list_page: Callable[[Sequence[ItemView]], str]  # the page's items as the prompt lists them
    to_decision: Callable[[Any, Sequence[ItemView]], Decision]  # a validated reply -> a Decision in ids
    to_reply: Callable[[Decision, Sequence[ItemView]], BaseModel]  # a Decision -> the reply (fine-tuning)

    def system_for(self, domain: Domain) -> str:
        """The whole system prompt before the persona, in the domain's words: the same for every agent of a run
        (the prefix cache serves it). JSON keys stay `watch` / `watched` in every domain."""
        return ROLE + self.instructions(domain)

    @property
    def system(self) -> str:
        """The movie domain's system prompt."""
        return self.system_for(MOVIES)


FULL = DecisionFormat(
    name="full", reply=PageDecision, thought_max=THOUGHT_MAX, instructions=_full_instructions,
    schema=_full_schema, list_page=id_lines,
    to_decision=check_decision, to_reply=full_reply,
)
BRIEF = DecisionFormat(
    name="brief", reply=BriefDecision, thought_max=BRIEF_THOUGHT_MAX, instructions=_brief_instructions,
    schema=_brief_schema, list_page=numbered_lines,
    to_decision=compact_decision, to_reply=brief_reply,
)
NONE = DecisionFormat(
    name="none", reply=CompactDecision, thought_max=None, instructions=_none_instructions,
    schema=_none_schema, list_page=numbered_lines,
    to_decision=compact_decision, to_reply=compact_reply,
)
FORMATS: dict[str, DecisionFormat] = {f.name: f for f in (NONE, BRIEF, FULL)}


def decision_format(reasoning: str) -> DecisionFormat:
    """The format a scenario's `policy.reasoning` names (the config admits only these names)."""
    return FORMATS[reasoning]
