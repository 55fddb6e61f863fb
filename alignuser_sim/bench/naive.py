"""The baseline the simulation is compared with: Agent4Rec's naive loop.

A thread pool makes one blocking structured call per agent-page, as Agent4Rec does
(`ThreadPoolExecutor(max_workers=500)` in its `simulate_all_avatars`), with the same prompts, schema,
recommender and population as the simulation; `rates` turns either's totals into per-second and per-hour
measures, so both read the same in one table.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from alignuser_sim.llm.accounting import LatencyHistogram

if TYPE_CHECKING:
    from alignuser_sim.core import Catalogue
    from alignuser_sim.data.personas import Persona
    from alignuser_sim.recommenders.base import Recommender

AGENT4REC_POOL = 500  # Agent4Rec's simulate_all_avatars: ThreadPoolExecutor(max_workers=500)


def run_sessions(session: Callable[[Any], None], personas: Sequence[Any], pool_size: int) -> float:
    """Every persona's session on a thread pool of `pool_size` (the thread-per-agent loops of the baselines);
    returns the wall time. A session's exception is raised here."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=pool_size) as pool:
        for future in [pool.submit(session, p) for p in personas]:
            future.result()
    return time.perf_counter() - t0


def naive_loop(
    personas: Sequence[Persona],
    catalogue: Catalogue,
    recommender: Recommender,
    *,
    endpoint: str,
    model: str,
    sampling: dict[str, Any],
    page_cap: int,
    items_per_page: int,
    pool_size: int = AGENT4REC_POOL,
    seed: int = 0,
    timeout_s: float = 900.0,
    max_retries: int = 2,
    on_decision: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Each agent's session in a worker thread of a `pool_size` pool: page after page, one blocking
    structured call each (same prompt and schema as the simulation, no validation retry, no cache), the
    recommender shared under a lock. Returns the same measures as a simulation run."""
    import openai

    from alignuser_sim.agent.decision import PageDecision, check_decision, page_schema
    from alignuser_sim.agent.policy import PolicySetup
    from alignuser_sim.llm.schemas import response_format_for

    client = openai.OpenAI(base_url=endpoint, api_key="EMPTY", max_retries=max_retries, timeout=timeout_s)
    policy = PolicySetup.prompt_only()
    lock = threading.Lock()
    latency = LatencyHistogram()
    totals = {"decisions": 0, "failures": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def session(persona: Persona) -> None:
        agent = policy.agent(persona, seed=seed)
        uid = persona.user_id
        for page_no in range(page_cap):
            with lock:
                items = recommender.pages([uid], items_per_page)[uid]
            if not items:
                return
            page = catalogue.page(items)
            t0 = time.perf_counter()
            decision, usage = None, None
            try:
                reply = client.chat.completions.create(
                    model=model, messages=agent.messages(page_no, page),
                    response_format=response_format_for(PageDecision, page_schema(list(items))), **sampling)
                usage = reply.usage
                decision = check_decision(PageDecision.model_validate_json(reply.choices[0].message.content or ""),
                                          page)
                agent.observe(decision, page)
            except (openai.APIError, ValueError):
                pass
            elapsed = time.perf_counter() - t0
            watched = {} if decision is None else {i: (None if r is None else float(r))
                                                   for i, r in decision.ratings.items()}
            with lock:
                recommender.feedback_batch([(uid, watched, list(items))])
                latency.add(elapsed)
                totals["decisions"] += 1
                totals["failures"] += decision is None
                if usage is not None:
                    totals["prompt_tokens"] += usage.prompt_tokens
                    totals["completion_tokens"] += usage.completion_tokens
            if on_decision is not None:
                on_decision()
            if decision is None or decision.action == "exit":
                return

    wall = run_sessions(session, personas, pool_size)
    client.close()
    return {
        "mode": f"naive pool {pool_size}", "agents": len(personas), "elapsed_s": round(wall, 2), **totals,
        "latency_p50_s": round(latency.percentile(0.5) or 0.0, 4),
        "latency_p99_s": round(latency.percentile(0.99) or 0.0, 4),
    }


def rates(row: dict[str, Any]) -> dict[str, Any]:
    """Per-second and per-hour measures of a run row (simulation or naive) from its totals."""
    wall = row["elapsed_s"] or math.nan
    return {
        "decisions_per_s": round(row["decisions"] / wall, 3),
        "calls_per_s": round(row.get("llm_requests", row["decisions"]) / wall, 3),
        "output_tok_per_s": round(row["completion_tokens"] / wall, 2),
        "agents_per_hour": round(row["agents"] / wall * 3600, 1),
        "decisions_per_hour": round(row["decisions"] / wall * 3600, 1),
    }
