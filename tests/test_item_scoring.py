"""`policy.choice: score`: one yes/no call per item read by its first token's log-probabilities, the items
with the highest P(yes) watched at the human's training watch rate. By hand against a scripted LLM, through
the config, the policy setup and the training data, and against the real vLLM server."""

import asyncio
import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from alignuser_sim.agent.item_scoring import ScoringAgent
from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.config import PolicyConfig, scenario_from_dict
from alignuser_sim.core import ItemView
from alignuser_sim.data import load_dataset
from alignuser_sim.data.personas import build_personas
from alignuser_sim.data.training_stats import TrainingStats
from alignuser_sim.errors import UserError
from alignuser_sim.learning.training_data import JUDGMENT, judgment_examples
from alignuser_sim.llm import LLMClient
from alignuser_sim.llm.logprobs import FirstToken, first_token_text
from alignuser_sim.testing.fake_llm import ScriptedLLM, timeout

P_YES = {"title a": 0.1, "title b": 0.9, "title c": 0.6, "title d": 0.3}


def page(*ids):
    return [ItemView(item_id=i, title=f"title {i}", genres=["Drama"]) for i in ids]


def scenario(**policy):
    return scenario_from_dict({
        "name": "score", "seed": 6, "dataset": {"name": "ml-100k"}, "population": {"size": 8},
        "recommender": {"algorithm": "pop"}, "pages": {"count": 5, "items_per_page": 4},
        "policy": {"choice": "score", **policy}, "eval": {"ratios": [1], "users": 3, "bootstrap": 20},
    })


def agent(rate=0.5, pages=1.6):
    persona = build_personas(load_dataset(scenario().dataset), ["1"])[0]
    stats = TrainingStats(watch_rate={"u": rate}, mean_rate=0.3, popularity={}, global_mean=3.5,
                          session_pages={"u": pages})
    return ScoringAgent(replace(persona, user_id="u"), stats=stats)


def logprobs_reply(p_yes: float) -> str:
    return json.dumps({"top": {"Yes": math.log(p_yes * 0.7), " yes": math.log(p_yes * 0.3),
                               "no": math.log(1 - p_yes), "{": math.log(1e-4)}})


def by_title(req):
    (title,) = [t for t in P_YES if t in req.messages[-1]["content"]]
    return logprobs_reply(P_YES[title])


def test_first_token_reads_yes_against_no():
    token = FirstToken.model_validate_json(logprobs_reply(0.8))
    assert token.yes_probability() == pytest.approx(0.8, abs=1e-4)  # "Yes" and " yes" both count; "{" neither
    assert FirstToken(top={"maybe": -0.1}).yes_probability() is None
    alt = SimpleNamespace
    sdk = alt(content=[alt(top_logprobs=[alt(token="yes", logprob=-1.0), alt(token="no", logprob=-0.5),
                                         alt(token="x", logprob=float("-inf"))])])
    assert json.loads(first_token_text(sdk)) == {"top": {"yes": -1.0, "no": -0.5}}
    assert first_token_text(None) is None and first_token_text(alt(content=[])) is None


def test_watches_the_top_items_at_the_training_rate():
    llm = ScriptedLLM(by_title)
    a = agent(rate=0.5, pages=1.6)
    d = asyncio.run(a.ask(llm, 0, page("a", "b", "c", "d"), seed=3))
    assert d.ratings == {"b": None, "c": None} and d.action == "next_page" and d.failure is None
    assert asyncio.run(a.ask(llm, 1, page("a", "b", "c", "d"), seed=3)).action == "exit"  # 1.6 -> 2 pages
    d = asyncio.run(agent(rate=0.5, pages=2.6).ask(llm, 0, page("a", "d"), seed=3))
    assert d.ratings == {"d": None} and d.action == "next_page"  # 0.5 x 2 = 1 item: the likelier one
    assert asyncio.run(agent(rate=0.0).ask(llm, 0, page("a", "b"), seed=3)).ratings == {}
    # one call per item, free text (no response_format), one token with its alternatives
    req = llm.requests[0]
    assert req.params["logprobs"] is True and req.params["max_tokens"] == 1 and req.params["top_logprobs"] == 20
    assert "Would you watch it? Answer yes or no." in req.messages[-1]["content"]
    assert d.prompt_tokens > 0 and d.completion_tokens > 0


def test_a_temperature_draws_seeded_samples():
    llm = ScriptedLLM(by_title)
    a = agent(rate=0.25)
    picks = [tuple(asyncio.run(a.ask(llm, 0, page("a", "b", "c", "d"), seed=s, temperature=1.0)).ratings)
             for s in range(40)]
    again = [tuple(asyncio.run(a.ask(llm, 0, page("a", "b", "c", "d"), seed=s, temperature=1.0)).ratings)
             for s in range(40)]
    assert picks == again and all(len(p) == 1 for p in picks)
    assert len(set(picks)) > 1 and picks.count(("b",)) > picks.count(("a",))  # P(yes) 0.9 against 0.1


def test_failures_are_counted_not_guessed():
    d = asyncio.run(agent().ask(ScriptedLLM(script=[timeout()], max_retries=0), 0, page("a", "b"), seed=1))
    assert d.failure == "timeout" and d.ratings == {} and d.action == "exit"  # transient: the driver asks again
    d = asyncio.run(agent().ask(ScriptedLLM(script=['{"top": {"maybe": -0.1}}']), 0, page("a", "b"), seed=1))
    assert d.failure == "no_yes_no" and d.ratings == {}
    half = ScriptedLLM(lambda req: logprobs_reply(0.7) if "title a" in req.prompt else "not json")
    d = asyncio.run(agent(rate=1.0).ask(half, 0, page("a", "b"), seed=1))
    assert d.failure is None and d.ratings == {"a": None}  # an item with no readable answer is not watched


def test_config_label_and_setup():
    assert PolicyConfig(choice="score").label == "prompt-only/score"
    assert PolicyConfig(kind="alignuser+", choice="score").label == "alignuser+/score"
    assert PolicyConfig().label == "prompt-only"
    with pytest.raises(ValidationError, match="choice"):
        PolicyConfig(kind="popularity", choice="score")
    s = scenario()
    users = ["1", "2"]
    setup = PolicySetup.for_scenario(s, users)
    persona = build_personas(load_dataset(s.dataset), users)[0]
    a = setup.agent(persona, seed=1)
    assert isinstance(a, ScoringAgent) and a.stats is not None and 0 < a.stats.rate("1") <= 1
    assert isinstance(setup.subset(["1"]).agent(persona), ScoringAgent)


def test_policy_names_take_the_choice_as_the_tables_label_it():
    from alignuser_sim.evaluation.cases import policy_variant

    s = scenario()
    assert policy_variant(s, "alignuser+").policy.label == "alignuser+/score"  # the scenario's choice is kept
    assert policy_variant(s, "prompt-only/list").policy.label == "prompt-only"
    assert policy_variant(policy_variant(s, "prompt-only/list"), "Prompt-Only/Score").policy.choice == "score"
    assert policy_variant(s, "popularity").policy.kind == "popularity"  # compare's reference of a scoring scenario
    for bad, said in [("popularity/score", "no LLM call"), ("prompt-only/rank", "list or score"),
                      ("nobody/score", "unknown policy")]:
        with pytest.raises(UserError, match=said):
            policy_variant(s, bad)


def test_training_examples_are_one_yes_or_no_per_item():
    from alignuser_sim.agent.decision import NONE
    from alignuser_sim.agent.rating import RATING_FORMATS
    from alignuser_sim.data.taste_probes import UserCase

    a = agent()
    case = UserCase(user_id="u", positives=["a", "b"], negatives=["c", "d", "e", "f"], rated=[])
    views = {i: v for v in page("a", "b", "c", "d", "e", "f") for i in [v.item_id]}
    out = judgment_examples([case], {"u": a}, lambda _u: views, [1], 4, 7, {}, NONE, RATING_FORMATS["none"])
    assert out and all(e.stage == JUDGMENT and e.reply in ("yes", "no") for e in out)
    answers = {e.messages[-1]["content"].split("\n")[0]: e.reply for e in out}
    assert {k for k, v in answers.items() if v == "yes"} <= {"Recommended: title a (Drama)",
                                                             "Recommended: title b (Drama)"}
    assert sum(e.reply == "yes" for e in out) == 2 and len(out) == 4 * len({e.step for e in out})
    assert all(e.messages == a.item_messages(views[e.messages[-1]["content"].split("title ")[1][0]])
               for e in out)


@pytest.mark.integration
def test_scores_a_page_against_vllm(vllm_server):
    """The real server answers the logprobs call: every item gets a P(yes) strictly between 0 and 1."""
    client = LLMClient([vllm_server.base_url], model="smollm2", cache="off", concurrency=8, timeout_s=300)
    a = agent(rate=0.5)
    items = [ItemView("1", "Toy Story", ["Animation", "Comedy"]), ItemView("2", "Heat", ["Action", "Crime"]),
             ItemView("3", "Casino", ["Drama"]), ItemView("4", "Jumanji", ["Adventure"])]

    async def go():
        try:
            probs, cost = await a.scores(client, items, seed=1)
            decision = await a.ask(client, 0, items, seed=1)
            return probs, cost, decision
        finally:
            await client.aclose()

    probs, cost, decision = asyncio.run(go())
    assert cost.failure is None and all(p is not None and 0 < p < 1 for p in probs), probs
    assert len(decision.ratings) == 2 and cost.completion_tokens == len(items)
    print("\nP(yes):", [round(p, 3) for p in probs])


def test_a_simulation_with_scoring_agents(tmp_path):
    """A run on ML-100K: every page watches its user's training rate of items and, with rate_watched, rates
    them with the one rating call; sessions end at the training session length (or the page cap)."""
    import zlib

    import pyarrow.parquet as pq

    from alignuser_sim.simulation.runs import plan_run, run_local

    s = scenario_from_dict({
        "seed": 3, "dataset": {"name": "ml-100k"}, "population": {"size": 6}, "recommender": {"algorithm": "pop"},
        "pages": {"count": 3, "items_per_page": 4}, "policy": {"choice": "score", "rate_watched": True},
        "output_dir": str(tmp_path)})

    def responder(req):
        if req.params.get("logprobs"):
            return logprobs_reply(0.05 + 0.9 * (zlib.crc32(req.messages[-1]["content"].encode()) % 97) / 97)
        return None  # the rating call: a schema-valid example

    plan = plan_run(s, tmp_path / "run", n_shards=2)
    summary = asyncio.run(run_local(plan, ScriptedLLM(responder)))
    rows = pq.read_table(tmp_path / "run" / "events.parquet").to_pylist()
    assert summary["agents_done"] == 6 and rows
    setup = PolicySetup.for_scenario(s, sorted({r["agent_id"] for r in rows}))
    from alignuser_sim.data.training_stats import round_half_up

    for r in rows:
        want = round_half_up(setup.reference.rate(r["agent_id"]) * len(r["items"]))
        assert sum(r["watched"]) == want
        assert all(x is not None for x, w in zip(r["ratings"], r["watched"], strict=True) if w)
    sessions = {}
    for r in rows:
        sessions.setdefault((r["agent_id"], r["session"]), []).append(r)
    for (agent_id, _), pages in sessions.items():
        length = max(1, round_half_up(setup.reference.pages(agent_id)))  # its human's training sessions
        assert len(pages) == min(3, length)  # or the page cap
        assert (pages[-1]["action"] == "exit") == (length <= 3)
