"""The scripted fake LLM shared by unit tests (alignuser_sim.testing.ScriptedLLM)."""

from __future__ import annotations

import asyncio
import random

import pytest
from pydantic import BaseModel

from alignuser_sim.bench.pages import page_call, page_decision_model
from alignuser_sim.llm import Completion, build_messages, json_schema_for
from alignuser_sim.testing import ScriptedLLM, example_from_schema, http_error, timeout

pytestmark = pytest.mark.timeout(30)


def test_default_replies_are_schema_valid_examples():
    llm = ScriptedLLM()

    async def go():
        return [await llm.call(*page_call(i)) for i in range(20)]

    results = asyncio.run(go())
    assert all(r.ok for r in results)
    allowed = json_schema_for(page_call(0)[1])["$defs"]["ItemDecision"]["properties"]["item_id"]["enum"]
    assert {item.item_id for item in results[0].value.items} <= set(allowed)
    snap = llm.snapshot()
    assert snap["calls"] == 20 and snap["ok"] == 20 and snap["prompt_tokens"] > 0
    assert llm.requests[0].output is page_call(0)[1] and "Recommended movies" in llm.requests[0].prompt


def test_responder_and_script_steps():
    Decision = page_decision_model(("a", "b"))
    good = Decision(thought="hm", items=[
        {"item_id": "a", "watch": True, "rating": 5, "feeling": "yes"},
        {"item_id": "b", "watch": False, "rating": None, "feeling": "no"},
    ], action="exit")
    messages = build_messages("sys", "page")

    llm = ScriptedLLM(lambda req: good)
    assert asyncio.run(llm.call(messages, Decision)).value == good

    llm = ScriptedLLM(script=[timeout(), http_error(503), "not json", Completion('{"x', "length"), good.model_dump()])
    result = asyncio.run(llm.call(messages, Decision))
    # two transport retries, then two invalid completions: the validation retry is spent -> failure
    assert result.failure == "length" and len(llm.requests) == 4
    assert llm.snapshot()["retries"] == {"timeout": 1, "http_503": 1, "invalid_json": 1}

    llm = ScriptedLLM(script=[http_error(400, "bad")])
    result = asyncio.run(llm.call(messages, Decision))
    assert result.failure == "http_400" and len(llm.requests) == 1


def test_fake_uses_the_real_cache(tmp_path):
    calls = build_messages("sys", "page")
    Decision = page_decision_model(("a", "b"))
    first = ScriptedLLM(cache="read_write", cache_path=tmp_path / "c.sqlite")
    second = ScriptedLLM(cache="read_write", cache_path=tmp_path / "c.sqlite")
    r1 = asyncio.run(first.call(calls, Decision, seed=3))
    r2 = asyncio.run(second.call(calls, Decision, seed=3))
    assert r1.value == r2.value and r2.from_cache and second.requests == []


def test_example_from_schema_handles_pydantic_shapes():
    class Inner(BaseModel):
        n: int
        tags: list[str]

    class Outer(BaseModel):
        inner: Inner
        maybe: Inner | None
        score: float
        flag: bool

    for seed in range(10):
        value = example_from_schema(json_schema_for(Outer), random.Random(seed))
        Outer.model_validate(value)
