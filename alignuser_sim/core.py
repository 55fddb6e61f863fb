"""The types every stage shares, and the one way to seed randomness.

An item as a user sees it (`ItemView`, `Catalogue`), a user's place in a rollout (`State`), what they do on
a page (`Action`), what the recommender serves after it (`NextState`), and the feedback a page sends back
to the recommender. They live here, below every package, so data, agents, learning and simulation speak
the same types without importing each other. `Domain` holds the words every prompt uses for the items and
what users do with them (movies are watched by viewers, games played by players).

Randomness: every draw that must survive a resume or a re-run is seeded from the scenario's seed, the
user, and a named purpose (`user_rng`), and every LLM call's sampling seed from its identifying parts
(`call_seed`). One seed reproduces a run; no global random state is used.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

DESCRIPTION_MAX = 160
TITLE_MAX = 60

# Feedback of one page to the recommender: (user id, watched item -> rating or None, every item shown).
Feedback = tuple[str, dict[str, float | None], list[str]]


# --- seeded randomness ------------------------------------------------------------------------------------

# The purposes of per-user generators. Each number is part of the seed, so changing one changes results:
# they are the values the generators have always used.
PURPOSE_EVAL_POSITIVES = 0      # evaluation: which held-out positives a user's pages hold
PURPOSE_EVAL_NEGATIVES = 1      # evaluation: never-rated negatives drawn for a user
PURPOSE_EVAL_RATINGS = 2        # evaluation: which watched items the rating call asks about
PURPOSE_EVAL_RANDOM_REFERENCE = 3  # evaluation (+ ratio, page): the `random` reference policy's watches
PURPOSE_EVAL_PAGES = 100        # + ratio: the evaluation's page order at that ratio
PURPOSE_LEARN_TRANSITIONS = 101  # learning: which training transitions a persona learns from
PURPOSE_EXPORT_PAGES = 202      # fine-tuning export: which pages a persona contributes


def user_rng(seed: int, user_id: str, *purpose: int) -> np.random.Generator:
    """A generator for one user and purpose: (seed, crc32(user id), *purpose). The same user draws the same
    values whatever else is in the population, and in any process."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(user_id.encode()), *purpose])


def call_seed(*parts: object) -> int:
    """An LLM call's sampling seed from its identifying parts (run seed, kind, user, step ...): the same call
    gets the same seed in a re-run, so it hits the completion cache and samples the same reply."""
    return zlib.crc32(":".join(str(p) for p in parts).encode())


# --- items ------------------------------------------------------------------------------------------------


# --- the domain's words ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Domain:
    """The words prompts use for a dataset's items and what its users do with them: "a regular player who
    plays widely" for a games dataset, not "a regular viewer who watches". Prose only: JSON keys and schemas
    (`watched`, `watch`) stay the same in every domain, as parsers and fine-tuning data depend on them."""

    name: str
    item: str  # movie
    items: str  # movies
    consume: str  # watch
    consumed: str  # watched
    consumes: str  # watches
    consuming: str  # watching
    user: str  # viewer
    casual_items: str = ""  # films: the plural a user says in a thought (examples); "" = `items`

    @property
    def spoken_items(self) -> str:
        return self.casual_items or self.items


MOVIES = Domain("movies", "movie", "movies", "watch", "watched", "watches", "watching", "viewer", "films")
DOMAINS: dict[str, Domain] = {d.name: d for d in (
    MOVIES,
    Domain("books", "book", "books", "read", "read", "reads", "reading", "reader"),
    Domain("games", "game", "games", "play", "played", "plays", "playing", "player"),
    Domain("products", "product", "products", "buy", "bought", "buys", "buying", "shopper"),
    Domain("items", "item", "items", "try", "tried", "tries", "trying", "user"),
)}


# --- items ------------------------------------------------------------------------------------------------


def stats_suffix(avg_rating: float | None, n_ratings: int) -> str:
    """An item's popularity as a platform shows it: ' - rated 4.1/5 by 1,234 users'; ' - 1,234 users' where
    the dataset has no ratings (the users who interacted); '' without either. Short: it is on every line."""
    if n_ratings <= 0:
        return ""
    users = f"{n_ratings:,} user" + ("s" if n_ratings != 1 else "")
    return f" - rated {avg_rating:.1f}/5 by {users}" if avg_rating is not None else f" - {users}"


# (lowest share of the other rated items an item out-counts, word): the bands of `pages.popularity_words`
POPULARITY_BANDS = ((0.9, "very popular"), (0.6, "popular"), (0.3, "little known"), (0.0, "obscure"))


def popularity_word(share_below: float) -> str:
    """A word for where an item's number of ratings ranks in the catalogue (`share_below`: the share of the
    other rated items it out-counts). Why a word: a 135M model does not compare "by 2,345 users" with "by 12
    users" across lines (BENCHMARKS.md, "What the page decisions follow"); a word it can copy is a cue it
    may use."""
    return next(word for floor, word in POPULARITY_BANDS if share_below >= floor)


@dataclass(frozen=True)
class ItemView:
    """What a user sees of an item on a page, with its rating stats from the training split where the scenario
    shows them (`pages.show_item_stats`, `data/item_stats.py`)."""

    item_id: str
    title: str
    genres: tuple[str, ...] = ()
    description: str = ""
    avg_rating: float | None = None
    n_ratings: int = 0
    popularity: str = ""  # a band word (`popularity_word`) where the scenario shows them

    @property
    def stats(self) -> str:
        return stats_suffix(self.avg_rating, self.n_ratings)

    def line(self) -> str:
        """`- id 42: Title (genres) - rated 4.1/5 by 1,234 users. Description` (answered by id)."""
        return f"- id {self.item_id}: {self.text()}"

    def text(self) -> str:
        """The item without its id: `[popular] Title (genres) - rated 4.1/5 by 1,234 users. Description`."""
        text = f"[{self.popularity}] " if self.popularity and self.n_ratings > 0 else ""  # first: not drowned
        text += self.title
        if self.genres:
            text += f" ({', '.join(self.genres)})"
        text += self.stats  # before the description, which is cut mid-sentence
        if self.description:
            text += f". {self.description[:DESCRIPTION_MAX]}"
        return text


def short_title(view: ItemView) -> str:
    title = view.title
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 3] + "..."


class Catalogue:
    """Item id -> what a user sees of it. Built once per process from the items table; its optional columns
    `avg_rating`, `n_ratings` and `popularity` (`data/item_stats.py`) travel with the table, to Ray shards
    too."""

    def __init__(self, items: pa.Table):
        ids = items["item_id"].to_pylist()

        def column(name: str) -> list[Any]:
            return items[name].to_pylist() if name in items.column_names else [None] * len(ids)

        self.views = {
            i: ItemView(i, t or f"item {i}", tuple(g or ()), d or "",
                        None if a is None or a != a else float(a), int(n or 0), w or "")  # a != a: NaN
            for i, t, g, d, a, n, w in zip(ids, column("title"), column("genres"), column("description"),
                                           column("avg_rating"), column("n_ratings"), column("popularity"),
                                           strict=True)
        }

    def page(self, item_ids: Sequence[str]) -> list[ItemView]:
        return [self.views.get(i) or ItemView(i, f"item {i}") for i in item_ids]


# --- states and actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """What a user does on a page: items watched (id -> rating, None when unrated), then exit or go on."""

    watched: tuple[tuple[str, float | None], ...]
    exit: bool

    @classmethod
    def of(cls, watched: dict[str, float | None], exit: bool) -> Action:
        return cls(tuple((i, None if r is None else float(r)) for i, r in watched.items()), bool(exit))

    @property
    def key(self) -> tuple[frozenset[str], bool]:
        """What the recommender sees of the action (ratings change no model): equal keys, equal outcomes."""
        return frozenset(i for i, _ in self.watched), self.exit

    @property
    def watched_ids(self) -> list[str]:
        return [i for i, _ in self.watched]

    def to_dict(self) -> dict[str, Any]:
        return {"watched": [i for i, _ in self.watched], "ratings": [r for _, r in self.watched],
                "action": "exit" if self.exit else "next_page"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Action:
        return cls(tuple(zip(data["watched"], data["ratings"], strict=True)), data["action"] == "exit")

    def describe(self, views: dict[str, ItemView]) -> str:
        """The action as prompt text: 'watched X (rated 4), Y; then went on to the next page'."""
        if self.watched:
            parts = []
            for item_id, rating in self.watched:
                title = short_title(views[item_id]) if item_id in views else item_id
                parts.append(f"{title} (id {item_id}, rated {rating:g})" if rating is not None
                             else f"{title} (id {item_id})")
            what = "watched " + ", ".join(parts)
        else:
            what = "watched nothing"
        return what + ("; then left (exit)" if self.exit else "; then went on to the next page")


@dataclass
class State:
    """A persona's position in its human rollout: the history before a page, and the page."""

    user_id: str
    step: int
    session: int
    page_no: int
    history: list[tuple[str, float | None]]  # (item id, rating) consumed before the page, oldest first
    page: list[str]
    future: frozenset[str] = frozenset()  # items the user consumed after this page (training split): not shown

    def recent(self, views: dict[str, ItemView], n: int, domain: Domain = MOVIES) -> str:
        if not self.history:
            return f"You have not {domain.consumed} anything yet."
        shown = [f"{short_title(views[i]) if i in views else i}" + (f" (rated {r:g})" if r is not None else "")
                 for i, r in self.history[-n:]]
        return f"You recently {domain.consumed}: " + "; ".join(shown) + "."


@dataclass
class NextState:
    """The truth: what the recommender serves after an action, and what follows from it."""

    items: list[str]  # the next page, best first
    genres: list[str]  # its dominant genres
    continues: bool
    added: list[str]  # the history change: the items watched
    hits: int  # items on the next page that the user really consumed later (an outcome signal)
    near: list[str] = field(default_factory=list)  # the next-ranked items after the page (plausible misses)

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "genres": self.genres, "continues": self.continues, "added": self.added,
                "hits": self.hits, "near": self.near}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NextState:
        return cls(list(data["items"]), list(data["genres"]), bool(data["continues"]), list(data["added"]),
                   int(data["hits"]), list(data.get("near") or []))
