"""The human-likeness judge and thought-action consistency (`evaluation/judge.py`, `alignuser-sim judge`): the
rendering both sides share, the reply schemas, that the human sessions are judged too and the numbers come
from the judge's replies, the consistency share, resuming, the judge's LLM section, and bad input in one line.
Short real runs on ML-100K with the scripted fake user; the judge is a scripted fake whose replies are a
function of the prompt, so every expected number is recomputed from the prompts it was sent."""

import asyncio
import json
import math
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from alignuser_sim.config import scenario_from_dict
from alignuser_sim.core import Catalogue
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.judge import JUDGE_FILE, judge, judge_llm, judge_summary, plan_judging, summarize
from alignuser_sim.evaluation.judge_prompts import (
    ConsistencyReply,
    LikenessReply,
    render_decision,
    render_session,
    sessions_of,
)
from alignuser_sim.llm.schemas import json_schema_for
from alignuser_sim.simulation.runs import plan_run, run_local
from alignuser_sim.testing.fake_llm import ScriptedLLM, timeout
from alignuser_sim.testing.fake_users import fake_user_responder
from alignuser_sim.testing.http_server import Reply, ScriptedServer

CLI = str(Path(sys.executable).with_name("alignuser-sim"))

# --- rendering ------------------------------------------------------------------------------------------------

ITEMS = pa.table({"item_id": ["a", "b", "c", "d"], "title": ["Alien", "Babe", "Casablanca", "Dune"],
                  "genres": [["Horror", "Sci-Fi"], ["Children's"], ["Drama", "Romance"], []]})


def test_a_session_renders_the_same_on_both_sides():
    catalogue = Catalogue(ITEMS)
    events = [  # simulated: int ratings, None for an unrated watch, a thought per page
        {"agent_id": "u", "session": 0, "page": 1, "items": ["c", "d"], "watched": [False, True],
         "ratings": [None, None], "action": "exit", "thought": "nothing romantic tonight", "failure": None},
        {"agent_id": "u", "session": 0, "page": 0, "items": ["a", "b"], "watched": [True, False],
         "ratings": [4, None], "action": "next_page", "thought": "  I like scary films ", "failure": None},
    ]
    rollouts = [  # human: float ratings, NaN for an unknown one, no thoughts
        {"user_id": "u", "session": 7, "page": 0, "items": ["a", "b"], "watched": [True, False],
         "ratings": [4.0, math.nan], "action": "next_page"},
        {"user_id": "u", "session": 7, "page": 1, "items": ["c", "d"], "watched": [False, True],
         "ratings": [math.nan, math.nan], "action": "exit"},
    ]
    (sim,) = sessions_of(events, "simulated", "agent_id", 5)["u"]
    (hum,) = sessions_of(rollouts, "human", "user_id", 5)["u"]
    assert sim.pages[0].thought == "I like scary films" and hum.pages[0].thought is None
    text = render_session(sim, catalogue)
    assert text == render_session(hum, catalogue)  # nothing tells the judge which side it reads
    assert text.splitlines() == [
        "Page 1, shown:", "  1. Alien (Horror, Sci-Fi)", "  2. Babe (Children's)",
        "watched: Alien (rated 4/5)", "then: asked for the next page",
        "Page 2, shown:", "  1. Casablanca (Drama, Romance)", "  2. Dune",
        "watched: Dune (no rating)", "then: left"]
    with_thoughts = render_session(sim, catalogue, thoughts=True)
    assert "thought: I like scary films" in with_thoughts and "thought: nothing romantic tonight" in with_thoughts
    decision = render_decision(sim.pages[0], catalogue)
    assert "Thought written before deciding: I like scary films" in decision
    assert "watched: Alien (rated 4/5)" in decision and "skipped: Babe" in decision


def test_sessions_are_cut_at_the_cap_and_failed_ones_left_out():
    catalogue = Catalogue(ITEMS)
    page = {"items": ["a", "b"], "watched": [False, False], "ratings": [None, None], "action": "next_page",
            "thought": None, "failure": None}
    events = [*({**page, "agent_id": "x", "session": 0, "page": p} for p in range(4)),
              {**page, "agent_id": "y", "session": 0, "page": 0, "failure": "schema"}]
    found = sessions_of(events, "simulated", "agent_id", 3)
    assert list(found) == ["x"] and len(found["x"][0].pages) == 3
    text = render_session(found["x"][0], catalogue, page_cap=3)
    assert text.endswith("(the session ends here: the site shows at most 3 pages)")
    assert text.count("watched: nothing") == 3


# --- the schemas ----------------------------------------------------------------------------------------------


def test_reply_schemas_are_strict_and_bounded():
    like = json_schema_for(LikenessReply)
    assert like["properties"]["score"]["enum"] == [1, 2, 3, 4, 5]
    assert like["required"] == ["score", "reason"] and like["additionalProperties"] is False
    assert like["properties"]["reason"]["maxLength"] == 200
    cons = json_schema_for(ConsistencyReply)
    assert cons["properties"]["consistent"]["type"] == "boolean"
    assert cons["required"] == ["consistent", "reason"] and cons["additionalProperties"] is False
    with pytest.raises(ValueError):
        LikenessReply.model_validate({"score": 6, "reason": "x"})


# --- on short runs ------------------------------------------------------------------------------------------------


def simulate(root: Path, users: int = 6, reasoning: str = "full", user=None, **sections) -> Path:
    scenario = scenario_from_dict({
        "name": "judged", "seed": 3, "dataset": {"name": "ml-100k"}, "population": {"size": users},
        "recommender": {"algorithm": "pop"}, "pages": {"count": 3, "items_per_page": 4},
        "policy": {"reasoning": reasoning}, "output_dir": str(root), **sections,
    })
    run_dir = root / "run"
    asyncio.run(run_local(plan_run(scenario, run_dir, n_shards=1), user or ScriptedLLM(fake_user_responder)))
    return run_dir


def score_of(text: str) -> int:
    return 1 + zlib.crc32(text.encode()) % 5


def consistent_of(text: str) -> bool:
    return zlib.crc32(text.encode()) % 3 != 0


def judge_responder(request):
    """The fake judge: a reply that is a function of the session or decision it is shown."""
    text = request.messages[-1]["content"]
    if request.output is LikenessReply:
        return {"score": score_of(text), "reason": f"looks like {score_of(text)}"}
    return {"consistent": consistent_of(text), "reason": "follows"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    return {"full": simulate(root / "full"), "none": simulate(root / "none", reasoning="none", user=ScriptedLLM())}


def test_both_sides_are_judged_and_the_numbers_are_the_judges(runs, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs["full"], run_dir)
    plan = plan_judging(run_dir)
    llm = ScriptedLLM(judge_responder)
    result = judge(run_dir, llm=llm, draws=300)
    assert json.loads((run_dir / JUDGE_FILE).read_text())["likeness"] == result["likeness"]

    likeness = [t for t in plan.tasks if t.kind == "likeness"]
    consistency = [t for t in plan.tasks if t.kind == "consistency"]
    assert len(llm.requests) == len(plan.tasks) == len(likeness) + len(consistency)
    assert result["judged_users"] == 6 and result["likeness"]["sessions"] == {"simulated": 6, "human": 6}
    asked = [r.messages[-1]["content"] for r in llm.requests if r.output is LikenessReply]
    human = [t.text for t in likeness if t.side == "human"]
    assert len(human) == 6 and all(text in asked for text in human)  # the humans' sessions went to the judge
    for r in llm.requests:  # schema-constrained, deterministic sampling
        assert r.schema == json_schema_for(r.output) and r.params["temperature"] == 0.0
        assert "simulat" in r.messages[0]["content"] or r.output is ConsistencyReply
        assert "simulated" not in r.messages[-1]["content"] and "human" not in r.messages[-1]["content"]

    like = result["likeness"]
    for side in ("simulated", "human"):
        scores = [score_of(t.text) for t in likeness if t.side == side]
        assert like[side]["value"] == pytest.approx(np.mean(scores))
        assert like[side]["lo"] <= like[side]["value"] <= like[side]["hi"]
        assert sum(like["histogram"][side].values()) == 6
    paired = [score_of(s.text) - score_of(h.text) for s, h in zip(
        (t for t in likeness if t.side == "simulated"), (t for t in likeness if t.side == "human"), strict=True)]
    assert like["difference"]["value"] == pytest.approx(np.mean(paired)) and like["paired_users"] == 6

    # thought-action consistency: every decision of the judged simulated sessions has a thought (format full)
    pages = sum(len(s) for s in [t.text.split("Page ")[1:] for t in likeness if t.side == "simulated"])
    assert len(consistency) == pages
    share = result["consistency"]["share"]
    assert share["value"] == pytest.approx(np.mean([consistent_of(t.text) for t in consistency]))
    assert share["lo"] <= share["value"] <= share["hi"]
    assert result["consistency"]["decisions"] == len(consistency)

    # the report's numbers are recomputed from the stored judgements: the same
    again = judge_summary(run_dir, draws=300)
    assert again["likeness"] == result["likeness"] and again["consistency"] == result["consistency"]


def test_a_format_without_thoughts_says_so_in_one_line(runs, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs["none"], run_dir)
    llm = ScriptedLLM(judge_responder)
    result = judge(run_dir, llm=llm, draws=100)
    assert all(r.output is LikenessReply for r in llm.requests)  # no consistency call at all
    skipped = result["consistency"]["skipped"]
    assert "policy.reasoning: none" in skipped and "\n" not in skipped
    assert result["likeness"]["human"]["value"] is not None


def test_judging_resumes_and_extends(runs, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs["full"], run_dir)
    down = ScriptedLLM(script=[timeout()], max_retries=0)  # the server is away: nothing is stored
    first = judge(run_dir, sessions=2, llm=down, draws=50)
    assert first["likeness"]["sessions"] == {"simulated": 0, "human": 0}
    assert first["missing"]["likeness human"] == 2
    llm = ScriptedLLM(judge_responder)
    second = judge(run_dir, sessions=2, llm=llm, draws=50)
    two = len(llm.requests)
    assert second["likeness"]["sessions"] == {"simulated": 2, "human": 2} and not second["missing"]
    llm = ScriptedLLM(judge_responder)
    judge(run_dir, sessions=2, llm=llm, draws=50)
    assert llm.requests == []  # all judged: nothing asked again
    more = judge(run_dir, sessions=4, llm=llm, draws=50)
    assert more["likeness"]["sessions"] == {"simulated": 4, "human": 4}
    assert len(llm.requests) == len(plan_judging(run_dir, sessions=4).tasks) - two  # only the new users
    smaller = judge(run_dir, sessions=2, llm=llm, draws=50)  # summarizes its own sessions only
    assert smaller["likeness"] == second["likeness"]

    bad = ScriptedLLM(script=['{"score": 9, "reason": "x"}'])  # a reply that does not validate: counted
    shutil.rmtree(run_dir / "judge")
    result = judge(run_dir, sessions=1, llm=bad, draws=10)
    assert result["failed"]["likeness simulated"] == 1 and result["likeness"]["simulated"]["value"] is None

    with pytest.raises(UserError, match="holds judgements of another setup .*thoughts"):
        judge(run_dir, sessions=1, thoughts=True, llm=llm)


def test_summarize_pools_per_user():
    rows = [
        {"kind": "likeness", "side": "simulated", "user_id": "a", "session": 0, "page": -1, "score": 4,
         "consistent": None, "reason": "r", "failure": None},
        {"kind": "likeness", "side": "human", "user_id": "a", "session": 2, "page": -1, "score": 5,
         "consistent": None, "reason": "r", "failure": None},
        {"kind": "likeness", "side": "simulated", "user_id": "b", "session": 0, "page": -1, "score": 2,
         "consistent": None, "reason": "r", "failure": None},
        {"kind": "likeness", "side": "human", "user_id": "b", "session": 1, "page": -1, "score": None,
         "consistent": None, "reason": None, "failure": "schema"},
        *({"kind": "consistency", "side": "simulated", "user_id": u, "session": 0, "page": p, "score": None,
           "consistent": c, "reason": "r", "failure": None} for u, p, c in (("a", 0, True), ("a", 1, True),
                                                                            ("b", 0, False))),
    ]
    result = summarize({"seed": 1, "reasoning": "brief"}, rows, True, draws=200)
    like = result["likeness"]
    assert like["simulated"]["value"] == 3.0 and like["human"]["value"] == 5.0
    assert like["paired_users"] == 1 and like["difference"]["value"] == -1.0  # b has no valid human score
    assert result["failed"] == {"likeness human": 1}
    assert result["consistency"]["share"]["value"] == pytest.approx(2 / 3)
    assert like["lowest"][0] == {"user_id": "b", "score": 2, "reason": "r"}
    kept = summarize({"seed": 1}, rows, True, draws=0, keep={("simulated", "a", 0), ("human", "a", 2)})
    assert kept["likeness"]["simulated"]["value"] == 4.0 and kept["consistency"]["decisions"] == 2
    assert "no decision of the run carries a thought" in summarize({"reasoning": "full"}, rows, False)[
        "consistency"]["skipped"]


def test_the_judges_llm_section():
    base = {"name": "x", "dataset": {"name": "ml-100k"}, "llm": {"adapters": {"a": "/tmp/a"}}}
    sc = scenario_from_dict(base)
    cfg = judge_llm(sc)
    assert cfg.endpoints is None and cfg.model == sc.llm.model and cfg.adapters == {}
    with pytest.raises(UserError, match="judge.model: 'big' needs judge.endpoints"):
        judge_llm(scenario_from_dict({**base, "judge": {"model": "big"}}))
    cfg = judge_llm(scenario_from_dict({**base, "judge": {"model": "big", "endpoints": "http://judge:8000/v1"}}))
    assert cfg.model == "big" and cfg.endpoints == ["http://judge:8000/v1"]
    with pytest.raises(UserError, match="judge.endpoints"):
        scenario_from_dict({**base, "judge": {"endpoints": ["ftp://x"]}})
    assert sc.judge.sessions == 50 and sc.judge.seed is None


# --- the command, the report, bad input -------------------------------------------------------------------------


def cli(*args):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_the_command_and_the_report_section(tmp_path):
    from alignuser_sim.testing.fake_llm import example_from_schema

    def respond(body, n):
        schema = body["response_format"]["json_schema"]["schema"]
        return Reply(json.dumps(example_from_schema(schema)))

    with ScriptedServer(respond) as server:
        run_dir = simulate(tmp_path, users=4, judge={"endpoints": [server.base_url], "sessions": 3},
                           llm={"cache": "off"})  # a cached reply would not reach the server
        proc = cli("judge", run_dir, "--bootstrap", "100")
        assert proc.returncode == 0, proc.stderr
        assert server.requests  # judged on judge.endpoints
    assert "human-likeness" in proc.stdout and "simulated - human (paired)" in proc.stdout
    assert "thought-action consistency" in proc.stdout and "judge calls" in proc.stderr
    result = json.loads((run_dir / JUDGE_FILE).read_text())
    assert result["likeness"]["sessions"] == {"simulated": 3, "human": 3}
    proc = cli("report", run_dir, "--out", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    section = md.split("## Judge: human-likeness and thought-action consistency", 1)[1]
    assert "simulated - human (paired)" in section and "Thought-action consistency" in section
    assert "Judge: human-likeness" in (tmp_path / "report" / "report.html").read_text()


def test_bad_input_is_one_line(tmp_path):
    failed = simulate(tmp_path / "failed", users=3, user=ScriptedLLM(script=['{"bad": 1}']))
    for folder, message in ((tmp_path, "no events"), (tmp_path / "nope", "no such folder"),
                            (failed, "no complete simulated session to judge")):
        proc = cli("judge", folder)
        assert proc.returncode == 2, proc.stderr
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
