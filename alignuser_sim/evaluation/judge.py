"""The human-likeness judge and thought-action consistency: what a judge model says of a run's sessions.

Both numbers depend on the judge model, so neither is read alone:

- **Human-likeness** (1-5): a judge model reads one session, rendered as text (each page's items with their
  genres, what was watched and how it was rated, whether the user went on or left), and answers a score
  with a one-line reason (`LikenessReply`, schema-constrained). The same judge, with the same prompt, also
  scores the HUMAN sessions of the same users (the rollouts on the training split, built as the
  discriminator builds them, cut at the page cap), so the simulated mean is read beside the humans' mean
  and their paired difference. The judge is not told which side a session comes from. The agents'
  thoughts are left out of this prompt by default: humans have none, and a thought would tell the judge
  which side it reads (`thoughts=True` shows them, at that price).
- **Thought-action consistency**: each decision of a judged simulated session that carries a thought is
  shown with its page and the action taken; the judge says whether the thought supports the action
  (`ConsistencyReply`). The share of consistent decisions is reported. A run whose decision format writes
  no thoughts (`policy.reasoning: none`) gets one line saying so.

Which sessions: the run's users with a complete simulated session (no failed page) and at least one human
session, in a seeded order; the first `judge.sessions` of them, one simulated session (their first) and
one human session (a seeded pick) each. A larger `sessions` extends the same list, so a re-run judges
only what is new. Judgements are stored as they come (`judge/judgements/` parts, a keyed table): a run of
the command that is interrupted resumes; a call that failed in transport is asked again, a reply that did
not validate is kept as a counted failure. `judge.json` holds the summary: means with 95% percentile
bootstrap intervals over users (`metrics/bootstrap.py`: one user = one unit, the same draws for both
sides), the paired difference over users judged on both sides, and the consistency share.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alignuser_sim import store
from alignuser_sim.core import Catalogue, Domain, call_seed
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.judge_prompts import (
    ConsistencyReply,
    LikenessReply,
    Session,
    consistency_system,
    likeness_system,
    render_decision,
    render_session,
    sessions_of,
)
from alignuser_sim.evaluation.judge_scores import DRAWS, sessions_judged, summarize
from alignuser_sim.llm.prompts import build_messages
from alignuser_sim.llm.schemas import json_schema_for, reply_budget
from alignuser_sim.store import FolderLock, PartTable, RunFolder

if TYPE_CHECKING:
    from alignuser_sim.config import LLMConfig, Scenario
    from alignuser_sim.llm.protocol import StructuredLLM

JUDGE_DIR = "judge"  # in the run folder: judgements/ parts, plan.json, the judge's vllm.log and failures
JUDGE_FILE = "judge.json"  # in the run folder: the summary `report` shows
TABLE = "judgements"
PROMPT_VERSION = 1  # part of the folder's fingerprint: judgements under another prompt are not mixed in

Kind = Literal["likeness", "consistency"]

JUDGEMENTS = pa.schema([
    pa.field("kind", pa.string(), nullable=False),  # likeness | consistency
    pa.field("side", pa.string(), nullable=False),  # simulated | human
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("session", pa.int32(), nullable=False),
    pa.field("page", pa.int32(), nullable=False),  # -1 for a whole session (likeness)
    pa.field("score", pa.int8()),
    pa.field("consistent", pa.bool_()),
    pa.field("reason", pa.string()),
    pa.field("failure", pa.string()),
    pa.field("prompt_tokens", pa.int32(), nullable=False),
    pa.field("completion_tokens", pa.int32(), nullable=False),
])
KEY = ("kind", "side", "user_id", "session", "page")


# --- the plan: which sessions, which calls --------------------------------------------------------------------


@dataclass
class Task:
    kind: str
    side: str
    user_id: str
    session: int
    page: int  # -1: the whole session
    text: str

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        return (self.kind, self.side, self.user_id, self.session, self.page)


@dataclass
class JudgePlan:
    run_dir: Path
    meta: dict[str, Any]  # run id, scenario, dataset, policy, users, page_cap, seed, model, thoughts, ...
    tasks: list[Task]
    selected: list[tuple[str, int, int]]  # (user, simulated session, human session), in the judged order
    domain: Domain
    has_thoughts: bool
    reasoning: str
    fingerprint: dict[str, Any]
    llm: LLMConfig  # the judge's (`judge_llm`)

    @property
    def folder(self) -> Path:
        return self.run_dir / JUDGE_DIR


def judge_llm(scenario: Scenario) -> LLMConfig:
    """The judge's LLM section: the scenario's `llm`, with `judge.model` / `judge.endpoints` where given and
    no LoRA adapters (the judge is the base model, never the policy's adapter)."""
    cfg = scenario.llm.model_copy(deep=True)
    cfg.adapters = {}
    if scenario.judge.endpoints:
        cfg.endpoints = list(scenario.judge.endpoints)
    if scenario.judge.model:
        if not cfg.endpoints:
            raise UserError(f"judge.model: '{scenario.judge.model}' needs judge.endpoints (or llm.endpoints): the "
                            f"embedded server serves only the embedded model")
        cfg.model = scenario.judge.model
    return cfg


EVENT_COLUMNS = ["agent_id", "session", "page", "items", "watched", "ratings", "action", "thought", "failure"]


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The run's events with their thoughts: `events.parquet`, or the parts of a run still going."""
    from alignuser_sim.evaluation.discriminator import EVENT_KEY

    run = RunFolder(run_dir)
    if not run.path.is_dir():
        raise UserError(f"{run_dir}: no such folder")
    if run.events.exists():
        return pq.read_table(run.events, columns=EVENT_COLUMNS).to_pylist()
    parts = store.part_files(run.path / RunFolder.EVENTS)
    if not parts:
        raise UserError(f"{run_dir}: no events (neither events.parquet nor events/ parts): not a simulation run "
                        f"folder, or a run that has not decided a page yet")
    return store.merge_parts(parts, pq.read_schema(parts[0]), EVENT_KEY).select(EVENT_COLUMNS).to_pylist()


def choose(simulated: Mapping[str, list[Session]], human: Mapping[str, list[Session]], n: int,
           seed: int) -> list[tuple[Session, Session]]:
    """The first `n` users, in a seeded order, with a session on both sides: (their first simulated session,
    a seeded pick of their human sessions). The order depends only on the eligible users and the seed, so a
    larger `n` extends a smaller one's list."""
    users = sorted(set(simulated) & set(human))
    order = np.random.default_rng(seed).permutation(len(users))
    pairs = []
    for u in (users[i] for i in order[:n]):
        pick = random.Random(call_seed(seed, "judge", u)).randrange(len(human[u]))
        pairs.append((simulated[u][0], human[u][pick]))
    return pairs


def tasks_for(pairs: Sequence[tuple[Session, Session]], catalogue: Catalogue, domain: Domain, page_cap: int,
              thoughts: bool) -> list[Task]:
    """A likeness call per session on both sides; a consistency call per simulated decision with a thought."""
    tasks = []
    for sim, hum in pairs:
        for s in (sim, hum):
            tasks.append(Task("likeness", s.side, s.user_id, s.session, -1,
                              render_session(s, catalogue, domain, page_cap, thoughts)))
        for n, page in enumerate(sim.pages):
            if page.thought:
                tasks.append(Task("consistency", "simulated", sim.user_id, sim.session, n,
                                  render_decision(page, catalogue, domain)))
    return tasks


def plan_judging(run_dir: Path, sessions: int | None = None, thoughts: bool = False) -> JudgePlan:
    """Read the run folder, build the human sessions of its users and lay out the calls (no model yet: bad
    input fails here, in one line, before a server starts)."""
    from alignuser_sim.config import load_scenario
    from alignuser_sim.data import load_dataset
    from alignuser_sim.data.domain import dataset_domain
    from alignuser_sim.data.holdout import split_dataset
    from alignuser_sim.data.rollouts import build_rollouts

    run_dir = Path(run_dir)
    events = read_events(run_dir)
    run = RunFolder(run_dir)
    if not run.scenario.exists():
        raise UserError(f"{run_dir}: no {run.scenario.name}: not a simulation run folder")
    scenario = load_scenario(run.scenario)
    n = scenario.judge.sessions if sessions is None else sessions
    seed = scenario.seed if scenario.judge.seed is None else scenario.judge.seed
    cap = scenario.pages.count
    simulated = sessions_of(events, "simulated", "agent_id", cap)
    if not simulated:
        raise UserError(f"{run_dir}: no complete simulated session to judge ({len(events)} events, every session "
                        f"has a failed page)")
    users = sorted({u for ids in run.shards().values() for u in ids} or {e["agent_id"] for e in events})
    ds = load_dataset(scenario.dataset)
    train, _ = split_dataset(ds)
    rollouts = build_rollouts(train, users, scenario.pages, scenario.seed, ds.interactions)
    human = sessions_of(rollouts.to_pylist(), "human", "user_id", cap)
    pairs = choose(simulated, human, n, seed)
    if not pairs:
        raise UserError(f"{run_dir}: no user with both a complete simulated session and a human session on the "
                        f"training split: nothing to judge")
    domain = dataset_domain(scenario.dataset)
    catalogue = Catalogue(ds.items)
    tasks = tasks_for(pairs, catalogue, domain, cap, thoughts)
    has_thoughts = any(e.get("thought") and str(e["thought"]).strip() for e in events)
    llm = judge_llm(scenario)
    fingerprint = {"model": llm.model, "seed": seed, "thoughts": thoughts, "page_cap": cap,
                   "prompt_version": PROMPT_VERSION}
    meta = {"run_dir": str(run_dir), "run_id": run.meta().get("run_id"), "scenario": scenario.name,
            "dataset": scenario.dataset.name, "policy": scenario.policy.label, "reasoning": scenario.policy.reasoning,
            "users": len(users), "eligible_users": len(set(simulated) & set(human)), "judged_users": len(pairs),
            "page_cap": cap, **fingerprint}
    selected = [(sim.user_id, sim.session, hum.session) for sim, hum in pairs]
    return JudgePlan(run_dir, meta, tasks, selected, domain, has_thoughts, scenario.policy.reasoning, fingerprint,
                     llm)


# --- asking the judge ---------------------------------------------------------------------------------------


def _messages(task: Task, domain: Domain) -> list[dict[str, str]]:
    system = likeness_system(domain) if task.kind == "likeness" else consistency_system(domain)
    return build_messages(system, task.text)


def open_table(folder: Path) -> PartTable:
    return PartTable(folder, TABLE, JUDGEMENTS, KEY)


def claim_folder(plan: JudgePlan) -> None:
    """Refuse judgements of another setup (model, seed, prompt) in the folder, so the two never mix."""
    path = plan.folder / "plan.json"
    old = store.read_json(path)
    theirs = old.get("fingerprint", plan.fingerprint)
    if theirs != plan.fingerprint:
        changed = sorted(k for k in set(theirs) | set(plan.fingerprint) if theirs.get(k) != plan.fingerprint.get(k))
        raise UserError(f"{plan.folder}: holds judgements of another setup (differs in: {', '.join(changed)}); "
                        f"remove that folder to judge again")
    store.write_json(path, {"fingerprint": plan.fingerprint, "meta": plan.meta, "selected": plan.selected},
                     default=str)


async def run_judging(plan: JudgePlan, llm: StructuredLLM, table: PartTable,
                      on_progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> None:
    """Ask the judge every call not in the table yet (concurrently: the client bounds the calls in flight),
    storing each judgement as it comes; a transport failure is not stored (a re-run asks again)."""
    done_keys = set(table.keys)
    pending = [t for t in plan.tasks if t.key not in done_keys]
    total, done, failed = len(plan.tasks), len(plan.tasks) - len(pending), 0
    seed = plan.fingerprint["seed"]
    schemas = {"likeness": (LikenessReply, json_schema_for(LikenessReply)),
               "consistency": (ConsistencyReply, json_schema_for(ConsistencyReply))}

    def report() -> None:
        if on_progress:
            on_progress(done, total, {"failures": failed})

    async def ask(task: Task) -> None:
        nonlocal done, failed
        reply, schema = schemas[task.kind]
        result = await llm.call(_messages(task, plan.domain), reply, schema=schema,
                                seed=call_seed(seed, "judge", *task.key),
                                sampling={"temperature": 0.0, "max_tokens": reply_budget(schema, fallback=256)})
        done += 1
        if result.failure is not None:
            failed += 1
        if not result.transient:
            value = result.value
            table.add({"kind": task.kind, "side": task.side, "user_id": task.user_id, "session": task.session,
                       "page": task.page, "score": getattr(value, "score", None),
                       "consistent": getattr(value, "consistent", None),
                       "reason": value.reason if value is not None else None, "failure": result.failure,
                       "prompt_tokens": result.usage.prompt_tokens,
                       "completion_tokens": result.usage.completion_tokens})
        report()

    report()
    try:
        await asyncio.gather(*(ask(t) for t in pending))
    finally:
        table.flush()


def judge(run_dir: Path, *, sessions: int | None = None, thoughts: bool = False, draws: int = DRAWS,
          llm: StructuredLLM | None = None, note: Callable[[str], None] | None = None,
          on_progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Judge a run folder (module doc) on `llm`, or on the judge's endpoints (`judge_llm`: the embedded
    server started when there are none); writes `judge.json` and returns it. Resumable."""
    plan = plan_judging(run_dir, sessions, thoughts)
    with FolderLock(plan.folder, "judge.lock", busy="another judge is working on this run"):
        claim_folder(plan)
        table = open_table(plan.folder)
        table.load()
        if llm is not None:
            asyncio.run(run_judging(plan, llm, table, on_progress))
        else:
            from alignuser_sim.llm.endpoints import open_client

            with open_client(plan.llm, plan.folder, note) as client:
                async def work() -> None:
                    try:
                        await run_judging(plan, client, table, on_progress)
                    finally:
                        await client.aclose()

                asyncio.run(work())
        rows = table.read().to_pylist()
        result = summarize(plan.meta, rows, plan.has_thoughts, draws, sessions_judged(plan.selected))
        judged = Counter(tuple(r[k] for k in KEY) for r in rows)
        result["missing"] = dict(Counter(f"{t.kind} {t.side}" for t in plan.tasks if t.key not in judged))
        store.write_json(Path(run_dir) / JUDGE_FILE, result, default=str)
    return result


def judge_summary(run_dir: Path, draws: int = DRAWS) -> dict[str, Any]:
    """The summary recomputed from the stored judgements (what `report` shows): the setup the folder was
    judged with (`judge/plan.json`), every judgement it holds."""
    folder = Path(run_dir) / JUDGE_DIR
    plan = store.read_json(folder / "plan.json")
    if not plan:
        raise UserError(f"{run_dir}: not judged yet (no {JUDGE_DIR}/plan.json): alignuser-sim judge {run_dir}")
    meta, keep = plan.get("meta", {}), sessions_judged(plan.get("selected", []))
    rows = open_table(folder).read().to_pylist()
    with contextlib.suppress(UserError):  # whether the run writes thoughts: from its events when still there
        events = read_events(Path(run_dir))
        has_thoughts = any(e.get("thought") and str(e["thought"]).strip() for e in events)
        return summarize(meta, rows, has_thoughts, draws, keep)
    return summarize(meta, rows, meta.get("reasoning") != "none", draws, keep)
