"""Recommenders: pages, feedback, resume state, offline metrics; hand-made tables and real ML-100K."""

import math
import pickle

import numpy as np
import pyarrow as pa
import pytest

from alignuser_sim.config import RecommenderConfig, scenario_from_dict
from alignuser_sim.data import load_dataset
from alignuser_sim.data.holdout import split_dataset as split_dataset_for_learning
from alignuser_sim.data.tables import Dataset, make_interactions, make_items
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.offline import evaluate_offline, offline_split, recall_ndcg
from alignuser_sim.recommenders import ALGORITHMS, make_recommender

# tiny-data settings: LightGCN needs more passes over 240 edges than its defaults give
FAST = {"lightgcn": {"epochs": 60}}
LEARNED = ["itemknn", "mf", "lightgcn"]


def make(name: str, seed: int = 1, **params):
    return make_recommender(RecommenderConfig(algorithm=name, params={**FAST.get(name, {}), **params}), seed)


def clusters(n_users: int = 40, per_cluster: int = 20, per_user: int = 6, seed: int = 0):
    """Two item clusters: users 0..23 consume only a-items, users 24..39 only b-items (a is more popular)."""
    rng = np.random.default_rng(seed)
    a = [f"a{i:02d}" for i in range(per_cluster)]
    b = [f"b{i:02d}" for i in range(per_cluster)]
    users, items = [], []
    for u in range(n_users):
        group = a if u < n_users * 0.6 else b
        for item in rng.choice(group, per_user, replace=False):
            users.append(f"u{u:02d}")
            items.append(str(item))
    return make_interactions(users, items), make_items(a + b, a + b, [["Drama"]] * (2 * per_cluster)), a, b


@pytest.fixture(scope="module")
def cluster_data():
    return clusters()


@pytest.fixture(scope="module")
def fitted(cluster_data):
    """One fitted recommender per algorithm (fitting is the slow part; each test copies one)."""
    inter, items, _, _ = cluster_data
    return {name: pickle.dumps(make(name).fit(inter, items)) for name in ALGORITHMS}


def fresh(fitted, name):
    return pickle.loads(fitted[name])


def users_of(inter) -> pa.Table:
    return pa.table({"user_id": pa.compute.unique(inter["user_id"])})


def history_of(inter, user):
    return {i for u, i in zip(inter["user_id"].to_pylist(), inter["item_id"].to_pylist(), strict=True) if u == user}


# --- pages -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_pages_are_k_unseen_items_never_repeated(fitted, cluster_data, name):
    inter, _, _, _ = cluster_data
    rec = fresh(fitted, name)
    seen = set(history_of(inter, "u03"))
    for _ in range(4):
        page = rec.page("u03", 4)
        assert len(page) == 4 and len(set(page)) == 4
        assert not set(page) & seen  # neither training history nor anything served before
        seen |= set(page)
    # the catalogue runs out: shorter pages, then empty ones
    rest = rec.page("u03", 40)
    assert len(rest) == 40 - len(seen) and not set(rest) & seen
    assert rec.page("u03", 4) == []


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_batched_pages_equal_single_pages_and_are_deterministic(cluster_data, name):
    inter, items, _, _ = cluster_data
    users = ["u00", "u30", "cold", "u07"]
    one, two = make(name, seed=3).fit(inter, items), make(name, seed=3).fit(inter, items)
    batched = one.pages(users, 4)
    assert batched == {u: two.page(u, 4) for u in users}
    assert set(batched) == set(users)


def test_random_depends_on_seed_and_user(cluster_data):
    inter, items, _, _ = cluster_data
    a = make("random", seed=1).fit(inter, items).pages(["u00", "u01"], 6)
    b = make("random", seed=2).fit(inter, items).pages(["u00", "u01"], 6)
    assert a["u00"] != b["u00"]
    assert a["u00"] != a["u01"]


def test_pop_serves_most_popular_unseen_items_ties_in_catalogue_order():
    # popularity: i3: 3 users, i1: 2, i5: 2, i2: 1, i4: 0, i6: 0 ; catalogue order i1..i6
    inter = make_interactions(
        ["a", "b", "c", "a", "b", "d", "d", "c"],
        ["i3", "i3", "i3", "i1", "i1", "i5", "i2", "i5"],
    )
    ids = [f"i{n}" for n in range(1, 7)]
    rec = make("pop").fit(inter, make_items(ids, ids, [[]] * 6))
    assert rec.page("a", 3) == ["i5", "i2", "i4"]  # a saw i3 and i1
    assert rec.page("new", 4) == ["i3", "i1", "i5", "i2"]  # a cold user: the same popularity order
    assert rec.page("new", 4) == ["i4", "i6"]


def test_itemknn_recommends_the_co_consumed_item():
    # x is always consumed with y, and never with z
    inter = make_interactions(
        ["u1", "u1", "u2", "u2", "u3", "u3", "u4", "u5", "u5", "u6"],
        ["x", "y", "x", "y", "x", "y", "z", "z", "w", "z"],
    )
    rec = make("itemknn").fit(inter, make_items(["w", "x", "y", "z"], ["w", "x", "y", "z"], [[]] * 4))
    rec.feedback("q", {"x": 5.0}, ["x"])
    assert rec.page("q", 1) == ["y"]
    assert rec.page("u4", 1) == ["w"]  # z's co-consumed item


# --- feedback --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_feedback_excludes_watched_and_shown_items(fitted, name):
    rec = fresh(fitted, name)
    shown = ["a00", "b00", "a01", "b01"]
    rec.feedback("u00", {"b00": 4.0, "a01": None}, shown)
    for _ in range(8):
        assert not set(rec.page("u00", 4)) & set(shown)
    assert rec.unknown_feedback_items == 0
    rec.feedback("u00", {"nope": 1.0}, ["nope"])  # an unknown id is counted, not fatal
    assert rec.unknown_feedback_items == 1


@pytest.mark.parametrize("name", LEARNED)
def test_cold_user_gets_pop_then_neighbours_of_what_they_watched(fitted, cluster_data, name):
    _, _, a, b = cluster_data
    rec, pop = fresh(fitted, name), fresh(fitted, "pop")
    first = rec.page("cold", 4)
    assert first == pop.page("cold", 4)  # no history: the popularity fallback (a-items)
    assert set(first) <= set(a)
    rec.feedback("cold", {"b05": 5.0}, first + ["b05"])
    after = rec.page("cold", 4)
    assert sum(item in b for item in after) >= 3  # the watched item's cluster


@pytest.mark.parametrize("name", LEARNED)
def test_watching_b_items_moves_an_a_user_toward_b(fitted, cluster_data, name):
    _, _, a, b = cluster_data
    rec = fresh(fitted, name)

    def lead_of_a():  # how far the best unseen a-item scores above the best unseen b-item
        scores, seen = rec._scores(["u00"])[0], set(rec.seen("u00").tolist())
        best = {c: max(scores[rec.item_index[i]] for i in items if rec.item_index[i] not in seen)
                for c, items in (("a", a), ("b", b))}
        return best["a"] - best["b"]

    before = lead_of_a()
    rec.feedback("u00", {"b01": 5.0, "b02": 4.0}, ["b01", "b02", "a00", "a01"])
    assert lead_of_a() < before
    # with as many b-items watched as a-items in the history, b-items reach the page
    rec.feedback("u00", {f"b{n:02d}": 5.0 for n in range(3, 9)}, [])
    assert any(item in b for item in rec.page("u00", 4))


def test_pop_feedback_updates_popularity_only_when_live():
    inter = make_interactions(["a", "b", "b"], ["i1", "i1", "i2"])
    still = make("pop").fit(inter, make_items(["i1", "i2", "i3"], ["1", "2", "3"], [[]] * 3))
    for user in ("c", "d", "e"):
        still.feedback(user, {"i3": None}, ["i3"])
    assert still.page("y", 3) == ["i1", "i2", "i3"]  # default: reproducible, training popularity only
    rec = make("pop", live_popularity=True).fit(inter, make_items(["i1", "i2", "i3"], ["1", "2", "3"], [[]] * 3))
    assert rec.page("x", 3) == ["i1", "i2", "i3"]
    for user in ("c", "d", "e"):  # i3: 0 -> 3 watchers, above i1's 2
        rec.feedback(user, {"i3": None}, ["i3"])
    assert rec.page("y", 3) == ["i3", "i1", "i2"]


def test_mf_fold_in_equals_refit_factor_of_the_longer_history(fitted, cluster_data):
    rec = fresh(fitted, "mf")
    rec.feedback("u00", {"b01": 5.0}, ["b01"])
    expected = rec._solve_users([rec.history("u00")])[0]
    np.testing.assert_allclose(rec.user_factor("u00"), expected, rtol=1e-5, atol=1e-6)
    assert "b01" in {rec.item_ids[c] for c in rec.history("u00")}


# --- resume ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_state_dict_and_feedback_replay_restore_per_user_state(fitted, name):
    rec, log = fresh(fitted, name), []
    users = ["u00", "u30", "cold"]
    for _ in range(2):
        for user, page in rec.pages(users, 4).items():
            log.append((user, {page[0]: 4.0, page[1]: None}, page))
            rec.feedback(*log[-1])
    state = pickle.loads(pickle.dumps(rec.state_dict()))
    assert set(state["users"]) == set(users)
    restored, replayed = fresh(fitted, name), fresh(fitted, name)
    restored.load_state_dict(state)
    for entry in log:  # what a resumed simulation does: re-apply the logged feedback
        replayed.feedback(*entry)
    assert np.array_equal(restored.pop, rec.pop) and np.array_equal(replayed.pop, rec.pop)
    expected = rec.pages(users, 4)
    assert restored.pages(users, 4) == expected
    assert replayed.pages(users, 4) == expected
    with pytest.raises(UserError, match="cannot load into"):
        fresh(fitted, "pop" if name != "pop" else "mf").load_state_dict(state)


# --- parameters ------------------------------------------------------------------------------------------


def test_unknown_parameter_is_one_line_naming_it():
    with pytest.raises(UserError) as info:
        make_recommender(RecommenderConfig(algorithm="mf", params={"factorz": 8}), seed=0)
    assert str(info.value) == "recommender.params.factorz: unknown parameter for mf"
    with pytest.raises(UserError) as info:
        make_recommender(RecommenderConfig(algorithm="itemknn", params={"neighbours": "many"}), seed=0)
    assert str(info.value) == "recommender.params.neighbours: must be an integer"


def test_unknown_algorithm_is_a_one_line_error(cluster_data):
    inter, items, _, _ = cluster_data
    ds = Dataset("tiny", inter, items, users_of(inter))
    with pytest.raises(UserError) as info:
        evaluate_offline(ds, ["pop", "svd"])
    assert str(info.value) == (
        "--recommenders: unknown recommender 'svd' (choose from random, pop, itemknn, mf, lightgcn, http, or a "
        "plug-in class 'package.module:Class')"
    )


# --- offline evaluation ----------------------------------------------------------------------------------


def test_recall_and_ndcg_by_hand():
    ranked, relevant = ["a", "b", "c", "d"], {"b", "d", "e"}
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    recall, ndcg = recall_ndcg(ranked, relevant, 3)  # one hit, at rank 2
    assert recall == pytest.approx(1 / 3)
    assert ndcg == pytest.approx((1 / math.log2(3)) / idcg3)
    recall, ndcg = recall_ndcg(ranked, relevant, 4)  # hits at ranks 2 and 4; IDCG over min(3, 4) = 3
    assert recall == pytest.approx(2 / 3)
    assert ndcg == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / idcg3)
    assert recall_ndcg(["b"], {"b"}, 1) == (1.0, 1.0)


def temporal_dataset() -> Dataset:
    # the last 20% (rounded up, at least one left to train on) of each user's interactions by ts is held out
    rows = {
        "u1": ["p", "q", "r", "s", "t"],
        "u2": ["p", "q", "r", "x", "s"],
        "u3": ["p", "q", "s", "t", "x"],
        "u4": ["p", "q", "r"],
    }
    users, items, ts = [], [], []
    for user, seq in rows.items():
        for t, item in reversed(list(enumerate(seq))):  # source order is NOT time order: ts decides
            users.append(user)
            items.append(item)
            ts.append(1000 + t)
    ids = ["p", "q", "r", "s", "t", "x"]
    inter = make_interactions(users, items, ts=ts)
    return Dataset("temporal", inter, make_items(ids, ids, [[]] * 6), users_of(inter))


def test_temporal_split_and_pop_metrics_by_hand():
    ds = temporal_dataset()
    split = offline_split(ds)
    assert split.test == {"u1": {"t"}, "u2": {"s"}, "u3": {"x"}, "u4": {"r"}}
    assert split.train.num_rows == 14
    # the same split learning and the micro evaluation use
    assert split.train.num_rows == split_dataset_for_learning(ds)[0].interactions.num_rows
    # training popularity: p 4, q 4, r 2, s 2, t 1, x 1 (ties in catalogue order)
    # u1 ranks t, x -> hit at 1; u2 ranks s, t -> hit at 1; u3 ranks r, x -> hit at 2; u4 ranks r, s -> hit at 1
    (row,) = evaluate_offline(ds, ["pop"], k_values=(1, 2), seed=0)
    assert row["users"] == 4
    assert row["recall@1"] == pytest.approx(3 / 4)
    assert row["ndcg@1"] == pytest.approx(3 / 4)
    assert row["recall@2"] == pytest.approx(1.0)
    assert row["ndcg@2"] == pytest.approx((1 + 1 + 1 / math.log2(3) + 1) / 4)


def test_dataset_split_column_holds_out_test_rows_and_trains_on_valid():
    inter = make_interactions(
        ["u1", "u1", "u1", "u2", "u2", "u2", "u3", "u3"],
        ["p", "r", "s", "r", "s", "q", "r", "s"],
        split=["train", "valid", "test", "train", "train", "train", "train", "train"],
    )
    ids = ["p", "q", "r", "s"]
    ds = Dataset("split", inter, make_items(ids, ids, [[]] * 4), users_of(inter))
    split = offline_split(ds)
    assert split.test == {"u1": {"s"}}
    # u1's valid item r is training (as for learning): seen, so never ranked; s (2) beats q (1) for u1
    (row,) = evaluate_offline(ds, ["pop"], k_values=(1,), seed=0)
    assert row["recall@1"] == 1.0 and row["ndcg@1"] == 1.0


# --- real data -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml100k():
    return load_dataset(scenario_from_dict({"dataset": {"name": "ml-100k"}}).dataset)


def test_ml100k_learned_models_beat_random(ml100k):
    rows = evaluate_offline(
        ml100k, ["random", "pop", *LEARNED], k_values=(20,), seed=0, params={"lightgcn": {"epochs": 8}}
    )
    recall = {row["algorithm"]: row["recall@20"] for row in rows}
    assert rows[0]["users"] == 943
    for name in ["pop", *LEARNED]:
        assert recall[name] > 3 * recall["random"], recall
    # the personalized models also beat popularity on this split (measured margins are 50 %+)
    for name in LEARNED:
        assert recall[name] > recall["pop"], recall


# --- MF backends and the command line --------------------------------------------------------------------


def test_mf_numpy_backend_behaves_like_implicit(cluster_data):
    inter, items, _, b = cluster_data
    rec = make("mf", backend="numpy").fit(inter, items)
    rec.feedback("cold", {"b05": 5.0}, ["b05"])
    assert sum(item in b for item in rec.page("cold", 4)) >= 3
    with pytest.raises(UserError, match=r"^recommender.params.backend: must be implicit or numpy$"):
        make("mf", backend="gpu")


def test_cli_offline_prints_the_table_and_rejects_bad_names(tmp_path):
    from typer.testing import CliRunner

    from alignuser_sim.cli.recommenders import app

    ds = temporal_dataset()
    csv = tmp_path / "inter.csv"
    csv.write_text("user_id,item_id,ts\n" + "".join(
        f"{u},{i},{t}\n" for u, i, t in zip(ds.interactions["user_id"].to_pylist(),
                                           ds.interactions["item_id"].to_pylist(),
                                           ds.interactions["ts"].to_pylist(), strict=True)
    ))
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text("dataset:\n  name: generic\n  interactions: inter.csv\n")
    runner = CliRunner()
    result = runner.invoke(app, ["offline", str(scenario), "--recommenders", "pop,random", "--k", "1,2"])
    assert result.exit_code == 0, result.output
    assert "Recall@2" in result.output and "pop" in result.output and "4 users" in result.output
    result = runner.invoke(app, ["offline", str(scenario), "--recommenders", "pop,bpr"])
    assert isinstance(result.exception, UserError)
    assert str(result.exception).startswith("--recommenders: unknown recommender 'bpr'")


def test_every_shipped_scenario_builds_its_recommender():
    from pathlib import Path

    from alignuser_sim.config import load_scenario

    files = sorted((Path(__file__).parent.parent / "scenarios").glob("*.yaml"))
    assert files
    for file in files:
        scenario = load_scenario(file)
        assert make_recommender(scenario.recommender, scenario.seed).name == scenario.recommender.algorithm


@pytest.mark.parametrize("name", ALGORITHMS)
def test_feedback_batch_equals_one_by_one(fitted, name):
    one, batch = fresh(fitted, name), fresh(fitted, name)
    users = ["u00", "u30", "cold"]
    first = one.pages(users, 3)
    assert batch.pages(users, 3) == first
    fb = [(u, {first[u][0]: 4.0}, first[u]) for u in users]
    for user, watched, shown in fb:
        one.feedback(user, watched, shown)
    assert batch.feedback_batch(fb) == 3
    assert one.pages(users, 3) == batch.pages(users, 3)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_popularity_walk_equals_the_full_score_matrix(fitted, name):
    rec = fresh(fitted, name)
    users = ["u00", "u30", "cold", "colder"]
    rec.feedback("u00", {"a01": 5.0}, ["a01", "a02"])
    walked = rec.rank(users, 5)
    full = rec._rank_scored(users, 5, {})
    assert [list(w) for w in walked] == [list(f) for f in full]
