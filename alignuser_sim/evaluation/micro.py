"""Micro evaluation (`alignuser-sim eval`): does the agent pick, and rate, what its human did?

Each held-out user's pages (`evaluation/cases.py`) are decided with ONE structured call each
(`PersonaAgent.decide`, the simulation's own call); "watched" is the agent's prediction of "the human
interacted with it". Separately, the agent rates the user's rated held-out items, all in one call per user,
for RMSE / MAE. Both calls answer in the scenario's decision format (`policy.reasoning`): `full` names items
by id (and the page decision adds feelings); `brief` and `none` list the items numbered and answer by
position, `brief` with one short thought first (`RATING_FORMATS`). Agents keep no history between pages
(each page is judged on its own), so the order pages are decided in changes nothing and a re-run asks the
completion cache the same questions. The numbers are `evaluation/summary.py`'s.

Resumable: every decision is written as it comes (keyed part tables, `store.PartTable`), keyed by
(policy, ratio, user, page) and (policy, user) for ratings; a re-run decides only what is missing. A failed
call is stored with its failure: its items count as failures, are left out of the metrics and reported.
An eval folder is claimed by a fingerprint of the setup its decisions depend on (`plan.json`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from alignuser_sim import store
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.agent.rating import (  # noqa: F401  (re-exported: the evaluation's public names)
    RATING_FORMATS,
    RATING_SYSTEM,
    BriefRatings,
    PositionRatings,
    RatingFormat,
    RatingReply,
    rating_messages,
    rating_schema,
)
from alignuser_sim.config import EvalConfig, PolicyConfig, Scenario, dump_scenario
from alignuser_sim.core import Catalogue, call_seed
from alignuser_sim.data import Dataset, load_dataset
from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.data.item_stats import agent_items
from alignuser_sim.data.personas import Persona, build_personas
from alignuser_sim.data.population import select_population
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.cases import UserCase, build_cases, policy_variant
from alignuser_sim.llm.protocol import StructuredLLM
from alignuser_sim.llm.schemas import reply_budget
from alignuser_sim.store import CALL_FIELDS, EvalFolder, LearningFolder, PartTable

PLAN_VERSION = 1

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
    # null: the agent gave no rating. float32: the reference policies predict means (evaluation/references.py);
    # older folders wrote int8, which reads as float32 (pyarrow casts to this schema on read)
    pa.field("predicted", pa.list_(pa.float32()), nullable=False),
    *CALL_FIELDS,
])
RATING_KEY = ("policy", "user_id")


def open_stores(folder: Path, flush_s: float = EvalConfig().flush_s) -> tuple[PartTable, PartTable]:
    """The decisions and ratings of an eval folder, with what is already stored counted as done."""
    tables = (PartTable(folder, EvalFolder.DECISIONS, DECISIONS, DECISION_KEY, flush_s=flush_s),
              PartTable(folder, EvalFolder.RATINGS, RATINGS, RATING_KEY, flush_s=flush_s))
    for table in tables:
        table.load()
    return tables


# --- the plan ----------------------------------------------------------------------------------------------


def fingerprint(scenario: Scenario) -> dict[str, Any]:
    """What must not change between two runs writing one eval folder (else their decisions would mix).

    The population, `eval.users`, the ratios and the policies may change: a user's pages depend only on
    the seed, the data and these settings, so a larger population or a new ratio reuses what is done."""
    dump = scenario.model_dump(mode="json")
    if dump["dataset"].get("domain") is None:  # the dataset's own domain: matches folders older than the knob
        dump["dataset"].pop("domain", None)
    mine = {
        "version": PLAN_VERSION, "seed": scenario.seed, "dataset": dump["dataset"],
        "eval": {k: dump["eval"][k] for k in ("positives_per_user", "items_per_page")},
        "llm": {"model": dump["llm"]["model"], "sampling": dump["llm"]["sampling"]},
    }
    if scenario.policy.reasoning != PolicyConfig().reasoning:  # at its default it matches older folders
        mine["reasoning"] = scenario.policy.reasoning
    if not scenario.pages.show_item_stats:  # likewise (the default shows them)
        mine["show_item_stats"] = False
    if scenario.pages.popularity_words:  # likewise (off by default)
        mine["popularity_words"] = True
    return mine


def learning_digest(scenario: Scenario) -> str:
    """A digest of the learning folder's Parquet files ("none" without one): decisions stored under a
    policy were made with this learning (prompt-only too: it takes the LLM-written taste text from there),
    and must not be mixed with another's."""
    folder = scenario.learning_dir()
    if not folder.is_dir():
        return "none"
    digest = hashlib.sha1()
    paths = sorted(folder.rglob("*.parquet"))  # what agents read; not the journal, logs or lock files
    manifest = LearningFolder(folder).adapters_manifest
    if scenario.policy.use_adapter and manifest.is_file():  # which adapters answer (their names hold a digest)
        paths.append(manifest)
    for path in paths:
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
    personas: dict[str, Persona] = field(default_factory=dict)

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
        if not variant.policy.uses_llm:
            raise UserError("--policies: popularity is already one of eval's reference policies (decided on every "
                            "page without an LLM, in every table); name LLM policies only")
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
    layout = EvalFolder(folder)
    old = store.claim(layout.plan, fingerprint(scenario), "an evaluation")
    recorded = dict(old.get("learning", {}))
    for label, digest in learning.items():
        if recorded.get(label, digest) != digest:
            raise UserError(f"{folder}: policy '{label}' was evaluated here with another learning folder "
                            f"(it changed since); use --out DIR for the new one")
        recorded[label] = digest
    meta = {"fingerprint": fingerprint(scenario), "bootstrap": scenario.eval.bootstrap, "seed": scenario.seed,
            "scenario": scenario.name, "dataset": scenario.dataset.name, "updated": time.time(),
            "users": users, "learning": recorded,
            **({"references": old["references"]} if "references" in old else {})}  # evaluation/references.py
    store.write_json(layout.plan, meta)
    store.write_text(layout.scenario, dump_scenario(scenario))


# --- asking the agents ------------------------------------------------------------------------------------


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


async def run_eval(plan: EvalPlan, llm: StructuredLLM, tasks: list[Task], stores: tuple[PartTable, PartTable],
                   on_done: Callable[[Task, str | None], None] | None = None) -> None:
    """Decide every task (concurrently: the client's semaphore bounds the calls in flight), storing each
    result as it comes; the stores are flushed whatever happens."""
    decisions, ratings = stores
    catalogue = Catalogue(agent_items(plan.dataset, plan.scenario.pages.show_item_stats,
                                       words=plan.scenario.pages.popularity_words))
    agents: dict[tuple[str, str], PersonaAgent] = {}
    for label, setup in plan.policies.items():
        for case in plan.cases:
            agents[(label, case.user_id)] = setup.agent(plan.personas[case.user_id], seed=plan.scenario.seed,
                                                        history_size=0, rating_format=None)  # rated below

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
        fmt = RATING_FORMATS[plan.policies[task.policy].config.reasoning]
        seed = call_seed(plan.scenario.seed, task.user_id, "rating")
        schema = fmt.schema(task.items)
        budget = reply_budget(schema, fallback=plan.scenario.llm.sampling.max_tokens)
        result = await llm.call(rating_messages(agent, catalogue.page(task.items), fmt), fmt.reply, seed=seed,
                                schema=schema, sampling={"max_tokens": budget}, model=agent.model)
        answers, invalid = fmt.to_ratings(result.value, task.items) if result.value is not None else ({}, 0)
        ratings.add({
            "policy": task.policy, "user_id": task.user_id, "items": task.items, "truth": task.truth,
            "predicted": [answers.get(i) for i in task.items], "failure": result.failure,
            "invalid_ids": invalid,
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
