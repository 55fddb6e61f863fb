"""The three Arrow tables every dataset becomes, and the checks that hold for all of them.

Ids are strings everywhere (Amazon ASINs and Steam ids do not fit one integer type); code that needs
speed dictionary-encodes them itself. `ts` is seconds since the epoch; `rating` is 1..5 where known.
`interactions.liked` is an explicit like/dislike where the dataset has one instead of stars (Steam's
"recommended"); null elsewhere (there, a like is derived from the rating where needed).
`interactions.split` carries a dataset's own train/valid/test split where it has one (ML-1M Agent4Rec),
and `interactions.seq` the row's position in the source, the tie-breaker when `ts` is missing or equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alignuser_sim import store
from alignuser_sim.errors import DataError

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("rating", pa.float32()),
        pa.field("ts", pa.int64()),
        pa.field("split", pa.string()),
        pa.field("liked", pa.bool_()),
        pa.field("seq", pa.int64(), nullable=False),
    ]
)
ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("genres", pa.list_(pa.string())),
        pa.field("description", pa.string()),
    ]
)
# users: user_id plus whatever the dataset knows (gender, age, occupation, taste, ...), all optional
USERS_REQUIRED = pa.schema([pa.field("user_id", pa.string(), nullable=False)])


@dataclass
class Dataset:
    """A dataset as three tables, plus what was skipped on the way in (counted, never silent)."""

    name: str
    interactions: pa.Table
    items: pa.Table
    users: pa.Table
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = ""

    @property
    def has_ratings(self) -> bool:
        return self.interactions["rating"].null_count < self.interactions.num_rows

    @property
    def has_timestamps(self) -> bool:
        return self.interactions["ts"].null_count < self.interactions.num_rows

    def summary(self) -> dict[str, int | str | bool]:
        return {
            "dataset": self.name,
            "users": self.users.num_rows,
            "items": self.items.num_rows,
            "interactions": self.interactions.num_rows,
            "ratings": self.has_ratings,
            "timestamps": self.has_timestamps,
            "skipped rows": sum(self.skipped.values()),
        }

    # --- Parquet cache ---------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for table_name in ("interactions", "items", "users"):
            store.write_parquet(getattr(self, table_name), folder / f"{table_name}.parquet")
        meta = {"name": self.name, "skipped": self.skipped, "source": self.source}
        store.write_json(folder / "meta.json", meta)  # last and atomic: it marks the folder complete

    @classmethod
    def load(cls, folder: Path) -> Dataset:
        meta = json.loads((folder / "meta.json").read_text())
        tables = {n: pq.read_table(folder / f"{n}.parquet") for n in ("interactions", "items", "users")}
        return cls(name=meta["name"], skipped=meta["skipped"], source=meta.get("source", ""), **tables)


def make_interactions(
    user_id: list[str],
    item_id: list[str],
    rating: list[float | None] | None = None,
    ts: list[int | None] | None = None,
    split: list[str | None] | None = None,
    liked: list[bool | None] | None = None,
) -> pa.Table:
    n = len(user_id)
    none = [None] * n
    return pa.table(
        {
            "user_id": pa.array(user_id, pa.string()),
            "item_id": pa.array(item_id, pa.string()),
            "rating": pa.array(rating if rating is not None else none, pa.float32()),
            "ts": pa.array(ts if ts is not None else none, pa.int64()),
            "split": pa.array(split if split is not None else none, pa.string()),
            "liked": pa.array(liked if liked is not None else none, pa.bool_()),
            "seq": pa.array(range(n), pa.int64()),
        },
        schema=INTERACTIONS,
    )


def make_items(
    item_id: list[str],
    title: list[str | None],
    genres: list[list[str]],
    description: list[str | None] | None = None,
    extra: dict[str, pa.Array] | None = None,
) -> pa.Table:
    table = pa.table(
        {
            "item_id": pa.array(item_id, pa.string()),
            "title": pa.array(title, pa.string()),
            "genres": pa.array(genres, pa.list_(pa.string())),
            "description": pa.array(description if description is not None else [None] * len(item_id)),
        },
        schema=ITEMS,
    )
    for name, column in (extra or {}).items():
        table = table.append_column(name, column)
    return table


def check_dataset(ds: Dataset, interactions_file: str | Path) -> None:
    """Invariants every loader's output must hold; a violation names the file and the first bad row."""
    inter = ds.interactions
    if inter.num_rows == 0:
        raise DataError(interactions_file, "no interactions (empty file)")
    for column in ("user_id", "item_id"):
        if inter[column].null_count:
            row = pc.index(pc.is_null(inter[column]), True).as_py()
            raise DataError(interactions_file, f"missing {column}", row=row + 1)
    ratings = inter["rating"]
    if ratings.null_count < inter.num_rows:
        bad = pc.or_(pc.less(ratings, 0.5), pc.greater(ratings, 5.0))
        bad = pc.fill_null(bad, False)
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            raise DataError(
                interactions_file, f"rating {ratings[row].as_py()} outside 1..5", row=row + 1, column="rating"
            )
    known = pc.is_in(inter["item_id"], value_set=ds.items["item_id"])
    if not pc.all(known).as_py():
        row = pc.index(known, False).as_py()
        raise DataError(
            interactions_file, f"unknown item '{inter['item_id'][row].as_py()}' (not in the items table)", row=row + 1
        )
    if ds.items.num_rows != pc.count_distinct(ds.items["item_id"]).as_py():
        raise DataError(interactions_file, "items table has duplicate item ids")
