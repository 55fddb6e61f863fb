"""Recommender ranking agreement (`alignuser-sim compare`): simulate one population against several
recommenders and check whether the simulated users order them as the offline metrics do.

A compare folder holds one simulation run per recommender (`<folder>/<algorithm>/`, ordinary run folders,
each resumable), `offline.parquet` (per-user Recall@K and NDCG@K of each algorithm on the recommenders'
offline split, `evaluation/offline.py`), `compare_plan.json` and, once summarized, `compare.json`.
The simulations themselves are run by a caller-given function (the CLI passes one that runs them on Ray:
this module never imports Ray), all against one LLM server.

Simulated outcomes, per user, from the events of pages that got a decision (a failed LLM call is no
decision), then averaged over users:

- watch_rate: watched items / shown items;
- mean_rating: mean rating of the watched items that have a rating (users with none are left out);
- session_length: pages the user saw before leaving or reaching the page cap (users whose session was
  ended by a failed call are left out);
- satisfaction: the share of the user's pages on which they watched at least one item they rated 4 or 5
  (a page that pleased).

Each outcome ranks the recommenders (higher is better); so do Recall@K and NDCG@K. Agreement is Kendall's
tau-b per (offline metric, outcome) pair with a bootstrap interval (`metrics/ranking.py`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alignuser_sim import store
from alignuser_sim.config import PolicyConfig, Scenario, dump_scenario, load_scenario
from alignuser_sim.errors import UserError
from alignuser_sim.metrics.bootstrap import bootstrap_many
from alignuser_sim.metrics.ranking import ranks, tau_estimate
from alignuser_sim.store import CompareFolder, RunFolder

OUTCOMES = ("watch_rate", "mean_rating", "session_length", "satisfaction")
OFFLINE = ("recall", "ndcg")
PLEASED = 4  # a rating at or above this pleases
OFFLINE_SCHEMA = pa.schema([
    pa.field("algorithm", pa.string(), nullable=False),
    pa.field("k", pa.int32(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("recall", pa.float64(), nullable=False),
    pa.field("ndcg", pa.float64(), nullable=False),
])

Simulate = Callable[[Scenario | None, Path], None]  # (scenario to start, or None to resume; its run folder)


def variant(scenario: Scenario, algorithm: str, endpoints: Sequence[str] | None = None) -> Scenario:
    """The scenario with another recommender (the scenario's params only for its own algorithm)."""
    from alignuser_sim.recommenders import config_for

    copy = scenario.model_copy(deep=True)
    copy.recommender = config_for(scenario, algorithm)  # built-in, plug-in or http
    if endpoints:
        copy.llm.endpoints = list(endpoints)
    return copy


def run_status(run_dir: Path) -> str:
    """absent, running (started, not finished: resume it) or complete."""
    return RunFolder(run_dir).status()


def point_at(run_dir: Path, endpoints: Sequence[str] | None) -> None:
    """Aim an interrupted run at this compare's LLM server (the one it started with is gone)."""
    if not endpoints:
        return
    path = RunFolder(run_dir).scenario
    scenario = load_scenario(path)
    scenario.llm.endpoints = list(endpoints)
    store.write_text(path, dump_scenario(scenario))


def fingerprint(scenario: Scenario) -> dict[str, Any]:
    """What the kept runs of a compare folder depend on: a change must not mix old runs with new ones."""
    dump = scenario.model_dump(mode="json")
    if dump["policy"]["history_size"] == PolicyConfig().history_size:
        del dump["policy"]["history_size"]  # a knob newer than the first folders: at its default it matches them
    if dump["policy"]["reasoning"] == PolicyConfig().reasoning:
        del dump["policy"]["reasoning"]  # likewise
    if not dump["policy"].get("rate_watched", False):
        dump["policy"].pop("rate_watched", None)  # likewise
    if dump["policy"].get("choice", "list") == "list":
        dump["policy"].pop("choice", None)  # likewise
    if dump["pages"].get("show_item_stats", True):
        dump["pages"].pop("show_item_stats", None)  # likewise
    if not dump["pages"].get("popularity_words", False):
        dump["pages"].pop("popularity_words", None)  # likewise
    if dump["dataset"].get("domain") is None:
        dump["dataset"].pop("domain", None)  # likewise (the dataset's own domain)
    return {key: dump[key] for key in ("seed", "dataset", "population", "pages", "policy")} | {
        "llm": {"model": dump["llm"]["model"], "sampling": dump["llm"]["sampling"]}}


def write_plan(folder: Path, scenario: Scenario, names: Sequence[str]) -> None:
    """Claim the folder for this setup (one written with another setup is refused) and record the
    recommenders, K and bootstrap draws the summary uses."""
    layout = CompareFolder(folder)
    mine = fingerprint(scenario)
    store.claim(layout.plan, mine, "a comparison")
    plan = {"scenario": scenario.name, "dataset": scenario.dataset.name, "recommenders": list(names),
            "k": scenario.eval.k, "bootstrap": scenario.eval.bootstrap, "seed": scenario.seed,
            "fingerprint": mine, "updated": time.time()}
    store.write_json(layout.plan, plan)
    store.write_text(layout.scenario, dump_scenario(scenario))


def simulate_all(scenario: Scenario, names: Sequence[str], folder: Path, simulate: Simulate,
                 endpoints: Sequence[str] | None = None,
                 on_start: Callable[[str, str], None] | None = None) -> None:
    """One run per recommender: complete ones are kept, interrupted ones resumed, missing ones started."""
    for name in names:
        run_dir = CompareFolder(folder).run(name).path
        status = run_status(run_dir)
        if status == "complete":
            continue
        if on_start:
            on_start(name, status)
        if status == "running":
            point_at(run_dir, endpoints)
            simulate(None, run_dir)
        else:
            simulate(variant(scenario, name, endpoints), run_dir)


# --- offline -----------------------------------------------------------------------------------------------


def offline_per_user(scenario: Scenario, names: Sequence[str], folder: Path,
                     on_fit: Callable[[str], None] | None = None) -> pa.Table:
    """Per-user Recall@K / NDCG@K of each algorithm, as `evaluation/offline.evaluate_offline` computes them
    (same split, same masking), kept per user for the bootstrap; cached in `offline.parquet`."""
    from alignuser_sim.data import load_dataset
    from alignuser_sim.evaluation.offline import offline_ranking, offline_split, per_user_recall_ndcg
    from alignuser_sim.recommenders import config_for

    k = scenario.eval.k
    path = CompareFolder(folder).offline
    table = pq.read_table(path, schema=OFFLINE_SCHEMA) if path.exists() else OFFLINE_SCHEMA.empty_table()
    done = {(a, kk) for a, kk in zip(table["algorithm"].to_pylist(), table["k"].to_pylist(), strict=True)}
    todo = [n for n in names if (n, k) not in done]
    if not todo:
        return table
    ds = load_dataset(scenario.dataset)
    split = offline_split(ds)
    users = sorted(split.test)
    parts = [table]
    for name in todo:
        if on_fit:
            on_fit(name)
        ranked, _, _ = offline_ranking(config_for(scenario, name), scenario.seed, split, ds.items, users, k)
        values = per_user_recall_ndcg(ranked, split, users, k)
        parts.append(pa.table({"algorithm": [name] * len(users), "k": [k] * len(users), "user_id": users,
                               "recall": values[:, 0], "ndcg": values[:, 1]}, schema=OFFLINE_SCHEMA))
        table = pa.concat_tables(parts)
        store.write_parquet(table, path)
        parts = [table]
    return table


# --- simulated outcomes -----------------------------------------------------------------------------------


def user_outcomes(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """user -> outcome -> value (NaN where undefined), from one run's event rows (module docstring)."""
    by_user: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_user.setdefault(row["agent_id"], []).append(row)
    out = {}
    for user, events in by_user.items():
        events.sort(key=lambda r: (r["session"], r["page"]))
        decided = [e for e in events if not e["failure"]]
        shown = sum(len(e["items"]) for e in decided)
        watched = sum(sum(e["watched"]) for e in decided)
        rated = [r for e in decided for w, r in zip(e["watched"], e["ratings"], strict=True) if w and r is not None]
        pleased = sum(any(w and r is not None and r >= PLEASED for w, r in zip(e["watched"], e["ratings"], strict=True))
                      for e in decided)
        out[user] = {
            "watch_rate": watched / shown if shown else np.nan,
            "mean_rating": float(np.mean(rated)) if rated else np.nan,
            "session_length": np.nan if events[-1]["failure"] else float(len(decided)),
            "satisfaction": pleased / len(decided) if decided else np.nan,
        }
    return out


def _mean_estimates(columns: dict[Any, np.ndarray], draws: int, seed: int) -> dict[Any, dict[str, float | None]]:
    """The user mean of each column (NaN left out) with its interval; one set of user resamples for all the
    columns (they hold the same users)."""
    names = list(columns)
    parts, statistics = [], {}
    for i, name in enumerate(names):
        values = columns[name]
        present = np.isfinite(values)
        parts += [np.where(present, values, 0.0), present.astype(np.float64)]
        statistics[name] = lambda t, i=i: np.where(t[:, 2 * i + 1] > 0, t[:, 2 * i] / np.maximum(t[:, 2 * i + 1], 1),
                                                   np.nan)
    per_user = np.column_stack(parts) if parts and len(parts[0]) else np.zeros((0, 2 * len(names)))
    return {name: e.as_dict() for name, e in bootstrap_many(per_user, statistics, draws, seed).items()}


def summarize_compare(folder: Path, draws: int | None = None) -> dict[str, Any]:
    """compare.json's content, computed from the runs' events and offline.parquet."""
    folder = Path(folder)
    layout = CompareFolder(folder)
    if not layout.exists():
        raise UserError(f"{folder}: not a compare folder (no compare_plan.json); run `alignuser-sim compare` first")
    plan = store.read_json(layout.plan)
    names, k, seed = plan["recommenders"], plan["k"], plan["seed"]
    draws = plan["bootstrap"] if draws is None else draws
    outcomes: dict[str, dict[str, dict[str, float]]] = {}
    failures: dict[str, int] = {}
    for name in names:
        run = layout.run(name)
        if not run.is_complete():
            raise UserError(f"{run.path}: simulation not complete; run `alignuser-sim compare` again to finish it")
        rows = pq.read_table(run.events, columns=["agent_id", "session", "page", "items", "watched", "ratings",
                                              "failure"]).to_pylist()
        outcomes[name] = user_outcomes(rows)
        failures[name] = sum(1 for r in rows if r["failure"])
    users = sorted(set.intersection(*(set(o) for o in outcomes.values()))) if outcomes else []
    sim = {o: np.array([[outcomes[n][u][o] for n in names] for u in users], dtype=np.float64).reshape(-1, len(names))
           for o in OUTCOMES}
    offline = pq.read_table(layout.offline, schema=OFFLINE_SCHEMA).to_pylist() if layout.offline.exists() else []
    off = {}
    for metric in OFFLINE:
        by_user: dict[str, dict[str, float]] = {}
        for r in offline:
            if r["k"] == k and r["algorithm"] in names:
                by_user.setdefault(r["user_id"], {})[r["algorithm"]] = r[metric]
        complete = sorted(u for u, v in by_user.items() if len(v) == len(names))
        off[f"{metric}@{k}"] = np.array([[by_user[u][n] for n in names] for u in complete],
                                        dtype=np.float64).reshape(-1, len(names))
    if any(len(v) == 0 for v in off.values()):
        raise UserError(f"{folder}: offline.parquet lacks some recommenders at K={k}; "
                        f"run `alignuser-sim compare` again")
    sim_means = _mean_estimates({(o, j): sim[o][:, j] for o in OUTCOMES for j in range(len(names))}, draws, seed)
    off_means = _mean_estimates({(m, j): t[:, j] for m, t in off.items() for j in range(len(names))}, draws, seed + 1)
    rows = []
    for j, name in enumerate(names):
        row: dict[str, Any] = {"recommender": name, "users": len(users), "failed_pages": failures[name]}
        row.update({o: sim_means[(o, j)] for o in OUTCOMES})
        row.update({m: off_means[(m, j)] for m in off})
        rows.append(row)
    rank_table = {o: ranks(np.array([r[o]["value"] if r[o]["value"] is not None else np.nan for r in rows])).tolist()
                  for o in (*OUTCOMES, *off)}
    taus = []
    for m, table in off.items():
        for o in OUTCOMES:
            est = tau_estimate(sim[o], table, draws, seed)
            taus.append({"offline": m, "outcome": o, **est.as_dict()})
    summary: dict[str, Any] = {
        "folder": str(folder), "scenario": plan.get("scenario"), "dataset": plan.get("dataset"),
        "policy": _policy_label(plan), "recommenders": names, "k": k, "bootstrap": draws, "seed": seed, "level": 0.95,
        "simulated_users": len(users), "offline_users": int(len(next(iter(off.values())))),
        "rows": rows, "ranks": rank_table, "tau": taus,
    }
    reference = reference_summary(folder, names)
    if reference is not None:
        summary["reference"] = reference
    return summary


# --- the no-LLM reference user ---------------------------------------------------------------------------


REFERENCE_DIR = "reference-popularity"  # inside a compare folder: the same compare with the popularity user


def reference_scenario(scenario: Scenario) -> Scenario:
    """The compare's scenario with the no-LLM popularity user as its policy (`agent/reference_policy.py`)."""
    from alignuser_sim.evaluation.cases import policy_variant

    return policy_variant(scenario, "popularity")


def prepare_reference(scenario: Scenario, names: Sequence[str], folder: Path) -> Path:
    """Claim `folder/reference-popularity` for the popularity user on the same recommenders, sharing the
    compare's offline table (the same split and K: no refit). Its runs need no LLM: seconds."""
    ref = Path(folder) / REFERENCE_DIR
    sc = reference_scenario(scenario)
    write_plan(ref, sc, names)
    if not CompareFolder(ref).offline.exists() and CompareFolder(folder).offline.exists():
        with store.replacing(CompareFolder(ref).offline) as tmp:
            shutil.copyfile(CompareFolder(folder).offline, tmp)
    offline_per_user(sc, names, ref)  # only what the copied table lacks
    return ref


def reference_summary(folder: Path, names: Sequence[str]) -> dict[str, Any] | None:
    """The popularity user's rows and taus on the same recommenders, when the compare ran it (else None)."""
    ref = Path(folder) / REFERENCE_DIR
    layout = CompareFolder(ref)
    if not layout.exists() or not all(layout.run(n).is_complete() for n in names):
        return None
    inner = summarize_compare(ref)
    if inner["recommenders"] != list(names):
        return None
    return {key: inner[key] for key in ("folder", "policy", "simulated_users", "rows", "ranks", "tau")}


def _policy_label(plan: dict[str, Any]) -> str | None:
    """The simulated users' policy (its table label), from the setup the folder was claimed with."""
    try:
        return PolicyConfig(**plan["fingerprint"]["policy"]).label
    except (KeyError, TypeError, ValueError):
        return None


def write_compare(folder: Path, summary: dict[str, Any]) -> Path:
    path = CompareFolder(folder).summary
    store.write_json(path, summary)
    return path
