"""Recommenders the simulated users are served by: the built-ins (Random, Pop, ItemKNN, MF (ALS), LightGCN), a
plug-in class the user brings (plugins.py) and a service behind the JSON protocol (http.py).

All share one interface (`Recommender` in base.py): `fit(interactions, items)`, `page`/`pages` (ranked
unseen items, batched), `feedback(user, watched, shown)` / `feedback_batch` and `state_dict`/`load_state_dict`
for the per-user dynamic state. `make_recommender(scenario.recommender, seed)` builds the scenario's one.
Offline Recall/NDCG: `evaluation/offline.evaluate_offline`; command line: `alignuser-sim recommenders offline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignuser_sim.config import RecommenderConfig, Scenario
from alignuser_sim.errors import UserError
from alignuser_sim.recommenders.base import Recommender
from alignuser_sim.recommenders.plugins import BUILTINS, build, check_class, check_recommender, kind_of, plugin_class

ALGORITHMS = {name: target.removeprefix(f"{__name__}.") for name, target in BUILTINS.items()}  # the built-ins

Feedback = tuple[str, dict[str, float | None], list[str]]


def recommender_class(name: str) -> type[Recommender]:
    """The class of a built-in or plug-in name (import path or entry point), contract checked."""
    return check_class(plugin_class(name), name)


def make_recommender(cfg: RecommenderConfig, seed: int = 0, run_id: str | None = None) -> Any:
    """The scenario's recommender, unfitted: `make_recommender(scenario.recommender, scenario.seed)`.
    `run_id` scopes an HTTP recommender's feedback keys to the run (resume sends the same keys again)."""
    if kind_of(cfg.algorithm) == "http":
        from alignuser_sim.recommenders.http import HTTPRecommender

        return HTTPRecommender(cfg, seed=seed, run_id=run_id)
    return build(recommender_class(cfg.algorithm), cfg, seed)


def config_for(scenario: Scenario, name: str) -> RecommenderConfig:
    """The recommender `name` stands for in a comparison: the scenario's own `recommender:` section when it
    names the same algorithm (its params, an HTTP service's URL), else that algorithm with its defaults."""
    if name == scenario.recommender.algorithm:
        return scenario.recommender.model_copy(deep=True)
    if name == "http":
        raise UserError("--recommenders: http means the scenario's own recommender; set recommender.algorithm: "
                        "http and recommender.url")
    return RecommenderConfig(algorithm=name)


def replay(recommender: Any, rounds: Sequence[Sequence[Feedback]], k: int) -> int:
    """Resume: rebuild the recommender's per-user state from the logged feedback, page round by round.
    A built-in serves each logged page again (pages are deterministic given the state), then takes its
    feedback; a recommender with its own `replay` (HTTP: no pages asked, feedback sent with the keys it had)
    does it its way."""
    own = getattr(recommender, "replay", None)
    if callable(own):
        return own(rounds, k)
    n = 0
    for batch in rounds:
        recommender.pages([user for user, _, _ in batch], k)
        n += recommender.feedback_batch(list(batch)) or 0
    return n


def recommender_stats(recommender: Any) -> dict[str, Any]:
    """What a recommender reports for stats.json (`recommender`): the HTTP one its requests, latency and
    reply problems; a built-in nothing but its name."""
    stats = getattr(recommender, "stats", None)
    out: dict[str, Any] = {"algorithm": getattr(recommender, "name", type(recommender).__name__)}
    if callable(stats):
        out.update(stats())
    return out


__all__ = ["ALGORITHMS", "Recommender", "check_recommender", "config_for", "make_recommender", "recommender_class",
           "recommender_stats", "replay"]
