"""Fine-tuning data from learning: chat JSONL in the "messages" format (OpenAI fine-tuning, TRL's SFTTrainer).

Two files, each line `{"messages": [system, user, assistant]}` with the assistant turn a JSON reply in the
exact schema the simulator asks for at run time, so a model trained on it answers the same prompts:

- `worldmodel_sft.jsonl` (world-model pretraining): state + action -> next state. The prompt is the
  world-model prompt of one action without in-context examples; the reply is the TRUE next state from the
  recommender. No LLM is involved, so every human page of the population's training rollouts gives one
  example (`--max-pages` caps them per persona), plus every counterfactual action learning sampled.
- `policy_sft.jsonl` (policy learning): state + persona -> reasoning + human action. The prompt is the
  persona agent's own prompt (prompt-only: what was learned is meant to go into the weights); the reply is
  the human's decision on the page in the scenario's decision format (`policy.reasoning`: a `PageDecision`
  for `full`, the compact reply by page position for `brief` / `none`), its thought (`full`, `brief`) the
  first-person reasoning that reflection wrote for that transition, cut to the format's length. Only
  reflected transitions have one, so only they are exported (for `none` too, so the formats' files hold
  the same pages).

A README.md beside them says how to train a LoRA adapter and serve it with vLLM (`--enable-lora
--lora-modules NAME=ADAPTER`); see docs/learning.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignuser_sim import store
from alignuser_sim.agent.decision import FULL, Decision, DecisionFormat, clip_thought, decision_format
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.agent.policy import PolicySetup, load_tastes
from alignuser_sim.config import Scenario
from alignuser_sim.core import PURPOSE_EXPORT_PAGES, Action, ItemView, NextState, user_rng
from alignuser_sim.errors import UserError
from alignuser_sim.learning.inputs import prepare
from alignuser_sim.learning.journal import JOURNAL_FILE, Journal
from alignuser_sim.learning.world_model import Question, candidate_items, prediction_messages

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


def _chat(messages: list[dict[str, str]], reply: str) -> dict[str, Any]:
    return {"messages": [*messages, {"role": "assistant", "content": reply}]}


def _rating(value: float | None) -> int | None:
    if value is None:
        return None
    rating = int(round(value))
    return rating if 1 <= rating <= 5 else None


def human_decision(page: list[ItemView], action: Action, thought: str, fmt: DecisionFormat = FULL) -> BaseModel:
    """The human's action on a page as the reply the persona agent is asked for, in its decision format (no
    feelings: the human data has none; the thought cut to the format's length, dropped where it has none)."""
    decision = Decision(ratings={i: _rating(r) for i, r in action.watched}, feelings={},
                        thought=clip_thought(thought, fmt.thought_max) if fmt.thought_max else None,
                        action="exit" if action.exit else "next_page")
    return fmt.to_reply(decision, page)


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
    views, k, history_size = inputs.views, inputs.k, inputs.history_size

    wm_rows: list[dict[str, Any]] = []
    for uid in inputs.users:
        text = personas[uid].describe()
        steps = range(len(inputs.steps[uid]))
        if max_pages is not None and len(steps) > max_pages:
            rng = user_rng(scenario.seed, uid, PURPOSE_EXPORT_PAGES)
            steps = sorted(int(s) for s in rng.choice(len(steps), size=max_pages, replace=False))
        pairs: list[tuple[int, Action, NextState | None]] = [(s, inputs.human_action(uid, s), None) for s in steps]
        for s in range(len(inputs.steps[uid])):
            record = journal.get("counterfactuals", uid, s)
            if record is not None:
                pairs += [(s, Action.from_dict(a), NextState.from_dict(t))
                          for a, t in zip(record["actions"][1:], record["truths"][1:], strict=True)]
        for s, action, truth in pairs:
            state = inputs.state(uid, s)
            truth = truth if truth is not None and truth.near else inputs.truth(state, action, near=k)
            candidates = candidate_items([truth], state, k, inputs.catalogue_ids, scenario.seed)
            question = Question.build(state, 1, candidates, k, views)  # the numbered lists learning asks with
            messages = prediction_messages(text, state, [action], question, views, history_size=history_size)
            wm_rows.append(_chat(messages, question.answer([truth]).model_dump_json()))

    policy_rows: list[dict[str, Any]] = []
    fmt = decision_format(scenario.policy.reasoning)
    for record in journal.of_kind("reflection"):
        uid, s = record["user_id"], record["step"]
        if uid not in personas or not record.get("reasoning") or s >= len(inputs.steps[uid]):
            continue
        state = inputs.state(uid, s)
        history = [(views[i].title if i in views else i, _rating(r)) for i, r in state.history]
        agent = PersonaAgent(personas[uid], seed=scenario.seed, history=history, history_size=history_size,
                             decision_format=fmt)
        page = [views.get(i) or ItemView(i, f"item {i}") for i in state.page]
        decision = human_decision(page, inputs.human_action(uid, s), record["reasoning"], fmt)
        policy_rows.append(_chat(agent.messages(state.page_no, page), decision.model_dump_json()))

    _jsonl(out_dir / WORLD_MODEL_FILE, wm_rows)
    _jsonl(out_dir / POLICY_FILE, policy_rows)
    readme = out_dir / "README.md"
    readme.write_text(README.format(scenario=scenario.name, wm=WORLD_MODEL_FILE, policy=POLICY_FILE,
                                    wm_n=len(wm_rows), policy_n=len(policy_rows)))
    return {"files": {str(out_dir / WORLD_MODEL_FILE): len(wm_rows), str(out_dir / POLICY_FILE): len(policy_rows)},
            "readme": str(readme)}
