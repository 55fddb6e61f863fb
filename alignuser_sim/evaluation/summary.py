"""The micro metrics of an eval folder (`eval.json`), computed from its stored decisions and ratings.

The numbers are always recomputed from the folder's part tables, never read from a cache of numbers, with
the bootstrap draws and seed the folder was evaluated with: the same folder always gives the same numbers.
A failed call's items are left out of the metrics and counted (`failed_pages`, `failed_calls`).
The reference policies (`evaluation/references.py`, no LLM) are rows like any policy's, marked `kind:
reference`; every LLM policy is also compared with the best of them, so a fidelity number is read against
what no model at all reaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignuser_sim import store
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.micro import DECISION_KEY, DECISIONS, RATING_KEY, RATINGS
from alignuser_sim.evaluation.references import REFERENCES
from alignuser_sim.metrics.bootstrap import bootstrap_many
from alignuser_sim.metrics.micro import (
    CLASSIFIERS,
    RATERS,
    classification_estimates,
    confusion,
    rating_estimates,
    rating_sums,
)
from alignuser_sim.store import EvalFolder

LLM_ORDER = ["prompt-only", "+lessons", "+world model", "alignuser", "adapter", "adapter+lessons",
             "adapter+world model", "alignuser+"]


def _ordered(values: Sequence[str], first: Sequence[str]) -> list[str]:
    """Policies in a stable order: the named ones first (prompt-only before alignuser), then the rest."""
    rank = {name: i for i, name in enumerate(first)}
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), v))


def _kind(policy: str) -> str:
    return "reference" if policy in REFERENCES else "llm"


def summarize(folder: Path, draws: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """The micro metrics of an eval folder, computed from its stored decisions (never from a cache of numbers).

    Users: those of the folder's latest eval run (plan.json); every policy and ratio stored for them.
    `policies`: the LLM policies, then the reference policies (`references`, evaluation/references.py); each
    row says its `kind`. `deltas`: each LLM policy minus the first (prompt-only when evaluated) and minus the
    best reference at that ratio (highest accuracy), paired over the same users; `rating_deltas` likewise
    for RMSE/MAE against the first policy and the best rating reference (lowest RMSE). `llm` counts the
    LLM policies' calls only. Bootstrap draws and seed default to those the folder was evaluated with
    (plan.json): the same folder always gives the same numbers."""
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
    names = [r["policy"] for r in decisions] + [r["policy"] for r in ratings]
    llms = _ordered([n for n in names if _kind(n) == "llm"], LLM_ORDER)
    references = _ordered([n for n in names if _kind(n) == "reference"], REFERENCES)
    policies = llms + references
    micro = []
    for policy in policies:
        rows = [r for r in decisions if r["policy"] == policy]
        for ratio in sorted({r["ratio"] for r in rows}):
            micro.append(_micro_row(policy, ratio, [r for r in rows if r["ratio"] == ratio], draws, seed))
    best: dict[int, tuple[str, float]] = {}
    for row in micro:  # the best reference per ratio: the highest accuracy (the first in REFERENCES on a tie)
        value = row["accuracy"]["value"]
        if row["kind"] == "reference" and value is not None and value > best.get(row["ratio"], ("", -1.0))[1]:
            best[row["ratio"]] = (row["policy"], value)
    deltas = []
    for policy in llms[1:]:
        for ratio in sorted({r["ratio"] for r in decisions if r["policy"] == policy}):
            deltas.append({**_delta_row(llms[0], policy, ratio, decisions, draws, seed), "against": "first policy"})
    for policy in llms:
        for ratio in sorted({r["ratio"] for r in decisions if r["policy"] == policy}):
            if ratio in best:
                deltas.append({**_delta_row(best[ratio][0], policy, ratio, decisions, draws, seed),
                               "against": "best reference"})
    rating_rows = [_rating_row(p, [r for r in ratings if r["policy"] == p], draws, seed) for p in policies
                   if any(r["policy"] == p for r in ratings)]
    scored = [r for r in rating_rows if r["kind"] == "reference" and r["rmse"]["value"] is not None]
    best_rating = min(scored, key=lambda r: r["rmse"]["value"])["policy"] if scored else None
    rated_llms = [p for p in llms if any(r["policy"] == p for r in ratings)]
    rating_deltas = [{**_rating_delta_row(rated_llms[0], p, ratings, draws, seed), "against": "first policy"}
                     for p in rated_llms[1:]]
    if best_rating is not None:
        rating_deltas += [{**_rating_delta_row(best_rating, p, ratings, draws, seed), "against": "best reference"}
                          for p in rated_llms]
    users = sorted({r["user_id"] for r in decisions} | {r["user_id"] for r in ratings})
    llm_decisions = [r for r in decisions if _kind(r["policy"]) == "llm"]
    llm_ratings = [r for r in ratings if _kind(r["policy"]) == "llm"]
    return {
        "folder": str(folder), "scenario": meta.get("scenario"), "dataset": meta.get("dataset"),
        "users": len(users), "bootstrap": draws, "seed": seed, "level": 0.95, "policies": policies,
        "references": references,
        "best_reference": {"decisions": {str(ratio): name for ratio, (name, _) in sorted(best.items())},
                           "ratings": best_rating},
        "micro": micro, "deltas": [d for d in deltas if d["users"]], "ratings": rating_rows,
        "rating_deltas": [d for d in rating_deltas if d["users"]],
        "llm": {
            "calls": len(llm_decisions) + len(llm_ratings),
            "from_cache": sum(r["from_cache"] for r in llm_decisions) + sum(r["from_cache"] for r in llm_ratings),
            "prompt_tokens": (sum(r["prompt_tokens"] for r in llm_decisions)
                              + sum(r["prompt_tokens"] for r in llm_ratings)),
            "completion_tokens": (sum(r["completion_tokens"] for r in llm_decisions)
                                  + sum(r["completion_tokens"] for r in llm_ratings)),
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
        "policy": policy, "kind": _kind(policy), "ratio": ratio, "users": len(per_user), "pages": len(rows),
        "items": items,
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


def _predictions(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    truth = np.array(row["truth"], dtype=np.float64)
    predicted = np.array([np.nan if p is None else p for p in row["predicted"]], dtype=np.float64)
    return truth, predicted


def _user_rating_sums(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """user -> rating_sums over the calls that did not fail, for users with at least one rated item."""
    out: dict[str, np.ndarray] = {}
    for r in rows:
        if not r["failure"]:
            sums = rating_sums(*_predictions(r))
            if sums[2]:
                out[r["user_id"]] = out.get(r["user_id"], np.zeros(3)) + sums
    return out


KL_SMOOTHING = 0.5  # added to each of the 5 bins of both histograms


def ratings_kl(truth: np.ndarray, predicted: np.ndarray) -> float | None:
    """KL(human || predicted) in nats between the rating histograms (rounded, clipped to 1..5) of the items
    both rated, each bin smoothed by +0.5. Low RMSE is easy for a mean predictor that puts every rating in
    one bin; this says whether the predicted ratings spread as the humans' do."""
    both = np.isfinite(truth) & np.isfinite(predicted)
    if not both.any():
        return None
    bins = np.arange(1, 6)

    def histogram(values: np.ndarray) -> np.ndarray:
        counts = (np.clip(np.rint(values), 1, 5)[:, None] == bins[None, :]).sum(axis=0) + KL_SMOOTHING
        return counts / counts.sum()

    p, q = histogram(truth[both]), histogram(predicted[both])
    return float(np.sum(p * np.log(p / q)))


def _rating_row(policy: str, rows: list[dict[str, Any]], draws: int, seed: int) -> dict[str, Any]:
    per_user = _user_rating_sums(rows)
    asked = sum(len(r["items"]) for r in rows)
    answered = int(sum(s[2] for s in per_user.values()))
    pairs = [_predictions(r) for r in rows if not r["failure"]]
    truth = np.concatenate([t for t, _ in pairs]) if pairs else np.zeros(0)
    predicted = np.concatenate([p for _, p in pairs]) if pairs else np.zeros(0)
    table = np.array([per_user[u] for u in sorted(per_user)]) if per_user else np.zeros((0, 3))
    estimates = rating_estimates(table, draws, seed)
    return {
        "policy": policy, "kind": _kind(policy), "users": len(per_user), "asked": asked, "rated": answered,
        "coverage": answered / asked if asked else None, "failed_calls": sum(1 for r in rows if r["failure"]),
        **{name: e.as_dict() for name, e in estimates.items()}, "kl": ratings_kl(truth, predicted),
    }


def _rating_delta_row(baseline: str, policy: str, ratings: list[dict[str, Any]], draws: int,
                      seed: int) -> dict[str, Any]:
    """RMSE and MAE of policy minus baseline, paired: the users both rated, resampled together."""
    a = _user_rating_sums([r for r in ratings if r["policy"] == baseline])
    b = _user_rating_sums([r for r in ratings if r["policy"] == policy])
    users = sorted(set(a) & set(b))
    table = np.array([np.concatenate([a[u], b[u]]) for u in users]) if users else np.zeros((0, 6))
    differences = {name: (lambda t, fn=fn: fn(t[:, 3:]) - fn(t[:, :3])) for name, fn in RATERS.items()}
    out: dict[str, Any] = {"policy": policy, "baseline": baseline, "users": len(users)}
    out.update({name: e.as_dict() for name, e in bootstrap_many(table, differences, draws, seed).items()})
    return out


def write_summary(folder: Path, summary: dict[str, Any]) -> Path:
    path = EvalFolder(folder).summary
    store.write_json(path, summary)
    return path
