"""The discriminator test (`evaluation/discriminator.py`, `alignuser-sim discriminate`) and the report's plots
staying readable on many categories: the classifier on synthetic feature rows (one distribution: ~0.5; two
clearly different: ~1.0), the features of hand-made sessions, the CLI on real short runs (ML-100K, the
scripted fake user as the LLM) and its one-line errors, and the top-20 + "other" genre plot."""

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from alignuser_sim.config import scenario_from_dict
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.discriminator import (
    MIN_SESSIONS,
    NAMES,
    _Session,
    auc_draws,
    classify,
    human_features,
    session_row,
    simulated_features,
    top_features,
)
from alignuser_sim.evaluation.plots import plot_discriminator, plot_macro, top_categories
from alignuser_sim.simulation.runs import plan_run, run_local
from alignuser_sim.testing.fake_llm import ScriptedLLM
from alignuser_sim.testing.fake_users import fake_user_responder

CLI = str(Path(sys.executable).with_name("alignuser-sim"))


# --- the classifier on arrays ----------------------------------------------------------------------------


def test_one_distribution_is_indistinguishable():
    rng = np.random.default_rng(7)
    simulated, human = rng.normal(size=(200, 9)), rng.normal(size=(260, 9))
    for side in (simulated, human):  # undefined features (no rating...), as often on both sides
        side[rng.random(side.shape) < 0.1] = np.nan
    result = classify(simulated, human, seed=1, draws=500)
    assert result.sessions == {"simulated": 200, "human": 260, "per_side": 200}  # balanced by subsampling
    for model, auc in result.auc.items():
        assert abs(auc.value - 0.5) < 0.1, model
        assert auc.lo < 0.5 < auc.hi, model


def test_clearly_different_distributions_are_told_apart_and_the_feature_named():
    rng = np.random.default_rng(8)
    simulated, human = rng.normal(size=(150, 9)), rng.normal(size=(150, 9))
    simulated[:, 7] += 4.0  # popularity: the simulated sessions watch far more popular items
    result = classify(simulated, human, seed=2, draws=300)
    for model, auc in result.auc.items():
        assert auc.value > 0.97 and auc.lo > 0.9, model
    assert max(result.coefficients, key=lambda f: abs(result.coefficients[f])) == "popularity"
    assert result.coefficients["popularity"] > 0  # simulated sessions have more of it
    assert max(result.importance, key=result.importance.get) == "popularity"
    top = top_features(result.as_dict(), 3)
    assert top[0]["feature"] == "popularity" and top[0]["simulated"] > top[0]["human"] + 3


def test_auc_draws_match_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300).astype(float)
    score = np.round(rng.normal(size=300) + y, 1)  # many ties
    assert auc_draws(y, score, np.ones((1, 300)))[0] == pytest.approx(roc_auc_score(y, score))
    weights = rng.integers(0, 3, (4, 300)).astype(float)
    expected = [roc_auc_score(y, score, sample_weight=w) for w in weights]
    assert auc_draws(y, score, weights) == pytest.approx(expected)


def test_too_few_sessions_is_one_line():
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match=f"7 simulated sessions: .*at least {MIN_SESSIONS} on each side") as info:
        classify(rng.normal(size=(7, 9)), rng.normal(size=(50, 9)))
    assert "\n" not in str(info.value)


# --- features ----------------------------------------------------------------------------------------------

GENRES = {"a": ["Drama"], "b": ["Comedy"], "c": ["Drama", "War"], "d": [], "e": ["Comedy"], "f": ["Horror"]}
POPULARITY = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0}


def genres_of(item):
    return GENRES.get(item, [])


def test_features_of_hand_made_sessions():
    events = [  # agent x: 2 pages then exit; agent y: a failed page (left out); agent z: cut at the cap of 2
        {"agent_id": "x", "session": 0, "page": 1, "items": ["c", "d", "e"], "watched": [True, True, False],
         "ratings": [4, None, None], "action": "exit", "failure": None},
        {"agent_id": "x", "session": 0, "page": 0, "items": ["a", "b", "f"], "watched": [True, True, False],
         "ratings": [5, 3, None], "action": "next_page", "failure": None},
        {"agent_id": "y", "session": 0, "page": 0, "items": ["a", "b", "c"], "watched": [False, False, False],
         "ratings": [None, None, None], "action": "exit", "failure": "timeout"},
        *({"agent_id": "z", "session": 0, "page": p, "items": ["f", "e", "d"], "watched": [False, False, False],
           "ratings": [None, None, None], "action": "next_page", "failure": None} for p in range(3)),
    ]
    rows = simulated_features(events, 2, genres_of, POPULARITY)
    assert rows.shape == (2, len(NAMES))
    x = dict(zip(NAMES, rows[0], strict=True))
    # watched in order a (Drama), b (Comedy), c (Drama, War: repeats Drama), d (no genre: no repeat)
    assert x["watches_per_page"] == 2.0 and x["watch_share"] == pytest.approx(4 / 6)
    assert x["rating_mean"] == pytest.approx(4.0) and x["rating_std"] == pytest.approx(math.sqrt(2 / 3))
    assert x["pages"] == 2 and x["exited"] == 1.0
    p = np.array([2, 1, 1]) / 4  # Drama twice, Comedy, War
    assert x["genre_entropy"] == pytest.approx(-(p * np.log(p)).sum())
    assert x["popularity"] == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert x["repeat_genre_share"] == pytest.approx(1 / 4)
    z = dict(zip(NAMES, rows[1], strict=True))
    assert z["pages"] == 2 and z["exited"] == 0.0 and z["watches_per_page"] == 0  # cut at the cap, not left
    assert all(math.isnan(z[f]) for f in ("rating_mean", "rating_std", "genre_entropy", "popularity",
                                          "repeat_genre_share"))

    rollouts = [  # u's session 3: 3 pages, cut at 2; u's session 4: one page, left; v: one page
        *({"user_id": "u", "session": 3, "page": p, "items": ["a", "b"], "watched": [True, False],
           "ratings": [2.0, None], "action": "exit" if p == 2 else "next_page"} for p in (2, 0, 1)),
        {"user_id": "u", "session": 4, "page": 0, "items": ["e", "b"], "watched": [True, True],
         "ratings": [None, None], "action": "exit"},
        {"user_id": "v", "session": 0, "page": 0, "items": ["c", "a"], "watched": [False, True],
         "ratings": [3.0, 1.0], "action": "exit"},
    ]
    rows = human_features(rollouts, 2, genres_of, POPULARITY)
    assert rows.shape == (3, len(NAMES))
    u3, u4, v = (dict(zip(NAMES, r, strict=True)) for r in rows)
    assert u3["pages"] == 2 and u3["exited"] == 0.0 and u3["rating_std"] == 0.0
    assert u3["repeat_genre_share"] == pytest.approx(1 / 2) and u3["genre_entropy"] == 0.0
    assert u4["exited"] == 1.0 and math.isnan(u4["rating_mean"]) and u4["repeat_genre_share"] == pytest.approx(1 / 2)
    assert v["rating_mean"] == 1.0 and v["watch_share"] == 0.5  # the unwatched item's rating does not count


# --- plots ----------------------------------------------------------------------------------------------------


def test_many_genres_plot_the_top_20_and_other(tmp_path):
    support = [f"genre {i:03d}" for i in range(130)]
    human = [float(130 - i) for i in range(130)]
    simulated = [1.0] * 129 + [500.0]  # the simulation's favourite is the humans' rarest
    labels, sides = top_categories(support, {"human": human, "simulated": simulated})
    assert len(labels) == 21 and labels[-1] == "other (110)"
    assert labels[0] == "genre 129"  # the largest mean share first
    assert labels[1:20] == support[:19]
    assert sum(sides["human"]) == sum(human) and sum(sides["simulated"]) == sum(simulated)  # nothing lost
    few = support[:21]
    assert top_categories(few, {"h": [1.0] * 21})[0] == few  # 21: all shown, an "other" of one saves nothing

    macro = {"dataset": "steam", "recommender": "pop", "distributions": {"genres": {
        "support": support, "human": human, "simulated": simulated, "kl": 0.7}}}
    genre_png = next(p for p in plot_macro(macro, tmp_path) if p.name == "macro_genres.png")
    with Image.open(genre_png) as img:
        assert img.height < 1000  # 130 genres drawn whole: 4,400 pixels


def test_discriminator_plot(tmp_path):
    rng = np.random.default_rng(5)
    result = classify(rng.normal(size=(40, 9)) + 1.0, rng.normal(size=(40, 9)), seed=0, draws=100).as_dict()
    (png,) = plot_discriminator(result, tmp_path)
    assert png.name == "discriminator.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 300


# --- on run folders, through the CLI ---------------------------------------------------------------------


def simulate(root: Path, users: int) -> Path:
    scenario = scenario_from_dict({
        "name": "disc", "seed": 4, "dataset": {"name": "ml-100k"}, "population": {"size": users},
        "recommender": {"algorithm": "pop"}, "pages": {"count": 4, "items_per_page": 4}, "output_dir": str(root),
    })
    run_dir = root / "run"
    asyncio.run(run_local(plan_run(scenario, run_dir, n_shards=1), ScriptedLLM(fake_user_responder)))
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("disc")
    return simulate(root / "big", 16), simulate(root / "small", 5)


def cli(*args):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_discriminate_prints_the_auc_and_the_features(runs):
    proc = cli("discriminate", runs[0], "--bootstrap", "200", "--top", "3")
    assert proc.returncode == 0, proc.stderr
    assert "16 simulated" in proc.stdout and "logistic regression" in proc.stdout
    assert "gradient boosting" in proc.stdout and "mean log(1 + training count)" in proc.stdout


@pytest.mark.parametrize("which, message", [
    ("small", "5 simulated sessions: the discriminator needs at least 10 on each side"),
    ("empty", "no events"),
    ("missing", "no such folder"),
])
def test_discriminate_bad_input_is_one_line(runs, tmp_path, which, message):
    folder = {"small": runs[1], "empty": tmp_path, "missing": tmp_path / "nope"}[which]
    proc = cli("discriminate", folder)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_report_says_in_one_line_why_a_small_run_has_no_discriminator(runs, tmp_path):
    proc = cli("report", runs[1], "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Discriminator", 1)[1]
    assert "Not computed: " in section and "at least 10 on each side" in section
    assert not (tmp_path / "plots" / "discriminator.png").exists()



def test_genre_entropy_does_not_depend_on_the_order_genres_were_counted_in():
    """Genres are counted through sets, whose order changes with the process's string hashes; the entropy must
    not (a last-bit difference moved the booster's bins: one run folder gave two AUCs in two processes). These
    counts give three different floats under a plain sum over seven orders of the same items."""
    counts = [3, 4, 3, 6, 5, 5, 6]
    genre_of = {f"i{g}_{k}": [f"g{g}"] for g, c in enumerate(counts) for k in range(c)}
    rng = np.random.default_rng(0)
    values = set()
    for _ in range(20):
        order = list(rng.permutation(list(genre_of)))
        session = _Session(pages=[(order, [True] * len(order), [None] * len(order))])
        values.add(session_row(session, genre_of.get, {})[NAMES.index("genre_entropy")])
    assert len(values) == 1, values
    shares = np.array(counts) / sum(counts)
    assert math.isclose(values.pop(), float(-(shares * np.log(shares)).sum()), rel_tol=1e-12)
