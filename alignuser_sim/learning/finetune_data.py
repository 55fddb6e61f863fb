"""Fine-tuning data from learning: chat JSONL in the "messages" format (OpenAI fine-tuning, TRL's SFTTrainer).

Two files, each line `{"messages": [system, user, assistant]}` with the assistant turn a JSON reply in the
exact schema the simulator asks for at run time, so a model trained on it answers the same prompts:

- `worldmodel_sft.jsonl` (stage 1, world modeling): state + action -> the TRUE next state from the
  recommender, for every human training page (`--max-pages` caps them per persona) and every counterfactual
  action learning sampled.
- `policy_sft.jsonl` (stage 2, alignment): persona + page -> the human's decision in the scenario's decision
  format, for every training page; the thought (`full`, `brief`) is the reflection's reasoning where learning
  reflected on the page, else a plain statement of the choice.

Both are `learning/training_data.py`'s examples, the ones `alignuser-sim train` learns from.
A README.md beside them says how to train a LoRA adapter and serve it with vLLM (`--enable-lora
--lora-modules NAME=ADAPTER`); see docs/learning.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignuser_sim import store
from alignuser_sim.agent.policy import PolicySetup, load_tastes
from alignuser_sim.config import Scenario
from alignuser_sim.data.domain import dataset_domain
from alignuser_sim.errors import UserError
from alignuser_sim.learning.inputs import heldout_items, prepare
from alignuser_sim.learning.journal import JOURNAL_FILE, Journal
from alignuser_sim.learning.training_data import human_decision, policy_examples, world_model_examples

__all__ = ["POLICY_FILE", "WORLD_MODEL_FILE", "export_sft", "human_decision"]

WORLD_MODEL_FILE = "worldmodel_sft.jsonl"
POLICY_FILE = "policy_sft.jsonl"

README = """# Fine-tuning data ({scenario})

- `{wm}`: {wm_n} examples, world-model pretraining (state + action -> true next state).
- `{policy}`: {policy_n} examples, policy learning (persona + page -> reasoning + the human's decision).

Each line is `{{"messages": [{{"role": "system", ...}}, {{"role": "user", ...}}, {{"role": "assistant", ...}}]}}`.

Train a LoRA adapter (TRL):

```python
from datasets import load_dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

data = load_dataset("json", data_files="{policy}", split="train")
trainer = SFTTrainer(model="BASE_MODEL", train_dataset=data,
                     args=SFTConfig(output_dir="adapter"),
                     peft_config=LoraConfig(r=16, target_modules="all-linear"))
trainer.train()
trainer.save_model("adapter")
```

Serve it with vLLM next to the base model, and point the scenario at the adapter's name:

```bash
alignuser-sim llm serve --model BASE_MODEL --served-model-name base -- \\
    --enable-lora --lora-modules alignuser=adapter --max-lora-rank 16
# scenario: llm: {{endpoints: [http://127.0.0.1:PORT/v1], model: alignuser}}
```
"""


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with store.replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def export_sft(scenario: Scenario, out_dir: Path | None = None, max_pages: int | None = None,
               users_limit: int | None = None) -> dict[str, Any]:
    """Write the two JSONL files (and a README) from the scenario's learning folder; returns their counts."""
    folder = scenario.learning_dir()
    if not (folder / JOURNAL_FILE).is_file():
        raise UserError(f"{folder}: no learning journal; run `alignuser-sim learn SCENARIO` first")
    out_dir = Path(out_dir) if out_dir is not None else folder / "sft"
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = prepare(scenario, users_limit)
    journal = Journal(folder, write=False)
    setup = PolicySetup(scenario.policy, tastes=load_tastes(folder, inputs.users))
    personas = {u: setup.persona(p) for u, p in inputs.personas.items()}
    heldout = heldout_items(scenario, inputs.users)
    domain = dataset_domain(scenario.dataset)
    wm_rows = [e.chat() for e in world_model_examples(inputs, journal, personas, heldout, max_pages, domain)[0]]
    policy_rows = [e.chat() for e in policy_examples(inputs, journal, personas, max_pages, domain=domain)]

    _jsonl(out_dir / WORLD_MODEL_FILE, wm_rows)
    _jsonl(out_dir / POLICY_FILE, policy_rows)
    readme = out_dir / "README.md"
    readme.write_text(README.format(scenario=scenario.name, wm=WORLD_MODEL_FILE, policy=POLICY_FILE,
                                    wm_n=len(wm_rows), policy_n=len(policy_rows)))
    return {"files": {str(out_dir / WORLD_MODEL_FILE): len(wm_rows), str(out_dir / POLICY_FILE): len(policy_rows)},
            "readme": str(readme)}
