"""Recommenders the simulated users are served by: Random, Pop, ItemKNN, MF (ALS) and LightGCN.

All share one interface (`Recommender` in base.py): `fit(interactions, items)`, `page`/`pages` (ranked
unseen items, batched), `feedback(user, watched, shown)` and `state_dict`/`load_state_dict` for the
per-user dynamic state. `make_recommender(scenario.recommender, seed)` builds the scenario's one.
Offline Recall/NDCG: `evaluation/offline.evaluate_offline`; command line: `alignuser-sim recommenders offline`.
"""

from __future__ import annotations

import importlib

from alignuser_sim.config import RecommenderConfig
from alignuser_sim.errors import UserError
from alignuser_sim.recommenders.base import Recommender

# name -> "module:Class", imported on first use (LightGCN pulls in torch, MF implicit)
ALGORITHMS = {
    "random": "simple:RandomRecommender",
    "pop": "simple:PopRecommender",
    "itemknn": "itemknn:ItemKNNRecommender",
    "mf": "mf:MFRecommender",
    "lightgcn": "lightgcn:LightGCNRecommender",
}


def recommender_class(name: str) -> type[Recommender]:
    if name not in ALGORITHMS:
        raise UserError(f"recommender.algorithm: unknown recommender '{name}' (choose from {', '.join(ALGORITHMS)})")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def make_recommender(cfg: RecommenderConfig, seed: int = 0) -> Recommender:
    """The scenario's recommender, unfitted: `make_recommender(scenario.recommender, scenario.seed)`."""
    return recommender_class(cfg.algorithm)(seed=seed, **cfg.params)


__all__ = ["ALGORITHMS", "Recommender", "make_recommender", "recommender_class"]
