"""Personas: who each simulated user is, from the data alone.

Traits follow Agent4Rec's definitions, each cut into three levels by percentiles over ALL users of the
dataset (so a level means the same thing whichever population is drawn):

- activity: how many items the user rated; cut at the 60th / 90th percentiles (3 = most active).
- diversity: how many genres it takes to cover 80% of the user's views; cut at 33rd / 66th (3 = most diverse).
- conformity: mean squared deviation of the user's ratings from each item's mean rating; cut at the 25th /
  80th percentiles of that deviation. Level 1 = closest to the crowd (most conforming), 3 = most
  idiosyncratic; only where ratings exist. (This direction reproduces Agent4Rec's published
  ML-1M levels best; see tests/test_personas.py.) Cuts are by rank, so ties are split (see `levels`).

The words are the scenario's domain's (`core.Domain`): "an occasional viewer" of movies is "an occasional
player" of games. Demographics come from the users table where the dataset has them; taste text from the
dataset where it gives one (ML-1M Agent4Rec), otherwise empty until the learning step writes it from the
training split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.core import MOVIES, Domain
from alignuser_sim.data.tables import Dataset

DEMOGRAPHIC_COLUMNS = ("gender", "age", "occupation")


def activity_words(domain: Domain = MOVIES) -> dict[int, str]:
    return {1: f"an occasional {domain.user}", 2: f"a regular {domain.user}", 3: f"a very active {domain.user}"}


def diversity_words(domain: Domain = MOVIES) -> dict[int, str]:
    return {
        1: "sticks to a few genres",
        2: "enjoys a moderate range of genres",
        3: f"{domain.consumes} widely across genres",
    }


ACTIVITY_WORDS = activity_words()  # the movie domain's, as they always were
DIVERSITY_WORDS = diversity_words()
CONFORMITY_WORDS = {
    1: "rate close to the crowd's average",
    2: "sometimes depart from the crowd's average",
    3: "rate very differently from the crowd",
}


@dataclass
class Persona:
    user_id: str
    activity: int
    diversity: int
    conformity: int | None
    n_interactions: int
    n_genres_80: int
    rating_deviation: float | None
    demographics: dict[str, str] = field(default_factory=dict)
    taste: str = ""

    def describe(self, domain: Domain = MOVIES) -> str:
        """The persona as prompt text in the domain's words: stable for a user, so it belongs in the cached
        prompt prefix."""
        lines = [f"You are {activity_words(domain)[self.activity]} who {diversity_words(domain)[self.diversity]}."]
        if self.conformity is not None:
            lines.append(f"You {CONFORMITY_WORDS[self.conformity]}.")
        if self.demographics:
            lines.append("About you: " + ", ".join(f"{k} {v}" for k, v in self.demographics.items()) + ".")
        if self.taste:
            lines.append(f"Your taste: {self.taste}")
        return "\n".join(lines)


PERSONAS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("activity", pa.int8(), nullable=False),
        pa.field("diversity", pa.int8(), nullable=False),
        pa.field("conformity", pa.int8()),
        pa.field("n_interactions", pa.int32(), nullable=False),
        pa.field("n_genres_80", pa.int32(), nullable=False),
        pa.field("rating_deviation", pa.float64()),
        pa.field("demographics", pa.map_(pa.string(), pa.string())),
        pa.field("taste", pa.string()),
    ]
)


def levels(values: np.ndarray, low_pct: float, high_pct: float) -> np.ndarray:
    """Level by rank: the lowest `low_pct`% of users get 1, up to `high_pct`% get 2, the rest 3; NaN -> 0.

    Cutting by rank, not by value, splits ties (many users cover 80% of their views with exactly 6
    genres) so the level sizes follow the percentiles. Ties keep the users' order (sorted ids). This
    reproduces Agent4Rec's published ML-1M levels: 93% activity, 94% diversity, 77% conformity agree.
    """
    out = np.zeros(len(values), dtype=np.int8)
    known = np.flatnonzero(~np.isnan(values))
    if known.size == 0:
        return out
    order = known[np.argsort(values[known], kind="stable")]
    position = np.empty(len(values))
    position[order] = np.arange(len(order))
    n = len(order)
    ranked = np.where(position < low_pct / 100 * n, 1, np.where(position < high_pct / 100 * n, 2, 3))
    out[order] = ranked[order]
    return out


def genres_to_cover(genre_counts: dict[str, int], share: float = 0.8) -> int:
    """The fewest genres whose views add up to `share` of the user's genre views."""
    if not genre_counts:
        return 0
    counts = np.sort(np.array(list(genre_counts.values()), dtype=np.float64))[::-1]
    cumulative = np.cumsum(counts) / counts.sum()
    return int(np.searchsorted(cumulative, share - 1e-9) + 1)


def _trait_values(ds: Dataset) -> dict[str, dict[str, float]]:
    """Per user: interaction count, genres covering 80%, mean squared rating deviation (NaN if no ratings)."""
    inter = ds.interactions
    users = inter["user_id"].to_numpy(zero_copy_only=False).astype(object)
    codes = pc.index_in(inter["item_id"], value_set=ds.items["item_id"]).to_numpy(zero_copy_only=False)
    genres = ds.items["genres"].to_pylist()
    ratings = inter["rating"].to_numpy(zero_copy_only=False).astype(np.float64)

    if "mean_rating" in ds.items.column_names:
        item_mean = ds.items["mean_rating"].to_numpy(zero_copy_only=False).astype(np.float64)
    else:  # mean of the ratings the dataset holds
        sums = np.bincount(codes, weights=np.nan_to_num(ratings), minlength=ds.items.num_rows)
        cnts = np.bincount(codes, weights=~np.isnan(ratings), minlength=ds.items.num_rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            item_mean = sums / cnts
    sq_dev = (ratings - item_mean[codes]) ** 2

    order = np.argsort(users, kind="stable")
    users, codes, sq_dev = users[order], codes[order], sq_dev[order]
    bounds = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(users)]])
    result: dict[str, dict[str, float]] = {}
    for a, b in zip(starts, ends, strict=True):
        counts: dict[str, int] = {}
        for code in codes[a:b]:
            for g in genres[code] or ():
                counts[g] = counts.get(g, 0) + 1
        dev = sq_dev[a:b]
        dev = dev[~np.isnan(dev)]
        result[users[a]] = {
            "n": float(b - a),
            "genres80": float(genres_to_cover(counts)),
            "dev": float(dev.mean()) if dev.size else float("nan"),
        }
    return result


def build_personas(ds: Dataset, users: list[str]) -> list[Persona]:
    """Personas of `users`, with trait levels cut over the whole dataset."""
    values = _trait_values(ds)
    everyone = sorted(values)
    index = {u: i for i, u in enumerate(everyone)}
    n = np.array([values[u]["n"] for u in everyone])
    g = np.array([values[u]["genres80"] for u in everyone])
    d = np.array([values[u]["dev"] for u in everyone])
    activity, diversity, conformity = levels(n, 60, 90), levels(g, 33, 66), levels(d, 25, 80)

    user_rows = {row["user_id"]: row for row in ds.users.to_pylist()}
    personas = []
    for uid in users:
        i = index[uid]
        row = user_rows.get(uid, {})
        demographics = {c: str(row[c]) for c in DEMOGRAPHIC_COLUMNS if row.get(c) not in (None, "")}
        if row.get("age_group"):  # ML-1M codes age as a bucket's lower bound; its label reads better
            demographics["age"] = str(row["age_group"])
        personas.append(
            Persona(
                user_id=uid,
                activity=int(activity[i]),
                diversity=int(diversity[i]),
                conformity=int(conformity[i]) or None,
                n_interactions=int(n[i]),
                n_genres_80=int(g[i]),
                rating_deviation=None if np.isnan(d[i]) else float(d[i]),
                demographics=demographics,
                taste=str(row.get("taste") or ""),
            )
        )
    return personas


def personas_table(personas: list[Persona]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {**p.__dict__, "demographics": list(p.demographics.items())}
            for p in personas
        ],
        schema=PERSONAS,
    )


def personas_from_table(table: pa.Table) -> list[Persona]:
    return [Persona(**{**row, "demographics": dict(row["demographics"] or [])}) for row in table.to_pylist()]
