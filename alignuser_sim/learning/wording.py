"""How learning's prompts name items and actions: by title or by their number in the prompt, never by id.

Ids say nothing to a model and their length is the dataset's (Amazon's ten-character ASINs, long hashes), so
a prompt that repeats them grows with them; titles carry the content. What every item of a list shares
(Amazon's top category levels, "Video Games, PC") is said once above the list, not on every line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from alignuser_sim.core import MOVIES, Action, Domain, ItemView, short_title

NO_TITLE = "(untitled item)"


def title(item_id: str, views: dict[str, ItemView]) -> str:
    view = views.get(item_id)
    return short_title(view) if view is not None else NO_TITLE


def describe_action(action: Action, name: Callable[[str], str], domain: Domain = MOVIES) -> str:
    """'watched X (rated 4), Y; then went on to the next page' (in the domain's verb), each watched item as
    `name` calls it."""
    watched = ", ".join(name(i) + (f" (rated {r:g})" if r is not None else "") for i, r in action.watched)
    return (f"{domain.consumed} {watched or 'nothing'}; then "
            + ("left (exit)" if action.exit else "went on to the next page"))


def shared_genres(views: Sequence[ItemView]) -> list[str]:
    """The genres every item of a list (of two or more) has: said once for the list."""
    if len(views) < 2:
        return []
    common = set(views[0].genres).intersection(*(v.genres for v in views[1:]))
    return [g for g in views[0].genres if g in common]


def item_lines(item_ids: Sequence[str], views: dict[str, ItemView], top: int = 3, tags: bool = False,
               stats: bool = False) -> str:
    """A list of titles with their genres (at most `top` each), the genres they all share said once in a first
    line; with `tags`, each item numbered by its place (P1, P2, ...: `page_tags`) so the rest of the prompt
    can name it without repeating its title; with `stats`, each item's rating stats as the page showed them
    (`ItemView.stats`, where the catalogue has them)."""
    known = [views[i] for i in item_ids if i in views]
    common = shared_genres(known)
    lines = [f"(every item: {', '.join(common)})"] if common else []
    for n, item_id in enumerate(item_ids):
        view = views.get(item_id)
        genres = [g for g in view.genres if g not in common][:top] if view is not None else []
        lines.append(f"{f'P{n + 1}.' if tags else '-'} {title(item_id, views)}"
                     + (f" ({', '.join(genres)})" if genres else "")
                     + (view.stats if stats and view is not None else ""))
    return "\n".join(lines)


def page_tags(item_ids: Sequence[str]) -> dict[str, str]:
    """Item id -> its place on the page as the prompt names it (P1, P2, ...)."""
    return {item_id: f"P{n + 1}" for n, item_id in enumerate(item_ids)}
