"""Item rating stats on the page (`data/item_stats.py`): computed from the training split only, shown in both
line formats, read by the Catalogue from the items table, and gone with `pages.show_item_stats: false`."""

import pyarrow as pa
import pytest

from alignuser_sim.agent.decision import id_lines, numbered_lines
from alignuser_sim.config import scenario_from_dict
from alignuser_sim.core import Catalogue, ItemView, stats_suffix
from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.data.item_stats import (
    agent_items,
    with_agent_items,
    with_item_stats,
    without_item_stats,
    without_own_interactions,
)
from alignuser_sim.data.tables import Dataset, make_interactions, make_items
from alignuser_sim.errors import ScenarioError
from alignuser_sim.evaluation import micro, ranking


def tiny(heldout_rating: float = 1.0, ratings: bool = True) -> Dataset:
    """Item a: three training ratings (4, 4, 5) and one held-out (the `test` split); b: one training rating;
    c: never rated."""
    users = ["u1", "u2", "u3", "u4", "u1", "u2"]
    items = ["a", "a", "a", "a", "b", "b"]
    rating = [4.0, 4.0, 5.0, heldout_rating, 3.0, 2.0] if ratings else None
    split = ["train", "train", "train", "test", "train", "test"]
    return Dataset(
        name="tiny",
        interactions=make_interactions(users, items, rating=rating, split=split),
        items=make_items(["a", "b", "c"], ["Alpha", "Beta", "Gamma"], [["Drama"], [], ["Comedy"]],
                         ["A long story.", None, None]),
        users=pa.table({"user_id": ["u1", "u2", "u3", "u4"]}),
    )


def views(items: pa.Table) -> dict[str, ItemView]:
    return Catalogue(items).views


def test_stats_come_from_the_training_split_only():
    ds = tiny(heldout_rating=1.0)
    train, heldout = split_dataset(ds)
    assert heldout.num_rows == 2  # the held-out rows exist, and are left out of the stats
    a, b, c = (views(agent_items(ds))[i] for i in "abc")
    assert a.avg_rating == pytest.approx(13 / 3) and a.n_ratings == 3
    assert b.avg_rating == 3.0 and b.n_ratings == 1
    assert c.avg_rating is None and c.n_ratings == 0 and c.stats == ""
    # another held-out rating changes nothing the agent is shown
    assert views(agent_items(tiny(heldout_rating=5.0))) == views(agent_items(ds))
    # the training split the caller already has gives the same table
    assert agent_items(ds, train=train).equals(agent_items(ds))


def test_without_ratings_the_count_is_the_users_who_interacted():
    ds = tiny(ratings=False)
    a = views(agent_items(ds))["a"]
    assert a.avg_rating is None and a.n_ratings == 3  # u1, u2, u3 in training (u4's row is held out)
    assert a.stats == " - 3 users"
    repeated = make_interactions(["u1", "u1", "u2"], ["a", "a", "a"])  # a user counts once
    assert views(with_item_stats(ds.items, repeated))["a"].n_ratings == 2


def test_suffix_in_both_line_formats():
    item = ItemView("42", "Alpha", ("Drama",), "A long story.", avg_rating=4.06, n_ratings=1234)
    assert item.line() == "- id 42: Alpha (Drama) - rated 4.1/5 by 1,234 users. A long story."
    assert id_lines([item]) == item.line()
    assert numbered_lines([item]) == "1. Alpha (Drama) - rated 4.1/5 by 1,234 users. A long story."
    assert stats_suffix(None, 1234) == " - 1,234 users" and stats_suffix(3.0, 1) == " - rated 3.0/5 by 1 user"
    plain = ItemView("42", "Alpha", ("Drama",), "A long story.")
    assert plain.line() == "- id 42: Alpha (Drama). A long story."  # no stats: the line as it always was
    assert numbered_lines([plain]) == "1. Alpha (Drama). A long story."


def test_catalogue_reads_the_optional_columns():
    items = make_items(["a", "b", "c"], ["Alpha", "Beta", None], [["Drama"], [], []]).append_column(
        "avg_rating", pa.array([4.5, float("nan"), None], pa.float64())).append_column(
        "n_ratings", pa.array([10, 3, None], pa.int64()))
    a, b, c = (Catalogue(items).views[i] for i in "abc")
    assert (a.avg_rating, a.n_ratings) == (4.5, 10)
    assert (b.avg_rating, b.n_ratings) == (None, 3)  # NaN reads as no average
    assert (c.avg_rating, c.n_ratings, c.title) == (None, 0, "item c")
    assert Catalogue(make_items(["a"], ["Alpha"], [[]])).views["a"].stats == ""  # a table without the columns


def test_switch_off_removes_them_everywhere():
    ds = tiny()
    off = agent_items(ds, show=False)
    assert "avg_rating" not in off.column_names and "n_ratings" not in off.column_names
    assert without_item_stats(agent_items(ds)).equals(ds.items)
    assert "rated" not in numbered_lines(list(views(off).values()))
    assert "avg_rating" in with_agent_items(ds).items.column_names
    assert with_agent_items(ds, show=False).items.equals(ds.items)
    # the scenario's switch: on by default, recorded by the eval and compare fingerprints only when off
    base = {"name": "t", "dataset": {"name": "ml-100k"}}
    on, off_scenario = scenario_from_dict(base), scenario_from_dict({**base, "pages": {"show_item_stats": False}})
    assert on.pages.show_item_stats and not off_scenario.pages.show_item_stats
    assert "show_item_stats" not in micro.fingerprint(on)
    assert micro.fingerprint(off_scenario)["show_item_stats"] is False
    assert "domain" not in micro.fingerprint(on)["dataset"]  # a knob at its default matches older folders
    assert "show_item_stats" not in ranking.fingerprint(on)["pages"]
    assert ranking.fingerprint(off_scenario)["pages"]["show_item_stats"] is False


def test_simulation_and_learning_catalogues_carry_the_stats(tmp_path):
    """ML-100K: the run plan's items table (what the shards get) and learning's views hold the training
    split's stats; the switch off leaves the plan's table as loaded."""
    from alignuser_sim.learning.inputs import prepare
    from alignuser_sim.simulation.runs import plan_run

    base = {"name": "stats", "seed": 3, "dataset": {"name": "ml-100k"}, "population": {"size": 3},
            "llm": {"endpoints": ["http://127.0.0.1:9/v1"], "cache": "off"}, "output_dir": str(tmp_path)}
    plan = plan_run(scenario_from_dict(base), tmp_path / "on", n_shards=1)
    assert {"avg_rating", "n_ratings"} <= set(plan.dataset.items.column_names)
    train, _ = split_dataset(plan.dataset)
    assert plan.dataset.items.equals(with_item_stats(plan.dataset.items, train.interactions))
    shown = [v for v in Catalogue(plan.dataset.items).views.values() if v.n_ratings]
    assert shown and all(1 <= v.avg_rating <= 5 for v in shown)
    off = plan_run(scenario_from_dict({**base, "pages": {"show_item_stats": False}}), tmp_path / "off", n_shards=1)
    assert "avg_rating" not in off.dataset.items.column_names
    inputs = prepare(scenario_from_dict(base), users_limit=2, fit=False)
    assert any(v.n_ratings for v in inputs.views.values())


def same_stats(got: ItemView, expected: ItemView) -> bool:
    if expected.avg_rating is None:
        return got.avg_rating is None and got.n_ratings == expected.n_ratings
    return got.n_ratings == expected.n_ratings and got.avg_rating == pytest.approx(expected.avg_rating)


def test_a_users_own_interactions_leave_the_stats_of_their_training_examples():
    """Each case of `without_own_interactions` against the stats recomputed with the user's rows removed."""
    ds = tiny()
    train, _ = split_dataset(ds)
    table = with_item_stats(ds.items, train.interactions)
    users = {"a": 3, "b": 1}  # distinct training users per item
    checked = 0
    for user in ("u1", "u2", "u3"):
        rows = train.interactions.filter(pa.compute.equal(train.interactions["user_id"], user))
        others = train.interactions.filter(pa.compute.not_equal(train.interactions["user_id"], user))
        expected = views(with_item_stats(ds.items, others))
        for item, rating in zip(rows["item_id"].to_pylist(), rows["rating"].to_pylist(), strict=True):
            assert same_stats(without_own_interactions(views(table)[item], [rating], users[item]), expected[item])
            checked += 1
    assert checked == 4
    a = views(table)["a"]
    assert without_own_interactions(a, [4.0], 3) == ItemView(
        "a", "Alpha", ("Drama",), "A long story.", avg_rating=4.5, n_ratings=2)
    assert without_own_interactions(a, [None], 3) == a  # an unrated interaction never counted in the ratings
    assert without_own_interactions(a, [], 3) == a
    b = views(table)["b"]  # rated by u1 alone; with 2 distinct users, the other one interacted without a rating
    assert without_own_interactions(b, [3.0], 2) == ItemView("b", "Beta", (), "", avg_rating=None, n_ratings=1)
    plain = tiny(ratings=False)
    unrated = views(with_item_stats(plain.items, split_dataset(plain)[0].interactions))["a"]
    assert unrated.n_ratings == 3 and without_own_interactions(unrated, [None], 3).n_ratings == 2
    hidden = ItemView("a", "Alpha")  # stats switched off: nothing to take out
    assert without_own_interactions(hidden, [4.0], 3) == hidden


def test_training_examples_show_each_users_items_without_their_own_ratings(tmp_path):
    """ML-100K: `LearningInputs.views_for(user)` is the training split's stats with that user's rows removed,
    for every item the user consumed (the evaluation never counts the user in the stats of what it asks)."""
    from alignuser_sim.data import load_dataset
    from alignuser_sim.learning.inputs import prepare

    scenario = scenario_from_dict({"name": "own", "seed": 3, "dataset": {"name": "ml-100k"},
                                   "population": {"size": 2}, "output_dir": str(tmp_path)})
    inputs = prepare(scenario, fit=False)
    train, _ = split_dataset(load_dataset(scenario.dataset))
    changed = 0
    for user in inputs.users:
        others = views(with_item_stats(train.items, train.interactions.filter(
            pa.compute.not_equal(train.interactions["user_id"], user))))
        mine = inputs.views_for(user)
        for item, _rating, _liked in inputs.consumed[user]:
            assert same_stats(mine[item], others[item])
            changed += mine[item] != inputs.views[item]
    assert changed > 0
    consumed = {c[0] for u in inputs.users for c in inputs.consumed[u]}
    untouched = next(i for i in inputs.views if i not in consumed)
    assert inputs.views_for(inputs.users[0])[untouched] is inputs.views[untouched]


def test_popularity_words_rank_the_counts_and_lead_the_line():
    """`pages.popularity_words`: a band word per rated item from where its count ranks among the rated items
    (ties share a word, unrated items get none), first on the line in both formats; off by default."""
    from alignuser_sim.core import popularity_word
    from alignuser_sim.data.item_stats import with_popularity_words

    counts = [0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 50]  # ten rated items, one unrated
    items = make_items([f"i{n}" for n in range(len(counts))], [f"T{n}" for n in range(len(counts))],
                       [[] for _ in counts]).append_column("avg_rating", pa.array([None] + [3.0] * 10)) \
        .append_column("n_ratings", pa.array(counts, pa.int64()))
    got = with_popularity_words(items)["popularity"].to_pylist()
    assert got[0] is None
    assert got[1] == got[2] == "obscure"  # nothing below them
    assert got[-1] == "very popular" and got[-2] == "popular" and got[4] == "little known"
    assert [popularity_word(x) for x in (0.0, 0.29, 0.3, 0.6, 0.9, 1.0)] == [
        "obscure", "obscure", "little known", "popular", "very popular", "very popular"]
    view = views(with_popularity_words(items))["i10"]
    assert view.line() == "- id i10: [very popular] T10 - rated 3.0/5 by 50 users"
    assert numbered_lines([view]) == "1. [very popular] T10 - rated 3.0/5 by 50 users"
    assert "[" not in id_lines([views(with_popularity_words(items))["i0"]])  # unrated: no word
    ds = tiny()
    assert "popularity" not in agent_items(ds).column_names  # off by default
    assert agent_items(ds, words=True)["popularity"].to_pylist()[:2] == ["very popular", "obscure"]
    assert "popularity" not in agent_items(ds, show=False, words=True).column_names
    assert "popularity" in with_agent_items(ds, words=True).items.column_names
    # the switch: recorded by the fingerprints only when on; needs the stats
    base = {"name": "t", "dataset": {"name": "ml-100k"}}
    on = scenario_from_dict({**base, "pages": {"popularity_words": True}})
    assert micro.fingerprint(on)["popularity_words"] is True and "popularity_words" not in micro.fingerprint(
        scenario_from_dict(base))
    assert ranking.fingerprint(on)["pages"]["popularity_words"] is True
    assert "popularity_words" not in ranking.fingerprint(scenario_from_dict(base))["pages"]
    with pytest.raises(ScenarioError, match="pages.popularity_words: needs show_item_stats"):
        scenario_from_dict({**base, "pages": {"popularity_words": True, "show_item_stats": False}})
    # a user's own interaction taken out of an item only they touched takes its word too
    lone = ItemView("b", "Beta", avg_rating=3.0, n_ratings=1, popularity="obscure")
    assert without_own_interactions(lone, [3.0], 1).line() == "- id b: Beta"
