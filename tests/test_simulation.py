"""The page loop without Ray: agents, shards, driver, events and statistics, with a scripted fake LLM."""

import asyncio
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignuser_sim.agent.decision import PageDecision, check_decision, page_schema
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.config import scenario_from_dict
from alignuser_sim.core import Catalogue
from alignuser_sim.data.personas import Persona
from alignuser_sim.simulation.driver import ItemView
from alignuser_sim.simulation.events import EVENTS, EventLog, MacroStats
from alignuser_sim.simulation.runs import plan_run, run_local
from alignuser_sim.testing.fake_llm import ScriptedLLM
from alignuser_sim.testing.fake_users import fake_user_responder

PAGE = [ItemView("1", "Toy Story", ("Animation",)), ItemView("2", "Heat", ("Action",)),
        ItemView("3", "Fargo", ("Crime",))]


def persona(uid="u1") -> Persona:
    return Persona(uid, activity=2, diversity=1, conformity=3, n_interactions=30, n_genres_80=2,
                   rating_deviation=1.2, demographics={"gender": "F"}, taste="Loves animation.")


def test_page_schema_pins_each_id_exactly_once():
    schema = page_schema(["1", "2", "3"])
    items = schema["properties"]["items"]
    assert list(items["properties"]) == items["required"] == ["1", "2", "3"]
    assert items["additionalProperties"] is False
    assert list(page_schema(["9"])["properties"]["items"]["properties"]) == ["9"]  # the base is not mutated
    assert "item_id" not in schema["$defs"]["ItemDecision"]["properties"]
    # a reply in this shape validates with the model
    reply = {"thought": "t", "action": "exit",
             "items": {i: {"watch": False, "rating": None, "feeling": "no"} for i in ("1", "2", "3")}}
    assert set(PageDecision.model_validate(reply).items) == {"1", "2", "3"}


def test_ids_not_on_the_page_are_rejected_and_counted():
    reply = PageDecision.model_validate({"thought": "t", "action": "exit", "items": {
        "1": {"watch": True, "rating": 5, "feeling": "yes"},
        "99": {"watch": True, "rating": 4, "feeling": "invented"},
        "98": {"watch": False, "rating": None, "feeling": "also invented"},
        "3": {"watch": False, "rating": None, "feeling": "no"}}})
    d = check_decision(reply, PAGE)
    # "2" got no answer: not watched
    assert d.ratings == {"1": 5} and d.invalid_ids == 2 and set(d.feelings) == {"1", "3"}


def test_prompt_is_static_first_and_holds_persona_history_page():
    agent = PersonaAgent(persona())
    agent.history.append(("Alien", 4))
    system, user = agent.messages(0, PAGE)
    assert "Loves animation." in system["content"] and "Page" not in system["content"]
    assert user["content"].index("Alien (you rated 4)") < user["content"].index("Page 1.")
    assert "- id 2: Heat (Action)" in user["content"]


def test_one_call_per_page_and_failures_are_counted():
    llm = ScriptedLLM(script=['{"not": "a decision"}'])
    agent = PersonaAgent(persona())
    d = asyncio.run(agent.decide(llm, 0, 0, PAGE))
    assert d.failure == "schema" and d.action == "exit" and d.ratings == {}
    assert len(llm.requests) == 2  # the call and its one validation retry
    llm = ScriptedLLM(fake_user_responder)
    d = asyncio.run(agent.decide(llm, 0, 1, PAGE))
    assert d.failure is None and len(llm.requests) == 1
    assert set(d.feelings) == {"1", "2", "3"}


@pytest.fixture
def scenario(tmp_path):
    return scenario_from_dict({
        "seed": 3, "dataset": {"name": "ml-100k"}, "population": {"size": 30},
        "recommender": {"algorithm": "itemknn"}, "pages": {"count": 4, "items_per_page": 4},
        "output_dir": str(tmp_path),
    })


def test_full_run_in_process(scenario, tmp_path):
    plan = plan_run(scenario, tmp_path / "run", n_shards=3)
    llm = ScriptedLLM(fake_user_responder)
    summary = asyncio.run(run_local(plan, llm))
    events = pq.read_table(tmp_path / "run" / "events.parquet")
    assert events.schema.equals(EVENTS)
    rows = events.to_pylist()
    keys = [(r["run_id"], r["agent_id"], r["session"], r["page"]) for r in rows]
    assert len(keys) == len(set(keys)) == summary["decisions"] == len(llm.requests)
    by_agent = {}
    for r in rows:
        by_agent.setdefault(r["agent_id"], []).append(r)
    assert len(by_agent) == 30 and summary["agents_done"] == 30
    for pages in by_agent.values():
        pages.sort(key=lambda r: r["page"])
        assert [r["page"] for r in pages] == list(range(len(pages)))  # no gap
        assert len(pages) <= 4  # the page cap
        assert all(r["action"] == "next_page" for r in pages[:-1])  # only the last page may exit
        served = [i for r in pages for i in r["items"]]
        assert len(served) == len(set(served))  # the recommender never serves an item twice
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    hist = stats["histograms"]
    assert sum(hist["pages_per_session"].values()) == 30
    watched = sum(sum(r["watched"]) for r in rows)
    assert sum(int(k) * v for k, v in hist["watches_per_page"].items()) == watched
    assert sum(hist["ratings"].values()) == watched
    assert (tmp_path / "run" / "scenario.yaml").exists()


def test_resume_completes_with_no_event_lost_or_duplicated(scenario, tmp_path):
    whole = plan_run(scenario, tmp_path / "whole", n_shards=2)
    full = asyncio.run(run_local(whole, ScriptedLLM(fake_user_responder)))
    # an interrupted run: keep only the first part files, as a killed driver would leave them
    part = plan_run(scenario, tmp_path / "part", n_shards=2)
    part.run_id = whole.run_id  # same keys as the uninterrupted run, so the events compare one to one
    asyncio.run(run_local(part, ScriptedLLM(fake_user_responder)))
    # what a killed driver leaves: for each agent a prefix of its pages (all page 0s, a third of page 1s)
    events_dir = tmp_path / "part" / "events"
    done = pq.read_table(tmp_path / "part" / "events.parquet")
    for p in events_dir.glob("part-*.parquet"):
        p.unlink()
    (tmp_path / "part" / "events.parquet").unlink()
    rows = [r for r in done.to_pylist() if r["page"] == 0 or (r["page"] == 1 and int(r["agent_id"]) % 3 == 0)]
    pq.write_table(pa.Table.from_pylist(rows, schema=EVENTS), events_dir / "part-killed-000001.parquet")
    kept = len(rows)
    assert 0 < kept < full["decisions"]
    from alignuser_sim.simulation.runs import resume_plan

    resumed_plan = resume_plan(tmp_path / "part")
    resumed_plan.run_id = whole.run_id
    llm = ScriptedLLM(fake_user_responder)
    resumed = asyncio.run(run_local(resumed_plan, llm))
    assert len(llm.requests) == full["decisions"] - kept  # only the missing pages were decided
    a = pq.read_table(tmp_path / "whole" / "events.parquet").drop(["wall_time", "latency_s", "shard"])
    b = pq.read_table(tmp_path / "part" / "events.parquet").drop(["wall_time", "latency_s", "shard"])
    assert a.equals(b)
    for key in ("decisions", "watches_per_page_mean", "rating_mean", "pages_per_session_mean", "sessions_done"):
        assert resumed[key] == full[key], key


def test_event_log_is_idempotent_on_the_key(tmp_path):
    from alignuser_sim.simulation.events import Event

    def ev(page):
        return Event("r", "a", 0, page, ["1"], [True], [4], ["ok"], "t", "next_page", None, 0, 1, 1, 0.1,
                     False, 0, 0.0)

    log = EventLog(tmp_path, flush_s=3600)
    assert len(log.append([ev(0), ev(1)])) == 2
    assert log.append([ev(1), ev(2)]) == [ev(2)] and log.duplicates == 1
    assert EventLog(tmp_path).load_existing() == []  # buffered, not written yet
    log.flush()
    again = EventLog(tmp_path)
    assert len(again.load_existing()) == 3 and again.append([ev(0)]) == []
    assert pq.read_table(again.finalize()).num_rows == 3


def test_macro_stats_by_hand():
    from alignuser_sim.simulation.events import Event

    s = MacroStats()
    s.add(Event("r", "a", 0, 0, ["1", "2"], [True, True], [5, 3], ["", ""], None, "next_page", None, 0, 10, 5,
                0.2, False, 0, 0.0), session_over=False)
    s.add(Event("r", "a", 0, 1, ["3", "4"], [False, True], [None, 4], ["", ""], None, "exit", None, 1, 10, 5,
                0.4, False, 0, 0.0), session_over=True)
    out = s.summary()
    assert out["rating_mean"] == 4.0 and out["watches_per_page_mean"] == 1.5
    assert out["pages_per_session_mean"] == 2 and dict(s.exit_page) == {1: 1} and out["invalid_ids"] == 1


def test_catalogue_shows_titles_and_genres():
    import pyarrow as pa

    items = pa.table({"item_id": ["a"], "title": ["A film"], "genres": [["Drama"]], "description": ["Sad."]})
    (view,) = Catalogue(items).page(["a"])
    assert view.line() == "- id a: A film (Drama). Sad."


def test_llm_server_down_for_a_while_the_run_backs_off_and_continues(scenario, tmp_path):
    import json as _json
    import time as _time

    from alignuser_sim.bench.fake_users import fake_decision
    from alignuser_sim.llm import LLMClient
    from alignuser_sim.testing.http_server import Reply, ScriptedServer, status

    down_from: list[float] = []  # down for 1.5 s from the first request on

    def respond(body, n):
        if not down_from:
            down_from.append(_time.monotonic())
        if _time.monotonic() < down_from[0] + 1.5:
            return status(503, "server is restarting")
        schema = body["response_format"]["json_schema"]["schema"]
        return Reply(_json.dumps(fake_decision(body["messages"], schema)))

    with ScriptedServer(respond) as server:
        llm = LLMClient([server.base_url], cache="off", max_retries=10, backoff_base_s=0.1, backoff_max_s=0.5,
                        rng_seed=0)
        summary = asyncio.run(run_local(plan_run(scenario, tmp_path / "run", n_shards=2), llm))
    snap = llm.snapshot()
    assert sum(snap["retries"].values()) > 0 and summary["failures"] == 0
    assert summary["agents_done"] == 30


def test_macro_stats_merge_equals_one_stream():
    from alignuser_sim.simulation.events import Event

    def ev(page, latency, rating):
        return Event("r", "a", 0, page, ["1"], [True], [rating], [""], None, "next_page", None, 0, 3, 2, latency,
                     False, 0, 0.0)

    events = [ev(i, 0.1 * (i + 1), 1 + i % 5) for i in range(10)]
    whole, left, right = MacroStats(), MacroStats(), MacroStats()
    for e in events:
        whole.add(e, session_over=e.page == 9)
    for e in events[:4]:
        left.add(e, session_over=False)
    for e in events[4:]:
        right.add(e, session_over=e.page == 9)
    left.merge(right)
    assert left.to_dict() == whole.to_dict()
    assert 0.45 <= whole.summary()["latency_p50_s"] <= 0.55  # 10 calls of 0.1 .. 1.0 s
