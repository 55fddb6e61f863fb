"""Human rollouts: each user's history replayed page by page, the demonstrations AlignUSER learns from.

A user's interactions are put in chronological order (timestamp, then source order) and cut into
sessions: by a time gap where timestamps exist, by the dataset's own split otherwise (ML-1M Agent4Rec has
no timestamps), else one session. Within a session, each page shows `k` items: the next `p` items the
human consumed (the positives) mixed with `k - p` distractors the human NEVER rated (so they are true
negatives), in a shuffled order. The human action on the page is: the positives are watched, with their
ratings where known; `next_page`, or `exit` on the session's last page.

No leakage: a page records `history_len`, the number of the user's interactions that happened before it;
page t's state is built from those only. Distractors are drawn from the items the user never rated at
all (future included): that is what makes them negatives, and it reveals nothing about the order.

Determinism: each user's draws come from a generator seeded by (scenario seed, crc32(user_id)), so a
user's pages do not change when the population around them does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alignuser_sim import store
from alignuser_sim.config import PagesConfig
from alignuser_sim.core import user_rng
from alignuser_sim.data.tables import Dataset
from alignuser_sim.errors import UserError

ROLLOUTS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("session", pa.int32(), nullable=False),
        pa.field("page", pa.int32(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("history_len", pa.int32(), nullable=False),
        pa.field("ts", pa.int64()),
        pa.field("split", pa.string()),
        pa.field("items", pa.list_(pa.string()), nullable=False),
        pa.field("watched", pa.list_(pa.bool_()), nullable=False),
        pa.field("ratings", pa.list_(pa.float32()), nullable=False),
        pa.field("action", pa.string(), nullable=False),
    ]
)


@dataclass
class RolloutSummary:
    users: int
    items: int
    sessions: int
    pages: int
    positives: int
    negatives: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _session_ids(ts: np.ndarray | None, split: list[str | None] | None, gap_s: float) -> np.ndarray:
    """Session number of each (chronologically sorted) interaction."""
    n = len(ts) if ts is not None else len(split or [])
    if ts is not None:
        gaps = np.diff(ts) > gap_s  # NaN (undated) never opens a session
        return np.concatenate([[0], np.cumsum(gaps)]).astype(np.int32)
    if split is not None and any(s is not None for s in split):
        changes = [0] + [int(split[i] != split[i - 1]) for i in range(1, n)]
        return np.cumsum(changes).astype(np.int32)
    return np.zeros(n, dtype=np.int32)


SPLIT_ORDER = {"train": 0, "valid": 1, "test": 2}


def build_rollouts(ds: Dataset, users: list[str], pages: PagesConfig, seed: int,
                   all_interactions: pa.Table | None = None) -> pa.Table:
    """The human rollouts of `users` as one Arrow table (schema ROLLOUTS), one row per page.

    `all_interactions`: the whole dataset's, when `ds` is its training split: a distractor must be an item the
    user never rated at all, held-out part included (else a held-out positive would be shown, as skipped, on a
    training page)."""
    k, p = pages.items_per_page, pages.positives_per_page
    gap_s = pages.session_gap_hours * 3600.0
    item_ids = ds.items["item_id"].to_numpy(zero_copy_only=False).astype(object)
    n_items = len(item_ids)

    wanted = pa.array(users, pa.string())
    inter = ds.interactions.filter(pc.is_in(ds.interactions["user_id"], value_set=wanted))
    has_ts = inter["ts"].null_count < inter.num_rows
    split_rank = pc.fill_null(
        pc.index_in(inter["split"], value_set=pa.array(list(SPLIT_ORDER))), len(SPLIT_ORDER)
    )
    inter = inter.append_column("split_rank", split_rank)
    # chronological: by time where known, else by the dataset's split, then by source order; rows without
    # a time (Steam's undated reviews, from the crawl's own year) sort after the dated ones
    keys = [("user_id", "ascending")]
    keys += [("ts", "ascending")] if has_ts else [("split_rank", "ascending")]
    keys += [("seq", "ascending")]
    inter = inter.sort_by(keys)

    user_col = inter["user_id"].to_numpy(zero_copy_only=False).astype(object)
    codes = pc.index_in(inter["item_id"], value_set=ds.items["item_id"]).to_numpy(zero_copy_only=False)
    ratings = inter["rating"].to_numpy(zero_copy_only=False).astype(np.float32)  # null -> nan
    ts_all = inter["ts"].to_numpy(zero_copy_only=False) if has_ts else None
    split_all = inter["split"].to_pylist()

    elsewhere: dict[str, np.ndarray] = {}
    if all_interactions is not None:
        other = all_interactions.filter(pc.is_in(all_interactions["user_id"], value_set=wanted))
        other_codes = pc.index_in(other["item_id"], value_set=ds.items["item_id"]).to_pylist()
        for uid, code in zip(other["user_id"].to_pylist(), other_codes, strict=True):
            if code is not None:  # an item outside the catalogue is never a distractor anyway
                elsewhere.setdefault(uid, []).append(code)
    boundaries = np.flatnonzero(user_col[1:] != user_col[:-1]) + 1
    starts = np.concatenate([[0], boundaries]).astype(int)
    ends = np.concatenate([boundaries, [len(user_col)]]).astype(int)

    out: dict[str, list] = {name: [] for name in ROLLOUTS.names}
    flat_items: list[np.ndarray] = []
    flat_watched: list[np.ndarray] = []
    flat_ratings: list[np.ndarray] = []
    offsets = [0]

    for start, end in zip(starts, ends, strict=True):
        uid = user_col[start]
        rng = user_rng(seed, uid)
        u_codes = codes[start:end]
        u_ratings = ratings[start:end]
        u_ts = ts_all[start:end].astype(np.float64) if ts_all is not None else None
        u_split = split_all[start:end]
        sessions = _session_ids(u_ts, u_split, gap_s)

        # the page slices: consecutive chunks of p positives that never cross a session boundary
        chunks: list[tuple[int, int]] = []
        s_bounds = np.concatenate([[0], np.flatnonzero(np.diff(sessions)) + 1, [len(sessions)]])
        for a, b in zip(s_bounds[:-1], s_bounds[1:], strict=True):
            chunks.extend((i, min(i + p, b)) for i in range(a, b, p))
        n_dist = sum(k - (b - a) for a, b in chunks)

        # distractors: items this user never rated, without repeats while the pool lasts
        rated = np.zeros(n_items, dtype=bool)
        rated[u_codes] = True
        rated[elsewhere.get(uid, [])] = True
        pool = np.flatnonzero(~rated)
        if len(pool) < k - 1:
            raise UserError(
                f"user '{uid}' rated {len(u_codes)} of the {n_items} items: too few unrated items left "
                f"for pages of {k} (lower pages.items_per_page)"
            )
        if len(pool) >= n_dist:  # no distractor repeats within the user's rollout
            distractors = rng.choice(pool, size=n_dist, replace=False)
        else:  # a small catalogue: repeats across pages, never within one
            distractors = np.concatenate(
                [rng.choice(pool, size=k - (b - a), replace=False) for a, b in chunks]
            )

        d_at = 0
        page_in_session = 0
        prev_session = -1
        for step, (a, b) in enumerate(chunks):
            session = int(sessions[a])
            page_in_session = 0 if session != prev_session else page_in_session + 1
            prev_session = session
            n_pos = b - a
            need = k - n_pos
            page_codes = np.concatenate([u_codes[a:b], distractors[d_at : d_at + need]])
            d_at += need
            watched = np.zeros(k, dtype=bool)
            watched[:n_pos] = True
            page_ratings = np.full(k, np.nan, dtype=np.float32)
            page_ratings[:n_pos] = u_ratings[a:b]
            order = rng.permutation(k)
            flat_items.append(page_codes[order])
            flat_watched.append(watched[order])
            flat_ratings.append(page_ratings[order])
            offsets.append(offsets[-1] + k)

            last_of_session = b == len(sessions) or sessions[b] != session
            out["user_id"].append(uid)
            out["session"].append(session)
            out["page"].append(page_in_session)
            out["step"].append(step)
            out["history_len"].append(a)
            out["ts"].append(int(u_ts[a]) if u_ts is not None and not np.isnan(u_ts[a]) else None)
            out["split"].append(u_split[a])
            out["action"].append("exit" if last_of_session else "next_page")

    off = pa.array(offsets, pa.int32())
    all_codes = np.concatenate(flat_items) if flat_items else np.zeros(0, dtype=np.int64)
    all_ratings = np.concatenate(flat_ratings) if flat_ratings else np.zeros(0, dtype=np.float32)
    columns = {
        "user_id": pa.array(out["user_id"], pa.string()),
        "session": pa.array(out["session"], pa.int32()),
        "page": pa.array(out["page"], pa.int32()),
        "step": pa.array(out["step"], pa.int32()),
        "history_len": pa.array(out["history_len"], pa.int32()),
        "ts": pa.array(out["ts"], pa.int64()),
        "split": pa.array(out["split"], pa.string()),
        "items": pa.ListArray.from_arrays(off, pa.array(item_ids[all_codes], pa.string())),
        "watched": pa.ListArray.from_arrays(
            off, pa.array(np.concatenate(flat_watched) if flat_watched else [], pa.bool_())
        ),
        "ratings": pa.ListArray.from_arrays(
            off, pa.array(all_ratings, pa.float32(), from_pandas=True)  # nan -> null
        ),
        "action": pa.array(out["action"], pa.string()),
    }
    return pa.table(columns, schema=ROLLOUTS)


def summarize(rollouts: pa.Table) -> RolloutSummary:
    watched = pc.list_flatten(rollouts["watched"])
    positives = pc.sum(watched).as_py() or 0
    sessions = rollouts.group_by(["user_id", "session"]).aggregate([]).num_rows if rollouts.num_rows else 0
    return RolloutSummary(
        users=pc.count_distinct(rollouts["user_id"]).as_py(),
        items=pc.count_distinct(pc.list_flatten(rollouts["items"])).as_py(),
        sessions=sessions,
        pages=rollouts.num_rows,
        positives=positives,
        negatives=len(watched) - positives,
    )


def write_rollouts(rollouts: pa.Table, path: str | os.PathLike) -> None:
    """Atomic write: a reader never sees half a file."""
    store.write_parquet(rollouts, path)


def read_rollouts(path: str | os.PathLike) -> pa.Table:
    return pq.read_table(path, schema=ROLLOUTS)
