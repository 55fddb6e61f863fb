"""`alignuser-sim train`: what the two stages learn from (training split only, no held-out item or page), the
adapters' manifest, serving flags and checks, and the per-call model an agent asks. The tiny real training
(torch + peft + TRL, then the adapter served by the real vLLM) is in test_training_integration.py."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignuser_sim.agent.adapters import AdapterSet, load_adapters
from alignuser_sim.agent.decision import NONE
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.config import PolicyConfig, scenario_from_dict
from alignuser_sim.core import ItemView
from alignuser_sim.data import load_dataset
from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.data.personas import build_personas
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.cases import build_cases
from alignuser_sim.learning.training import build_training_set, persona_clusters
from alignuser_sim.learning.training_data import JUDGMENT, POLICY, WORLD_MODEL
from alignuser_sim.llm.server_command import lora_args
from alignuser_sim.store import LearningFolder
from alignuser_sim.testing import ScriptedLLM

ALIGNUSER_SIM = str(Path(sys.executable).parent / "alignuser-sim")


def scenario_dict(tmp_path, **extra):
    return {"name": "tr", "seed": 3, "dataset": {"name": "ml-100k"}, "population": {"size": 12, "sampling": "first"},
            "recommender": {"algorithm": "pop"}, "policy": {"reasoning": "none"},
            "train": {"heldout_users": 0.25, "world_model_examples": 40, "policy_examples": 60},
            "output_dir": str(tmp_path), **extra}


def test_no_heldout_item_or_page_reaches_the_training_data(tmp_path):
    scenario = scenario_from_dict(scenario_dict(tmp_path))
    data = build_training_set(scenario)
    everything = data.world_model + data.policy + data.heldout_world_model + data.heldout_policy
    assert data.world_model and data.policy and data.heldout_policy
    assert {e.stage for e in data.world_model} == {WORLD_MODEL} and {e.stage for e in data.policy} == {POLICY, JUDGMENT}

    ds = load_dataset(scenario.dataset)
    _, heldout = split_dataset(ds)
    hidden: dict[str, set[str]] = {}
    for u, i in zip(heldout["user_id"].to_pylist(), heldout["item_id"].to_pylist(), strict=True):
        hidden.setdefault(u, set()).add(i)
    users = sorted({e.user_id for e in everything})
    cases, _ = build_cases(ds, heldout, users, scenario.eval.positives_per_user, scenario.seed)
    eval_pages = {(c.user_id, frozenset(items)) for c in cases for r in scenario.eval.ratios
                  for items, _ in c.page_items(r, scenario.eval.items_per_page, scenario.seed)}
    titles = {r["item_id"]: r["title"] for r in ds.items.to_pylist()}
    for e in everything:
        assert e.items, e
        assert not (e.items & hidden.get(e.user_id, set())), (e.user_id, e.step, e.items & hidden[e.user_id])
        assert (e.user_id, frozenset(e.items)) not in eval_pages
        text = "\n".join(m["content"] for m in e.messages) + e.reply
        for item in hidden.get(e.user_id, set()):  # not even by title (unless another item shares it)
            title = titles.get(item)
            if title and sum(t == title for t in titles.values()) == 1:
                assert f"{title} (" not in text and f"{title} -" not in text, (e.user_id, title)
    # the held-out loss is measured on users that are not trained on
    trained = {e.user_id for e in data.world_model + data.policy}
    held = {e.user_id for e in data.heldout_world_model + data.heldout_policy}
    assert held and not trained & held
    assert len(data.world_model) <= 40 and len(data.policy) <= 60 + 400
    # the judgment pages never teach an item the evaluation shows that user as a never-touched negative
    asked = {c.user_id: set(c.negatives) for c in cases}
    for e in data.policy + data.heldout_policy:
        if e.stage == JUDGMENT:
            assert not e.items & asked.get(e.user_id, set())
    assert data.digest() == build_training_set(scenario).digest()  # deterministic: a resume sees the same data


def test_policy_examples_answer_in_the_scenario_format_with_the_humans_choice(tmp_path):
    scenario = scenario_from_dict(scenario_dict(tmp_path))
    data = build_training_set(scenario)
    for e in data.policy[:20]:
        reply = NONE.reply.model_validate_json(e.reply)
        assert set(reply.watched) <= {str(i) for i in range(1, scenario.pages.items_per_page + 1)}
        assert e.messages[0]["role"] == "system" and "Page " in e.messages[1]["content"]
        assert e.prompt_completion()["completion"] == [{"role": "assistant", "content": e.reply}]


def test_judgment_examples_ask_the_evaluations_questions_on_training_items(tmp_path):
    """Pages at the evaluation's ratios and page size, the human's training positives watched, the rest skipped;
    and the rating call answered with the human's training ratings, in the policy's prompt (lessons included)."""
    from alignuser_sim.agent.rating import RATING_FORMATS
    from alignuser_sim.learning.inputs import prepare

    scenario = scenario_from_dict(scenario_dict(tmp_path, eval={"ratios": [1, 3], "items_per_page": 6}))
    data = build_training_set(scenario)
    judged = [e for e in data.policy + data.heldout_policy if e.stage == JUDGMENT]
    pages = [e for e in judged if e.step >= 0]
    rated = [e for e in judged if e.step < 0]
    assert pages and rated
    ds = load_dataset(scenario.dataset)
    train, _ = split_dataset(ds)
    mine: dict[str, set[str]] = {}
    for u, i in zip(train.interactions["user_id"].to_pylist(), train.interactions["item_id"].to_pylist(), strict=True):
        mine.setdefault(u, set()).add(i)
    inputs = prepare(scenario, fit=False)
    titles = {i: v.title for i, v in inputs.views.items()}
    sizes = set()
    for e in pages:
        reply = NONE.reply.model_validate_json(e.reply)
        listed = e.messages[-1]["content"].split("Recommended items:\n", 1)[1].splitlines()
        sizes.add(len(listed))
        assert 0 < len(listed) <= 6
        watched = {listed[int(k) - 1].split(". ", 1)[1] for k in reply.watched}
        trained_titles = {titles[i] for i in e.items & mine[e.user_id]}
        assert {w.split(" (")[0] for w in watched} == {t.split(" (")[0] for t in trained_titles}
    assert max(sizes) == 6
    for e in rated:
        reply = RATING_FORMATS["none"].reply.model_validate_json(e.reply)
        assert len(reply.ratings) == len(e.items) and all(1 <= r <= 5 for r in reply.ratings.values())
        assert e.items <= mine[e.user_id]


def test_fresh_keeps_a_stage_whose_data_did_not_change(tmp_path):
    from alignuser_sim.learning.training import _claim

    folder = tmp_path / "training"
    plan = {"version": 1, "data": "a", "stages": {"stage1": "k1", "stage2": "k2"}}
    _claim(folder, plan, fresh=False)
    for stage in ("stage1", "stage2", "stage2-c1"):
        (folder / stage).mkdir()
    changed = {**plan, "data": "b", "stages": {"stage1": "k1", "stage2": "k3"}}
    with pytest.raises(UserError, match="--fresh"):
        _claim(folder, changed, fresh=False)
    _claim(folder, changed, fresh=True)
    assert (folder / "stage1").is_dir() and not (folder / "stage2").exists() and not (folder / "stage2-c1").exists()
    _claim(folder, {**changed, "stages": {"stage1": "k9", "stage2": "k3"}}, fresh=True)
    assert not (folder / "stage1").exists()


def test_persona_clusters_split_the_population(tmp_path):
    from alignuser_sim.learning.inputs import prepare

    scenario = scenario_from_dict(scenario_dict(tmp_path))
    inputs = prepare(scenario, fit=False)
    groups = persona_clusters(inputs, inputs.personas, 3, scenario.seed)
    assert set(groups) == set(inputs.users) and set(groups.values()) == {0, 1, 2}
    assert persona_clusters(inputs, inputs.personas, 1, 0) == dict.fromkeys(inputs.users, 0)


def _adapter(folder: Path, r: int = 16) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "base_model_name_or_path": "x"}))
    return folder


def test_lora_flags_for_the_server(tmp_path):
    a, b = _adapter(tmp_path / "a", 8), _adapter(tmp_path / "b", 20)
    argv = lora_args({"alignuser-c0-1": a, "alignuser-c1-2": b})
    assert argv[:2] == ["--enable-lora", "--lora-modules"]
    assert f"alignuser-c0-1={a.resolve()}" in argv and f"alignuser-c1-2={b.resolve()}" in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "32"  # the next rank vLLM accepts
    assert argv[argv.index("--max-loras") + 1] == "2"
    assert lora_args({}) == []
    with pytest.raises(UserError, match="not a peft adapter"):
        lora_args({"x": tmp_path / "missing"})


def _manifest(learning: Path, checksum: str, users: dict[str, str] | None = None) -> AdapterSet:
    layout = LearningFolder(learning)
    _adapter(layout.adapters / "alignuser-c0-aa")
    _adapter(layout.adapters / "alignuser-c1-bb")
    manifest = AdapterSet(layout.adapters, None, checksum, {"alignuser-c0-aa": "alignuser-c0-aa",
                                                            "alignuser-c1-bb": "alignuser-c1-bb"},
                          users or {}, "alignuser-c0-aa")
    (layout.adapters / layout.ADAPTERS_MANIFEST).write_text(json.dumps(manifest.to_json()))
    return manifest


def test_alignuser_plus_agents_ask_their_clusters_adapter(tmp_path, monkeypatch):
    monkeypatch.setattr("alignuser_sim.llm.model_prep.base_model_checksum", lambda model: "sum-1")
    scenario = scenario_from_dict(scenario_dict(tmp_path, policy={"kind": "alignuser+", "reasoning": "none"}))
    learning = scenario.learning_dir()
    users = ["1", "2", "3"]
    _manifest(learning, "sum-1", {"2": "alignuser-c1-bb"})
    assert scenario.policy.label == "alignuser+" and scenario.policy.use_adapter
    assert PolicyConfig(kind="alignuser", adapter=True).label == "alignuser+"
    assert PolicyConfig(kind="alignuser+", lessons=False, world_model=False).label == "adapter"
    # lessons and world-model files are missing in this folder: alignuser+ reads them like alignuser
    setup = PolicySetup(scenario.policy)
    setup.use_adapters(scenario, users)
    assert setup.models == {"1": "alignuser-c0-aa", "2": "alignuser-c1-bb", "3": "alignuser-c0-aa"}
    assert set(setup.adapter_paths) == {"alignuser-c0-aa", "alignuser-c1-bb"}
    assert setup.subset(["2"]).models == {"2": "alignuser-c1-bb"}

    ds = load_dataset(scenario.dataset)
    persona = build_personas(ds, ["2"])[0]
    agent = setup.agent(persona)
    llm = ScriptedLLM(script=[{"watched": {"1": 4}, "exit": False}])
    page = [ItemView("10", "A"), ItemView("11", "B")]
    decision = asyncio.run(agent.decide(llm, 0, 0, page))
    assert decision.failure is None and decision.ratings == {"10": 4}
    assert llm.requests[0].params["model"] == "alignuser-c1-bb"  # the adapter's served name, not the client's
    plain = PersonaAgent(persona, decision_format=NONE)
    asyncio.run(plain.decide(llm, 0, 1, page))
    assert llm.requests[1].params["model"] == llm.model


def test_adapters_of_another_base_model_or_none_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr("alignuser_sim.llm.model_prep.base_model_checksum", lambda model: "sum-now")
    scenario = scenario_from_dict(scenario_dict(tmp_path, policy={"kind": "alignuser+", "reasoning": "none"}))
    setup = PolicySetup(scenario.policy)
    with pytest.raises(UserError, match=r"no trained adapter; run `alignuser-sim train SCENARIO` first"):
        setup.use_adapters(scenario, ["1"])
    _manifest(scenario.learning_dir(), "sum-then")
    with pytest.raises(UserError, match="trained on another base model"):
        setup.use_adapters(scenario, ["1"])
    (LearningFolder(scenario.learning_dir()).adapters_manifest).write_text("{not json")
    with pytest.raises(UserError, match="unreadable adapter manifest"):
        load_adapters(scenario.learning_dir())


def _cli(*args):
    return subprocess.run([ALIGNUSER_SIM, *args], capture_output=True, text=True, timeout=120)


def test_train_without_a_learning_folder_is_one_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario_dict(tmp_path)))
    result = _cli("train", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no learning folder" in lines[0] and "alignuser-sim learn SCENARIO" in lines[0]
    result = _cli("eval", str(path), "--policies", "prompt-only,alignuser+", "--users", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("policy 'alignuser+' needs the learning folder")


def test_eval_tells_a_retrained_adapter_from_the_old_one(tmp_path):
    """eval records the learning a policy used: for alignuser+ that includes which adapters answer, so a
    retrained adapter's decisions never mix with the old one's in one eval folder; prompt-only's is untouched."""
    from alignuser_sim.evaluation.cases import policy_variant
    from alignuser_sim.evaluation.micro import learning_digest

    scenario = scenario_from_dict(scenario_dict(tmp_path))
    folder = scenario.learning_dir()
    folder.mkdir(parents=True)
    (folder / "tastes.parquet").write_bytes(b"x")
    manifest = LearningFolder(folder).adapters_manifest
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"adapters": {"alignuser-aaaa": "alignuser-aaaa"}}')
    plus, plain = policy_variant(scenario, "alignuser+"), policy_variant(scenario, "prompt-only")
    before = learning_digest(plus), learning_digest(plain)
    manifest.write_text('{"adapters": {"alignuser-bbbb": "alignuser-bbbb"}}')
    assert learning_digest(plus) != before[0] and learning_digest(plain) == before[1]
