"""Micro evaluation (`alignuser-sim eval`): does the agent pick, and rate, what its human did?

Protocol (Agent4Rec's user-taste alignment, as SimUSER and AlignUSER also report it; docs/evaluation.md):
for each evaluated user, positives are up to `eval.positives_per_user` items the human interacted with in
the held-out split (`data/holdout.split_dataset`: learning never saw them), negatives are items the human
never interacted with at all, `ratio` negatives per positive (1:1, 1:2, 1:3, 1:9). The items are shuffled
and cut into pages of at most `eval.items_per_page` (near-equal sizes); the agent decides each page with ONE
structured call (`PersonaAgent.decide`, the simulation's own call) and "watched" is its prediction of "the
human interacted with it". Separately, the agent rates up to `eval.positives_per_user` held-out items that
carry a real rating, all in one call per user, for RMSE / MAE.

Determinism: each user's draws come from generators seeded by (scenario seed, crc32(user id), purpose), so
a user's pages never depend on the other users or on which ratios are evaluated: negatives are one
fixed draw of 9 x positives_per_user items and ratio r uses its first r x positives, so the 1:1 negatives
are a subset of the 1:3 ones. Agents keep no history between pages (each page is judged on its own), so
the order pages are decided in changes nothing and a re-run asks the completion cache the same questions.

Resumable: every decision is written as it comes (Parquet parts, see `PartStore`), keyed by
(policy, ratio, user, page) and (policy, user) for ratings; a re-run decides only what is missing. A failed
call is stored with its failure: its items count as failures, are left out of the metrics and reported.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from alignuser_sim import store
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.config import PolicyConfig, Scenario, dump_scenario
from alignuser_sim.core import (
    PURPOSE_EVAL_NEGATIVES,
    PURPOSE_EVAL_PAGES,
    PURPOSE_EVAL_POSITIVES,
    PURPOSE_EVAL_RATINGS,
    Catalogue,
    call_seed,
    user_rng,
)
from alignuser_sim.data import Dataset, load_dataset
from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.data.personas import build_personas
from alignuser_sim.data.population import select_population
from alignuser_sim.errors import UserError
from alignuser_sim.llm.prompts import build_messages
from alignuser_sim.llm.schemas import json_schema_for
from alignuser_sim.metrics.bootstrap import bootstrap_many
from alignuser_sim.metrics.micro import CLASSIFIERS, classification_estimates, confusion, rating_estimates, rating_sums
from alignuser_sim.simulation.events import CALL_FIELDS, merge_parts, part_files

MAX_RATIO = 9  # the largest ratio the config allows: negatives are always drawn for it
PLAN_VERSION = 1

# --- policies --------------------------------------------------------------------------------------------

POLICY_NAMES = {
    "prompt-only": {"kind": "prompt-only", "lessons": None, "world_model": None},
    "alignuser": {"kind": "alignuser", "lessons": None, "world_model": None},
    "+lessons": {"kind": "alignuser", "lessons": True, "world_model": False},
    "+world-model": {"kind": "alignuser", "lessons": False, "world_model": True},
}
POLICY_ALIASES = {"lessons": "+lessons", "world-model": "+world-model", "+world model": "+world-model",
                  "prompt_only": "prompt-only"}


def policy_variant(scenario: Scenario, name: str) -> Scenario:
    """The scenario with its policy replaced by the named one (retrieval sizes kept)."""
    key = POLICY_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in POLICY_NAMES:
        raise UserError(f"--policies: unknown policy '{name}' (choose from {', '.join(POLICY_NAMES)})")
    variant = scenario.model_copy(deep=True)
    variant.policy = PolicyConfig(**POLICY_NAMES[key], lessons_k=scenario.policy.lessons_k,
                                  world_model_k=scenario.policy.world_model_k)
    return variant


# --- the cases: who is asked about what -------------------------------------------------------------------


@dataclass
class UserCase:
    user_id: str
    positives: list[str]
    negatives: list[str]  # MAX_RATIO x positives_per_user at most, in draw order
    rated: list[tuple[str, float]]  # held-out items with the human's rating

    def page_items(self, ratio: int, items_per_page: int, seed: int) -> list[tuple[list[str], list[bool]]]:
        """The pages of one ratio: (item ids, is positive) each, shuffled, near-equal sizes."""
        items = self.positives + self.negatives[: ratio * len(self.positives)]
        labels = [True] * len(self.positives) + [False] * (len(items) - len(self.positives))
        order = user_rng(seed, self.user_id, PURPOSE_EVAL_PAGES + ratio).permutation(len(items))
        n_pages = max(1, -(-len(items) // items_per_page))
        return [([items[i] for i in chunk], [labels[i] for i in chunk])
                for chunk in np.array_split(order, n_pages) if len(chunk)]


def build_cases(ds: Dataset, heldout: pa.Table, users: Sequence[str], positives_per_user: int,
                seed: int) -> tuple[list[UserCase], int]:
    """One case per user with at least one held-out interaction; returns (cases, users skipped)."""
    wanted = pa.array(list(users), pa.string())
    held = heldout.filter(pc.is_in(heldout["user_id"], value_set=wanted))
    held_items: dict[str, list[str]] = {}
    held_rated: dict[str, dict[str, float]] = {}
    for uid, item, rating in zip(held["user_id"].to_pylist(), held["item_id"].to_pylist(),
                                 held["rating"].to_pylist(), strict=True):
        held_items.setdefault(uid, [])
        if item not in held_items[uid]:
            held_items[uid].append(item)
        if rating is not None:
            held_rated.setdefault(uid, {})[item] = float(rating)  # the last rating of an item counts
    everything = ds.interactions.filter(pc.is_in(ds.interactions["user_id"], value_set=wanted))
    seen: dict[str, set[str]] = {}
    for uid, item in zip(everything["user_id"].to_pylist(), everything["item_id"].to_pylist(), strict=True):
        seen.setdefault(uid, set()).add(item)
    catalogue = ds.items["item_id"].to_pylist()
    code = {item: i for i, item in enumerate(catalogue)}
    cases, skipped = [], 0
    for uid in users:
        items = held_items.get(uid)
        if not items:
            skipped += 1
            continue
        pos_rng, neg_rng, rate_rng = (user_rng(seed, uid, p) for p in (
            PURPOSE_EVAL_POSITIVES, PURPOSE_EVAL_NEGATIVES, PURPOSE_EVAL_RATINGS))
        picked = pos_rng.choice(len(items), size=min(positives_per_user, len(items)), replace=False)
        positives = [items[i] for i in sorted(picked)]
        unseen = np.ones(len(catalogue), dtype=bool)
        unseen[[code[i] for i in seen.get(uid, ()) if i in code]] = False
        pool = np.flatnonzero(unseen)
        n_neg = min(MAX_RATIO * positives_per_user, len(pool))
        negatives = [catalogue[c] for c in pool[neg_rng.choice(len(pool), size=n_neg, replace=False)]]
        rated_items = sorted(held_rated.get(uid, {}).items())
        take = rate_rng.choice(len(rated_items), size=min(positives_per_user, len(rated_items)), replace=False)
        rated = [rated_items[i] for i in sorted(take)]
        cases.append(UserCase(uid, positives, negatives, rated))
    return cases, skipped


# --- storage ---------------------------------------------------------------------------------------------

DECISIONS = pa.schema([
    pa.field("policy", pa.string(), nullable=False),
    pa.field("ratio", pa.int32(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("page", pa.int32(), nullable=False),
    pa.field("items", pa.list_(pa.string()), nullable=False),
    pa.field("positive", pa.list_(pa.bool_()), nullable=False),
    pa.field("watched", pa.list_(pa.bool_()), nullable=False),
    *CALL_FIELDS,
])
DECISION_KEY = ("policy", "ratio", "user_id", "page")
RATINGS = pa.schema([
    pa.field("policy", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("items", pa.list_(pa.string()), nullable=False),
    pa.field("truth", pa.list_(pa.float32()), nullable=False),
    pa.field("predicted", pa.list_(pa.int8()), nullable=False),  # null: the agent gave no rating
    *CALL_FIELDS,
])
RATING_KEY = ("policy", "user_id")


class PartStore:
    """Rows written as they come: buffered, one Parquet part per flush (written whole, then renamed), merged
    into `<name>.parquet` by `finalize`. Reading merges the file and the parts, first row per key wins."""

    def __init__(self, folder: Path, name: str, schema: pa.Schema, key: Sequence[str], flush_s: float = 1.0):
        self.folder, self.name, self.schema, self.key, self.flush_s = Path(folder), name, schema, tuple(key), flush_s
        self.parts = self.folder / name
        self.parts.mkdir(parents=True, exist_ok=True)
        self.writer = uuid.uuid4().hex[:8]
        self._n = 0
        self._buffer: list[dict[str, Any]] = []
        self._last = time.monotonic()
        self.keys = {self.row_key(r) for r in self.read().select(list(self.key)).to_pylist()}

    def row_key(self, row: dict[str, Any]) -> tuple:
        return tuple(row[k] for k in self.key)

    def read(self) -> pa.Table:
        return read_store(self.folder, self.name, self.schema, self.key)

    def add(self, row: dict[str, Any]) -> None:
        key = self.row_key(row)
        if key in self.keys:
            return
        self.keys.add(key)
        self._buffer.append(row)
        if time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._buffer:
            return
        self._n += 1
        path = self.parts / f"part-{self.writer}-{self._n:06d}.parquet"
        store.write_parquet(pa.Table.from_pylist(self._buffer, schema=self.schema), path)
        self._buffer = []

    def finalize(self) -> pa.Table:
        self.flush()
        table = self.read()
        store.write_parquet(table, self.folder / f"{self.name}.parquet")
        for part in self.parts.glob("part-*.parquet"):
            part.unlink()
        return table


def read_store(folder: Path, name: str, schema: pa.Schema, key: Sequence[str]) -> pa.Table:
    folder = Path(folder)
    files = [folder / f"{name}.parquet"] if (folder / f"{name}.parquet").exists() else []
    return merge_parts(files + part_files(folder / name), schema, key)


# --- the plan ----------------------------------------------------------------------------------------------


def fingerprint(scenario: Scenario) -> dict[str, Any]:
    """What must not change between two runs writing one eval folder (else their decisions would mix).

    The population, `eval.users`, the ratios and the policies may change: a user's pages depend only on
    the seed, the data and these settings, so a larger population or a new ratio reuses what is done."""
    dump = scenario.model_dump(mode="json")
    return {
        "version": PLAN_VERSION, "seed": scenario.seed, "dataset": dump["dataset"],
        "eval": {k: dump["eval"][k] for k in ("positives_per_user", "items_per_page")},
        "llm": {"model": dump["llm"]["model"], "sampling": dump["llm"]["sampling"]},
    }


def learning_digest(scenario: Scenario) -> str:
    """Names, sizes and times of the learning folder's files ("none" without one): decisions stored under a
    policy were made with this learning (prompt-only too: it takes the LLM-written taste text from there),
    and must not be mixed with another's."""
    folder = scenario.learning_dir()
    if not folder.is_dir():
        return "none"
    digest = hashlib.sha1()
    for path in sorted(folder.rglob("*.parquet")):  # what agents read; not the journal, logs or lock files
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(hashlib.sha1(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


@dataclass
class EvalPlan:
    scenario: Scenario
    folder: Path
    dataset: Dataset
    cases: list[UserCase]
    skipped_users: int
    policies: dict[str, PolicySetup]  # label -> setup
    ratios: list[int]
    ratings: bool = True
    personas: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_page(self) -> int:
        return self.scenario.eval.items_per_page


def plan_eval(scenario: Scenario, folder: Path, policies: Sequence[str] | None = None,
              ratings: bool = True) -> EvalPlan:
    """Load the data, pick users and items, load each policy's learning (a missing folder is an error before
    anything is written), and claim the eval folder (an existing one must hold the same setup)."""
    names = list(policies) if policies else [scenario.policy.label]
    variants = {}
    for name in names:
        variant = policy_variant(scenario, name) if policies else scenario
        variants.setdefault(variant.policy.label, variant)
    ds = load_dataset(scenario.dataset)
    _, heldout = split_dataset(ds)
    population = select_population(ds.interactions, scenario.population, scenario.population_seed)
    held_users = set(heldout["user_id"].to_pylist())
    users = [u for u in population if u in held_users]
    skipped = len(population) - len(users)
    if scenario.eval.users is not None:
        users = users[: scenario.eval.users]
    if not users:
        raise UserError(f"{scenario.name}: no user of the population has held-out interactions to evaluate")
    setups = {label: PolicySetup.for_scenario(variant, users) for label, variant in variants.items()}
    cases, more_skipped = build_cases(ds, heldout, users, scenario.eval.positives_per_user, scenario.seed)
    personas = {p.user_id: p for p in build_personas(ds, users)}  # as the simulation and learning build them
    claim_folder(folder, scenario, [c.user_id for c in cases],
                 {label: learning_digest(variant) for label, variant in variants.items()})
    return EvalPlan(scenario, folder, ds, cases, skipped + more_skipped, setups, sorted(set(scenario.eval.ratios)),
                    ratings, personas)


def claim_folder(folder: Path, scenario: Scenario, users: list[str], learning: dict[str, str]) -> None:
    """Check that the folder holds nothing from another setup; record this run's users (the ones `summarize`
    reports), bootstrap draws and the learning each policy used."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.json"
    mine = fingerprint(scenario)
    old = json.loads(path.read_text()) if path.exists() else {}
    theirs = old.get("fingerprint", mine)
    if theirs != mine:
        changed = sorted(k for k in set(mine) | set(theirs) if theirs.get(k) != mine.get(k))
        raise UserError(f"{folder}: holds an evaluation of another setup (differs in: {', '.join(changed)}); "
                        f"use --out DIR or remove the folder")
    recorded = dict(old.get("learning", {}))
    for label, digest in learning.items():
        if recorded.get(label, digest) != digest:
            raise UserError(f"{folder}: policy '{label}' was evaluated here with another learning folder "
                            f"(it changed since); use --out DIR for the new one")
        recorded[label] = digest
    meta = {"fingerprint": mine, "bootstrap": scenario.eval.bootstrap, "seed": scenario.seed,
            "scenario": scenario.name, "dataset": scenario.dataset.name, "updated": time.time(),
            "users": users, "learning": recorded}
    store.write_json(path, meta)
    (folder / "scenario.yaml").write_text(dump_scenario(scenario))


# --- asking the agents ------------------------------------------------------------------------------------

RATING_SYSTEM = (
    "You simulate one real user of a recommender system. You watched each item listed below. Rate each one "
    "from 1 (hated it) to 5 (loved it) the way this user would, using the whole scale honestly. Answer with "
    "JSON only: an object whose `ratings` maps every listed item id to its rating."
)


class RatingReply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ratings: dict[str, Literal[1, 2, 3, 4, 5]]


_RATING_BASE = json_schema_for(RatingReply)


def rating_schema(item_ids: Sequence[str]) -> dict[str, Any]:
    """RatingReply's schema with exactly these ids as the required keys of `ratings`."""
    value = _RATING_BASE["properties"]["ratings"]["additionalProperties"]
    ratings = {"type": "object", "properties": {i: value for i in item_ids}, "required": list(item_ids),
               "additionalProperties": False}
    return {**_RATING_BASE, "properties": {"ratings": ratings}}


def rating_messages(agent: PersonaAgent, items: list) -> list[dict[str, str]]:
    """Persona, the policy's lessons and world-model lines for these items, then the items (static first)."""
    dynamic = "Items you watched:\n" + "\n".join(item.line() for item in items)
    return build_messages(RATING_SYSTEM, dynamic, persona=agent.persona.describe(),
                          context=agent.policy_context(items))


@dataclass
class Task:
    policy: str
    user_id: str
    ratio: int | None  # None: the rating call
    page: int
    items: list[str]
    positive: list[bool] = field(default_factory=list)
    truth: list[float] = field(default_factory=list)


def pending_tasks(plan: EvalPlan, done_decisions: set[tuple], done_ratings: set[tuple]) -> list[Task]:
    seed, k = plan.scenario.seed, plan.items_per_page
    tasks = []
    for label in plan.policies:
        for case in plan.cases:
            for ratio in plan.ratios:
                for page, (items, labels) in enumerate(case.page_items(ratio, k, seed)):
                    if (label, ratio, case.user_id, page) not in done_decisions:
                        tasks.append(Task(label, case.user_id, ratio, page, items, positive=labels))
            if plan.ratings and case.rated and (label, case.user_id) not in done_ratings:
                tasks.append(Task(label, case.user_id, None, 0, [i for i, _ in case.rated],
                                  truth=[r for _, r in case.rated]))
    return tasks


def open_stores(folder: Path) -> tuple[PartStore, PartStore]:
    return (PartStore(folder, "decisions", DECISIONS, DECISION_KEY),
            PartStore(folder, "ratings", RATINGS, RATING_KEY))


async def run_eval(plan: EvalPlan, llm: Any, tasks: list[Task], stores: tuple[PartStore, PartStore],
                   on_done: Callable[[Task, str | None], None] | None = None) -> None:
    """Decide every task (concurrently: the client's semaphore bounds the calls in flight), storing each
    result as it comes; the stores are flushed whatever happens."""
    decisions, ratings = stores
    catalogue = Catalogue(plan.dataset.items)
    agents: dict[tuple[str, str], PersonaAgent] = {}
    for label, setup in plan.policies.items():
        for case in plan.cases:
            agents[(label, case.user_id)] = setup.agent(plan.personas[case.user_id], seed=plan.scenario.seed,
                                                        history_size=0)

    async def page(task: Task) -> None:
        agent = agents[(task.policy, task.user_id)]
        d = await agent.decide(llm, task.ratio, task.page, catalogue.page(task.items))
        decisions.add({
            "policy": task.policy, "ratio": task.ratio, "user_id": task.user_id, "page": task.page,
            "items": task.items, "positive": task.positive, "watched": [i in d.ratings for i in task.items],
            "failure": d.failure, "invalid_ids": d.invalid_ids, "prompt_tokens": d.prompt_tokens,
            "completion_tokens": d.completion_tokens, "latency_s": d.latency_s, "from_cache": d.from_cache,
        })
        if on_done:
            on_done(task, d.failure)

    async def rate(task: Task) -> None:
        agent = agents[(task.policy, task.user_id)]
        seed = call_seed(plan.scenario.seed, task.user_id, "rating")
        result = await llm.call(rating_messages(agent, catalogue.page(task.items)), RatingReply, seed=seed,
                                schema=rating_schema(task.items))
        answers = dict(result.value.ratings) if result.value is not None else {}
        ratings.add({
            "policy": task.policy, "user_id": task.user_id, "items": task.items, "truth": task.truth,
            "predicted": [answers.get(i) for i in task.items], "failure": result.failure,
            "invalid_ids": sum(1 for i in answers if i not in set(task.items)),
            "prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
            "latency_s": result.latency_s, "from_cache": result.from_cache,
        })
        if on_done:
            on_done(task, result.failure)

    try:
        await asyncio.gather(*(rate(t) if t.ratio is None else page(t) for t in tasks))
    finally:
        decisions.flush()
        ratings.flush()


# --- the numbers -------------------------------------------------------------------------------------------


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
    plan_path = folder / "plan.json"
    if not plan_path.exists():
        raise UserError(f"{folder}: not an eval folder (no plan.json); run `alignuser-sim eval SCENARIO` first")
    meta = json.loads(plan_path.read_text())
    draws = meta.get("bootstrap", 1000) if draws is None else draws
    seed = meta.get("seed", 0) if seed is None else seed
    users_now = set(meta.get("users") or [])
    decisions = [r for r in read_store(folder, "decisions", DECISIONS, DECISION_KEY).to_pylist()
                 if not users_now or r["user_id"] in users_now]
    ratings = [r for r in read_store(folder, "ratings", RATINGS, RATING_KEY).to_pylist()
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
    path = Path(folder) / "eval.json"
    store.write_json(path, summary)
    return path
