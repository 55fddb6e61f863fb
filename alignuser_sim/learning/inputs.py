"""What learning reads, built once from a scenario: `prepare(scenario) -> LearningInputs`.

Learning sees the TRAINING split only (`data.holdout.split_dataset`): the human rollouts are built from it,
the recommender that gives the true transitions is fitted on it, and taste text is written from it. The
population is the simulation's, less the users without training interactions; personas are built as the
simulation builds them, so what is learned for a persona is what its simulated agent is.
"""

from __future__ import annotations

import math
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.config import Scenario
from alignuser_sim.core import (
    MOVIES,
    PURPOSE_LEARN_TRANSITIONS,
    Action,
    Catalogue,
    Domain,
    ItemView,
    NextState,
    State,
    user_rng,
)
from alignuser_sim.data import load_dataset
from alignuser_sim.data.domain import dataset_domain
from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.data.item_stats import agent_items, without_own_interactions
from alignuser_sim.data.personas import Persona, build_personas
from alignuser_sim.data.population import select_population
from alignuser_sim.data.rollouts import build_rollouts
from alignuser_sim.errors import UserError
from alignuser_sim.learning.world_model import Example, true_next_state
from alignuser_sim.recommenders import make_recommender
from alignuser_sim.recommenders.base import Recommender

# one consumed item of the training split: (item id, rating or None, liked or None)
Consumed = tuple[str, float | None, bool | None]


@dataclass
class Step:
    """One page of a human rollout."""

    step: int
    session: int
    page_no: int
    items: list[str]
    watched: dict[str, float | None]
    exit: bool


@dataclass
class LearningInputs:
    """Everything learning reads, built once from the scenario (`prepare`)."""

    scenario: Scenario
    users: list[str]
    personas: dict[str, Persona]
    steps: dict[str, list[Step]]
    views: dict[str, ItemView]
    catalogue_ids: list[str]
    consumed: dict[str, list[Consumed]]  # training interactions, oldest first
    recommender: Recommender | None = None  # fitted on the training split (None: `prepare(fit=False)`)
    domain: Domain = MOVIES  # the words of every learning prompt (the scenario's `dataset.domain`)
    item_users: dict[str, int] = field(default_factory=dict)  # distinct training users per item
    _own_views: dict[str, Mapping[str, ItemView]] = field(default_factory=dict, repr=False)

    def views_for(self, user_id: str) -> Mapping[str, ItemView]:
        """`views` as this user's training pages show them: their own interactions out of every item's stats
        (`item_stats.without_own_interactions` says why), so training examples show items as the evaluation
        does."""
        cached = self._own_views.get(user_id)
        if cached is None:
            own: dict[str, list[float | None]] = {}
            for item, rating, _liked in self.consumed.get(user_id, []):
                own.setdefault(item, []).append(rating)
            changed = {i: without_own_interactions(self.views[i], ratings, self.item_users.get(i, 0))
                       for i, ratings in own.items() if i in self.views}
            cached = self._own_views[user_id] = ChainMap(changed, self.views)
        return cached

    @property
    def k(self) -> int:
        return self.scenario.pages.items_per_page

    @property
    def history_size(self) -> int:
        return self.scenario.policy.history_size

    def state(self, user_id: str, step: int) -> State:
        steps = self.steps[user_id]
        here = steps[step]
        history = [(i, r) for s in steps[:step] for i, r in s.watched.items()]
        future = frozenset(i for s in steps[step + 1:] for i in s.watched)
        return State(user_id, step, here.session, here.page_no, history, list(here.items), future)

    def human_action(self, user_id: str, step: int) -> Action:
        here = self.steps[user_id][step]
        return Action.of(here.watched, here.exit)

    def sampled_steps(self, user_id: str) -> list[int]:
        """The transitions learned from, drawn per user (seeded by scenario seed and user id)."""
        n = len(self.steps[user_id])
        want = min(self.scenario.learning.transitions_per_persona, n)
        rng = user_rng(self.scenario.seed, user_id, PURPOSE_LEARN_TRANSITIONS)
        return sorted(int(s) for s in rng.choice(n, size=want, replace=False))

    def example_steps(self, user_id: str, step: int, n: int) -> list[int]:
        """In-context examples: the persona's `n` transitions just before this one (its experience so far;
        later ones would show pages built from its future). The first pages get fewer, or none."""
        return list(range(max(0, step - n), step))

    def truth(self, state: State, action: Action, near: int = 0) -> NextState:
        assert self.recommender is not None, "inputs prepared without a recommender (prepare(fit=False))"
        return true_next_state(self.recommender, state, action, self.k, self.views, near=near)

    def examples(self, user_id: str, step: int, n: int) -> list[Example]:
        out = []
        for s in self.example_steps(user_id, step, n):
            state, action = self.state(user_id, s), self.human_action(user_id, s)
            out.append(Example(state, action, self.truth(state, action)))
        return out


def _rollout_steps(rollouts: pa.Table) -> dict[str, list[Step]]:
    out: dict[str, list[Step]] = {}
    for row in rollouts.sort_by([("user_id", "ascending"), ("step", "ascending")]).to_pylist():
        watched = {i: (None if r is None or (isinstance(r, float) and math.isnan(r)) else float(r))
                   for i, w, r in zip(row["items"], row["watched"], row["ratings"], strict=True) if w}
        out.setdefault(row["user_id"], []).append(Step(row["step"], row["session"], row["page"], list(row["items"]),
                                                       watched, row["action"] == "exit"))
    return out


def _consumed(interactions: pa.Table, users: list[str]) -> dict[str, list[Consumed]]:
    table = interactions.filter(pc.is_in(interactions["user_id"], value_set=pa.array(users, pa.string())))
    table = table.sort_by([("user_id", "ascending"), ("ts", "ascending"), ("seq", "ascending")])
    out: dict[str, list[Consumed]] = {}
    for uid, item, rating, liked in zip(table["user_id"].to_pylist(), table["item_id"].to_pylist(),
                                        table["rating"].to_pylist(), table["liked"].to_pylist(), strict=True):
        out.setdefault(uid, []).append((item, rating, liked))
    return out


def _item_users(interactions: pa.Table) -> dict[str, int]:
    grouped = interactions.group_by("item_id").aggregate([("user_id", "count_distinct")])
    return dict(zip(grouped["item_id"].to_pylist(), grouped["user_id_count_distinct"].to_pylist(), strict=True))


def heldout_items(scenario: Scenario, users: list[str]) -> dict[str, set[str]]:
    """Each user's held-out items (what the evaluation asks about): training data must never show them."""
    ds = load_dataset(scenario.dataset)
    _, heldout = split_dataset(ds)
    held = heldout.filter(pc.is_in(heldout["user_id"], value_set=pa.array(users, pa.string())))
    out: dict[str, set[str]] = {}
    for uid, item in zip(held["user_id"].to_pylist(), held["item_id"].to_pylist(), strict=True):
        out.setdefault(uid, set()).add(item)
    return out


def prepare(scenario: Scenario, users_limit: int | None = None, fit: bool = True) -> LearningInputs:
    """Load the dataset, keep its training split, draw the population, replay it, fit the recommender."""
    ds = load_dataset(scenario.dataset)
    train, _ = split_dataset(ds)
    users = select_population(ds.interactions, scenario.population, scenario.population_seed)
    trained = set(pc.unique(train.interactions["user_id"]).to_pylist())
    users = [u for u in users if u in trained]
    if users_limit is not None:
        users = users[:users_limit]
    if not users:
        raise UserError("population: no user of the population has training interactions to learn from")
    personas = {p.user_id: p for p in build_personas(ds, users)}  # as the simulation builds them
    rollouts = build_rollouts(train, users, scenario.pages, scenario.seed, ds.interactions)
    catalogue = Catalogue(agent_items(ds, scenario.pages.show_item_stats, train=train,
                                    words=scenario.pages.popularity_words))  # as agents see items
    recommender = None
    if fit:
        recommender = make_recommender(scenario.recommender, seed=scenario.seed).fit(train.interactions, train.items)
    return LearningInputs(
        scenario=scenario, users=users, personas=personas, steps=_rollout_steps(rollouts),
        views=catalogue.views, catalogue_ids=ds.items["item_id"].to_pylist(),
        consumed=_consumed(train.interactions, users), recommender=recommender,
        domain=dataset_domain(scenario.dataset), item_users=_item_users(train.interactions),
    )
