"""The decision formats (`policy.reasoning: none | brief | full`): their schemas and budgets, replies mapped
back to item ids, the prompt each lists its page in, and every format's replies through a whole run (events,
statistics) and the fine-tuning export, with a scripted fake LLM."""

import asyncio
import json
import zlib

import jsonschema
import pyarrow.parquet as pq
import pytest

from alignuser_sim.agent.decision import (
    FORMATS,
    FULL,
    NONE,
    REASONINGS,
    ROLE,
    CompactDecision,
    Decision,
    decision_format,
)
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.config import scenario_from_dict
from alignuser_sim.core import ItemView
from alignuser_sim.data.personas import Persona
from alignuser_sim.learning.finetune_data import POLICY_FILE, export_sft
from alignuser_sim.learning.inputs import prepare
from alignuser_sim.learning.journal import Journal
from alignuser_sim.llm.schemas import reply_budget
from alignuser_sim.simulation.events import EVENTS
from alignuser_sim.simulation.runs import plan_run, run_local
from alignuser_sim.testing.fake_llm import ScriptedLLM

PAGE = [ItemView("1", "Toy Story", ("Animation",)), ItemView("2", "Heat", ("Action",)),
        ItemView("3", "Fargo", ("Crime",), "A pregnant police chief investigates."), ItemView("4", "Alien")]
LONG_IDS = [ItemView(f"B0{n:08d}", v.title, v.genres, v.description) for n, v in enumerate(PAGE)]


def persona(uid="u1") -> Persona:
    return Persona(uid, activity=2, diversity=1, conformity=3, n_interactions=30, n_genres_80=2,
                   rating_deviation=1.2, taste="Loves animation.")


@pytest.mark.parametrize("name", REASONINGS)
def test_schema_is_narrowed_to_the_page_and_bounded(name):
    fmt = decision_format(name)
    schema = fmt.schema(PAGE)
    assert reply_budget(schema, fallback=10**6) < 10**6  # bounded: no reply the schema admits can be cut
    if name == "full":
        assert fmt.schema(LONG_IDS) != schema and "B000000003" in json.dumps(fmt.schema(LONG_IDS))
        return
    # answered by position: nothing in the schema depends on the ids, only on how many items the page has
    assert fmt.schema(LONG_IDS) == schema != fmt.schema(PAGE[:3])
    watched = schema["properties"]["watched"]
    assert list(watched["properties"]) == ["1", "2", "3", "4"] and watched["required"] == []
    assert watched["additionalProperties"] is False
    jsonschema.validate({"thought": "x", "watched": {"2": 4}, "exit": False} if name == "brief"
                        else {"watched": {"2": 4}, "exit": False}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"watched": {"5": 4}, "exit": False, **({"thought": ""} if name == "brief" else {})},
                            schema)


def test_none_is_the_cheapest_and_grows_with_pages_only_by_positions():
    budgets = {name: reply_budget(f.schema(PAGE), fallback=0) for name, f in FORMATS.items()}
    assert budgets["none"] < budgets["brief"] < budgets["full"]
    assert budgets["none"] <= 100  # 4 items, every one watched and rated, cannot be longer
    assert CompactDecision(watched={"2": 4}, exit=False).model_dump_json() == '{"watched":{"2":4},"exit":false}'


@pytest.mark.parametrize("name", REASONINGS)
def test_reply_and_decision_round_trip(name):
    fmt = decision_format(name)
    decision = Decision(ratings={"2": 4, "4": None}, feelings={"2": "tense"}, thought="I want action tonight.",
                        action="exit")
    reply = fmt.reply.model_validate_json(fmt.to_reply(decision, PAGE).model_dump_json())
    jsonschema.validate(reply.model_dump(mode="json"), fmt.schema(PAGE))  # what the server would admit
    back = fmt.to_decision(reply, PAGE)
    assert back.ratings == decision.ratings and back.action == "exit" and back.invalid_ids == 0
    assert back.thought == (None if name == "none" else "I want action tonight.")
    assert back.feelings == ({"1": "", "2": "tense", "3": "", "4": ""} if name == "full" else {})


def test_positions_off_the_page_are_rejected_and_counted():
    d = NONE.to_decision(CompactDecision(watched={"2": 5, "9": 3, "x": 1, "0": 2}, exit=False), PAGE)
    assert d.ratings == {"2": 5} and d.invalid_ids == 3 and d.action == "next_page" and d.thought is None


@pytest.mark.parametrize("name", REASONINGS)
def test_prompt_lists_the_page_the_formats_way_static_first(name):
    fmt = decision_format(name)
    agent = PersonaAgent(persona(), decision_format=fmt)
    system, user = agent.messages(0, LONG_IDS)
    other = PersonaAgent(persona("u2"), decision_format=fmt).messages(3, PAGE)[0]
    assert system["content"].startswith(fmt.system) and other["content"].startswith(fmt.system)  # shared prefix
    assert fmt.system.startswith(ROLE) and "Page" not in system["content"]
    if name == "full":
        assert "- id B000000001: Heat (Action)" in user["content"]
    else:  # numbered, no ids anywhere: the prompt does not grow with id length either
        listing = "\n2. Heat (Action)\n3. Fargo (Crime). A pregnant police chief investigates.\n4. Alien"
        assert listing in user["content"]
        assert "B0000" not in user["content"] and "B0000" not in system["content"]


def test_policy_setup_gives_agents_the_scenarios_format_and_budget(tmp_path):
    scenario = scenario_from_dict({"dataset": {"name": "ml-100k"}, "policy": {"reasoning": "brief"},
                                   "llm": {"sampling": {"max_tokens": 333}}, "output_dir": str(tmp_path)})
    setup = PolicySetup.for_scenario(scenario, ["u1"]).subset(["u1"])
    agent = setup.agent(persona())
    assert agent.decision_format is decision_format("brief") and agent.max_tokens == 333
    assert PolicySetup.prompt_only().agent(persona()).decision_format is FULL  # the default: today's reply
    llm = ScriptedLLM()
    d = asyncio.run(agent.decide(llm, 0, 0, PAGE))
    (request,) = llm.requests
    assert request.output.__name__ == "BriefDecision" and d.failure is None and d.feelings == {}
    assert request.params["max_tokens"] == reply_budget(request.schema, fallback=333) < 333


# --- a whole run and the export, per format ------------------------------------------------------------------


def format_user(request):
    """A scripted user in any format: watches the 1st and 3rd item shown (rated 4 and 2), exits on a hash."""
    props = request.schema["properties"]
    leave = zlib.crc32(request.prompt.encode()) % 3 == 0
    if "items" in props:  # full: by id
        ids = list(props["items"]["properties"])
        return {"thought": "scripted", "action": "exit" if leave else "next_page", "items": {
            i: {"watch": n in (0, 2), "rating": {0: 4, 2: 2}.get(n), "feeling": "ok"} for n, i in enumerate(ids)}}
    watched = {p: r for p, r in (("1", 4), ("3", 2)) if p in props["watched"]["properties"]}
    return {**({"thought": "scripted"} if "thought" in props else {}), "watched": watched, "exit": leave}


@pytest.fixture(scope="module")
def ml100k_scenarios(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return {name: scenario_from_dict({
        "name": f"fmt-{name}", "seed": 3, "dataset": {"name": "ml-100k"}, "population": {"size": 8},
        "recommender": {"algorithm": "pop"}, "pages": {"count": 3, "items_per_page": 4},
        "policy": {"reasoning": name}, "learning": {"transitions_per_persona": 1},
        "output_dir": str(root / name)}) for name in REASONINGS}


@pytest.mark.parametrize("name", REASONINGS)
def test_every_format_round_trips_through_events_stats_and_export(name, ml100k_scenarios, tmp_path):
    scenario = ml100k_scenarios[name]
    fmt = decision_format(name)
    plan = plan_run(scenario, tmp_path / "run", n_shards=2)
    llm = ScriptedLLM(format_user)
    summary = asyncio.run(run_local(plan, llm))
    assert all(r.output is fmt.reply for r in llm.requests)
    assert all(r.params["max_tokens"] == reply_budget(r.schema, fallback=0) for r in llm.requests)

    events = pq.read_table(tmp_path / "run" / "events.parquet")
    assert events.schema.equals(EVENTS)
    rows = events.to_pylist()
    assert len(rows) == summary["decisions"] == len(llm.requests) and not any(r["failure"] for r in rows)
    for r in rows:  # positions mapped back to the ids shown, in the order shown
        assert r["watched"] == [n in (0, 2) for n in range(len(r["items"]))]
        assert r["ratings"] == [{0: 4, 2: 2}.get(n) for n in range(len(r["items"]))]
        assert r["thought"] == (None if name == "none" else "scripted")
        assert r["feelings"] == (["ok"] * 4 if name == "full" else [""] * 4)
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["histograms"]["watches_per_page"] == {"2": len(rows)}
    assert stats["histograms"]["ratings"] == {"2": len(rows), "4": len(rows)}

    # the fine-tuning export writes the human's decision in the same format, for the same prompt
    inputs = prepare(scenario, users_limit=1)
    uid = inputs.users[0]
    step = inputs.sampled_steps(uid)[0]
    folder = scenario.learning_dir()
    folder.mkdir(parents=True, exist_ok=True)
    journal = Journal(folder)
    journal.put({"kind": "reflection", "user_id": uid, "step": step, "reasoning": "I come for the dramas. " * 12})
    journal.close()
    export_sft(scenario, tmp_path / "sft", max_pages=1, users_limit=1)
    (row,) = [json.loads(x) for x in (tmp_path / "sft" / POLICY_FILE).read_text().splitlines()]
    system, user, assistant = row["messages"]
    assert system["content"].startswith(fmt.system)
    page = [inputs.views_for(uid)[i] for i in inputs.state(uid, step).page]  # the user's own ratings out
    assert fmt.list_page(page) in user["content"]
    reply = fmt.reply.model_validate_json(assistant["content"])
    jsonschema.validate(json.loads(assistant["content"]), fmt.schema(page))
    decision = fmt.to_decision(reply, page)
    human = inputs.human_action(uid, step)
    assert set(decision.ratings) == {i for i in human.watched_ids if i in {v.item_id for v in page}}
    assert decision.action == ("exit" if human.exit else "next_page")
    if fmt.thought_max:
        assert decision.thought.startswith("I come for the dramas.") and len(decision.thought) <= fmt.thought_max
