"""Learning over a population with the scripted fake LLM: training split only, resume, world-model scoring,
the policy's loading of what was learned, fine-tuning export, and the `learn` command line."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from alignuser_sim.agent.decision import PageDecision
from alignuser_sim.agent.policy import PolicySetup, load_tastes
from alignuser_sim.bench.fake_users import fake_decision
from alignuser_sim.config import load_scenario, scenario_from_dict
from alignuser_sim.data import load_dataset
from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.learning.inputs import heldout_items, prepare
from alignuser_sim.learning.journal import Journal
from alignuser_sim.learning.learner import run_learning, run_world_model_eval
from alignuser_sim.learning.training_data import policy_examples, world_model_examples
from alignuser_sim.learning.world_model import Predicted, Prediction, candidate_items, mean_scores, score
from alignuser_sim.llm.schemas import worst_case_chars
from alignuser_sim.testing import ScriptedLLM, http_error

pytestmark = pytest.mark.timeout(180)
ALIGNUSER_SIM = str(Path(sys.executable).parent / "alignuser-sim")
LESSON = "I rarely watch horror, even when it is popular."
TASTE = "You love thoughtful dramas and avoid gore."


def respond(req, reflection_error=None):
    name = req.output.__name__
    if name == "PageDecision":
        return fake_decision(req.messages, req.schema, exit_every=2)
    if name == "Taste":
        return {"taste": TASTE}
    if name == "Reflection":
        if reflection_error is not None:
            return reflection_error
        return {"reasoning": "Dramas are what I come for.", "mistakes": "They chase popular picks.",
                "lessons": [{"text": LESSON, "tag": "genre"}]}
    if name == "Prediction":  # the first k candidates on the next page, no genre, the session goes on
        outcome = req.schema["$defs"]["Outcome"]["properties"]
        labels = req.schema["properties"]["outcomes"]["required"]
        return {"outcomes": {label: {"next": list(range(1, outcome["next"]["maxItems"] + 1)), "genres": [],
                                     "continues": True} for label in labels}}
    raise AssertionError(name)


def scenario_dict(tmp_path, **learning):
    return {
        "name": "small", "seed": 5, "dataset": {"name": "ml-100k"}, "population": {"size": 3},
        "recommender": {"algorithm": "itemknn"},
        "learning": {"transitions_per_persona": 2, "counterfactuals_per_step": 2, "embedder": "lexical",
                     "world_model_examples": 2, **learning},
        "output_dir": str(tmp_path),
    }


@pytest.fixture
def small(tmp_path):
    scenario = scenario_from_dict(scenario_dict(tmp_path))
    return scenario, prepare(scenario)


def test_learning_sees_only_the_training_split(small):
    scenario, inputs = small
    ds = load_dataset(scenario.dataset)
    _, heldout = split_dataset(ds)
    held = {(u, i) for u, i in zip(heldout["user_id"].to_pylist(), heldout["item_id"].to_pylist(), strict=True)}
    for uid in inputs.users:
        for step in inputs.steps[uid]:  # what the human watched on every page is a training interaction
            assert not {(uid, i) for i in step.watched} & held
        assert not {(uid, i) for i, _, _ in inputs.consumed[uid]} & held
    # the taste prompt names training items only
    llm = ScriptedLLM(respond)
    asyncio.run(run_learning(inputs, llm))
    taste_prompts = {r.messages[0]["content"]: r.prompt for r in llm.requests if r.output.__name__ == "Taste"}
    assert len(taste_prompts) == 3
    train_titles = {inputs.views[i].title for u in inputs.users for i, _, _ in inputs.consumed[u]}
    held_only = {inputs.views[i].title for u, i in held if u in inputs.users} - train_titles
    for prompt in taste_prompts.values():
        assert not any(f"{t} (" in prompt or f"; {t};" in prompt for t in held_only)


def test_world_model_scores_against_the_recommender_truth(small):
    """A world model that names the first k candidates: its scores are those of these ids against what the
    recommender really serves, and continue accuracy is the share of next_page actions."""
    scenario, inputs = small
    llm = ScriptedLLM(respond)
    result = asyncio.run(run_world_model_eval(inputs, llm, n_examples=2))
    steps = [(u, s) for u in inputs.users for s in inputs.sampled_steps(u)]
    share_on = sum(not inputs.steps[u][s].exit for u, s in steps) / len(steps)
    expected = []
    for u, s in steps:
        state, human = inputs.state(u, s), inputs.human_action(u, s)
        truth = inputs.truth(state, human, near=inputs.k)
        candidates = candidate_items([truth], state, inputs.k, inputs.catalogue_ids, scenario.seed)
        expected.append(score(Predicted(candidates[:inputs.k], [], True), truth))
    for n in (0, 2):
        scores = result["scores"][n]
        assert scores["n"] == len(steps) and scores["failed"] == 0
        for key in ("item_jaccard", "item_precision", "item_recall"):
            assert scores[key] == pytest.approx(mean_scores(expected)[key], abs=1e-4)
        assert scores["continue_accuracy"] == pytest.approx(share_on, abs=1e-4)
    assert 0 < mean_scores(expected)["item_recall"] < 1  # some true items among the first k, not all
    assert result["scores"][2]["mean_examples"] > 0 and result["scores"][0]["mean_examples"] == 0
    predictions = [r for r in llm.requests if r.output is Prediction]
    with_examples = [r for r in predictions if "How this recommender reacted before" in r.prompt]
    assert 0 < len(with_examples) <= len(steps) and len(predictions) == 2 * len(steps)
    assert all(r.params["temperature"] == 0.0 for r in predictions)
    assert all(r.params["max_tokens"] >= worst_case_chars(r.schema) for r in predictions)
    rows = pq.read_table(scenario.learning_dir() / "worldmodel_predictions.parquet").to_pylist()
    assert len(rows) == 2 * len(steps) and {r["kind"] for r in rows} == {"wm_eval:0", "wm_eval:2"}
    assert all(r["pred_items"] == r["candidates"][:inputs.k] for r in rows)  # stored as ids, not numbers
    assert json.loads((scenario.learning_dir() / "worldmodel_eval.json").read_text())["examples"] == 2


def test_resume_redoes_only_what_failed_in_transport(tmp_path):
    scenario = scenario_from_dict(scenario_dict(tmp_path, counterfactual_policy="prompt-only"))
    inputs = prepare(scenario)
    folder = scenario.learning_dir()
    down = ScriptedLLM(lambda req: respond(req, reflection_error=http_error(503)), max_retries=0)
    first = asyncio.run(run_learning(inputs, down))
    n = len(inputs.users) * 2
    alternatives = pq.read_table(folder / "transitions.parquet").to_pylist()
    reflected = len({(r["user_id"], r["step"]) for r in alternatives if r["action_id"] != "human"})
    assert reflected >= 3  # (a transition where the policy only repeated the human has no reflection)
    assert first["failures"]["retry_later:http_503"] == reflected and first["transitions"] == n - reflected
    assert not (folder / "lessons.parquet").exists() or pq.read_table(folder / "lessons.parquet").num_rows == 0
    with open(folder / "journal.jsonl", "a") as fh:
        fh.write('{"kind": "reflection", "user_id": ')  # a torn last line: a killed process

    second_llm = ScriptedLLM(respond)
    second = asyncio.run(run_learning(inputs, second_llm))
    assert {r.output.__name__ for r in second_llm.requests} == {"Reflection"}  # nothing else again
    assert len(second_llm.requests) == reflected and second["transitions"] == n
    assert second["journal_bad_lines"] == 1
    assert second["lessons_written"] == len(inputs.users)  # one lesson, merged, per persona
    third_llm = ScriptedLLM(respond)
    third = asyncio.run(run_learning(inputs, third_llm))
    assert third_llm.requests == [] and third["transitions"] == n
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["lessons_written"] == len(inputs.users) and summary["worldmodel_human"]["n"] == n
    # the human action and every distinct alternative, with the recommender's truth
    transitions = pq.read_table(folder / "transitions.parquet")
    assert pc.sum(pc.equal(transitions["action_id"], "human")).as_py() == n
    assert transitions.num_rows == n + second["alternatives_distinct"]


def journal_records(folder: Path, kind: str) -> dict[tuple[str, int], dict]:
    records = [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines() if line.strip()]
    return {(r["user_id"], r["step"]): r for r in records if r.get("kind") == kind}


def test_counterfactual_policy_uses_the_lessons_of_earlier_transitions(small):
    """counterfactual_policy: lessons (default): a persona's transitions run in order and the policy that
    proposes the alternatives of a later transition holds the lessons its earlier reflections wrote."""
    scenario, inputs = small
    assert scenario.learning.counterfactual_policy == "lessons"
    folder = scenario.learning_dir()
    down = ScriptedLLM(lambda req: respond(req, reflection_error=http_error(503)), max_retries=0)
    asyncio.run(run_learning(inputs, down))
    # a reflection lost in transport ends the persona's chain: its next transition waits for the next run
    cfs = journal_records(folder, "counterfactuals")
    for uid in inputs.users:
        first, second = inputs.sampled_steps(uid)
        if len(cfs[(uid, first)]["actions"]) > 1:  # it had alternatives, so a reflection was asked (and failed)
            assert (uid, second) not in cfs
    llm = ScriptedLLM(respond)
    asyncio.run(run_learning(inputs, llm))
    cfs, reflections = journal_records(folder, "counterfactuals"), journal_records(folder, "reflection")
    with_lessons = 0
    for uid in inputs.users:
        first, second = inputs.sampled_steps(uid)
        assert cfs[(uid, first)]["lessons_used"] == 0
        learned = bool(reflections[(uid, first)]["lessons"])
        assert cfs[(uid, second)]["lessons_used"] == int(learned)  # one lesson (merged if repeated)
        with_lessons += learned
    assert with_lessons >= 1
    sampled = [r for r in llm.requests if r.output is PageDecision]
    assert sum(LESSON in r.prompt for r in sampled) == with_lessons * scenario.learning.counterfactuals_per_step
    assert all(r.params["temperature"] == scenario.learning.counterfactual_temperature for r in sampled)
    # prompt-only: the same pipeline never shows a lesson to the counterfactual policy
    bare = scenario_from_dict(scenario_dict(tmp_path := folder.parent / "bare", counterfactual_policy="prompt-only"))
    bare_llm = ScriptedLLM(respond)
    asyncio.run(run_learning(prepare(bare), bare_llm))
    assert not any(LESSON in r.prompt for r in bare_llm.requests if r.output is PageDecision)
    assert tmp_path.exists()


def test_policy_loads_lessons_hints_and_tastes(small):
    scenario, inputs = small
    asyncio.run(run_learning(inputs, ScriptedLLM(respond)))
    assert set(load_tastes(scenario.learning_dir(), inputs.users).values()) == {TASTE}
    assert load_tastes(scenario.learning_dir() / "none", inputs.users) == {}
    scenario.policy.kind = "alignuser"
    setup = PolicySetup.for_scenario(scenario, inputs.users)
    assert set(setup.lessons) == set(setup.world_model) == set(inputs.users)
    uid = inputs.users[0]
    agent = setup.agent(inputs.personas[uid], seed=1)
    page = [inputs.views[i] for i in inputs.steps[uid][0].items]
    system, user = agent.messages(0, page)
    assert f"Your taste: {TASTE}" in system["content"]
    assert f"Lessons about how you really behave:\n- {LESSON}" in user["content"]
    assert "How this recommender reacts to what you do:\n- " in user["content"]
    assert "the next page showed mostly" in user["content"] or "would have shown mostly" in user["content"] \
        or "next visit" in user["content"]
    scenario.policy.kind = "prompt-only"
    plain = PolicySetup.for_scenario(scenario, inputs.users).agent(inputs.personas[uid], seed=1)
    assert "Lessons about" not in plain.messages(0, page)[1]["content"]


def test_taste_off_writes_no_taste(tmp_path):
    scenario = scenario_from_dict(scenario_dict(tmp_path, taste="off", counterfactuals_per_step=0,
                                                transitions_per_persona=1))
    llm = ScriptedLLM(respond)
    summary = asyncio.run(run_learning(prepare(scenario, users_limit=2), llm))
    names = [r.output.__name__ for r in llm.requests]
    # no alternatives (K = 0): no reflection either; one world-model call per transition
    assert names == ["Prediction", "Prediction"] and summary["reflections_skipped"] == 2
    assert summary["tastes_written"] == 0 and summary["calls_per_persona_this_run"] == 1.0


@pytest.mark.parametrize("cap, most", [(1, 1), (None, 3)])
def test_learning_concurrency_caps_the_personas_learning_at_once(tmp_path, monkeypatch, cap, most):
    """A CPU server times out 32-64 long reflections in flight; `learning.concurrency` (not llm.concurrency,
    which the evaluation keeps high) sets how many personas learn at once, and the client `learn` opens."""
    from alignuser_sim.learning import learner as learner_module

    scenario = scenario_from_dict(scenario_dict(tmp_path, concurrency=cap, counterfactuals_per_step=1,
                                                transitions_per_persona=1))
    assert scenario.llm.concurrency == 32
    assert scenario.learning_llm().concurrency == (cap or 32) and scenario.llm.concurrency == 32
    original, now, seen = learner_module.Learner.transition, [0], []

    async def counted(self, user, step):
        now[0] += 1
        seen.append(now[0])
        try:
            await asyncio.sleep(0.01)  # let the other workers start theirs
            return await original(self, user, step)
        finally:
            now[0] -= 1

    monkeypatch.setattr(learner_module.Learner, "transition", counted)
    asyncio.run(run_learning(prepare(scenario), ScriptedLLM(respond)))
    assert len(seen) == 3 and max(seen) == most


def test_learning_concurrency_never_raises_llm_concurrency(tmp_path):
    data = scenario_dict(tmp_path, concurrency=16)
    data["llm"] = {"concurrency": 4}
    assert scenario_from_dict(data).learning_llm().concurrency == 4
    assert scenario_from_dict(scenario_dict(tmp_path)).learning_llm().concurrency == 8  # the CPU default


# --- the command line ------------------------------------------------------------------------------------


def test_learn_group_help_lists_its_commands():
    from alignuser_sim.cli import app

    result = CliRunner().invoke(app, ["learn", "--help"])
    assert result.exit_code == 0
    for command in ("run", "worldmodel", "export"):
        assert command in result.output


def _yaml(tmp_path, **extra) -> Path:
    data = scenario_dict(tmp_path)
    data.update(extra)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args):
    return subprocess.run([ALIGNUSER_SIM, *args], capture_output=True, text=True, timeout=120)


def test_learn_scenario_is_the_default_command_and_errors_are_one_line(tmp_path):
    dead = _yaml(tmp_path, llm={"endpoints": ["http://127.0.0.1:9/v1"]})
    for args in (["learn", str(dead), "--users", "1"], ["learn", "--users", "1", str(dead)],
                 ["learn", "run", str(dead), "--users", "1"]):
        result = _cli(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == \
            "llm.endpoints: http://127.0.0.1:9/v1: not reachable (ConnectError)"
        assert "Traceback" not in result.stderr
    result = _cli("learn", "worldmodel", str(_yaml(tmp_path, learning={"world_model_examples": 0})))
    assert result.returncode == 2 and "learning.world_model_examples: is 0" in result.stderr
    result = _cli("learn", "export", str(dead))
    assert result.returncode == 2 and "no learning journal" in result.stderr


def test_export_writes_chat_jsonl_for_both_tasks(tmp_path):
    path = _yaml(tmp_path)
    scenario = load_scenario(path)
    inputs = prepare(scenario)
    asyncio.run(run_learning(inputs, ScriptedLLM(respond)))
    result = _cli("learn", "export", str(path), "--max-pages", "3", "--out", str(tmp_path / "sft"))
    assert result.returncode == 0, result.stderr
    policy = [json.loads(line) for line in (tmp_path / "sft" / "policy_sft.jsonl").read_text().splitlines()]
    world = [json.loads(line) for line in (tmp_path / "sft" / "worldmodel_sft.jsonl").read_text().splitlines()]
    reflections = pq.read_table(scenario.learning_dir() / "reflections.parquet").to_pylist()
    # stage 2 learns from every training page (here at most 3 per persona), not only the reflected ones
    assert len(policy) == sum(min(3, len(inputs.steps[u])) for u in inputs.users)
    alternatives = pq.read_table(scenario.learning_dir() / "transitions.parquet")
    n_alt = pc.sum(pc.not_equal(alternatives["action_id"], "human")).as_py()
    journal = Journal(scenario.learning_dir(), write=False)
    personas = {u: p for u, p in inputs.personas.items()}
    _, dropped = world_model_examples(inputs, journal, personas, heldout_items(scenario, inputs.users), 3)
    assert len(world) == 3 * len(inputs.users) + n_alt - dropped
    for row in policy + world:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    for row in policy:
        PageDecision.model_validate_json(row["messages"][2]["content"])
    # a reflected page's thought is the reflection's reasoning; the decision is the human's
    examples = policy_examples(inputs, journal, personas, reflected_only=True)
    first = reflections[0]
    reflected = next(e for e in examples if (e.user_id, e.step) == (first["user_id"], first["step"]))
    decision = PageDecision.model_validate_json(reflected.reply)
    assert decision.thought == "Dramas are what I come for."
    human = inputs.human_action(first["user_id"], first["step"])
    assert {i for i, d in decision.items.items() if d.watch} == set(human.watched_ids)
    prediction = Prediction.model_validate_json(world[0]["messages"][2]["content"])
    assert len(prediction.outcomes["a1"].next) == inputs.k  # the true next page, by candidate number
    first_user = world[0]["messages"][1]["content"]
    candidates = first_user.split("Candidates for the next page")[1].splitlines()[1:]
    assert all(n <= len(candidates) for n in prediction.outcomes["a1"].next)
    assert "--enable-lora --lora-modules" in (tmp_path / "sft" / "README.md").read_text()
