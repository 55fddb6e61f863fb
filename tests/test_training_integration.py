"""A tiny real training (CI): `alignuser-sim train` on a few dozen ML-100K examples for a few steps with torch,
peft and TRL, interrupted and resumed from its checkpoint; then the embedded vLLM server loads the adapter
(multi-LoRA beside the base model) and a persona agent decides a page through the product's client by the
adapter's name. About 3 minutes on 2 CPU cores."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignuser_sim.agent.adapters import load_adapters
from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.config import load_scenario
from alignuser_sim.core import Catalogue
from alignuser_sim.data import load_dataset
from alignuser_sim.data.personas import build_personas
from alignuser_sim.learning.training import train
from alignuser_sim.llm.client import LLMClient
from alignuser_sim.llm.launcher import embedded_endpoints
from alignuser_sim.store import LearningFolder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
ALIGNUSER_SIM = str(Path(sys.executable).parent / "alignuser-sim")


class Stop(KeyboardInterrupt):
    pass


def test_tiny_training_resumes_and_its_adapter_is_served(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "seed": 1, "dataset": {"name": "ml-100k"}, "population": {"size": 4, "sampling": "first"},
        "recommender": {"algorithm": "pop"}, "policy": {"kind": "alignuser+", "reasoning": "none",
                                                        "lessons": False, "world_model": False},
        "llm": {"concurrency": 2, "cache": "off"},
        "train": {"world_model_examples": 8, "policy_examples": 12, "judgment_examples": 6, "heldout_users": 0.25,
                  "heldout_examples": 2,
                  "batch_size": 2, "checkpoint_steps": 1, "max_length": 768},
        "output_dir": str(tmp_path),
    }))
    scenario = load_scenario(path)
    layout = LearningFolder(scenario.learning_dir())
    # no learning folder: one line, exit 2
    result = subprocess.run([ALIGNUSER_SIM, "train", str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no learning folder" in result.stderr and "Traceback" not in result.stderr
    layout.path.mkdir(parents=True)
    (layout.path / LearningFolder.JOURNAL).write_text("")  # learned nothing: the human pages alone

    # interrupted at stage 1's second step: checkpoint-1 is kept ...
    steps: list[tuple[str, int]] = []

    def interrupt(label: str, step: int, total: int, fields: dict) -> None:
        steps.append((label, step))
        if step == 2:
            raise Stop()

    with pytest.raises(Stop):
        train(scenario, max_steps=3, on_progress=interrupt)
    assert (layout.training / "stage1" / "checkpoint-1").is_dir()
    assert not (layout.training / "stage1" / "stage.json").exists()
    # ... and the same command goes on from it (the CLI: one table, the card)
    result = subprocess.run([ALIGNUSER_SIM, "train", str(path), "--max-steps", "3"], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training card" in result.stdout
    stage1 = json.loads((layout.training / "stage1" / "stage.json").read_text())
    assert stage1["steps"] == 3 and stage1["heldout_loss"] is not None
    card = json.loads((layout.adapters / "card.json").read_text())
    assert card["examples"] == {"world_model": 8, "policy": 18} and card["base_checksum"]
    assert (layout.adapters / "loss.png").stat().st_size > 1000 and (layout.adapters / "card.md").is_file()
    adapters = load_adapters(layout.path)
    (name,) = adapters.adapters

    # the embedded server serves it beside the base model; an agent of policy alignuser+ asks it by name
    ds = load_dataset(scenario.dataset)
    users = ["1"]
    setup = PolicySetup.for_scenario(scenario, users)
    assert setup.models == {"1": name}
    config = scenario.llm.model_copy(update={"adapters": setup.adapter_paths})
    with embedded_endpoints(config, log_path=tmp_path / "vllm.log") as endpoints:
        import httpx

        served = {m["id"] for m in httpx.get(endpoints[0] + "/models", timeout=30).json()["data"]}
        assert {name, scenario.llm.model} <= served
        agent = setup.agent(build_personas(ds, users)[0])
        page = Catalogue(ds.items).page(["50", "181", "1", "300"])

        async def decide():
            async with LLMClient.from_config(config, endpoints=endpoints) as client:
                return await agent.decide(client, 0, 0, page)

        decision = asyncio.run(decide())
    assert decision.failure is None, decision.failure
    assert decision.completion_tokens > 0 and set(decision.ratings) <= {"50", "181", "1", "300"}


    # --merge (CPU serving): the merged model answers like the base model with the adapter, token for token
    result = subprocess.run([ALIGNUSER_SIM, "train", str(path), "--max-steps", "3", "--merge"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    merged = layout.path / "merged" / name
    assert f"--served-model-name {name}" in result.stdout and (merged / "config.json").is_file()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignuser_sim.learning.training import _base_path

    base = _base_path(None)
    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = tokenizer.apply_chat_template(agent.messages(0, page), add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                            str(adapters.paths()[name]))(ids).logits[0, -1]
        model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
        plain = model(ids).logits[0, -1]
        untrained = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    assert int(plain.argmax()) in adapted.topk(3).indices.tolist()
    before, after = untrained.state_dict(), model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)  # merged, not the bare base
    assert json.loads((merged / "config.json").read_text()).get("dtype") == "bfloat16"  # the base's own dtype
