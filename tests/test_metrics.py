"""The metric functions against values computed by hand on small tables (and against scipy where it has one)."""

import math

import numpy as np
import pytest
from scipy import stats

from alignuser_sim.evaluation.ranking import user_outcomes
from alignuser_sim.metrics.bootstrap import bootstrap, percentile_interval
from alignuser_sim.metrics.macro import (
    compare,
    kl_divergence,
    samples_from_events,
    samples_from_rollouts,
    total_variation,
    wasserstein,
)
from alignuser_sim.metrics.micro import (
    accuracy,
    classification_estimates,
    confusion,
    f1,
    mae,
    precision,
    rating_sums,
    recall,
    rmse,
)
from alignuser_sim.metrics.ranking import kendall_tau, ranks, tau_estimate, user_means

# --- micro ---------------------------------------------------------------------------------------------------


def test_confusion_and_classification_by_hand():
    positive = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    watched = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    c = confusion(positive, watched)
    assert c.tolist() == [2, 1, 1, 4]  # tp fp fn tn
    c = c[None, :]
    assert accuracy(c)[0] == pytest.approx(6 / 8)
    assert precision(c)[0] == pytest.approx(2 / 3)
    assert recall(c)[0] == pytest.approx(2 / 3)
    assert f1(c)[0] == pytest.approx(2 / 3)
    # nothing watched: precision and F1 are 0 (not NaN), accuracy is the share of negatives
    none = confusion(positive, np.zeros(8, bool))[None, :]
    assert precision(none)[0] == 0 and f1(none)[0] == 0 and accuracy(none)[0] == pytest.approx(5 / 8)


def test_classification_pools_items_over_users():
    # user a: tp 1, fp 0, fn 1, tn 2; user b: tp 0, fp 2, fn 1, tn 0  ->  pooled tp 1 fp 2 fn 2 tn 2
    per_user = np.array([[1, 0, 1, 2], [0, 2, 1, 0]], float)
    est = classification_estimates(per_user, draws=0, seed=0)
    assert est["accuracy"].value == pytest.approx(3 / 7)
    assert est["precision"].value == pytest.approx(1 / 3)
    assert est["recall"].value == pytest.approx(1 / 3)
    assert est["f1"].value == pytest.approx(1 / 3)
    assert est["f1"].lo is None  # no draws, no interval


def test_rating_errors_by_hand():
    s = rating_sums(np.array([5, 3, 4, 2.0]), np.array([4, 3, np.nan, 5.0]))
    assert s.tolist() == [1 + 0 + 9, 1 + 0 + 3, 3]  # the unanswered item is left out
    assert rmse(s[None, :])[0] == pytest.approx(math.sqrt(10 / 3))
    assert mae(s[None, :])[0] == pytest.approx(4 / 3)
    assert np.isnan(rmse(np.zeros((1, 3)))[0])


# --- bootstrap -------------------------------------------------------------------------------------------------


def test_bootstrap_two_users_by_hand():
    # user a is always right, user b always wrong (one item each): a resample of 2 users has accuracy
    # 0 (p 1/4), 1/2 (p 1/2) or 1 (p 1/4): the 95% interval is [0, 1] and the draws' mean about 1/2
    per_user = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], float)
    est = bootstrap(per_user, accuracy, draws=4000, seed=1)
    assert est.value == 0.5 and est.lo == 0.0 and est.hi == 1.0
    from alignuser_sim.metrics.bootstrap import draw_values

    draws = draw_values(per_user, accuracy, 4000, seed=1)
    assert set(np.round(draws, 6)) == {0.0, 0.5, 1.0}
    assert abs(np.mean(draws == 0.5) - 0.5) < 0.03 and abs(np.mean(draws == 0.0) - 0.25) < 0.03


def test_bootstrap_identical_users_has_no_spread_and_is_seeded():
    per_user = np.tile([[2, 1, 1, 4]], (30, 1)).astype(float)
    est = bootstrap(per_user, f1, draws=200, seed=3)
    assert est.value == est.lo == est.hi == pytest.approx(2 / 3)
    varied = np.random.default_rng(0).integers(0, 5, size=(40, 4)).astype(float)
    assert bootstrap(varied, f1, 300, seed=7) == bootstrap(varied, f1, 300, seed=7)
    assert bootstrap(varied, f1, 300, seed=7) != bootstrap(varied, f1, 300, seed=8)
    one = bootstrap(varied, f1, 300, seed=7)
    assert one.lo <= one.value <= one.hi


def test_bootstrap_in_blocks_matches_one_block(monkeypatch):
    import importlib

    module = importlib.import_module("alignuser_sim.metrics.bootstrap")
    varied = np.random.default_rng(0).integers(0, 5, size=(50, 4)).astype(float)
    whole = module.draw_values(varied, f1, 100, seed=2)
    monkeypatch.setattr(module, "MAX_CELLS", 50 * 7)  # blocks of 7 draws
    blocks = module.draw_values(varied, f1, 100, seed=2)
    assert len(blocks) == 100 and abs(blocks.mean() - whole.mean()) < 0.05


def test_percentile_interval_skips_undefined_draws():
    values = np.array([np.nan, *range(101)], float)
    assert percentile_interval(values) == pytest.approx((2.5, 97.5))
    assert percentile_interval(np.array([np.nan])) == (None, None)


# --- macro -------------------------------------------------------------------------------------------------------


def test_kl_total_variation_wasserstein_by_hand():
    p, q = np.array([1, 1.0]), np.array([1, 3.0])
    assert kl_divergence(p, q, eps=0) == pytest.approx(0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    assert kl_divergence(p, p) == pytest.approx(0.0)
    assert total_variation(p, q) == pytest.approx(0.25)
    # a bin the simulation never hits: finite thanks to the smoothing, about log(p / eps)
    smoothed = kl_divergence(np.array([1, 1.0]), np.array([0, 1.0]), eps=1e-3)
    assert 2.5 < smoothed < 4.0
    # all mass at 1 vs all at 3: the earth has to move 2
    assert wasserstein([1, 2, 3], np.array([1, 0, 0.0]), np.array([0, 0, 1.0])) == pytest.approx(2.0)
    # against scipy on an uneven support
    support = [0, 1, 2, 5]
    a, b = np.array([3, 1, 0, 2.0]), np.array([1, 1, 4, 1.0])
    assert wasserstein(support, a, b) == pytest.approx(stats.wasserstein_distance(support, support, a, b))


def test_compare_uses_a_common_support():
    c = compare("ratings", [1, 1, 2], [5], base_support=range(1, 6))
    assert c.support == [1, 2, 3, 4, 5]
    assert c.human.tolist() == [2, 1, 0, 0, 0] and c.simulated.tolist() == [0, 0, 0, 0, 1]
    assert c.wasserstein == pytest.approx(4 - 1 / 3)
    assert c.mean(c.human) == pytest.approx(4 / 3)
    g = compare("genres", ["Drama", "Comedy"], ["Drama"])
    assert g.support == ["Comedy", "Drama"] and g.wasserstein is None and g.total_variation == pytest.approx(0.5)
    empty = compare("ratings", [], [3])
    assert empty.kl is None and empty.as_dict()["n_simulated"] == 1


def _event(agent, page, items, watched, ratings, action="next_page", failure=None, session=0):
    return {"agent_id": agent, "session": session, "page": page, "items": items, "watched": watched,
            "ratings": ratings, "action": action, "failure": failure}


GENRES = {"1": ["Drama"], "2": ["Comedy", "Drama"], "3": [], "4": ["Horror"]}


def test_samples_from_events_by_hand():
    rows = [
        _event("a", 0, ["1", "2"], [True, True], [5, 3]),
        _event("a", 1, ["3", "4"], [False, True], [None, None], action="exit"),
        _event("b", 0, ["1", "4"], [False, False], [None, None]),
        _event("b", 1, ["2", "3"], [False, False], [None, None], failure="timeout", action="exit"),
        _event("c", 0, ["1", "2"], [False, True], [None, 4]),
        _event("c", 1, ["3", "4"], [True, False], [2, None]),  # page cap 2 reached
    ]
    s = samples_from_events(rows, page_cap=2, genres_of=lambda i: GENRES[i])
    assert s.pages == 5 and s.failed_pages == 1
    assert sorted(s.watches_per_page) == [0, 1, 1, 1, 2]
    assert sorted(s.ratings) == [2, 3, 4, 5]
    assert sorted(s.genres) == ["Comedy", "Comedy", "Drama", "Drama", "Drama", "Horror"]
    # b's session ended on a failed call: not a user's exit, left out
    assert s.sessions == 2 and sorted(s.pages_per_session) == [2, 2] and sorted(s.exit_page) == [1, 1]


def test_samples_from_rollouts_cut_at_the_page_cap():
    def page(user, session, p, watched, ratings):
        return {"user_id": user, "session": session, "page": p, "items": ["1", "2"], "watched": watched,
                "ratings": ratings}

    rows = [page("a", 0, 0, [True, False], [4.0, None]), page("a", 0, 1, [True, True], [3.0, 5.0]),
            page("a", 0, 2, [True, False], [1.0, None]),  # beyond the cap of 2
            page("a", 1, 0, [False, True], [None, 2.4])]
    s = samples_from_rollouts(rows, page_cap=2, genres_of=lambda i: GENRES[i])
    assert s.pages == 3 and sorted(s.watches_per_page) == [1, 1, 2]
    assert sorted(s.ratings) == [2, 3, 4, 5]  # 2.4 rounds to 2
    assert sorted(s.pages_per_session) == [1, 2] and sorted(s.exit_page) == [0, 1]


# --- ranking -------------------------------------------------------------------------------------------------------


def test_kendall_tau_by_hand_and_against_scipy():
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # C = 2, D = 1
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    x, y = [1, 2, 2, 3, 5], [2, 1, 3, 3, 4]
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)  # tau-b with ties
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_ranks_best_first_ties_averaged():
    assert ranks(np.array([0.1, 0.5, 0.5, np.nan])).tolist() == [3, 1.5, 1.5, 4]


def test_tau_estimate_user_means_and_interval():
    # 3 recommenders; simulated means 0.2 / 0.5 / 0.8 for every user: the same order as offline, no spread
    sim = np.tile([0.2, 0.5, 0.8], (20, 1))
    sim[0, 0] = np.nan  # a user without a value for recommender 0 is left out of that mean only
    assert user_means(sim)[0].tolist() == pytest.approx([0.2, 0.5, 0.8])
    offline = np.tile([0.01, 0.02, 0.03], (50, 1))
    est = tau_estimate(sim, offline, draws=200, seed=0)
    assert est.value == 1.0 and est.lo == 1.0 and est.hi == 1.0
    est = tau_estimate(sim[:, ::-1], offline, draws=0, seed=0)
    assert est.value == -1.0 and est.lo is None


def test_user_outcomes_by_hand():
    rows = [
        _event("a", 0, ["1", "2"], [True, True], [5, 3]),
        _event("a", 1, ["3", "4"], [False, True], [None, None], action="exit"),
        _event("b", 0, ["1", "4"], [False, False], [None, None]),
        _event("b", 1, ["2", "3"], [False, False], [None, None], failure="timeout"),
    ]
    out = user_outcomes(rows)
    assert out["a"]["watch_rate"] == 0.75 and out["a"]["mean_rating"] == 4.0
    assert out["a"]["session_length"] == 2 and out["a"]["satisfaction"] == 0.5  # page 0 pleased (a 5), page 1 not
    assert out["b"]["watch_rate"] == 0 and math.isnan(out["b"]["mean_rating"])
    assert math.isnan(out["b"]["session_length"])  # ended by a failed call
    assert out["b"]["satisfaction"] == 0
