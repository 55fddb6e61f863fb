"""What the judge reads and answers: sessions rendered as text, the two system prompts, the reply schemas.

Simulated and human sessions go through the same `render_session`, so the judge cannot tell them apart by
their form (evaluation/judge.py says why the agents' thoughts stay out of the human-likeness prompt).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignuser_sim.core import MOVIES, Catalogue, Domain

REASON_MAX = 200


# --- the replies ----------------------------------------------------------------------------------------


class LikenessReply(BaseModel):
    """How human the session looks, 1 (clearly a machine) to 5 (indistinguishable from a real user)."""

    model_config = ConfigDict(extra="forbid")
    score: Literal[1, 2, 3, 4, 5]
    reason: str = Field(max_length=REASON_MAX)


class ConsistencyReply(BaseModel):
    """Whether the thought written before a decision supports the action taken."""

    model_config = ConfigDict(extra="forbid")
    consistent: bool
    reason: str = Field(max_length=REASON_MAX)


# --- sessions and their text ---------------------------------------------------------------------------------


@dataclass
class Page:
    items: list[str]
    watched: list[bool]
    ratings: list[float | None]  # None or NaN: watched without a rating
    action: str  # next_page | exit
    thought: str | None = None


@dataclass
class Session:
    side: str
    user_id: str
    session: int
    pages: list[Page] = field(default_factory=list)
    failed: bool = False


def sessions_of(rows: Iterable[Mapping[str, Any]], side: str, user_key: str, page_cap: int) -> dict[str, list[Session]]:
    """user -> their sessions in session order (events or rollout rows as dicts), pages cut at `page_cap`."""
    found: dict[tuple[str, int], Session] = {}
    for row in sorted(rows, key=lambda r: (r[user_key], int(r["session"]), int(r["page"]))):
        if int(row["page"]) >= page_cap:
            continue
        s = found.setdefault((row[user_key], int(row["session"])), Session(side, row[user_key], int(row["session"])))
        if row.get("failure"):
            s.failed = True
            continue
        thought = row.get("thought")
        s.pages.append(Page(list(row["items"]), list(row["watched"]), list(row["ratings"]), row["action"],
                            thought.strip() if isinstance(thought, str) and thought.strip() else None))
    out: dict[str, list[Session]] = defaultdict(list)
    for s in found.values():
        if s.pages and not s.failed:
            out[s.user_id].append(s)
    return dict(out)


def _rating(r: float | None) -> str:
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "no rating"
    return f"rated {float(r):g}/5" if 1 <= float(r) <= 5 else f"rated {float(r):g}"


def _item(catalogue: Catalogue, item_id: str) -> str:
    view = catalogue.page([item_id])[0]
    return f"{view.title} ({', '.join(view.genres)})" if view.genres else view.title


def _shown(page: Page, catalogue: Catalogue) -> list[str]:
    return [f"  {n}. {_item(catalogue, i)}" for n, i in enumerate(page.items, 1)]


def _took(page: Page, catalogue: Catalogue, domain: Domain) -> str:
    chosen = [f"{catalogue.page([i])[0].title} ({_rating(r)})"
              for i, w, r in zip(page.items, page.watched, page.ratings, strict=True) if w]
    return f"{domain.consumed}: " + ("; ".join(chosen) if chosen else "nothing")


def _then(action: str) -> str:
    return "then: left" if action == "exit" else "then: asked for the next page"


def render_session(session: Session, catalogue: Catalogue, domain: Domain = MOVIES, page_cap: int | None = None,
                   thoughts: bool = False) -> str:
    """The session as the judge reads it: per page the items shown, what was taken and rated, the action
    (and the thought, where there is one and `thoughts`). The same text for a human and a simulated session."""
    lines = []
    for n, page in enumerate(session.pages, 1):
        lines.append(f"Page {n}, shown:")
        lines += _shown(page, catalogue)
        if thoughts and page.thought:
            lines.append(f"thought: {page.thought}")
        lines.append(_took(page, catalogue, domain))
        lines.append(_then(page.action))
    if session.pages[-1].action != "exit" and page_cap is not None and len(session.pages) >= page_cap:
        lines.append(f"(the session ends here: the site shows at most {page_cap} pages)")
    return "\n".join(lines)


def render_decision(page: Page, catalogue: Catalogue, domain: Domain = MOVIES) -> str:
    """One decision for the consistency check: the page, the thought, the action taken."""
    lines = ["Page shown:", *_shown(page, catalogue), f"Thought written before deciding: {page.thought}",
             "Action taken:", _took(page, catalogue, domain)]
    skipped = [catalogue.page([i])[0].title for i, w in zip(page.items, page.watched, strict=True) if not w]
    lines.append("skipped: " + ("; ".join(skipped) if skipped else "nothing"))
    lines.append(_then(page.action))
    return "\n".join(lines)


def likeness_system(domain: Domain) -> str:
    return (
        f"You judge how human a browsing session on a {domain.item} recommendation site looks. The session "
        f"is one {domain.user} going through pages of recommended {domain.items}: what each page showed, what "
        f"they {domain.consumed} and how they rated it, and whether they went on or left. It comes either from a "
        f"real {domain.user} or from a simulation; you are not told which. Consider whether the choices, the "
        f"ratings and the moment of leaving look like what a real person does. "
        f"Score the session from 1 (clearly not a real {domain.user}) to 5 (indistinguishable "
        f"from a real {domain.user}), with one short sentence as the reason. Answer with JSON only: "
        '{"score": 1-5, "reason": "..."}')


def consistency_system(domain: Domain) -> str:
    return (
        f"You check one decision of a {domain.user} on a page of recommended {domain.items}: the thought they "
        f"wrote before deciding and the action they took (the {domain.items} they {domain.consumed} and "
        f"skipped, their ratings, and whether they went on to the next page or left). Say whether the thought "
        f"supports the action: consistent is true when the action follows from the thought, false when it "
        f"contradicts it. Give one short sentence as the reason. Answer with JSON only: "
        '{"consistent": true or false, "reason": "..."}')
