"""Who is asked about what in the micro evaluation: each held-out user's positives, negatives and pages, and
the policy variants compared on them.

Protocol (Agent4Rec's user-taste alignment, as SimUSER and AlignUSER also report it; docs/evaluation.md):
for each evaluated user, positives are up to `eval.positives_per_user` items the human interacted with in
the held-out split (`data/holdout.split_dataset`: learning never saw them), negatives are items the human
never interacted with at all, `ratio` negatives per positive (1:1, 1:2, 1:3, 1:9). The items are shuffled
and cut into pages of at most `eval.items_per_page` (near-equal sizes). Separately, up to
`eval.positives_per_user` held-out items that carry a real rating are picked for the rating call.

Determinism: each user's draws come from generators seeded by (scenario seed, crc32(user id), purpose), so
a user's pages never depend on the other users or on which ratios are evaluated: negatives are one
fixed draw of 9 x positives_per_user items and ratio r uses its first r x positives, so the 1:1 negatives
are a subset of the 1:3 ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.config import PolicyConfig, Scenario
from alignuser_sim.core import (
    PURPOSE_EVAL_NEGATIVES,
    PURPOSE_EVAL_PAGES,
    PURPOSE_EVAL_POSITIVES,
    PURPOSE_EVAL_RATINGS,
    user_rng,
)
from alignuser_sim.data import Dataset
from alignuser_sim.errors import UserError

MAX_RATIO = 9  # the largest ratio the config allows: negatives are always drawn for it

# --- policies --------------------------------------------------------------------------------------------

POLICY_NAMES = {
    "prompt-only": {"kind": "prompt-only", "lessons": None, "world_model": None},
    "alignuser": {"kind": "alignuser", "lessons": None, "world_model": None},
    "+lessons": {"kind": "alignuser", "lessons": True, "world_model": False},
    "+world-model": {"kind": "alignuser", "lessons": False, "world_model": True},
    "alignuser+": {"kind": "alignuser+", "lessons": None, "world_model": None},
    "adapter": {"kind": "alignuser+", "lessons": False, "world_model": False},
}
POLICY_ALIASES = {"lessons": "+lessons", "world-model": "+world-model", "+world model": "+world-model",
                  "prompt_only": "prompt-only", "alignuser-plus": "alignuser+", "adapter-only": "adapter"}


def policy_variant(scenario: Scenario, name: str) -> Scenario:
    """The scenario with its policy replaced by the named one (retrieval sizes and decision format kept)."""
    key = POLICY_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in POLICY_NAMES:
        raise UserError(f"--policies: unknown policy '{name}' (choose from {', '.join(POLICY_NAMES)})")
    variant = scenario.model_copy(deep=True)
    kept = scenario.policy.model_dump(include={"lessons_k", "world_model_k", "history_size", "reasoning"})
    variant.policy = PolicyConfig(**POLICY_NAMES[key], **kept)
    return variant


# --- the cases --------------------------------------------------------------------------------------------


@dataclass
class UserCase:
    user_id: str
    positives: list[str]
    negatives: list[str]  # MAX_RATIO x positives_per_user at most, in draw order
    rated: list[tuple[str, float]]  # held-out items with the human's rating

    def page_items(self, ratio: int, items_per_page: int, seed: int) -> list[tuple[list[str], list[bool]]]:
        """The pages of one ratio: (item ids, is positive) each, shuffled, near-equal sizes."""
        items = self.positives + self.negatives[: ratio * len(self.positives)]
        labels = [True] * len(self.positives) + [False] * (len(items) - len(self.positives))
        order = user_rng(seed, self.user_id, PURPOSE_EVAL_PAGES + ratio).permutation(len(items))
        n_pages = max(1, -(-len(items) // items_per_page))
        return [([items[i] for i in chunk], [labels[i] for i in chunk])
                for chunk in np.array_split(order, n_pages) if len(chunk)]


def build_cases(ds: Dataset, heldout: pa.Table, users: Sequence[str], positives_per_user: int,
                seed: int) -> tuple[list[UserCase], int]:
    """One case per user with at least one held-out interaction; returns (cases, users skipped)."""
    wanted = pa.array(list(users), pa.string())
    held = heldout.filter(pc.is_in(heldout["user_id"], value_set=wanted))
    held_items: dict[str, list[str]] = {}
    held_rated: dict[str, dict[str, float]] = {}
    for uid, item, rating in zip(held["user_id"].to_pylist(), held["item_id"].to_pylist(),
                                 held["rating"].to_pylist(), strict=True):
        held_items.setdefault(uid, [])
        if item not in held_items[uid]:
            held_items[uid].append(item)
        if rating is not None:
            held_rated.setdefault(uid, {})[item] = float(rating)  # the last rating of an item counts
    everything = ds.interactions.filter(pc.is_in(ds.interactions["user_id"], value_set=wanted))
    seen: dict[str, set[str]] = {}
    for uid, item in zip(everything["user_id"].to_pylist(), everything["item_id"].to_pylist(), strict=True):
        seen.setdefault(uid, set()).add(item)
    catalogue = ds.items["item_id"].to_pylist()
    code = {item: i for i, item in enumerate(catalogue)}
    cases, skipped = [], 0
    for uid in users:
        items = held_items.get(uid)
        if not items:
            skipped += 1
            continue
        pos_rng, neg_rng, rate_rng = (user_rng(seed, uid, p) for p in (
            PURPOSE_EVAL_POSITIVES, PURPOSE_EVAL_NEGATIVES, PURPOSE_EVAL_RATINGS))
        picked = pos_rng.choice(len(items), size=min(positives_per_user, len(items)), replace=False)
        positives = [items[i] for i in sorted(picked)]
        unseen = np.ones(len(catalogue), dtype=bool)
        unseen[[code[i] for i in seen.get(uid, ()) if i in code]] = False
        pool = np.flatnonzero(unseen)
        n_neg = min(MAX_RATIO * positives_per_user, len(pool))
        negatives = [catalogue[c] for c in pool[neg_rng.choice(len(pool), size=n_neg, replace=False)]]
        rated_items = sorted(held_rated.get(uid, {}).items())
        take = rate_rng.choice(len(rated_items), size=min(positives_per_user, len(rated_items)), replace=False)
        rated = [rated_items[i] for i in sorted(take)]
        cases.append(UserCase(uid, positives, negatives, rated))
    return cases, skipped
