"""Which users a scenario simulates: the population, drawn from a dataset's users with the scenario's seed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.config import PopulationConfig
from alignuser_sim.errors import UserError


def users_with_interactions(interactions: pa.Table) -> list[str]:
    """Sorted ids of users who have at least one interaction (sorted: order must not depend on file order)."""
    return sorted(pc.unique(interactions["user_id"]).to_pylist())


def select_population(interactions: pa.Table, cfg: PopulationConfig, seed: int) -> list[str]:
    """The population's user ids, in a deterministic order.

    `users` wins when given (each must exist); otherwise `size` users (all when None) by `sampling`:
    `random` draws without replacement with the seed, `first` takes the lowest ids, `most_active` the
    users with the most interactions (ties broken by id).
    """
    everyone = users_with_interactions(interactions)
    if cfg.users is not None:
        known = set(everyone)
        missing = [u for u in cfg.users if u not in known]
        if missing:
            raise UserError(f"population.users: unknown user id '{missing[0]}' ({len(missing)} unknown in all)")
        return list(dict.fromkeys(cfg.users))
    if cfg.size is None or cfg.size >= len(everyone):
        return everyone
    if cfg.sampling == "first":
        return everyone[: cfg.size]
    if cfg.sampling == "most_active":
        counts = pc.value_counts(interactions["user_id"])
        pairs = sorted(
            zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True),
            key=lambda uc: (-uc[1], uc[0]),
        )
        return sorted(u for u, _ in pairs[: cfg.size])
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(everyone), size=cfg.size, replace=False)
    return [everyone[i] for i in sorted(picked)]
