"""The LLM client against a REAL vLLM server running the embedded SmolLM2-135M (session fixture)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from alignuser_sim.bench.pages import FEELING_MAX, THOUGHT_MAX, page_call
from alignuser_sim.llm import LLMClient, build_messages

from .fixtures_llm import vllm_metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

N_CALLS = 32
# top_p 1: a top_p < 1 sorts the 49k-token vocabulary per sequence per step, ~20% slower on this CPU;
# max_tokens 800: above the worst case of the schema (200 + 4 x 80 characters of text + structure)
SAMPLING = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 800}
TOKENS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")


def _client(server, cache_path, **kwargs) -> LLMClient:
    options = dict(model="smollm2", sampling=SAMPLING, concurrency=N_CALLS, timeout_s=600, max_retries=2,
                   cache="read_write", cache_path=cache_path)
    options.update(kwargs)
    return LLMClient([server.base_url], **options)


async def _run_all(client: LLMClient, calls):
    try:
        return await asyncio.gather(*[client.call(msgs, model, seed=i) for i, (msgs, model) in enumerate(calls)])
    finally:
        await client.aclose()


def _settled_metrics(server, expect: dict[str, float] | None = None) -> dict[str, float]:
    """/metrics, re-read for up to 5 s until the counters match `expect` (they may trail the replies)."""
    deadline = time.monotonic() + 5
    while True:
        metrics = vllm_metrics(server.base_url)
        if expect is None or all(metrics.get(k) == v for k, v in expect.items()) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.2)


@pytest.fixture(scope="module")
def first_run(vllm_server, tmp_path_factory):
    cache_path = tmp_path_factory.mktemp("llm-cache") / "completions.sqlite"
    run_dir = tmp_path_factory.mktemp("llm-run")
    calls = [page_call(i) for i in range(N_CALLS)]
    before = vllm_metrics(vllm_server.base_url)
    client = _client(vllm_server, cache_path, run_dir=run_dir)
    t0 = time.monotonic()
    results = asyncio.run(_run_all(client, calls))
    seconds = time.monotonic() - t0
    snap = client.snapshot()
    counted = (snap["prompt_tokens"], snap["completion_tokens"])
    expect = {k: before.get(k, 0.0) + v for k, v in zip(TOKENS, counted, strict=True)}
    after = _settled_metrics(vllm_server, expect)
    client.close()
    valid = sum(r.ok for r in results)
    print(f"\n{N_CALLS} concurrent page decisions: {valid} valid on first try or retry, {seconds:.1f}s, "
          f"{snap['completion_tokens'] / seconds:.1f} output tok/s, failures {snap['failures']}, "
          f"retries {snap['retries']}")
    return SimpleNamespace(calls=calls, results=results, snap=snap, before=before, after=after,
                           cache_path=cache_path, run_dir=run_dir)


def test_concurrent_page_decisions_all_validate(first_run):
    failures = [(r.failure, r.error, r.raw) for r in first_run.results if not r.ok]
    assert not failures, f"{len(failures)} of {N_CALLS} calls failed: {failures[:3]}"
    for (_messages, model), result in zip(first_run.calls, first_run.results, strict=True):
        decision = result.value
        assert isinstance(decision, model)
        page_ids = set(model.model_json_schema()["$defs"]["ItemDecision"]["properties"]["item_id"]["enum"])
        assert len(decision.items) == len(page_ids) and {i.item_id for i in decision.items} <= page_ids
        assert len(decision.thought) <= THOUGHT_MAX and all(len(i.feeling) <= FEELING_MAX for i in decision.items)
        assert decision.action in ("next_page", "exit") and result.finish_reason == "stop"
    assert first_run.snap["calls"] == N_CALLS and first_run.snap["ok"] == N_CALLS


def test_token_accounting_matches_server_usage(first_run):
    snap, before, after = first_run.snap, first_run.before, first_run.after
    assert snap["prompt_tokens"] == sum(r.usage.prompt_tokens for r in first_run.results) > 0
    assert snap["completion_tokens"] == sum(r.usage.completion_tokens for r in first_run.results) > 0
    # and the server's own counters moved by exactly as much
    assert after["vllm:prompt_tokens_total"] - before.get("vllm:prompt_tokens_total", 0) == snap["prompt_tokens"]
    assert (after["vllm:generation_tokens_total"] - before.get("vllm:generation_tokens_total", 0)
            == snap["completion_tokens"])
    assert snap["requests"] == N_CALLS + sum(snap["retries"].values())
    lat = snap["latency_s"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]


def test_shared_prefix_hits_the_prefix_cache(first_run):
    hits = first_run.after["vllm:prefix_cache_hits_total"] - first_run.before.get("vllm:prefix_cache_hits_total", 0)
    queries = (first_run.after["vllm:prefix_cache_queries_total"]
               - first_run.before.get("vllm:prefix_cache_queries_total", 0))
    assert queries > 0 and hits / queries > 0.3  # system text + 4 personas are shared by 32 prompts


def test_rerun_is_served_from_the_cache_without_requests(first_run, vllm_server):
    before = vllm_metrics(vllm_server.base_url)
    client = _client(vllm_server, first_run.cache_path)
    results = asyncio.run(_run_all(client, first_run.calls))
    client.close()
    snap = client.snapshot()
    assert snap["requests"] == 0 and snap["cache_hits"] == N_CALLS
    assert all(r.from_cache for r in results)
    assert [r.value for r in results] == [r.value for r in first_run.results]
    after = vllm_metrics(vllm_server.base_url)
    assert all(after[k] == before[k] for k in TOKENS)


def test_prompt_longer_than_the_context_is_a_counted_failure(vllm_server, tmp_path):
    messages = build_messages("You answer yes or no.", "word " * 3000)
    client = _client(vllm_server, tmp_path / "c.sqlite", cache="off")
    [result] = asyncio.run(_run_all(client, [(messages, page_call(0)[1])]))
    assert result.failure == "http_400" and result.attempts == 1
    assert "context" in result.error.lower() or "token" in result.error.lower()
    assert client.snapshot()["failures"] == {"http_400": 1}
