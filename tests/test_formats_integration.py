"""Each decision format against a REAL vLLM server (the embedded SmolLM2-135M, session fixture): ML-100K
pages of 4 items decided by persona agents, every reply valid and mapped back to the page's ids, and what a
decision costs per format (printed). `none` must stay within 30 output tokens per 4-item page on average."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np
import pytest

from alignuser_sim.agent.decision import REASONINGS, decision_format
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.config import scenario_from_dict
from alignuser_sim.core import Catalogue
from alignuser_sim.data import load_dataset
from alignuser_sim.data.personas import build_personas
from alignuser_sim.llm import LLMClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PAGES = {"none": 32, "brief": 12, "full": 8}  # enough `none` pages for a mean; the others are slower
ITEMS = 4
NONE_TOKENS_MAX = 30


@pytest.fixture(scope="module")
def pages():
    """(persona, page) pairs: 8 ML-100K users, pages of 4 random catalogue items (seeded)."""
    ds = load_dataset(scenario_from_dict({"dataset": {"name": "ml-100k"}}).dataset)
    users = sorted(set(ds.interactions["user_id"].to_pylist()))[:8]
    personas = build_personas(ds, users)
    catalogue = Catalogue(ds.items)
    ids = ds.items["item_id"].to_pylist()
    rng = np.random.default_rng(13)
    n = max(PAGES.values())
    return [(personas[k % len(personas)], catalogue.page(list(rng.choice(ids, ITEMS, replace=False))))
            for k in range(n)]


def decide_all(server, name: str, pages) -> tuple[list, float, dict]:
    fmt = decision_format(name)
    client = LLMClient([server.base_url], model="smollm2", sampling={"temperature": 0.7, "top_p": 1.0},
                       concurrency=16, timeout_s=600, max_retries=2, validation_retries=0, cache="off")

    async def go():
        try:
            agents = [PersonaAgent(p, decision_format=fmt, seed=k) for k, (p, _) in enumerate(pages)]
            return await asyncio.gather(*(a.decide(client, 0, 0, page) for a, (_, page) in zip(agents, pages,
                                                                                               strict=True)))
        finally:
            await client.aclose()

    t0 = time.monotonic()
    decisions = asyncio.run(go())
    seconds = time.monotonic() - t0
    snap = client.snapshot()
    client.close()
    return decisions, seconds, snap


@pytest.mark.parametrize("name", REASONINGS)
def test_format_against_the_real_server(vllm_server, pages, name):
    todo = pages[: PAGES[name]]
    decisions, seconds, snap = decide_all(vllm_server, name, todo)
    failed = [(d.failure, d.completion_tokens) for d in decisions if d.failure]
    out = np.mean([d.completion_tokens for d in decisions])
    prompt = np.mean([d.prompt_tokens for d in decisions])
    watched = np.mean([len(d.ratings) for d in decisions])
    ratings = Counter(r for d in decisions for r in d.ratings.values())
    print(f"\n{name}: {len(decisions)} pages of {ITEMS} items, {len(failed)} failed, {out:.1f} output tokens and "
          f"{prompt:.0f} prompt tokens per page (min {min(d.completion_tokens for d in decisions)}, max "
          f"{max(d.completion_tokens for d in decisions)}), {watched:.2f} watched per page, "
          f"{len(decisions) / seconds:.2f} decisions/s; ratings {dict(sorted(ratings.items(), key=str))}")
    assert not failed, f"{len(failed)} of {len(decisions)} failed: {failed[:3]}"
    assert snap["calls"] == len(todo) and snap["requests"] == len(todo)  # no retry was needed
    for decision, (_, page) in zip(decisions, todo, strict=True):
        ids = {item.item_id for item in page}
        assert set(decision.ratings) <= ids and decision.invalid_ids == 0  # positions mapped back to ids
        assert all(r is None or 1 <= r <= 5 for r in decision.ratings.values())
        assert decision.action in ("next_page", "exit")
        if name == "full":
            assert set(decision.feelings) == ids and decision.thought is not None
        else:
            assert decision.feelings == {}
            assert (decision.thought is None) == (name == "none")
            if name == "brief":
                assert len(decision.thought) <= decision_format("brief").thought_max
    if name == "none":
        assert out <= NONE_TOKENS_MAX, f"none: {out:.1f} output tokens per 4-item page (target <= 30)"


@pytest.mark.parametrize("name", ["none", "brief"])
def test_rate_watched_against_the_real_server(vllm_server, pages, name):
    """`policy.rate_watched`: the rating call the agent adds for watches its page decision left unrated, asked
    of the real model in each compact format: every unrated watch comes back rated 1-5, the rated one is kept."""
    from alignuser_sim.agent.decision import Decision
    from alignuser_sim.agent.rating import RATING_FORMATS

    todo = pages[:6]
    client = LLMClient([vllm_server.base_url], model="smollm2", sampling={"temperature": 0.7, "top_p": 1.0},
                       concurrency=8, timeout_s=600, max_retries=2, validation_retries=1, cache="off")

    async def go():
        try:
            out = []
            for k, (persona, page) in enumerate(todo):
                agent = PersonaAgent(persona, decision_format=decision_format(name), seed=k,
                                     rating_format=RATING_FORMATS[name])
                # an adapter's typical reply: three watches, only the first rated
                decision = Decision(ratings={page[0].item_id: 4, page[1].item_id: None, page[2].item_id: None},
                                    feelings={}, thought=None, action="next_page")
                await agent.rate_unrated(client, decision, page, seed=k)
                out.append((decision, page))
            return out
        finally:
            await client.aclose()

    decided = asyncio.run(go())
    client.close()
    for decision, page in decided:
        assert decision.failure is None
        assert decision.ratings[page[0].item_id] == 4 and set(decision.ratings) == {v.item_id for v in page[:3]}
        assert all(r in (1, 2, 3, 4, 5) for r in decision.ratings.values()), decision.ratings
        assert decision.prompt_tokens > 50 and decision.completion_tokens > 3
