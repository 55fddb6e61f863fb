"""Each item's average rating and number of ratings, as the pages a persona agent sees show them.

Real platforms show them (and Agent4Rec's pages do), and popularity explains much of what people pick, so
an agent that never sees it is at a disadvantage no human has. The numbers come from the TRAINING split
only (`data.holdout.split_dataset`): a held-out rating must not leak into what the agent is shown when it
is asked about that very item. Where a dataset has no ratings (Steam), the count is the number of users who
interacted with the item and there is no average.

The stats are two optional columns of the items table (`avg_rating`, `n_ratings`), so they travel with it
wherever it goes (Ray shards included) and `core.Catalogue` turns them into `ItemView` fields. The scenario's
`pages.show_item_stats: false` (the ablation) leaves them out, and no prompt mentions them.

`pages.popularity_words: true` adds a third column, `popularity`: a band word ("very popular" ... "obscure",
`core.popularity_word`) for where the item's count ranks among the rated items of the catalogue, shown first
on the item's line: the same fact as the count, in a form meant to be easier for a small model to use (on ML-1M
the 135M model used neither: BENCHMARKS.md, "Popularity as a word").
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.core import ItemView, popularity_word
from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.data.tables import Dataset

STATS_COLUMNS = ("avg_rating", "n_ratings", "popularity")


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


def with_popularity_words(items: pa.Table) -> pa.Table:
    """`items` (with `n_ratings`) with a `popularity` band word: the share of the other rated items (count > 0)
    whose count is strictly lower decides the band, so ties share a word, the most rated item is "very
    popular" and an unrated item gets none."""
    counts = items["n_ratings"].to_numpy(zero_copy_only=False)
    rated = np.sort(counts[counts > 0])
    below = np.searchsorted(rated, counts, side="left") / max(1, len(rated) - 1)
    words = [popularity_word(float(b)) if c > 0 else None for c, b in zip(counts, below, strict=True)]
    return items.append_column("popularity", pa.array(words, pa.string()))


def without_item_stats(items: pa.Table) -> pa.Table:
    return items.drop_columns([c for c in STATS_COLUMNS if c in items.column_names])


def agent_items(ds: Dataset, show: bool = True, train: Dataset | None = None, words: bool = False) -> pa.Table:
    """The items table every Catalogue built for agents reads (simulation, evaluation, learning): with the
    stats of the training split when `show` (the scenario's `pages.show_item_stats`), without them otherwise;
    with a popularity band word besides when `words` too (`pages.popularity_words`).
    `train`: the dataset's training split where the caller has it already."""
    if not show:
        return without_item_stats(ds.items)
    train = train if train is not None else split_dataset(ds)[0]
    items = with_item_stats(ds.items, train.interactions)
    return with_popularity_words(items) if words else items


def with_agent_items(ds: Dataset, show: bool = True, words: bool = False) -> Dataset:
    """The dataset with `agent_items` as its items table (what a run plan carries to its shards)."""
    return replace(ds, items=agent_items(ds, show, words=words))


def without_own_interactions(view: ItemView, own_ratings: list[float | None], users: int) -> ItemView:
    """`view` with one user's own training interactions taken out of its stats (`own_ratings`: that user's
    ratings of the item, None where an interaction has no rating; `users`: the item's distinct training users).

    Why: training examples are cut from a user's TRAINING split, whose stats count the user's own ratings, so
    each of their positives shows "rated by at least 1 user" (on a sparse dataset often exactly 1: themselves),
    while the evaluation asks about held-out items whose stats never count the user. Taught with their own
    ratings in view, a model learns "no stats: skip", which the evaluation punishes. With them out, an example
    shows an item as the user would have seen it before they chose it, as the evaluation shows its items."""
    if not own_ratings or (view.avg_rating is None and view.n_ratings == 0):
        return view  # not this user's item, or stats not shown
    rated = [r for r in own_ratings if r is not None]
    if view.avg_rating is None:  # no ratings anywhere: the count is distinct users, the user is one of them
        left = max(0, view.n_ratings - 1)
        return replace(view, n_ratings=left, popularity=view.popularity if left else "")
    if not rated:  # the user's interactions carry no rating: the rating stats never counted them
        return view
    left = view.n_ratings - len(rated)
    if left <= 0:  # only this user rated it: what is left is the other users' unrated interactions
        others = max(0, users - 1)
        return replace(view, avg_rating=None, n_ratings=others, popularity=view.popularity if others else "")
    return replace(view, avg_rating=(view.avg_rating * view.n_ratings - sum(rated)) / left, n_ratings=left)
