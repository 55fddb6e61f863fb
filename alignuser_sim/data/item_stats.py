"""Each item's average rating and number of ratings, as the pages a persona agent sees show them.

Real platforms show them (and Agent4Rec's pages do), and popularity explains much of what people pick, so
an agent that never sees it is at a disadvantage no human has. The numbers come from the TRAINING split
only (`data.holdout.split_dataset`): a held-out rating must not leak into what the agent is shown when it
is asked about that very item. Where a dataset has no ratings (Steam), the count is the number of users who
interacted with the item and there is no average.

The stats are two optional columns of the items table (`avg_rating`, `n_ratings`), so they travel with it
wherever it goes (Ray shards included) and `core.Catalogue` turns them into `ItemView` fields. The scenario's
`pages.show_item_stats: false` (the ablation) leaves them out, and no prompt mentions them.
"""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.data.tables import Dataset

STATS_COLUMNS = ("avg_rating", "n_ratings")


def with_item_stats(items: pa.Table, train_interactions: pa.Table) -> pa.Table:
    """`items` with `avg_rating` (float, null without ratings) and `n_ratings` (int) from these interactions:
    the number of ratings where the item has any, else the number of distinct users who interacted."""
    items = without_item_stats(items)
    inter = train_interactions.select(["item_id", "user_id", "rating"])
    grouped = inter.group_by("item_id").aggregate([("rating", "mean"), ("rating", "count"),
                                                   ("user_id", "count_distinct")])
    index = pc.index_in(items["item_id"], value_set=grouped["item_id"])
    mean = pc.take(grouped["rating_mean"], index).cast(pa.float64())
    rated = pc.fill_null(pc.take(grouped["rating_count"], index), 0)
    users = pc.fill_null(pc.take(grouped["user_id_count_distinct"], index), 0)
    has_ratings = pc.greater(rated, 0)
    avg = pc.if_else(has_ratings, mean, pa.scalar(None, pa.float64()))
    count = pc.if_else(has_ratings, rated, users).cast(pa.int64())
    return items.append_column("avg_rating", avg).append_column("n_ratings", count)


def without_item_stats(items: pa.Table) -> pa.Table:
    return items.drop_columns([c for c in STATS_COLUMNS if c in items.column_names])


def agent_items(ds: Dataset, show: bool = True, train: Dataset | None = None) -> pa.Table:
    """The items table every Catalogue built for agents reads (simulation, evaluation, learning): with the
    stats of the training split when `show` (the scenario's `pages.show_item_stats`), without them otherwise.
    `train`: the dataset's training split where the caller has it already."""
    if not show:
        return without_item_stats(ds.items)
    train = train if train is not None else split_dataset(ds)[0]
    return with_item_stats(ds.items, train.interactions)


def with_agent_items(ds: Dataset, show: bool = True) -> Dataset:
    """The dataset with `agent_items` as its items table (what a run plan carries to its shards)."""
    return replace(ds, items=agent_items(ds, show))
