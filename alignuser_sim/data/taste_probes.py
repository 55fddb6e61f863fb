"""The items a user is asked about in Agent4Rec's user-taste alignment protocol (as SimUSER and AlignUSER also
report it; docs/evaluation.md): positives the human interacted with, negatives the human never interacted with
at all, `ratio` negatives per positive (1:1, 1:2, 1:3, 1:9), shuffled and cut into pages of at most
`items_per_page` (near-equal sizes), and separately up to `positives_per_user` rated items for the rating call.

The evaluation draws positives from the held-out split (`evaluation/cases.py`); training draws them from the
training split with another `salt` (`learning/training_data.judgment_examples`), so the policy learns on the
very shape of question it is evaluated on, never on its items.

Determinism: each user's draws come from generators seeded by (scenario seed, crc32(user id), purpose), so
a user's pages never depend on the other users or on which ratios are asked: negatives are one
fixed draw of 9 x positives_per_user items and ratio r uses its first r x positives, so the 1:1 negatives
are a subset of the 1:3 ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.core import (
    PURPOSE_EVAL_NEGATIVES,
    PURPOSE_EVAL_PAGES,
    PURPOSE_EVAL_POSITIVES,
    PURPOSE_EVAL_RATINGS,
    user_rng,
)
from alignuser_sim.data.tables import Dataset

MAX_RATIO = 9  # the largest ratio the config allows: negatives are always drawn for it


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
                seed: int, salt: int = 0, exclude: dict[str, set[str]] | None = None) -> tuple[list[UserCase], int]:
    """One case per user with at least one interaction in `heldout` (the split the positives come from);
    returns (cases, users skipped). `salt` shifts every draw (training's cases differ from the evaluation's);
    `exclude`: items per user that must not be drawn as negatives (training leaves the evaluation's out)."""
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
            PURPOSE_EVAL_POSITIVES + salt, PURPOSE_EVAL_NEGATIVES + salt, PURPOSE_EVAL_RATINGS + salt))
        picked = pos_rng.choice(len(items), size=min(positives_per_user, len(items)), replace=False)
        positives = [items[i] for i in sorted(picked)]
        unseen = np.ones(len(catalogue), dtype=bool)
        unseen[[code[i] for i in seen.get(uid, ()) if i in code]] = False
        if exclude and uid in exclude:
            unseen[[code[i] for i in exclude[uid] if i in code]] = False
        pool = np.flatnonzero(unseen)
        n_neg = min(MAX_RATIO * positives_per_user, len(pool))
        negatives = [catalogue[c] for c in pool[neg_rng.choice(len(pool), size=n_neg, replace=False)]]
        rated_items = sorted(held_rated.get(uid, {}).items())
        take = rate_rng.choice(len(rated_items), size=min(positives_per_user, len(rated_items)), replace=False)
        rated = [rated_items[i] for i in sorted(take)]
        cases.append(UserCase(uid, positives, negatives, rated))
    return cases, skipped
