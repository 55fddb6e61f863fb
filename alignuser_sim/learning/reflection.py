"""Counterfactual reflection: the human's choice against what the current policy would have done -> lessons.

For one human transition (a page of the persona's rollout and what the human did on it):

1. **Alternatives.** The current policy (the prompt-only persona agent, the one the lessons are meant to
   correct) decides the same page K times at `learning.counterfactual_temperature`. Its decisions become
   actions; the ones equal to the human's action, or to an earlier sample, are dropped (equal = same
   watched items and same exit choice: what the recommender sees). So K bounds the calls, not the result.
2. **Outcomes.** Each action's next state comes from the real recommender (`world_model.true_next_state`):
   the next page, its dominant genres, and how many of its items the person really went on to consume.
   (The world model's predictions of the same outcomes are scored by the learner, not shown here.)
3. **Reflection.** One structured call shows the page, the human's action and the alternatives with
   their outcomes, and asks why the human's choice fits this person better: a first-person `reasoning`
   (kept for the policy's fine-tuning data), what the alternatives get wrong, and 1-3 lessons, each a
   short general rule tagged with what it is about. Lessons that name a title the prompt showed (the page
   or a next page) are dropped (they would not carry to another page) and counted.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from alignuser_sim.agent.persona_agent import HISTORY_SIZE, PersonaAgent
from alignuser_sim.core import MOVIES, Action, Domain, ItemView, NextState, State, call_seed
from alignuser_sim.learning.wording import describe_action, item_lines, page_tags, title
from alignuser_sim.llm.prompts import build_messages
from alignuser_sim.llm.protocol import StructuredLLM

# The reply's bounds are its token budget (`llm.schemas.reply_budget`: the longest reply the schema admits, at
# one character per token), and that budget plus the prompt must fit the server's context (2048 tokens on the
# CPU server): ~1,000 tokens here. The reasoning becomes the policy's `thought` in the fine-tuning data, which
# holds 200 characters, so a longer one would be cut anyway.
LESSON_MAX = 120
REASONING_MAX = 200
MISTAKES_MAX = 160
LessonTag = Literal["genre", "rating", "exploration", "exit", "popularity", "other"]
LESSON_TAGS: tuple[str, ...] = LessonTag.__args__  # type: ignore[attr-defined]



def reflection_system(domain: Domain = MOVIES) -> str:
    """The reflection's system prompt in the domain's words (static for a run)."""
    return (
        "You help a simulated user of a recommender system behave like the real person it stands for. You see "
        "the person, a page of recommendations, what the real person did on it, and what the simulator "
        "considered doing instead, each with what the recommender showed next and how many of those items the "
        f"person really {domain.consumed} later. Explain in the first person, as "
        "the real person, why the real choice fits you better: your taste, your habits, the context, and what "
        "the following pages bring. Say what the alternatives get wrong. Then write 1 to 3 lessons: short, "
        "general rules about how you behave that hold on other pages too (never name a specific title), each "
        "tagged genre, rating, exploration, exit, popularity or other. Answer with JSON only, in plain ASCII."
    )


REFLECTION_SYSTEM = reflection_system()  # the movie domain's


class Lesson(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=LESSON_MAX)
    tag: LessonTag


class Reflection(BaseModel):
    """The reflection call's answer."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str = Field(max_length=REASONING_MAX)  # first person: why I did what I did
    mistakes: str = Field(max_length=MISTAKES_MAX)  # what the alternatives get wrong about me
    lessons: list[Lesson] = Field(min_length=1, max_length=3)


# --- 1. alternatives -------------------------------------------------------------------------------------


@dataclass
class Alternatives:
    actions: list[Action]
    samples: int  # calls made (K)
    failures: list[str] = field(default_factory=list)  # failure kinds of sampling calls
    same_as_human: int = 0
    duplicates: int = 0  # equal to an earlier sample
    prompt_tokens: int = 0
    completion_tokens: int = 0


def sample_seed(seed: int, user_id: str, step: int, j: int) -> int:
    return call_seed(seed, "cf", user_id, step, j)


async def sample_alternatives(llm: StructuredLLM, agent: PersonaAgent, state: State, human: Action,
                              views: dict[str, ItemView], k: int, temperature: float, seed: int) -> Alternatives:
    """K policy decisions on the state's page at `temperature`, as distinct actions unlike the human's. The
    agent asks in its own decision format (the scenario's `policy.reasoning`), with room for the longest
    reply that format's schema admits (`PersonaAgent.ask`)."""
    page = [views.get(i) or ItemView(i, f"item {i}") for i in state.page]
    decisions = await asyncio.gather(*(
        agent.ask(llm, state.page_no, page, seed=sample_seed(seed, state.user_id, state.step, j),
                  temperature=temperature)
        for j in range(k)))
    out = Alternatives(actions=[], samples=k)
    seen = {human.key}
    for decision in decisions:
        out.prompt_tokens += decision.prompt_tokens
        out.completion_tokens += decision.completion_tokens
        if decision.failure is not None:
            out.failures.append(decision.failure)
            continue
        action = Action.of({i: None if r is None else float(r) for i, r in decision.ratings.items()},
                           decision.action == "exit")
        if action.key == human.key:
            out.same_as_human += 1
        elif action.key in seen:
            out.duplicates += 1
        else:
            seen.add(action.key)
            out.actions.append(action)
    return out


# --- 3. reflection ---------------------------------------------------------------------------------------


def outcome_text(truth: NextState, views: dict[str, ItemView], domain: Domain = MOVIES) -> str:
    titles = "; ".join(title(i, views) for i in truth.items)
    where = "Next page" if truth.continues else "Next visit would start with"
    genres = ", ".join(truth.genres) or "mixed genres"
    return f"{where}: {titles} (mostly {genres}; {truth.hits} {domain.consumed} later)."


def reflection_messages(persona_text: str, state: State, human: Action, human_truth: NextState,
                        alternatives: Sequence[Action], alternative_truths: Sequence[NextState],
                        views: dict[str, ItemView], history_size: int = HISTORY_SIZE,
                        domain: Domain = MOVIES) -> list[dict[str, str]]:
    """The reflection prompt, static first: system, persona; recent history; the page and the choices. Items
    by title (ids say nothing to the model and only lengthen the prompt), page items by their place once listed
    with the rating stats the page showed, what the page's items share said once; in the domain's words."""
    tags = page_tags(state.page)

    def name(item_id: str) -> str:
        return tags.get(item_id) or title(item_id, views)

    alts = "\n".join(f"- {describe_action(a, name, domain)}.\n  {outcome_text(t, views, domain)}"
                     for a, t in zip(alternatives, alternative_truths, strict=True))
    page = item_lines(state.page, views, tags=True, stats=True)
    dynamic = (
        f"Page {state.page_no + 1} of a visit. Recommended items:\n{page}\n\n"
        f"What the real person did: {describe_action(human, name, domain)}.\n"
        f"  {outcome_text(human_truth, views, domain)}\n\n"
        f"What the simulator considered instead:\n{alts}"
    )
    recent = state.recent(views, n=history_size, domain=domain)
    return build_messages(reflection_system(domain), dynamic, persona=persona_text, context=[recent])


def reflection_seed(seed: int, user_id: str, step: int) -> int:
    return call_seed(seed, "reflect", user_id, step)


_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


def _title_key(title: str) -> str:
    return " ".join(_YEAR.sub("", title).lower().split())


def clean_lessons(reply: Reflection, shown: Sequence[ItemView], min_chars: int = 12) -> tuple[list[Lesson], int]:
    """The reply's usable lessons and how many were dropped: too short, repeated, or naming the title of an
    item the prompt showed (titles of 5+ letters: a short one like "Heat" is an ordinary word too)."""
    titles = [t for t in (_title_key(v.title) for v in shown) if len(t) >= 5]
    kept: list[Lesson] = []
    seen: set[str] = set()
    dropped = 0
    for lesson in reply.lessons:
        text = " ".join(lesson.text.split())
        low = text.lower()
        if len(text) < min_chars or low in seen or any(t in low for t in titles):
            dropped += 1
            continue
        seen.add(low)
        kept.append(Lesson(text=text, tag=lesson.tag))
    return kept, dropped
