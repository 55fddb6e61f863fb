"""Personas: trait arithmetic by hand, and agreement with Agent4Rec's published ML-1M trait levels."""

import numpy as np
import pyarrow as pa
import pytest

from alignuser_sim.config import scenario_from_dict
from alignuser_sim.data import load_dataset
from alignuser_sim.data.personas import (
    build_personas,
    genres_to_cover,
    levels,
    personas_from_table,
    personas_table,
)
from alignuser_sim.data.tables import Dataset, make_interactions, make_items


def test_genres_to_cover_by_hand():
    assert genres_to_cover({}) == 0
    assert genres_to_cover({"Drama": 10}) == 1
    # 8 of 10 views in one genre covers exactly 80%
    assert genres_to_cover({"Drama": 8, "Comedy": 1, "Horror": 1}) == 1
    assert genres_to_cover({"Drama": 5, "Comedy": 3, "Horror": 2}) == 2
    assert genres_to_cover({"A": 1, "B": 1, "C": 1, "D": 1, "E": 1}) == 4


def test_levels_cut_at_percentiles():
    values = np.arange(1, 11, dtype=float)  # 1..10: p60 = 6.4, p90 = 9.1
    assert levels(values, 60, 90).tolist() == [1, 1, 1, 1, 1, 1, 2, 2, 2, 3]
    with_nan = np.array([1.0, np.nan, 3.0])
    assert levels(with_nan, 25, 80).tolist()[1] == 0


def test_personas_on_a_hand_made_dataset():
    inter = make_interactions(
        user_id=["u1", "u1", "u1", "u2", "u3", "u3"],
        item_id=["a", "b", "c", "a", "a", "b"],
        rating=[5, 5, 1, 3, 4, 2],
    )
    items = make_items(["a", "b", "c"], ["A", "B", "C"], [["Drama"], ["Comedy"], ["Drama", "Horror"]])
    users = pa.table({"user_id": ["u1", "u2", "u3"], "gender": ["F", "M", None], "taste": ["likes drama", "", None]})
    ds = Dataset("hand", inter, items, users)
    personas = {p.user_id: p for p in build_personas(ds, ["u1", "u2", "u3"])}
    u1 = personas["u1"]
    assert u1.n_interactions == 3
    # u1's genre views: Drama 2, Comedy 1, Horror 1 -> 3 genres reach 80%
    assert u1.n_genres_80 == 3
    # item means: a = 4, b = 3.5, c = 1 -> u1 deviations 1, 2.25, 0 -> mean 1.0833
    assert u1.rating_deviation == pytest.approx((1 + 2.25 + 0) / 3)
    assert personas["u2"].rating_deviation == pytest.approx(1.0)
    # 3 users ranked by count (u2 1, u3 2, u1 3): ranks 0,1 < 60% of 3 -> level 1; rank 2 < 90% -> level 2
    assert (u1.activity, personas["u3"].activity, personas["u2"].activity) == (2, 1, 1)
    assert u1.demographics == {"gender": "F"} and personas["u3"].demographics == {}
    assert "likes drama" in u1.describe()
    # Parquet round trip
    again = personas_from_table(personas_table(list(personas.values())))
    assert again == list(personas.values())


def test_ml1m_traits_agree_with_agent4rec_levels(shared_datasets):
    ds = load_dataset(scenario_from_dict({"dataset": {"name": "ml-1m-agent4rec"}}).dataset)
    users = ds.users["user_id"].to_pylist()
    ours = {p.user_id: p for p in build_personas(ds, users)}
    theirs = {r["user_id"]: r for r in ds.users.select(
        ["user_id", "a4r_activity", "a4r_diversity", "a4r_conformity"]).to_pylist()}
    agree = {
        t: np.mean([getattr(ours[u], t) == theirs[u][f"a4r_{t}"] for u in users])
        for t in ("activity", "diversity", "conformity")
    }
    # activity and diversity come from the same interactions: near-identical levels expected;
    # conformity from the 25 real ratings per user we have (Agent4Rec had all of them)
    assert agree["activity"] > 0.9 and agree["diversity"] > 0.9 and agree["conformity"] > 0.7, agree
    # the taste text is the dataset's own
    assert all(ours[u].taste for u in users[:50])
    print("agreement with Agent4Rec levels:", agree)
