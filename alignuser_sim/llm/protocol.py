"""The one LLM contract every caller is typed against.

An agent, the learner, the evaluation and the benchmarks need exactly this of a model: one structured
call (messages in, a validated pydantic instance or a counted failure out) and a snapshot of the
accounting. `LLMClient` (a real OpenAI-compatible server) and `testing.ScriptedLLM` (the same client minus
the socket) both satisfy it; so can any wrapper (a rate limiter, a recorder) that keeps the signature.

A failure is data, not an exception: `CallResult.failure` names its kind and `CallResult.transient` says
whether it was the transport's fault (the server was down, busy or slow: worth asking again later) or the
reply's (it did not validate: asking again gets the same answer from a seeded call).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)

# Status codes a server uses for "not now": the same request may succeed later (so may every 5xx).
TRANSIENT_STATUS = frozenset({408, 409, 425, 429})


def is_transient_status(status: int) -> bool:
    return status >= 500 or status in TRANSIENT_STATUS


def is_transient(kind: str | None) -> bool:
    """Whether a failure kind is the transport's (timeout, connection, HTTP 5xx, 408/409/425/429)."""
    if kind is None:
        return False
    if kind in ("timeout", "connection"):
        return True
    if kind.startswith("http_") and kind[5:].isdigit():
        return is_transient_status(int(kind[5:]))
    return False


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

    @property
    def transient(self) -> bool:
        """The failure was the transport's: the same call may succeed later (never cached, not journaled)."""
        return is_transient(self.failure)


class StructuredLLM(Protocol):
    """What every caller of a model may use: a structured call and the accounting's snapshot."""

    async def call(
        self,
        messages: Sequence[Mapping[str, Any]],
        output: type[T],
        *,
        seed: int | None = None,
        sampling: Mapping[str, Any] | None = None,
        schema: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> CallResult[T]: ...

    def snapshot(self) -> dict[str, Any]: ...


class NoLLM:
    """The model of a policy that makes no call (the `popularity` reference): nothing to start, nothing to
    count. A call reaching it is a bug in the caller; it fails as data, like any call, never silently."""

    async def call(self, messages: Sequence[Mapping[str, Any]], output: type[T], *, seed: int | None = None,
                   sampling: Mapping[str, Any] | None = None, schema: dict[str, Any] | None = None,
                   model: str | None = None) -> CallResult[T]:
        return CallResult(None, None, None, Usage(), 0.0, 0, False, "", failure="no_llm",
                          error="this policy makes no LLM call")

    def snapshot(self) -> dict[str, Any]:
        from alignuser_sim.llm.accounting import Accounting

        return Accounting().snapshot()
