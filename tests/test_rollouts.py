"""Human rollouts: invariants on a hand-made dataset and on real ML-100K / ML-1M data."""

from collections import defaultdict

import pyarrow as pa
import pytest

from alignuser_sim.config import PagesConfig, PopulationConfig, scenario_from_dict
from alignuser_sim.data import load_dataset
from alignuser_sim.data.population import select_population
from alignuser_sim.data.rollouts import build_rollouts, summarize
from alignuser_sim.data.tables import Dataset, make_interactions, make_items


def tiny_dataset() -> Dataset:
    # user a: two sessions (gap of 2 h), 5 interactions; user b: 3 interactions, one session
    hour = 3600
    inter = make_interactions(
        user_id=["a", "a", "a", "b", "a", "a", "b", "b"],
        item_id=["i1", "i2", "i3", "i1", "i4", "i5", "i6", "i2"],
        rating=[5, 4, 3, 2, 1, 5, 4, 3],
        ts=[0, 60, 120, 10, 120 + 2 * hour, 121 + 2 * hour, 20, 30],
    )
    ids = [f"i{n}" for n in range(1, 21)]
    items = make_items(ids, [f"Title {i}" for i in ids], [["Drama"]] * len(ids))
    users = pa.table({"user_id": ["a", "b"]})
    return Dataset("tiny", inter, items, users)


def chronological(ds: Dataset) -> dict[str, list[tuple]]:
    rows = sorted(ds.interactions.to_pylist(), key=lambda r: (r["user_id"], r["ts"] is None, r["ts"] or 0,
                                                                r["seq"]))
    out = defaultdict(list)
    for r in rows:
        out[r["user_id"]].append((r["item_id"], r["rating"], r["ts"]))
    return out


def check_invariants(ds: Dataset, rollouts: pa.Table, k: int, p: int) -> None:
    rated = defaultdict(set)
    for r in ds.interactions.select(["user_id", "item_id"]).to_pylist():
        rated[r["user_id"]].add(r["item_id"])
    history = chronological(ds) if ds.has_timestamps else None
    by_user = defaultdict(list)
    for row in rollouts.to_pylist():
        by_user[row["user_id"]].append(row)
    for uid, pages in by_user.items():
        pages.sort(key=lambda r: r["step"])
        consumed = 0
        for row in pages:
            items, watched, ratings = row["items"], row["watched"], row["ratings"]
            assert len(items) == k and len(set(items)) == k
            positives = [i for i, w in zip(items, watched, strict=True) if w]
            negatives = [i for i, w in zip(items, watched, strict=True) if not w]
            assert 1 <= len(positives) <= p
            # distractors: never rated by this user, at any time
            assert not (set(negatives) & rated[uid])
            # no leakage: the page comes right after what was consumed before it
            assert row["history_len"] == consumed
            if history is not None:
                nxt = history[uid][consumed : consumed + len(positives)]
                # positives are the human's next items, with the human's ratings
                assert sorted(positives) == sorted(i for i, _, _ in nxt)
                got = {i: r for i, w, r in zip(items, watched, ratings, strict=True) if w}
                assert got == {i: r for i, r, _ in nxt}
                before = history[uid][consumed - 1][2] if consumed else None
                if before is not None and row["ts"] is not None:
                    assert before <= row["ts"]
                if before is None and consumed:  # past an undated item, every later item is undated
                    assert row["ts"] is None
            assert all(r is None for r, w in zip(ratings, watched, strict=True) if not w)
            consumed += len(positives)
        assert consumed == len(rated[uid]) or not history
        # exit closes each session, next_page everywhere else
        for a, b in zip(pages, pages[1:], strict=False):
            assert a["action"] == ("exit" if a["session"] != b["session"] else "next_page")
        assert pages[-1]["action"] == "exit"


def test_tiny_dataset_pages_sessions_and_actions():
    ds = tiny_dataset()
    pages = PagesConfig(items_per_page=4, distractor_ratio=1, session_gap_hours=1)
    r = build_rollouts(ds, ["a", "b"], pages, seed=3)
    check_invariants(ds, r, k=4, p=2)
    a = [row for row in r.to_pylist() if row["user_id"] == "a"]
    # session 0: i1 i2 | i3 ; session 1 (after the 2 h gap): i4 i5
    assert [(x["session"], x["page"], x["history_len"], x["action"]) for x in a] == [
        (0, 0, 0, "next_page"), (0, 1, 2, "exit"), (1, 0, 3, "exit")]
    s = summarize(r)
    assert (s.users, s.sessions, s.pages, s.positives, s.negatives) == (2, 3, 5, 8, 12)


def test_same_seed_same_pages_other_seed_other_distractors():
    ds = tiny_dataset()
    pages = PagesConfig(items_per_page=6, distractor_ratio=2)
    one, two = (build_rollouts(ds, ["a", "b"], pages, seed=11) for _ in range(2))
    assert one.equals(two)
    other = build_rollouts(ds, ["a", "b"], pages, seed=12)
    assert not one.equals(other)
    # a user's pages do not depend on who else is in the population
    alone = build_rollouts(ds, ["a"], pages, seed=11)
    assert alone.equals(one.filter(pa.compute.equal(one["user_id"], "a")))


@pytest.mark.parametrize("ratio,k,p", [(1, 4, 2), (3, 4, 1), (9, 10, 1), (2, 6, 2)])
def test_ratio_sets_positives_per_page(ratio, k, p):
    ds = tiny_dataset()
    pages = PagesConfig(items_per_page=k, distractor_ratio=ratio)
    assert pages.positives_per_page == p
    check_invariants(ds, build_rollouts(ds, ["a", "b"], pages, seed=0), k=k, p=p)


@pytest.fixture(scope="module")
def ml100k():
    return load_dataset(scenario_from_dict({"dataset": {"name": "ml-100k"}}).dataset)


def test_ml100k_rollouts_invariants(ml100k):
    users = select_population(ml100k.interactions, PopulationConfig(size=60), seed=5)
    pages = PagesConfig(items_per_page=4, distractor_ratio=1)
    r = build_rollouts(ml100k, users, pages, seed=5)
    check_invariants(ml100k, r, k=4, p=2)
    s = summarize(r)
    assert s.users == 60
    assert s.positives == ml100k.interactions.filter(
        pa.compute.is_in(ml100k.interactions["user_id"], value_set=pa.array(users))).num_rows
    assert s.sessions > s.users  # ML-100K users rate in several sittings


def test_ml1m_sessions_follow_the_split(shared_datasets):
    ds = load_dataset(scenario_from_dict({"dataset": {"name": "ml-1m-agent4rec"}}).dataset)
    users = select_population(ds.interactions, PopulationConfig(size=20, sampling="first"), seed=0)
    r = build_rollouts(ds, users, PagesConfig(items_per_page=4, distractor_ratio=3), seed=0)
    check_invariants(ds, r, k=4, p=1)
    rows = r.to_pylist()
    # no timestamps: train, then valid, then test, one session each
    for uid in users:
        splits = [x["split"] for x in rows if x["user_id"] == uid]
        assert splits == sorted(splits, key=["train", "valid", "test"].index)
        assert {x["session"] for x in rows if x["user_id"] == uid} == {0, 1, 2}


def test_steam_undated_reviews_come_last_and_keep_invariants(shared_datasets):
    ds = load_dataset(scenario_from_dict({"dataset": {"name": "steam"}}).dataset)
    users = select_population(ds.interactions, PopulationConfig(size=40, sampling="most_active"), seed=0)
    r = build_rollouts(ds, users, PagesConfig(items_per_page=4, distractor_ratio=1, session_gap_hours=720), seed=0)
    check_invariants(ds, r, k=4, p=2)
    for uid in users:
        ts = [x["ts"] for x in r.to_pylist() if x["user_id"] == uid]
        dated = [t for t in ts if t is not None]
        assert ts[: len(dated)] == dated == sorted(dated)  # dated pages first, in time order
