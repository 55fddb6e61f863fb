"""The policy setting: prompt-only vs alignuser agents, and the train / held-out split they learn and are
evaluated on."""

import pyarrow as pa
import pytest

from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.config import scenario_from_dict
from alignuser_sim.core import ItemView
from alignuser_sim.data.holdout import heldout_mask
from alignuser_sim.data.personas import Persona
from alignuser_sim.errors import UserError

PAGE = [ItemView("1", "Toy Story", ("Animation",)), ItemView("2", "Heat", ("Action",))]


def persona(uid="u1", taste="") -> Persona:
    return Persona(uid, activity=2, diversity=1, conformity=3, n_interactions=30, n_genres_80=2,
                   rating_deviation=1.2, taste=taste)


class Memory:
    def __init__(self):
        self.queries = []

    def retrieve(self, query, k):
        self.queries.append((query, k))
        return ["I skip action films even when they are popular."][:k]


class WorldModel:
    def hints(self, page, k):
        return ["After you watched an animation film, the next page showed more animation."][:k]


def scenario(tmp_path, policy, **learning):
    return scenario_from_dict({"dataset": {"name": "ml-100k"}, "policy": policy, "output_dir": str(tmp_path),
                               "name": "p", "learning": learning})


@pytest.mark.parametrize(("policy", "lessons", "world_model", "label"), [
    ("prompt-only", False, False, "prompt-only"),
    ("alignuser", True, True, "alignuser"),
    ({"kind": "alignuser", "world_model": False}, True, False, "+lessons"),
    ({"kind": "prompt-only", "world_model": True}, False, True, "+world model"),
])
def test_switches_decide_what_the_prompt_holds(tmp_path, policy, lessons, world_model, label):
    config = scenario(tmp_path, policy).policy
    assert (config.use_lessons, config.use_world_model, config.label) == (lessons, world_model, label)
    memory = Memory()
    setup = PolicySetup(config, lessons={"u1": memory}, world_model={"u1": WorldModel()})
    prompt = "\n".join(m["content"] for m in setup.agent(persona()).messages(0, PAGE))
    assert ("I skip action films" in prompt) is lessons
    assert ("next page showed more animation" in prompt) is world_model
    if lessons:  # the page (titles and genres) is the retrieval query
        assert memory.queries == [("Toy Story Animation Heat Action", 3)]
    # the persona comes before what is learned, which comes before the page (prefix cache)
    if lessons:
        assert prompt.index("You are") < prompt.index("I skip action") < prompt.index("Toy Story")


def test_learned_taste_fills_only_personas_without_one(tmp_path):
    setup = PolicySetup(scenario(tmp_path, "prompt-only").policy, tastes={"u1": "Loves 90s comedies.",
                                                                          "u2": "Ignored."})
    prompt = "\n".join(m["content"] for m in setup.agent(persona("u1")).messages(0, PAGE))
    assert "Your taste: Loves 90s comedies." in prompt
    assert setup.agent(persona("u2", taste="Given by the dataset.")).persona.taste == "Given by the dataset."
    shard = setup.subset(["u2"])
    assert list(shard.tastes) == ["u2"]


def test_alignuser_without_learning_folder_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="alignuser-sim learn"):
        PolicySetup.for_scenario(scenario(tmp_path, "alignuser"), ["u1"])
    assert PolicySetup.for_scenario(scenario(tmp_path, "prompt-only"), ["u1"]).lessons == {}


def test_policy_shorthand_and_bad_kind_in_one_line(tmp_path):
    with pytest.raises(UserError,
                       match=r"policy.kind: must be one of prompt-only, alignuser, alignuser\+ or popularity"):
        scenario(tmp_path, "agent4rec")
    assert scenario(tmp_path, "alignuser").learning_dir() == tmp_path / "p" / "learning"


def table(users, ts, split=None, rating=None):
    n = len(users)
    return pa.table({
        "user_id": pa.array(users, pa.string()), "item_id": pa.array([str(i) for i in range(n)]),
        "rating": pa.array(rating if rating is not None else [4.0] * n, pa.float32()),
        "ts": pa.array(ts, pa.int64()), "split": pa.array(split or [None] * n, pa.string()),
        "seq": pa.array(range(n), pa.int64()),
    })


def test_heldout_is_each_users_last_fifth_in_time_never_the_only_row():
    # u1: 5 rows out of time order; u2: one row (kept for training); u3: two rows, one undated (it goes last)
    t = table(["u1", "u1", "u1", "u1", "u1", "u2", "u3", "u3"], [50, 10, 40, 20, 30, 5, None, 7])
    assert heldout_mask(t).tolist() == [True, False, False, False, False, False, True, False]


def test_heldout_follows_the_datasets_test_split_and_holds_out_ratings_it_lacks():
    split = ["train", "train", "train", "train", "train", "test"]
    rating = [5.0, 4.0, 3.0, 2.0, 1.0, None]
    t = table(["u1"] * 6, [None] * 6, split=split, rating=rating)
    # the test row, plus the last fifth (ceil: 1) of the rated rows, in source order when undated
    assert heldout_mask(t).tolist() == [False, False, False, False, True, True]


def test_reasoning_defaults_to_full_and_travels_with_policy_variants(tmp_path):
    from alignuser_sim.evaluation import ranking
    from alignuser_sim.evaluation.cases import policy_variant

    default = scenario(tmp_path, "prompt-only")
    assert default.policy.reasoning == "full"  # today's reply: existing scenarios mean the same
    assert "reasoning" not in ranking.fingerprint(default)["policy"]  # so older compare folders still match
    compact = scenario(tmp_path, {"kind": "prompt-only", "reasoning": "none", "history_size": 2})
    assert ranking.fingerprint(compact)["policy"]["reasoning"] == "none"
    variant = policy_variant(compact, "alignuser")
    assert (variant.policy.kind, variant.policy.reasoning, variant.policy.history_size) == ("alignuser", "none", 2)
    with pytest.raises(UserError, match=r"policy.reasoning: must be one of none, brief or full"):
        scenario(tmp_path, {"reasoning": "short"})


def test_rate_watched_and_choice_travel_with_policy_variants(tmp_path):
    """`compare --policy alignuser+` on a rating, scoring scenario: the swapped policy still rates its watches
    (without it satisfaction is unmeasurable); the popularity user takes neither (it makes no call)."""
    from alignuser_sim.evaluation.cases import policy_variant

    rating = scenario(tmp_path, {"kind": "prompt-only", "choice": "score", "rate_watched": True})
    plus = policy_variant(rating, "alignuser+").policy
    assert (plus.kind, plus.choice, plus.rate_watched) == ("alignuser+", "score", True)
    assert policy_variant(rating, "prompt-only/list").policy.rate_watched
    pop = policy_variant(rating, "popularity").policy
    assert (pop.kind, pop.choice, pop.rate_watched) == ("popularity", "list", False)


# --- policy.rate_watched: the simulation's agent rates what a page decision left unrated ----------------------

def _rating_agent(tmp_path, rate_watched, reasoning="none", **kwargs):
    config = scenario(tmp_path, {"kind": "prompt-only", "reasoning": reasoning, "rate_watched": rate_watched}).policy
    return PolicySetup(config).agent(persona(), seed=7, **kwargs)


def _responder(page_reply, rating_reply):
    """The page call gets `page_reply`, the rating call (its schema has `ratings`) `rating_reply`."""
    return lambda req: rating_reply if "ratings" in req.schema["properties"] else page_reply


def test_rate_watched_asks_one_rating_call_for_the_unrated_watches_only(tmp_path):
    import asyncio

    from alignuser_sim.testing.fake_llm import ScriptedLLM

    llm = ScriptedLLM(_responder({"watched": {"1": None, "2": 4}, "exit": False}, {"ratings": {"1": 2}}))
    decision = asyncio.run(_rating_agent(tmp_path, True).decide(llm, 0, 0, PAGE))
    assert decision.ratings == {"1": 2, "2": 4} and decision.failure is None
    assert len(llm.requests) == 2
    rating_call = llm.requests[1]
    assert list(rating_call.schema["properties"]["ratings"]["required"]) == ["1"]  # Toy Story alone, by number
    assert "Toy Story" in rating_call.prompt and "Heat" not in rating_call.prompt
    assert decision.prompt_tokens == sum(len(r.prompt) // 4 for r in llm.requests)  # both calls counted
    # the history later prompts show holds the filled-in rating
    assert "Toy Story (you rated 2)" in "\n".join(
        m["content"] for m in _history_prompt(tmp_path, decision))


def _history_prompt(tmp_path, decision):
    agent = _rating_agent(tmp_path, False)
    agent.observe(decision, PAGE)
    return agent.messages(1, PAGE)


def test_rate_watched_off_or_nothing_unrated_makes_no_second_call(tmp_path):
    import asyncio

    from alignuser_sim.testing.fake_llm import ScriptedLLM

    llm = ScriptedLLM(_responder({"watched": {"1": None}, "exit": False}, {"ratings": {"1": 5}}))
    assert asyncio.run(_rating_agent(tmp_path, False).decide(llm, 0, 0, PAGE)).ratings == {"1": None}
    assert len(llm.requests) == 1
    llm = ScriptedLLM(_responder({"watched": {"2": 3}, "exit": True}, {"ratings": {"1": 5}}))
    assert asyncio.run(_rating_agent(tmp_path, True).decide(llm, 0, 0, PAGE)).ratings == {"2": 3}
    assert len(llm.requests) == 1
    # the evaluation asks its ratings in a call of its own: its agents never add this one
    llm = ScriptedLLM(_responder({"watched": {"1": None}, "exit": False}, {"ratings": {"1": 5}}))
    agent = _rating_agent(tmp_path, True, rating_format=None)
    assert asyncio.run(agent.decide(llm, 0, 0, PAGE)).ratings == {"1": None} and len(llm.requests) == 1


def test_rate_watched_failures_keep_the_decision_or_retry_the_page(tmp_path):
    import asyncio

    from alignuser_sim.llm.protocol import is_transient
    from alignuser_sim.testing.fake_llm import ScriptedLLM, timeout

    page = '{"watched": {"1": null}, "exit": false}'
    # a rating reply that never validates: the watch stays unrated, the decision stands (the client counts it)
    llm = ScriptedLLM(script=[page, "not json"], validation_retries=0)
    decision = asyncio.run(_rating_agent(tmp_path, True).decide(llm, 0, 0, PAGE))
    assert decision.failure is None and decision.ratings == {"1": None}
    assert llm.snapshot()["failed"] == 1
    # the server gone during the rating call: the whole decision is transient, nothing is remembered
    llm = ScriptedLLM(script=[page, timeout()], max_retries=0)
    agent = _rating_agent(tmp_path, True)
    decision = asyncio.run(agent.decide(llm, 0, 0, PAGE))
    assert is_transient(decision.failure) and not agent.history


def test_rate_watched_does_not_apply_to_the_popularity_user(tmp_path):
    with pytest.raises(UserError, match="rate_watched"):
        scenario(tmp_path, {"kind": "popularity", "rate_watched": True})


def test_a_run_with_rate_watched_rates_every_watch_and_counts_the_calls(tmp_path):
    """Through the simulation's own path (plan, driver, shards, events): a policy that watches without rating
    gets its watches rated by the second call, and the run's accounting holds both calls."""
    import alignuser_sim as aus
    from alignuser_sim.testing.fake_llm import ScriptedLLM

    def respond(req):
        props = req.schema["properties"]
        if "ratings" in props:
            return {"ratings": dict.fromkeys(props["ratings"]["properties"], 2)}
        return {"watched": {"1": None, "3": None}, "exit": False}

    def run(rate_watched):
        sc = scenario_from_dict({
            "name": f"rate-{rate_watched}", "seed": 3, "dataset": {"name": "ml-100k"}, "population": {"size": 4},
            "recommender": {"algorithm": "pop"}, "pages": {"count": 2, "items_per_page": 4},
            "policy": {"kind": "prompt-only", "reasoning": "none", "rate_watched": rate_watched},
            "output_dir": str(tmp_path)})
        llm = ScriptedLLM(respond)
        events = aus.simulate(sc, llm=llm).events.to_pylist()
        return events, llm

    events, llm = run(True)
    assert len(events) == 8 and all(e["failure"] is None for e in events)
    watched = [r for e in events for w, r in zip(e["watched"], e["ratings"], strict=True) if w]
    assert len(watched) == 16 and set(watched) == {2}
    assert len(llm.requests) == 16  # a page call and a rating call per page
    events, llm = run(False)
    assert {r for e in events for w, r in zip(e["watched"], e["ratings"], strict=True) if w} == {None}
    assert len(llm.requests) == 8


def test_compare_folders_of_policy_labels_are_one_level():
    from alignuser_sim.cli.evaluate import compare_folder_name

    assert compare_folder_name("alignuser+/score") == "compare-alignuser+-score"
    assert compare_folder_name("adapter+world model") == "compare-adapter+world-model"
    assert compare_folder_name("popularity") == "compare-popularity"  # folders written before keep their names
