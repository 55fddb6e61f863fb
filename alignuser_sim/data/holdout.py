"""The train / held-out split every learning and evaluation step agrees on.

Learning (world model, reflection, taste text) sees only the training part of a user's history; the micro
evaluation asks about the held-out part. Where the dataset has its own split (ML-1M as split by Agent4Rec:
train / valid / test), the held-out part is its `test` split, so numbers stay comparable with the papers
that use that split; when that split holds no ratings (ML-1M: Agent4Rec's real ratings are all on training
rows), each user's last `fraction` of rated rows is held out too, so rating error is measured on ratings
learning never saw. Elsewhere it is each user's last `fraction` of interactions in time (source order
where undated, undated rows last, as in the rollouts), never a user's only interaction.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.data.tables import Dataset

HELDOUT_FRACTION = 0.2


def heldout_mask(interactions: pa.Table, fraction: float = HELDOUT_FRACTION) -> np.ndarray:
    """True for the rows that are held out from learning."""
    split = interactions["split"]
    if pc.any(pc.equal(split, "test")).as_py():
        mask = pc.fill_null(pc.equal(split, "test"), False).to_numpy(zero_copy_only=False).copy()
        rated = pc.is_valid(interactions["rating"]).to_numpy(zero_copy_only=False)
        if rated.any() and not (rated & mask).any():
            rows = np.flatnonzero(rated)
            mask[rows[_chronological_tail(interactions.take(pa.array(rows)), fraction)]] = True
        return mask
    return _chronological_tail(interactions, fraction)


def _chronological_tail(interactions: pa.Table, fraction: float) -> np.ndarray:
    """Each user's last `fraction` of rows in time (at least one left for training)."""
    n = interactions.num_rows
    order_keys = [("user_id", "ascending"), ("ts", "ascending"), ("seq", "ascending")]
    index = pa.table({
        "user_id": interactions["user_id"], "ts": interactions["ts"], "seq": interactions["seq"],
        "row": pa.array(np.arange(n, dtype=np.int64)),
    }).sort_by(order_keys)  # nulls (undated) sort last, as in the rollouts
    users = index["user_id"].to_numpy(zero_copy_only=False).astype(object)
    rows = index["row"].to_numpy()
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    bounds = np.concatenate([[0], np.flatnonzero(users[1:] != users[:-1]) + 1, [n]])
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        size = end - start
        held = min(size - 1, math.ceil(size * fraction)) if size > 1 else 0
        if held:
            mask[rows[end - held:end]] = True
    return mask


def split_dataset(ds: Dataset, fraction: float = HELDOUT_FRACTION) -> tuple[Dataset, pa.Table]:
    """(the dataset with only training interactions, the held-out interactions)."""
    mask = heldout_mask(ds.interactions, fraction)
    arrow_mask = pa.array(mask)
    train = replace(ds, interactions=ds.interactions.filter(pc.invert(arrow_mask)))
    return train, ds.interactions.filter(arrow_mask)
