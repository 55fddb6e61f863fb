"""An example recommender plug-in: `implicit`'s BPR (Rendle et al. 2009) in a few lines on top of the contract.

Subclassing `alignuser_sim.recommenders.Recommender` gives pages, seen-item masking, feedback, cold users
(popularity) and resume state; a plug-in writes only how it trains (`_fit_model`) and how it scores users
from their histories (`_history_scores`, called with the training history plus what was watched so far).

Name it in a scenario by import path (from the repository root, where `examples` imports):

    recommender: {algorithm: "examples.bpr_plugin:BPRRecommender", params: {factors: 32}}

or register it from an installed package as an entry point (pyproject.toml of that package):

    [project.entry-points."alignuser_sim.recommenders"]
    bpr = "examples.bpr_plugin:BPRRecommender"
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from alignuser_sim.recommenders import Recommender
from alignuser_sim.recommenders.base import Param


class BPRRecommender(Recommender):
    """Score(u, i) = mean of the user's history items' BPR factors . the item's factors (item-based, so a
    watched item moves the next page at once: no per-user factor to re-fit)."""

    name = "bpr"
    params_spec: ClassVar[dict[str, Param]] = {
        "factors": Param(32, 1),
        "iterations": Param(60, 1),
        "learning_rate": Param(0.05, 0.0),
        "regularization": Param(0.01, 0.0),
    }

    def _fit_model(self) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        bpr = BayesianPersonalizedRanking(factors=self.params["factors"], iterations=self.params["iterations"],
                                          learning_rate=self.params["learning_rate"],
                                          regularization=self.params["regularization"], random_state=self.seed,
                                          num_threads=1)
        bpr.fit(self.train_matrix(), show_progress=False)
        self.item_factors = np.asarray(bpr.item_factors, dtype=np.float64)

    def _history_scores(self, user_ids: list[str], histories: list[np.ndarray]) -> np.ndarray:
        profiles = np.stack([self.item_factors[h].mean(axis=0) for h in histories])
        return profiles @ self.item_factors.T
