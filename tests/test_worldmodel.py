"""World model: true transitions from real recommenders, candidates, prompts, scoring, hints."""

import asyncio
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignuser_sim.agent.world_hints import WorldModelHints, load_world_model_context
from alignuser_sim.config import RecommenderConfig
from alignuser_sim.core import Action, ItemView, NextState, State
from alignuser_sim.learning.world_model import (
    Predicted,
    Prediction,
    Question,
    candidate_genres,
    candidate_items,
    dominant_genres,
    mean_scores,
    prediction_messages,
    score,
    true_next_state,
)
from alignuser_sim.llm.schemas import worst_case_chars
from alignuser_sim.recommenders import make_recommender
from alignuser_sim.testing import ScriptedLLM

pytestmark = pytest.mark.timeout(60)

# two taste clusters: comedies c1..c4 watched together, horrors h1..h4 watched together
GENRES = {**{f"c{i}": ("Comedy",) for i in range(1, 5)}, **{f"h{i}": ("Horror",) for i in range(1, 5)},
          "d1": ("Drama", "Comedy"), "d2": ("Drama",)}
VIEWS = {i: ItemView(i, f"Title {i}", g) for i, g in GENRES.items()}


def _data():
    rows = []
    for u in range(6):  # comedy fans
        rows += [(f"cu{u}", f"c{i}") for i in range(1, 5)] + [(f"cu{u}", "d1")]
    for u in range(4):  # horror fans
        rows += [(f"hu{u}", f"h{i}") for i in range(1, 5)] + [(f"hu{u}", "d2")]
    interactions = pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows]})
    items = pa.table({"item_id": list(GENRES), "title": [f"Title {i}" for i in GENRES],
                      "genres": [list(g) for g in GENRES.values()]})
    return interactions, items


def _fit(algorithm: str, **params):
    interactions, items = _data()
    return make_recommender(RecommenderConfig(algorithm=algorithm, params=params), seed=1).fit(interactions, items)


def test_dominant_genres_by_hand():
    page = [VIEWS["c1"], VIEWS["c2"], VIEWS["h1"], VIEWS["d1"]]
    assert dominant_genres(page) == ["Comedy"]  # on 3 of 4 items; Drama and Horror on 1 only
    assert dominant_genres([VIEWS["h1"], VIEWS["d2"]]) == ["Drama", "Horror"]  # each on half the page
    assert dominant_genres([VIEWS["c1"], VIEWS["h1"], VIEWS["d2"]]) == ["Comedy", "Drama", "Horror"]  # all tie at 1
    assert dominant_genres([ItemView("x", "X")]) == []


def test_pop_next_page_is_the_most_popular_unseen_and_state_is_restored():
    rec = _fit("pop")
    before = rec.state_dict()
    state = State("cu0", 3, 0, 3, history=[("c1", 5.0)], page=["c2", "h1", "h2", "d2"])
    truth = true_next_state(rec, state, Action.of({"c2": 4.0}, exit=False), k=3, views=VIEWS, near=2)
    # popularity: c1..c4, d1 = 6 users; h1..h4, d2 = 4 users; ties to the catalogue order; seen: c1 + the page
    assert truth.items == ["c3", "c4", "d1"] and truth.near == ["h3", "h4"]
    assert truth.genres == ["Comedy"] and truth.continues and truth.added == ["c2"]
    assert rec.state_dict() == before  # nothing of the throw-away user is left
    again = true_next_state(rec, state, Action.of({"c2": 4.0}, exit=False), k=3, views=VIEWS)
    assert again.items == truth.items


def test_itemknn_counterfactual_actions_have_different_true_outcomes():
    rec = _fit("itemknn", neighbours=5, shrink=0.0)
    state = State("new", 0, 0, 0, history=[], page=["c1", "h1", "d1", "d2"], future=frozenset({"h2", "c2"}))
    comedy = true_next_state(rec, state, Action.of({"c1": 5.0}, exit=False), k=3, views=VIEWS)
    horror = true_next_state(rec, state, Action.of({"h1": 5.0}, exit=True), k=3, views=VIEWS)
    assert set(comedy.items) == {"c2", "c3", "c4"} and comedy.genres == ["Comedy"]  # c1's neighbours rise
    assert set(horror.items) == {"h2", "h3", "h4"} and horror.genres == ["Horror"]
    assert not horror.continues and comedy.hits == 1 and horror.hits == 1
    assert rec.state_dict()["users"] == {}


def test_mf_truth_is_deterministic_and_depends_on_the_action():
    rec = _fit("mf", factors=4, iterations=10, backend="numpy")
    state = State("cu9", 1, 0, 1, history=[("d1", 4.0)], page=["c1", "h1", "h2", "d2"])
    watch_horror = Action.of({"h1": 5.0, "h2": 5.0}, exit=False)
    a = true_next_state(rec, state, watch_horror, k=2, views=VIEWS)
    b = true_next_state(rec, state, watch_horror, k=2, views=VIEWS)
    c = true_next_state(rec, state, Action.of({}, exit=False), k=2, views=VIEWS)
    assert a.items == b.items and set(a.items) == {"h3", "h4"}  # folded in toward the horror cluster
    assert set(c.items) <= {"c2", "c3", "c4"}  # the history (d1) alone points to the comedies
    assert not set(a.items + c.items) & {"d1", "c1", "h1", "h2", "d2"}  # history and page are never served again


def test_action_key_ignores_ratings_and_round_trips():
    a = Action.of({"x": 4.0, "y": None}, exit=False)
    assert a.key == Action.of({"y": 2.0, "x": 1.0}, exit=False).key != Action.of({"x": 4.0}, exit=False).key
    assert Action.from_dict(a.to_dict()) == a
    assert "watched Title c1 (id c1, rated 4)" in Action.of({"c1": 4.0}, False).describe(VIEWS)
    assert Action.of({}, True).describe(VIEWS) == "watched nothing; then left (exit)"


def test_candidates_hold_every_truth_and_as_many_plausible_others():
    state = State("u", 2, 0, 2, history=[("c1", 4.0)], page=["c2", "h1"])
    t1 = NextState(["c3", "c4"], [], True, [], 0, near=["d1", "h2", "h3"])
    t2 = NextState(["c4", "h4"], [], True, [], 0, near=["d2"])
    ids = list(GENRES)
    cands = candidate_items([t1, t2], state, 2, ids, seed=5)
    assert {"c3", "c4", "h4"} <= set(cands) and len(cands) == 3 + 2 and len(set(cands)) == len(cands)
    assert "d1" in cands  # a near miss: the recommender's next-ranked item
    assert not set(cands) & {"c1", "c2", "h1"}  # nothing from the history or the page
    assert cands == candidate_items([t1, t2], state, 2, ids, seed=5)  # seeded
    assert candidate_genres(cands, VIEWS) == sorted({g for c in cands for g in GENRES[c]})


def test_scoring_by_hand():
    truth = NextState(["a", "b", "c", "d"], ["Comedy", "Drama"], True, [], 0)
    s = score(Predicted(["a", "b", "x"], ["Comedy"], True), truth)
    assert s == {"item_jaccard": 2 / 5, "item_precision": 2 / 3, "item_recall": 2 / 4, "genre_jaccard": 1 / 2,
                 "continue_accuracy": 1.0}
    perfect = score(Predicted(["d", "c", "b", "a"], ["Drama", "Comedy"], True), truth)
    assert all(v == 1.0 for v in perfect.values())
    empty = score(Predicted([], [], False), truth)
    assert empty["item_precision"] == 0.0 and empty["item_jaccard"] == 0.0 and empty["continue_accuracy"] == 0.0
    means = mean_scores([s, perfect, None])
    assert means["n"] == 2 and means["failed"] == 1 and means["item_jaccard"] == pytest.approx(0.7)
    assert mean_scores([None])["item_jaccard"] is None  # no prediction, no mean (JSON null, not NaN)


def test_prediction_call_scored_against_recommender_transitions():
    """The LLM's structured prediction through the real client, by number, mapped back to ids and scored
    against the truth."""
    rec = _fit("itemknn", neighbours=5, shrink=0.0)
    state = State("new", 0, 0, 0, history=[], page=["c1", "h1", "d1", "d2"])
    actions = [Action.of({"c1": 5.0}, exit=False), Action.of({"h1": 5.0}, exit=True)]
    truths = [true_next_state(rec, state, a, k=3, views=VIEWS, near=3) for a in actions]
    cands = candidate_items(truths, state, 3, list(GENRES), seed=1)
    question = Question.build(state, 2, cands, 3, VIEWS)
    assert question.labels == ["a1", "a2"] and question.k == 3
    assert question.genres == ["Comedy", "Drama", "Horror"]  # the page's and the candidates'
    assert [question.genres[n - 1] for n in question.allowed] == candidate_genres(cands, VIEWS)
    messages = prediction_messages("You are a test persona.", state, actions, question, VIEWS)
    prompt = messages[1]["content"]
    # genres named once, numbered; items by title with their genre numbers; actions by place on the page
    assert "Genres: 1 Comedy; 2 Drama; 3 Horror" in prompt
    assert "P1. Title c1 [1]" in prompt and "P3. Title d1 [2,1]" in prompt
    assert "a1: watched P1 (rated 5); then went on" in prompt and "a2: watched P2 (rated 5); then left" in prompt
    for n, c in enumerate(cands):
        assert f"{n + 1}. Title {c} [" in prompt
    assert not any(f"id {c}" in prompt for c in [*cands, *state.page])  # no id anywhere
    assert "Comedy" not in prompt.split("Current page")[1]  # a genre's name is said once

    # a world model that knows the truth scores 1; one that swaps the outcomes scores lower; both are
    # replies through the real client, validated against the narrowed schema
    perfect, swapped = question.answer(truths), question.answer(truths[::-1])
    assert perfect.outcomes["a1"].next == [cands.index(i) + 1 for i in truths[0].items]
    llm = ScriptedLLM(script=[perfect.model_dump(), swapped.model_dump()])
    schema = question.schema()
    first = asyncio.run(llm.call(messages, Prediction, schema=schema, sampling=question.sampling(800)))
    second = asyncio.run(llm.call(messages, Prediction, schema=schema, seed=2))
    outcome = llm.requests[0].schema["$defs"]["Outcome"]["properties"]
    assert outcome["next"]["items"]["enum"] == list(range(1, len(cands) + 1)) and outcome["next"]["maxItems"] == 3
    assert llm.requests[0].params["temperature"] == 0.0
    assert llm.requests[0].params["max_tokens"] >= worst_case_chars(schema)  # no admitted reply is cut
    good, bad = question.check(first.value), question.check(second.value)
    good_scores = [score(p, t) for p, t in zip(good, truths, strict=True)]
    bad_scores = [score(p, t) for p, t in zip(bad, truths, strict=True)]
    assert [p.items for p in good] == [t.items for t in truths]  # mapped back to the ids
    assert all(v == 1.0 for s in good_scores for v in s.values())
    assert mean_scores(bad_scores)["item_jaccard"] < 0.5 and mean_scores(bad_scores)["continue_accuracy"] == 0.0

    # a server that ignores the schema: numbers not offered (or repeated) are dropped and counted, a missing
    # label is None
    loose = Prediction.model_validate({"outcomes": {"a1": {"next": [1, 1, 99], "genres": [1, 7],
                                                           "continues": True}}})
    checked = question.check(loose)
    assert checked[0].items == [cands[0]] and checked[0].genres == ["Comedy"] and checked[0].invalid == 3
    assert checked[1] is None


def test_reply_and_budget_do_not_grow_with_ids_or_genre_names():
    """Same structure, ids of 2 or 10 characters, genre names of 5 or 60: one schema, one budget."""
    def question(ids, genre):
        views = {i: ItemView(i, f"T{n}", (genre(n % 3), genre(3))) for n, i in enumerate(ids)}
        state = State("u", 0, 0, 0, history=[], page=ids[:4])
        return Question.build(state, 3, ids[4:], 4, views)

    short = question([f"{n:02d}" for n in range(20)], lambda n: f"G{n}")
    long = question([f"B0{n:08d}" for n in range(20)], lambda n: f"Video Games > PC > Accessories > Level {n}")
    assert short.schema() == long.schema() and short.sampling(800) == long.sampling(800)
    assert long.sampling(800)["max_tokens"] < 400  # 3 actions x 16 candidates: numbers and booleans only


def test_default_fake_reply_is_valid_for_the_narrowed_schema():
    question = Question(["a1"], ["x", "y"], [], [], 2)
    llm = ScriptedLLM()
    result = asyncio.run(llm.call([{"role": "user", "content": "hi"}], Prediction, schema=question.schema()))
    assert result.ok and len(result.value.outcomes["a1"].next) == 2
    assert {p for p in question.check(result.value)[0].items} <= {"x", "y"}


def test_hints_pick_the_lines_whose_genres_match_the_page(tmp_path):
    hints = WorldModelHints(["about horror", "about comedy", "about both"],
                            [["Horror"], ["Comedy"], ["Comedy", "Horror"]])
    page = [VIEWS["c1"], VIEWS["c2"]]
    assert hints.hints(page, 2) == ["about comedy", "about both"]
    assert hints.hints([VIEWS["h1"]], 1) == ["about horror"]
    assert hints.hints(page, 0) == []
    assert pickle.loads(pickle.dumps(hints)).hints(page, 1) == ["about comedy"]

    rows = [
        {"user_id": "u1", "step": 2, "action_id": "alt1", "hint": "Had you watched X", "hint_genres": ["Horror"]},
        {"user_id": "u1", "step": 1, "action_id": "human", "hint": "After you watched Y", "hint_genres": ["Comedy"]},
        {"user_id": "u2", "step": 0, "action_id": "human", "hint": "other user", "hint_genres": []},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "transitions.parquet")
    context = load_world_model_context(tmp_path, ["u1", "u3"])
    assert set(context) == {"u1"} and context["u1"].lines == ["After you watched Y", "Had you watched X"]
    assert context["u1"].hints([VIEWS["h1"]], 1) == ["Had you watched X"]
    assert load_world_model_context(tmp_path / "missing", ["u1"]) == {}
