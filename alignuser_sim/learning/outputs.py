"""What a learning folder holds besides its journal, and how each file is made from the journal.

    journal.jsonl                 the record of everything produced (`journal.py`)
    tastes.parquet                LLM-written taste text per persona (read by `agent.policy.load_tastes`)
    transitions.parquet           each learned transition's actions with their true outcomes and hint lines
                                  (read by `agent.world_hints.load_world_model_context`)
    worldmodel_predictions.parquet  the world model's predictions and their scores
    reflections.parquet           each reflection: reasoning, mistakes, lessons
    lessons.parquet               the lesson memories (`agent.memory`)
    summary.json                  what the last `learn` reports
    worldmodel_eval.json          what the last `learn worldmodel` reports

The Parquet files are views of the journal, rewritten whole after every run (`consolidate`), so they never
disagree with it. The files the simulation's agents read are named on the agent's side.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from alignuser_sim import store
from alignuser_sim.agent.memory import LESSONS_FILE, build_memory, write_memories
from alignuser_sim.agent.policy import TASTES_FILE
from alignuser_sim.agent.world_hints import TRANSITIONS_FILE
from alignuser_sim.learning.journal import Journal, action_ids
from alignuser_sim.learning.world_model import SCORE_KEYS, mean_scores
from alignuser_sim.store import LearningFolder

PREDICTIONS_FILE = LearningFolder.PREDICTIONS
REFLECTIONS_FILE = LearningFolder.REFLECTIONS
SUMMARY_FILE = LearningFolder.SUMMARY
WORLD_MODEL_EVAL_FILE = LearningFolder.WORLD_MODEL_EVAL

_STRINGS = pa.list_(pa.string())
TRANSITIONS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("step", pa.int32()), ("session", pa.int32()), ("page", pa.int32()),
    ("action_id", pa.string()), ("items", _STRINGS), ("watched", _STRINGS), ("ratings", pa.list_(pa.float32())),
    ("action", pa.string()), ("next_items", _STRINGS), ("next_genres", _STRINGS), ("continues", pa.bool_()),
    ("hits", pa.int32()), ("hint", pa.string()), ("hint_genres", _STRINGS),
])
PREDICTIONS_SCHEMA = pa.schema([
    ("kind", pa.string()), ("examples", pa.int32()), ("user_id", pa.string()), ("step", pa.int32()),
    ("action_id", pa.string()), ("candidates", _STRINGS), ("pred_items", _STRINGS), ("pred_genres", _STRINGS),
    ("pred_continues", pa.bool_()), ("failure", pa.string()), *[(k, pa.float64()) for k in SCORE_KEYS],
])
REFLECTIONS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("step", pa.int32()), ("alternatives", pa.int32()), ("skipped", pa.string()),
    ("failure", pa.string()), ("reasoning", pa.string()), ("mistakes", pa.string()),
    ("lessons", pa.list_(pa.struct([("text", pa.string()), ("tag", pa.string())]))), ("dropped", pa.int32()),
])


def consolidate(journal: Journal, folder: Path) -> None:
    """The journal as Parquet files (rewritten whole: they are views of the journal)."""
    tastes = journal.of_kind("taste")
    store.write_parquet(pa.table({"user_id": pa.array([r["user_id"] for r in tastes], pa.string()),
                                   "taste": pa.array([r["taste"] for r in tastes], pa.string()),
                                   "failure": pa.array([r["failure"] for r in tastes], pa.string())}),
                         folder / TASTES_FILE)

    rows: list[dict[str, Any]] = []
    for r in journal.of_kind("counterfactuals"):
        for n, (action, truth) in enumerate(zip(r["actions"], r["truths"], strict=True)):
            rows.append({"user_id": r["user_id"], "step": r["step"], "session": r["session"], "page": r["page"],
                         "action_id": action_ids(len(r["actions"]))[n], "items": r["items"],
                         "watched": action["watched"], "ratings": action["ratings"], "action": action["action"],
                         "next_items": truth["items"], "next_genres": truth["genres"],
                         "continues": truth["continues"], "hits": truth["hits"], "hint": r["hints"][n],
                         "hint_genres": r["hint_genres"][n]})
    store.write_parquet(pa.Table.from_pylist(rows, schema=TRANSITIONS_SCHEMA), folder / TRANSITIONS_FILE)

    rows = []
    for kind in sorted({k for k, _, _ in journal.records if k == "worldmodel" or k.startswith("wm_eval:")}):
        for r in journal.of_kind(kind):
            for n, action_id in enumerate(r["action_ids"]):
                pred, sc = r["predicted"][n], r["scores"][n]
                rows.append({"kind": kind, "examples": r["examples"], "user_id": r["user_id"], "step": r["step"],
                             "action_id": action_id, "candidates": r["candidates"],
                             "pred_items": pred["items"] if pred else None,
                             "pred_genres": pred["genres"] if pred else None,
                             "pred_continues": pred["continues"] if pred else None, "failure": r["failure"],
                             **{key: (sc[key] if sc else None) for key in SCORE_KEYS}})
    store.write_parquet(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA), folder / PREDICTIONS_FILE)

    rows = [{k: r.get(k) for k in REFLECTIONS_SCHEMA.names} for r in journal.of_kind("reflection")]
    store.write_parquet(pa.Table.from_pylist(rows, schema=REFLECTIONS_SCHEMA), folder / REFLECTIONS_FILE)


def write_lessons(journal: Journal, folder: Path, cap: int, embedder: str) -> int:
    """Every persona's lesson memory, rebuilt from all its reflections (oldest transition first)."""
    by_user: dict[str, list[tuple[str, str]]] = {}
    for r in journal.of_kind("reflection"):  # sorted by (user, step)
        by_user.setdefault(r["user_id"], []).extend((x["text"], x["tag"]) for x in r["lessons"])
    memories = [build_memory(uid, lessons, cap, embedder) for uid, lessons in sorted(by_user.items())]
    return write_memories(memories, folder / LESSONS_FILE, embedder)


def summarize(journal: Journal, users: list[str], transitions_done: int, retry_later: Counter, llm: dict[str, Any],
              wall_s: float, lessons: int, embedder: str) -> dict[str, Any]:
    """What `learn` reports: this run's calls and time; the folder's transitions, failures, lessons, scores."""
    wanted = set(users)

    def mine(kind: str) -> list[dict[str, Any]]:
        return [r for r in journal.of_kind(kind) if r["user_id"] in wanted]

    cfs, wms, refl, tastes = mine("counterfactuals"), mine("worldmodel"), mine("reflection"), mine("taste")
    failures: Counter = Counter()
    for r in cfs:
        failures.update(f"counterfactual:{f}" for f in r["failures"])
    failures.update(f"worldmodel:{r['failure']}" for r in wms if r["failure"])
    failures.update(f"reflection:{r['failure']}" for r in refl if r["failure"])
    failures.update(f"taste:{r['failure']}" for r in tastes if r["failure"])
    failures.update(f"retry_later:{k}" for k in retry_later.elements())
    complete = ({(r["user_id"], r["step"]) for r in cfs} & {(r["user_id"], r["step"]) for r in wms}
                & {(r["user_id"], r["step"]) for r in refl})
    human = [r["scores"][0] for r in wms]
    alternatives = [s for r in wms for s in r["scores"][1:]]
    calls = llm.get("calls", 0)
    return {
        "personas": len(users),
        "transitions": len(complete),
        "transitions_this_run": transitions_done,
        "llm_calls_this_run": calls,
        "llm_requests_this_run": llm.get("requests", 0),
        "llm_retries_this_run": llm.get("retries", {}),
        "cache_hits_this_run": llm.get("cache_hits", 0),
        "calls_per_persona_this_run": round(calls / len(users), 2) if users else 0,
        "prompt_tokens_this_run": llm.get("prompt_tokens", 0),
        "completion_tokens_this_run": llm.get("completion_tokens", 0),
        "wall_s": round(wall_s, 1),
        "tastes_written": sum(1 for r in tastes if r["taste"]),
        "alternatives_sampled": sum(r["samples"] for r in cfs),
        "alternatives_distinct": sum(len(r["actions"]) - 1 for r in cfs),
        "alternatives_same_as_human": sum(r["same_as_human"] for r in cfs),
        "reflections_skipped": sum(1 for r in refl if r["skipped"]),
        "lessons_raw": sum(len(r["lessons"]) for r in refl),
        "lessons_dropped": sum(r["dropped"] for r in refl),
        "lessons_written": lessons,
        "embedder": embedder,
        "failures": dict(sorted(failures.items())),
        "journal_bad_lines": journal.bad_lines,
        "worldmodel_human": mean_scores(human),
        "worldmodel_alternatives": mean_scores(alternatives),
    }
