"""The micro metrics of an eval folder (`eval.json`), computed from its stored decisions and ratings.

The numbers are always recomputed from the folder's part tables, never read from a cache of numbers, with
the bootstrap draws and seed the folder was evaluated with: the same folder always gives the same numbers.
A failed call's items are left out of the metrics and counted (`failed_pages`, `failed_calls`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignuser_sim import store
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.micro import DECISION_KEY, DECISIONS, RATING_KEY, RATINGS
from alignuser_sim.metrics.bootstrap import bootstrap_many
from alignuser_sim.metrics.micro import CLASSIFIERS, classification_estimates, confusion, rating_estimates, rating_sums
from alignuser_sim.store import EvalFolder


def _ordered(values: Sequence[str], first: Sequence[str]) -> list[str]:
    """Policies in a stable order: the named ones first (prompt-only before alignuser), then the rest."""
    rank = {name: i for i, name in enumerate(first)}
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), v))


def summarize(folder: Path, draws: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """The micro metrics of an eval folder, computed from its stored decisions (never from a cache of numbers).

    Users: those of the folder's latest eval run (plan.json); every policy and ratio stored for them.
    `deltas`: each policy minus the first (prompt-only when evaluated), paired over the same users.
    Bootstrap draws and seed default to those the folder was evaluated with (plan.json): the same folder
    always gives the same numbers."""
    folder = Path(folder)
    layout = EvalFolder(folder)
    if not layout.exists():
        raise UserError(f"{folder}: not an eval folder (no plan.json); run `alignuser-sim eval SCENARIO` first")
    meta = store.read_json(layout.plan)
    draws = meta.get("bootstrap", 1000) if draws is None else draws
    seed = meta.get("seed", 0) if seed is None else seed
    users_now = set(meta.get("users") or [])
    decisions = [r for r in store.read_parts(folder, EvalFolder.DECISIONS, DECISIONS, DECISION_KEY).to_pylist()
                 if not users_now or r["user_id"] in users_now]
    ratings = [r for r in store.read_parts(folder, EvalFolder.RATINGS, RATINGS, RATING_KEY).to_pylist()
               if not users_now or r["user_id"] in users_now]
    order = ["prompt-only", "+lessons", "+world model", "alignuser"]
    policies = _ordered([r["policy"] for r in decisions] + [r["policy"] for r in ratings], order)
    micro = []
    for policy in policies:
        rows = [r for r in decisions if r["policy"] == policy]
        for ratio in sorted({r["ratio"] for r in rows}):
            micro.append(_micro_row(policy, ratio, [r for r in rows if r["ratio"] == ratio], draws, seed))
    deltas = []
    for policy in policies[1:]:
        for ratio in sorted({r["ratio"] for r in decisions if r["policy"] == policy}):
            deltas.append(_delta_row(policies[0], policy, ratio, decisions, draws, seed))
    rating_rows = [_rating_row(p, [r for r in ratings if r["policy"] == p], draws, seed) for p in policies
                   if any(r["policy"] == p for r in ratings)]
    users = sorted({r["user_id"] for r in decisions} | {r["user_id"] for r in ratings})
    return {
        "folder": str(folder), "scenario": meta.get("scenario"), "dataset": meta.get("dataset"),
        "users": len(users), "bootstrap": draws, "seed": seed, "level": 0.95, "policies": policies,
        "micro": micro, "deltas": [d for d in deltas if d["users"]], "ratings": rating_rows,
        "llm": {
            "calls": len(decisions) + len(ratings),
            "from_cache": sum(r["from_cache"] for r in decisions) + sum(r["from_cache"] for r in ratings),
            "prompt_tokens": sum(r["prompt_tokens"] for r in decisions) + sum(r["prompt_tokens"] for r in ratings),
            "completion_tokens": (sum(r["completion_tokens"] for r in decisions)
                                  + sum(r["completion_tokens"] for r in ratings)),
        },
    }


def _micro_row(policy: str, ratio: int, rows: list[dict[str, Any]], draws: int, seed: int) -> dict[str, Any]:
    per_user: dict[str, np.ndarray] = {}
    failed_pages = failed_items = items = 0
    for r in rows:
        if r["failure"]:
            failed_pages += 1
            failed_items += len(r["items"])
            continue
        items += len(r["items"])
        c = confusion(np.array(r["positive"], bool), np.array(r["watched"], bool))
        per_user[r["user_id"]] = per_user.get(r["user_id"], np.zeros(4)) + c
    table = np.array([per_user[u] for u in sorted(per_user)]) if per_user else np.zeros((0, 4))
    estimates = classification_estimates(table, draws, seed)
    totals = table.sum(axis=0) if len(table) else np.zeros(4)
    return {
        "policy": policy, "ratio": ratio, "users": len(per_user), "pages": len(rows), "items": items,
        "positives": int(totals[0] + totals[2]), "negatives": int(totals[1] + totals[3]),
        "watched": int(totals[0] + totals[1]), "failed_pages": failed_pages, "failed_items": failed_items,
        **{name: e.as_dict() for name, e in estimates.items()},
    }


def _user_confusion(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for r in rows:
        if not r["failure"]:
            c = confusion(np.array(r["positive"], bool), np.array(r["watched"], bool))
            out[r["user_id"]] = out.get(r["user_id"], np.zeros(4)) + c
    return out


def _delta_row(baseline: str, policy: str, ratio: int, decisions: list[dict[str, Any]], draws: int,
               seed: int) -> dict[str, Any]:
    """policy minus baseline, paired: on the users both have, each draw resamples the same users for both.
    A user with a failed page in either policy is compared on what both decided."""
    a = _user_confusion([r for r in decisions if r["policy"] == baseline and r["ratio"] == ratio])
    b = _user_confusion([r for r in decisions if r["policy"] == policy and r["ratio"] == ratio])
    users = sorted(set(a) & set(b))
    table = np.array([np.concatenate([a[u], b[u]]) for u in users]) if users else np.zeros((0, 8))
    out: dict[str, Any] = {"policy": policy, "baseline": baseline, "ratio": ratio, "users": len(users)}
    differences = {name: (lambda t, fn=fn: fn(t[:, 4:]) - fn(t[:, :4])) for name, fn in CLASSIFIERS.items()}
    out.update({name: e.as_dict() for name, e in bootstrap_many(table, differences, draws, seed).items()})
    return out


def _rating_row(policy: str, rows: list[dict[str, Any]], draws: int, seed: int) -> dict[str, Any]:
    per_user, asked, answered, failed = [], 0, 0, 0
    for r in rows:
        asked += len(r["items"])
        if r["failure"]:
            failed += 1
            continue
        truth = np.array(r["truth"], dtype=np.float64)
        predicted = np.array([np.nan if p is None else p for p in r["predicted"]], dtype=np.float64)
        sums = rating_sums(truth, predicted)
        answered += int(sums[2])
        if sums[2]:
            per_user.append(sums)
    table = np.array(per_user) if per_user else np.zeros((0, 3))
    estimates = rating_estimates(table, draws, seed)
    return {
        "policy": policy, "users": len(per_user), "asked": asked, "rated": answered,
        "coverage": answered / asked if asked else None, "failed_calls": failed,
        **{name: e.as_dict() for name, e in estimates.items()},
    }


def write_summary(folder: Path, summary: dict[str, Any]) -> Path:
    path = EvalFolder(folder).summary
    store.write_json(path, summary)
    return path
