"""`alignuser-sim learn` against the REAL vLLM server (SmolLM2-135M): three ML-100K users (~14 LLM calls), then
one user whose counterfactual policy uses its lessons (<= 7 calls), then three users of an Amazon-like dataset
with ten-character ids and five-level categories (<= 27 calls), where no reply may be cut at its budget."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.config import load_scenario
from alignuser_sim.core import Catalogue
from alignuser_sim.data import load_dataset
from alignuser_sim.data.personas import build_personas

from .longid_data import write_longid_dataset

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
ALIGNUSER_SIM = str(Path(sys.executable).parent / "alignuser-sim")
WIDE = {**os.environ, "COLUMNS": "200"}  # tables unwrapped


def learn(tmp_path: Path, server_url: str, name: str, seed: int, users: int, concurrency: int,
          learning: dict, dataset: dict | None = None, **extra) -> tuple[Path, str]:
    """Write a small scenario (ML-100K unless `dataset`) against the server, run `alignuser-sim learn` on it:
    (scenario, stdout)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "seed": seed, "dataset": dataset or {"name": "ml-100k"}, "population": {"size": users},
        "recommender": {"algorithm": "mf"},
        "llm": {"endpoints": [server_url], "model": "smollm2", "concurrency": concurrency, "cache": "off"},
        "learning": {"embedder": "lexical", **learning}, "output_dir": str(tmp_path), **extra,
    }))
    result = subprocess.run([ALIGNUSER_SIM, "learn", str(path)], capture_output=True, text=True, timeout=800,
                            env=WIDE)
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-3000:]
    return path, result.stdout


def test_learn_on_three_users_against_vllm(vllm_server, tmp_path):
    # per persona: 1 taste + 1 counterfactual sample + 1 world-model call + at most 1 reflection
    path, stdout = learn(tmp_path, vllm_server.base_url, "learn-it", 13, 3, 8,
                         {"transitions_per_persona": 1, "counterfactuals_per_step": 1, "world_model_examples": 1},
                         policy="alignuser")
    assert "lessons written" in stdout and "world model" in stdout

    scenario = load_scenario(path)
    folder = scenario.learning_dir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["personas"] == 3 and summary["transitions"] == 3
    assert 6 <= summary["llm_calls_this_run"] <= 12 and summary["llm_requests_this_run"] >= 6
    # a real model's answers: usable, or failures that were counted (never a crash)
    wm = summary["worldmodel_human"]
    assert wm["n"] + wm["failed"] == 3
    if wm["n"]:
        assert 0.0 <= wm["item_jaccard"] <= 1.0 and 0.0 <= wm["continue_accuracy"] <= 1.0
    reflections = pq.read_table(folder / "reflections.parquet").to_pylist()
    assert len(reflections) == 3
    lessons = pq.read_table(folder / "lessons.parquet").to_pylist()
    reflected = [r for r in reflections if not r["skipped"]]
    assert lessons or summary["failures"] or all(not r["lessons"] for r in reflected)
    assert summary["lessons_written"] == len(lessons)
    for row in lessons:
        assert 0 < len(row["text"]) <= 200 and row["tag"] in ("genre", "rating", "exploration", "exit",
                                                               "popularity", "other")
    transitions = pq.read_table(folder / "transitions.parquet").to_pylist()
    assert {r["action_id"] for r in transitions} >= {"human"} and all(len(r["next_items"]) == 4 for r in transitions)

    # the learned folder drives the simulation's agents
    ds = load_dataset(scenario.dataset)
    users = sorted({r["user_id"] for r in transitions})
    setup = PolicySetup.for_scenario(scenario, users)
    persona = build_personas(ds, [users[0]])[0]
    page = Catalogue(ds.items).page(next(r["items"] for r in transitions if r["user_id"] == users[0]))
    user_prompt = setup.agent(persona).messages(0, page)[1]["content"]
    assert "How this recommender reacts to what you do:" in user_prompt  # world-model hints, always there
    mine = [r["text"] for r in lessons if r["user_id"] == users[0]]
    if mine:
        assert "Lessons about how you really behave:" in user_prompt and any(t in user_prompt for t in mine)

    # next-state accuracy without / with examples, on one user: 2 calls
    result = subprocess.run([ALIGNUSER_SIM, "learn", "worldmodel", str(path), "--users", "1"],
                            capture_output=True, text=True, timeout=600, env=WIDE)
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "without examples" in result.stdout and "with up to 1 examples" in result.stdout
    evaluation = json.loads((folder / "worldmodel_eval.json").read_text())
    assert evaluation["llm"]["calls"] == 2
    for scores in evaluation["scores"].values():
        assert scores["n"] + scores["failed"] == 1


def test_counterfactual_policy_with_lessons_against_vllm(vllm_server, tmp_path):
    """counterfactual_policy: lessons on one user, two transitions (<= 7 calls): the second transition's
    alternatives come from a policy holding the lessons the first one wrote (as many as were kept)."""
    path, _ = learn(tmp_path, vllm_server.base_url, "learn-lessons", 21, 1, 4,
                    {"transitions_per_persona": 2, "counterfactuals_per_step": 1, "world_model_examples": 0,
                     "counterfactual_temperature": 1.5, "counterfactual_policy": "lessons"})
    folder = load_scenario(path).learning_dir()
    records = [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines() if line.strip()]
    cfs = sorted((r for r in records if r["kind"] == "counterfactuals"), key=lambda r: r["step"])
    reflections = {r["step"]: r for r in records if r["kind"] == "reflection"}
    assert len(cfs) == 2 and cfs[0]["lessons_used"] == 0
    first_lessons = reflections[cfs[0]["step"]]["lessons"] if cfs[0]["step"] in reflections else []
    # what the first reflection kept, merged: at least one when it kept any, never more than it kept
    assert (cfs[1]["lessons_used"] > 0) == bool(first_lessons) and cfs[1]["lessons_used"] <= len(first_lessons)


def test_learn_on_long_ids_has_no_reply_cut_at_its_budget(vllm_server, tmp_path):
    """Amazon-like data (ten-character ASIN ids, five-level category lists as genres), three personas, two
    transitions each, two counterfactual samples: before the numbered replies, 6 of 24 world-model replies on
    such data were cut at their budget and 18 of 33 predictions failed. Now no call of learning may end on
    `length`, and every world-model reply that finished is a usable prediction."""
    dataset = write_longid_dataset(tmp_path / "amazon-like", long_ids=True)
    path, _ = learn(tmp_path, vllm_server.base_url, "learn-longids", 17, 3, 8,
                    {"transitions_per_persona": 2, "counterfactuals_per_step": 2, "world_model_examples": 1},
                    dataset=dataset)
    folder = load_scenario(path).learning_dir()
    summary = json.loads((folder / "summary.json").read_text())
    records = [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines() if line.strip()]
    wm = [r for r in records if r["kind"] == "worldmodel"]
    predictions = [p for r in wm for p in r["predicted"]]
    cut = [k for k in summary["failures"] if k.endswith(":length")]
    print(f"long ids: world-model calls {len(wm)}, cut at the budget {sum(r['failure'] == 'length' for r in wm)}, "
          f"predictions {len(predictions)}, failed {sum(p is None for p in predictions)}; "
          f"failures {summary['failures']}; retries {summary['llm_retries_this_run']}; "
          f"calls {summary['llm_calls_this_run']}, completion tokens {summary['completion_tokens_this_run']}, "
          f"wall {summary['wall_s']} s")
    assert summary["transitions"] == 6 and len(wm) == 6
    assert not cut and "length" not in summary["llm_retries_this_run"]
    assert all(r["failure"] is None for r in wm) and all(p is not None for p in predictions)
    for p in predictions:  # numbers mapped back to the candidates' ids, exactly a page of them
        assert len(p["items"]) <= 4 and all(len(i) == 10 and i.startswith("B0") for i in p["items"])
    candidates = {i for r in wm for i in r["candidates"]}
    assert all(set(p["items"]) <= candidates for p in predictions)
