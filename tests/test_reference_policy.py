"""The `popularity` policy: a simulated user with no LLM. Its decisions by hand on made-up pages, a run and a
compare that start no server and make no call, and the commands that have no use for it refusing it."""

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

import alignuser_sim as aus
from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.agent.reference_policy import PopularityAgent
from alignuser_sim.config import PolicyConfig, scenario_from_dict
from alignuser_sim.core import ItemView
from alignuser_sim.data import load_dataset
from alignuser_sim.data.personas import build_personas
from alignuser_sim.data.training_stats import TrainingStats, round_half_up, training_stats
from alignuser_sim.errors import UserError
from alignuser_sim.llm.protocol import NoLLM


class Unreachable:
    """An LLM that fails the test when called: the reference policy must never reach it."""

    async def call(self, *args, **kwargs):
        raise AssertionError("the popularity policy called the LLM")

    def snapshot(self):
        return NoLLM().snapshot()


def page(*ids):
    return [ItemView(item_id=i, title=f"title {i}", genres=["Drama"]) for i in ids]


def agent(**kw):
    stats = TrainingStats(
        watch_rate={"u": 0.5}, mean_rate=0.25, popularity={"a": 10, "b": 30, "c": 20, "d": 1}, global_mean=3.4,
        item_mean={"a": 4.6, "b": 2.5, "c": 1.2}, user_mean={"u": 2.2}, session_pages={"u": 2.6},
        mean_session_pages=1.2)
    persona = build_personas(load_dataset(scenario().dataset), ["1"])[0]
    return PopularityAgent(replace(persona, user_id=kw.pop("user", "u")), stats=stats)


def scenario(**policy):
    return scenario_from_dict({
        "name": "ref", "seed": 6, "dataset": {"name": "ml-100k"}, "population": {"size": 8},
        "recommender": {"algorithm": "pop"}, "pages": {"count": 5, "items_per_page": 4},
        "policy": {"kind": "popularity", **policy},
        "eval": {"ratios": [1], "users": 3, "bootstrap": 20, "recommenders": ["random", "pop"]},
    })


def test_decides_by_hand():
    a = agent()
    d = asyncio.run(a.ask(Unreachable(), 0, page("a", "b", "c", "d"), seed=1))
    # rate 0.5 x 4 items: the 2 most popular (b, c), rated at their item means rounded (2.5 -> 3, halves up)
    assert d.ratings == {"b": 3, "c": 1} and d.action == "next_page" and d.thought is None
    assert d.prompt_tokens == d.completion_tokens == 0 and d.failure is None
    # its human's sessions ran 2.6 pages: it leaves on its third page
    assert asyncio.run(a.ask(Unreachable(), 1, page("a", "b"), seed=1)).action == "next_page"
    d = asyncio.run(a.ask(Unreachable(), 2, page("a", "d"), seed=1))
    assert d.action == "exit" and d.ratings == {"a": 5}  # 0.5 x 2 = 1 item; 4.6 -> 5
    other = agent(user="v")  # no pages of its own: the population's rate (0.25 x 4 = 1) and session length (1)
    d = asyncio.run(other.ask(Unreachable(), 0, page("d", "e", "c", "a"), seed=1))
    assert d.ratings == {"c": 1} and d.action == "exit"
    d = asyncio.run(other.ask(Unreachable(), 0, page("e", "d"), seed=1))  # 0.25 x 2 = 0.5 -> 1 (halves up)
    assert d.ratings == {"d": 3}  # no item mean: its user's mean, else the global mean (3.4 -> 3)


def test_no_ratings_dataset_gives_no_ratings():
    a = agent()
    a.stats.global_mean = None
    assert asyncio.run(a.ask(Unreachable(), 0, page("a", "b"), seed=1)).ratings == {"b": None}


def test_config():
    assert PolicyConfig(kind="popularity").label == "popularity"
    assert not PolicyConfig(kind="popularity").uses_llm and PolicyConfig().uses_llm
    p = PolicyConfig(kind="popularity")
    assert not (p.use_lessons or p.use_world_model or p.use_adapter)
    with pytest.raises(UserError, match="popularity makes no LLM call"):
        scenario(lessons=True)


def test_setup_builds_popularity_agents_from_the_training_split():
    sc = scenario()
    users = ["1", "2", "3"]
    setup = PolicySetup.for_scenario(sc, users)
    expected = training_stats(load_dataset(sc.dataset), users, sc.pages, sc.seed)
    assert setup.reference.popularity == expected.popularity and setup.reference.watch_rate == expected.watch_rate
    shard = setup.subset(["2"])
    assert set(shard.reference.watch_rate) <= {"2"} and shard.reference.popularity is setup.reference.popularity
    persona = build_personas(load_dataset(sc.dataset), ["2"])[0]
    assert isinstance(shard.agent(persona), PopularityAgent)


def test_run_and_compare_without_any_llm(tmp_path):
    """No llm given, and the Ray runner would need a cluster and a server: the run happens in process."""
    sc = scenario()
    sc.output_dir = tmp_path

    class NoRunner:
        def shard_count(self, agents):
            raise AssertionError("the popularity policy asked for the LLM runner")

        def __call__(self, plan, on_progress=None):
            raise AssertionError("the popularity policy asked for the LLM runner")

    run = aus.simulate(sc, runner=NoRunner())
    events = run.events
    assert run.summary["status"] == "complete" and run.summary["prompt_tokens"] == 0
    assert events.num_rows > 0 and pc.all(pc.is_null(events["failure"])).as_py()
    stats = training_stats(load_dataset(sc.dataset), [str(u) for u in set(events["agent_id"].to_pylist())],
                           sc.pages, sc.seed)
    for e in events.to_pylist():
        assert e["watched"] == stats.top(e["items"], round_half_up(stats.rate(e["agent_id"]) * len(e["items"])))
    result = aus.compare(sc, out=tmp_path / "compare", runner=NoRunner())
    assert result.summary["policy"] == "popularity" and len(result.summary["rows"]) == 2
    sat = {r["recommender"]: r["satisfaction"]["value"] for r in result.summary["rows"]}
    assert sat["pop"] > sat["random"]  # popular items carry high mean ratings; random pages mostly do not


def test_commands_that_need_an_llm_refuse_it(tmp_path):
    sc = scenario()
    sc.output_dir = tmp_path
    with pytest.raises(UserError, match="reference policies"):
        aus.evaluate(sc, out=tmp_path / "eval")
    with pytest.raises(UserError, match="reference policies"):
        aus.evaluate(scenario_from_dict({**sc.model_dump(mode="json"), "policy": {"kind": "prompt-only"}}),
                     policies=["prompt-only", "popularity"], out=tmp_path / "eval2")
    with pytest.raises(UserError, match="nothing to learn"):
        aus.learn(sc)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "alignuser_sim.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def test_cli_run_and_compare_with_policy_popularity(tmp_path):
    """`run --policy` and `compare --policy` swap the scenario's LLM policy for the reference: no server, no Ray
    cluster, the folders name the policy; a policy that does not exist is one line."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**scenario(kind="prompt-only").model_dump(mode="json", exclude_none=True),
                                    "output_dir": str(tmp_path)}))
    done = cli("run", str(path), "--policy", "popularity", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert "vLLM" not in done.stderr and "Traceback" not in done.stderr
    assert "popularity" in (tmp_path / "run" / "scenario.yaml").read_text()
    done = cli("compare", str(path), "--policy", "popularity", "--bootstrap", "20")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "ref" / "compare-popularity" / "compare.json").read_text())
    assert summary["policy"] == "popularity" and "(popularity)" in done.stdout
    bad = cli("run", str(path), "--policy", "popular")
    assert bad.returncode == 2 and "--policy: unknown policy 'popular'" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_an_llm_compare_runs_the_reference_beside_it(tmp_path):
    """The LLM policy's compare also runs the popularity user (same recommenders, users and offline table); its
    taus sit beside the policy's in compare.json and the report; `references=False` skips it."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_api import fake_llm

    sc = scenario(kind="prompt-only")
    sc.pages.count = 3
    llm = fake_llm()
    result = aus.compare(sc, llm=llm, out=tmp_path / "compare")
    reference = result.summary["reference"]
    assert reference["policy"] == "popularity" and result.summary["policy"] == "prompt-only"
    assert [r["recommender"] for r in reference["rows"]] == ["random", "pop"]
    assert {(t["offline"], t["outcome"]) for t in reference["tau"]} == \
        {(t["offline"], t["outcome"]) for t in result.summary["tau"]}
    ref = tmp_path / "compare" / "reference-popularity"
    assert (ref / "offline.parquet").read_bytes() == (tmp_path / "compare" / "offline.parquet").read_bytes()
    events = pq.read_table(ref / "pop" / "events.parquet")
    assert pc.sum(events["prompt_tokens"]).as_py() == 0  # no LLM call
    text = aus.report(tmp_path / "compare").markdown.read_text()
    assert "tau, popularity reference" in text and "reference-popularity" in text
    bare = aus.compare(sc, llm=fake_llm(), out=tmp_path / "bare", references=False)
    assert "reference" not in bare.summary and not (tmp_path / "bare" / "reference-popularity").exists()
