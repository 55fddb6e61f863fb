"""A user's own CSV or Parquet files, mapped onto the three canonical tables.

`dataset.interactions` is required; `dataset.items` and `dataset.users` are optional (without an items file
the catalogue is the set of interacted item ids, without titles). `dataset.columns` says which source column
holds each canonical one (None: the same name). The file type follows the extension: `.parquet`/`.pq`,
`.csv` (`.tsv` for tab-separated; either may end in `.gz`).

CSV columns are read as text and converted here, not by pyarrow's type inference, so that a bad value is
reported as `file: row N: column 'x': cannot parse 'abc' as a number`, with N the 1-based data row (header
excluded), instead of an Arrow error without a row. Every check that names a row runs before any row is
dropped, so N is always the row in the user's file. Rows without a user or item id are dropped and counted
(`row without id`); repeated (user, item) rows are kept (a re-watch or a re-purchase is real behaviour).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.config import DatasetConfig, TableColumns
from alignuser_sim.data.files import read_table
from alignuser_sim.data.tables import INTERACTIONS, Dataset, make_items
from alignuser_sim.errors import DataError

log = logging.getLogger(__name__)

_NUMBER = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
# extras are typed only when no value has a leading zero: "01234" (a zip code) stays text
_INTEGER = r"^[+-]?(0|[1-9]\d*)$"
_DECIMAL = r"^[+-]?((0|[1-9]\d*)(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_YEAR_3000 = 32_503_680_000  # seconds; a later "timestamp" is almost surely in milliseconds
_CANONICAL = ("user_id", "item_id", "rating", "ts", "title", "genres", "description")
# the files that may hold each canonical column: a mapped name must be found in one of those read
_CARRIERS = {"user_id": ("interactions", "users"), "item_id": ("interactions", "items"),
             "rating": ("interactions",), "ts": ("interactions",), "title": ("items",), "genres": ("items",),
             "description": ("items",)}


def sources(cfg: DatasetConfig) -> list[Path]:
    files = [p for p in (cfg.interactions, cfg.items, cfg.users) if p is not None]
    for path in files:  # the cache fingerprint stats them: a missing one must be a DataError, not a traceback
        if not path.is_file():
            raise DataError(path, "file not found")
    return files


def interactions_file(cfg: DatasetConfig) -> Path:
    assert cfg.interactions is not None  # DatasetConfig enforces it for name 'generic'
    return cfg.interactions


def load(cfg: DatasetConfig) -> Dataset:
    skipped: Counter[str] = Counter()
    path = interactions_file(cfg)
    cols = cfg.columns
    table = read_table(path)
    seen = {"interactions": table.column_names}
    users = _ids(table, path, "user_id", cols)
    items = _ids(table, path, "item_id", cols)
    rating = _column(table, path, cols, "rating", required=False)
    rating = None if rating is None else _ratings(path, rating, _source(cols, "rating", table))
    ts = _column(table, path, cols, "ts", required=False)
    ts = None if ts is None else _timestamps(path, ts, _source(cols, "ts", table), cfg.timestamp_unit)

    item_table = None
    if cfg.items is not None:
        item_table = _load_items(cfg, skipped, seen)
        _check_known_items(path, items, item_table["item_id"], cfg.items)

    keep = pc.and_(pc.is_valid(users), pc.is_valid(items))
    dropped = table.num_rows - pc.sum(keep).as_py()
    if dropped:
        skipped["row without id"] += dropped
        users, items = users.filter(keep), items.filter(keep)
        rating = None if rating is None else rating.filter(keep)
        ts = None if ts is None else ts.filter(keep)
    inter = _interactions(users, items, rating, ts)
    if item_table is None:
        ids = pc.unique(inter["item_id"]).to_pylist()
        item_table = make_items(ids, [None] * len(ids), [[] for _ in ids])
    user_table = _load_users(cfg, inter["user_id"], skipped, seen)
    _check_mapping(cfg, seen)
    for reason, count in skipped.items():
        log.warning("%s: %s: %d rows", path, reason, count)
    return Dataset("generic", inter, item_table, user_table, dict(skipped), source=str(path))


def _interactions(users: pa.Array, items: pa.Array, rating: pa.Array | None, ts: pa.Array | None) -> pa.Table:
    """`make_interactions` from Arrow arrays, without a round trip through Python lists (big files)."""
    n = len(users)
    return pa.table(
        {
            "user_id": users,
            "item_id": items,
            "rating": pa.nulls(n, pa.float32()) if rating is None else pc.cast(rating, pa.float32()),
            "ts": pa.nulls(n, pa.int64()) if ts is None else ts,
            "split": pa.nulls(n, pa.string()),
            "liked": pa.nulls(n, pa.bool_()),
            "seq": pa.array(np.arange(n, dtype=np.int64)),
        },
        schema=INTERACTIONS,
    )


# --- columns ---------------------------------------------------------------------------------------------


def _source(cols: TableColumns, canonical: str, table: pa.Table | None = None) -> str:
    """The source column for `canonical`: the mapped name, or the canonical name itself when a file has that
    one instead (one mapping covers several files: interactions may say `item` where items says `item_id`)."""
    mapped = getattr(cols, canonical)
    if mapped is None:
        return canonical
    if table is not None and mapped not in table.column_names and canonical in table.column_names:
        return canonical
    return mapped


def _missing(table: pa.Table, cols: TableColumns, canonical: str) -> str:
    source = _source(cols, canonical)
    found = table.column_names[:10] + (["..."] if table.num_columns > 10 else [])
    mapped = f"mapped from '{source}'; " if source != canonical else ""
    return f"missing column '{canonical}' ({mapped}found: {', '.join(found)})"


def _check_mapping(cfg: DatasetConfig, seen: dict[str, list[str]]) -> None:
    """A mapped name found in none of the files read is a typo: without this check a file that also has the
    canonical name would be read from that column instead, silently (`_source`'s fallback)."""
    for canonical, roles in _CARRIERS.items():
        mapped = getattr(cfg.columns, canonical)
        read = [role for role in roles if role in seen]
        if mapped is None or not read or any(mapped in seen[role] for role in read):
            continue
        names = seen[read[0]]
        found = names[:10] + (["..."] if len(names) > 10 else [])
        where = " or ".join(getattr(cfg, role).name for role in read)
        message = f"dataset.columns.{canonical} names column '{mapped}', not in {where} (found: {', '.join(found)})"
        raise DataError(getattr(cfg, read[0]), message)


def _column(
    table: pa.Table, path: Path, cols: TableColumns, canonical: str, required: bool
) -> pa.Array | None:
    source = _source(cols, canonical, table)
    if source in table.column_names:
        return table[source].combine_chunks()
    if required or getattr(cols, canonical) is not None:
        raise DataError(path, _missing(table, cols, canonical))
    return None


def _ids(table: pa.Table, path: Path, canonical: str, cols: TableColumns) -> pa.Array:
    """Ids as trimmed strings; empty ones become null (the caller drops and counts those rows)."""
    column = _column(table, path, cols, canonical, required=True)
    assert column is not None
    source = _source(cols, canonical, table)
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.dictionary_decode(), kind.value_type
    if pa.types.is_integer(kind):
        return pc.cast(column, pa.string())
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(path, f"ids must be text or integers, not {kind}", column=source)
    column = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
    bad = _first_true(pc.match_substring(column, "\n"))
    if bad is not None:  # a CSV quote left open swallows the following lines into one value
        message = f"id {column[bad].as_py()[:40]!r} spans lines (a quote left open?)"
        raise DataError(path, message, row=bad + 1, column=source)
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def _first_true(mask: pa.Array) -> int | None:
    mask = pc.fill_null(mask, False)
    return pc.index(mask, True).as_py() if pc.any(mask).as_py() else None


def _numbers(path: Path, column: pa.Array, source: str, what: str) -> pa.Array:
    """float64 from a numeric or text column; the first value that is not a number is a DataError."""
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = pc.cast(column, pa.float64())
        return pc.if_else(pc.is_nan(values), pa.scalar(None, pa.float64()), values)  # Parquet NaN = missing
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(path, f"expected numbers, found {kind}", column=source)
    bad = _first_true(pc.invert(pc.match_substring_regex(column, _NUMBER)))
    if bad is not None:
        raise DataError(path, f"cannot parse '{column[bad].as_py()}' as {what}", row=bad + 1, column=source)
    return pc.cast(pc.utf8_trim_whitespace(column), pa.float64())


def _ratings(path: Path, column: pa.Array, source: str) -> pa.Array:
    values = _numbers(path, column, source, "a number")
    bad = _first_true(pc.or_(pc.less(values, 0.5), pc.greater(values, 5.0)))
    if bad is not None:
        value = pa.scalar(values[bad].as_py(), pa.float32()).as_py()
        raise DataError(path, f"rating {value} outside 1..5", row=bad + 1, column=source)
    return values


def _timestamps(path: Path, column: pa.Array, source: str, unit: str) -> pa.Array:
    """Seconds since the epoch (int64) from numbers in `unit`, or from a Parquet timestamp/date column."""
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        return pc.cast(pc.cast(column, pa.timestamp("s")), pa.int64())
    what = f"a timestamp (a number of {'seconds' if unit == 's' else 'milliseconds'} since 1970)"
    values = _numbers(path, column, source, what)
    if unit == "ms":
        values = pc.divide(values, 1000.0)
    bad = _first_true(pc.greater(pc.abs(values), _YEAR_3000))
    if bad is not None:
        raw = column[bad].as_py()
        hint = "; if the file holds milliseconds set dataset.timestamp_unit: ms" if unit == "s" else ""
        raise DataError(path, f"timestamp {raw} is beyond the year 3000{hint}", row=bad + 1, column=source)
    return pc.cast(pc.floor(values), pa.int64())


def _check_known_items(path: Path, items: pa.Array, known: pa.Array, items_path: Path) -> None:
    unknown = pc.and_(pc.is_valid(items), pc.invert(pc.is_in(items, value_set=known)))
    bad = _first_true(unknown)
    if bad is not None:
        raise DataError(path, f"unknown item '{items[bad].as_py()}' (not in {items_path.name})", row=bad + 1)


def _check_unique(path: Path, ids: pa.Array, what: str) -> None:
    first: dict[str, int] = {}
    for index, value in enumerate(ids.to_pylist()):
        if value is None:
            continue
        if value in first:
            message = f"duplicate {what} '{value}' (first at row {first[value] + 1})"
            raise DataError(path, message, row=index + 1)
        first[value] = index


def _typed(column: pa.Array) -> pa.Array:
    """A text column of extras as int64 or float64 when every value is one (a zip code '01234' stays text)."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column
    if column.null_count == len(column):
        return column
    values = pc.utf8_trim_whitespace(column)
    if pc.all(pc.fill_null(pc.match_substring_regex(values, _INTEGER), True)).as_py():
        return pc.cast(values, pa.int64())
    if pc.all(pc.fill_null(pc.match_substring_regex(values, _DECIMAL), True)).as_py():
        return pc.cast(values, pa.float64())
    return column


def _extras(table: pa.Table, used: set[str]) -> dict[str, pa.Array]:
    return {
        name: _typed(table[name].combine_chunks())
        for name in table.column_names
        if name not in used and name not in _CANONICAL
    }


# --- items and users -------------------------------------------------------------------------------------


def _load_items(cfg: DatasetConfig, skipped: Counter[str], seen: dict[str, list[str]]) -> pa.Table:
    path, cols = cfg.items, cfg.columns
    assert path is not None
    table = read_table(path)
    seen["items"] = table.column_names
    ids = _ids(table, path, "item_id", cols)
    _check_unique(path, ids, "item")
    title = _column(table, path, cols, "title", required=False)
    genres = _column(table, path, cols, "genres", required=False)
    description = _column(table, path, cols, "description", required=False)
    used = {_source(cols, c, table) for c in ("item_id", "title", "genres", "description")}
    extras = _extras(table, used)
    keep = pc.is_valid(ids)
    if not pc.all(keep).as_py():
        skipped["items row without id"] += len(ids) - pc.sum(keep).as_py()
        ids = ids.filter(keep)
        title, genres, description = (_filter(c, keep) for c in (title, genres, description))
        extras = {name: c.filter(keep) for name, c in extras.items()}
    n = len(ids)
    return make_items(
        ids.to_pylist(),
        _texts(title, n),
        _genres(genres, n, cfg.genre_separator),
        _texts(description, n),
        extra=extras,
    )


def _filter(column: pa.Array | None, keep: pa.Array) -> pa.Array | None:
    return None if column is None else column.filter(keep)


def _texts(column: pa.Array | None, n: int) -> list[str | None]:
    if column is None:
        return [None] * n
    return [None if v is None else str(v) for v in column.to_pylist()]


def _genres(column: pa.Array | None, n: int, separator: str) -> list[list[str]]:
    if column is None:
        return [[] for _ in range(n)]
    out = []
    for value in column.to_pylist():
        if value is None:
            out.append([])
        elif isinstance(value, list):  # Parquet list<string>
            out.append([str(g).strip() for g in value if g is not None and str(g).strip()])
        else:
            out.append([g.strip() for g in str(value).split(separator) if g.strip()])
    return out


def _load_users(cfg: DatasetConfig, interaction_users: pa.ChunkedArray, skipped: Counter[str],
                seen: dict[str, list[str]]) -> pa.Table:
    """The users file's rows (extras typed), plus a bare row for every interacting user it lacks."""
    active = pc.unique(interaction_users.combine_chunks())
    if cfg.users is None:
        return pa.table({"user_id": active})
    path = cfg.users
    table = read_table(path)
    seen["users"] = table.column_names
    ids = _ids(table, path, "user_id", cfg.columns)
    _check_unique(path, ids, "user")
    columns = {"user_id": ids, **_extras(table, {_source(cfg.columns, "user_id", table)})}
    users = pa.table(columns)
    keep = pc.is_valid(ids)
    if not pc.all(keep).as_py():
        skipped["users row without id"] += len(ids) - pc.sum(keep).as_py()
        users = users.filter(keep)
    missing = active.filter(pc.invert(pc.is_in(active, value_set=users["user_id"])))
    if len(missing):
        log.info("%s: %d interacting users have no row; added without demographics", path, len(missing))
        users = pa.concat_tables([users, pa.table({"user_id": missing})], promote_options="default")
    return users
