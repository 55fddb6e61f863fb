"""A scripted fake LLM for unit tests: the real LLMClient with its HTTP request replaced by a function.

Everything but the network is the real client: schema generation, validation and the validation retry,
transport retries (with zero backoff), the completion cache and the accounting. So a simulation test
written against `ScriptedLLM` exercises exactly the code path it will use against vLLM.

    llm = ScriptedLLM()                                    # every call gets a schema-valid example
    llm = ScriptedLLM(lambda req: Decision(...))           # a function of the request
    llm = ScriptedLLM(script=[timeout(), '{"bad": 1}', Decision(...)])   # one step per request

A step (returned by the responder or taken from the script; the last script step repeats) may be:
- a pydantic instance, a dict or a list: sent back as JSON;
- a str: sent back as the raw completion text (use it for invalid or truncated JSON);
- a `Completion`: full control (finish_reason "length", token counts);
- a `TransportError` (see `timeout()`, `connection_error()`, `http_error()`): raised as the request's
  failure, retried like a real one;
- None: a valid example generated from the output's JSON schema (deterministic per request).
`requests` records every request as a `FakeRequest` (messages, schema, output model, sampling).
"""

from __future__ import annotations

import contextvars
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from alignuser_sim.llm.balancer import Endpoint
from alignuser_sim.llm.client import LLMClient
from alignuser_sim.llm.protocol import CallResult, T
from alignuser_sim.llm.schemas import json_schema_for
from alignuser_sim.llm.transport import Completion, TransportError

_current_output: contextvars.ContextVar[type[BaseModel] | None] = contextvars.ContextVar(
    "_current_output", default=None
)


@dataclass
class FakeRequest:
    n: int  # 0-based index of the request
    messages: list[dict[str, Any]]
    schema: dict[str, Any]
    output: type[BaseModel] | None
    params: dict[str, Any]  # model, temperature, top_p, max_tokens, seed (when sent)

    @property
    def prompt(self) -> str:
        """All message contents joined (handy for asserting what a prompt contains)."""
        return "\n".join(str(m.get("content", "")) for m in self.messages)


Responder = Callable[[FakeRequest], Any]


def timeout() -> TransportError:
    return TransportError("timeout", "scripted timeout", retryable=True)


def connection_error() -> TransportError:
    return TransportError("connection", "scripted connection error", retryable=True)


def http_error(status: int, message: str = "scripted error", retry_after: float | None = None) -> TransportError:
    return TransportError.for_status(status, f"HTTP {status}: {message}", retry_after)


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class ScriptedLLM(LLMClient):
    """See the module docstring. Defaults: cache off, zero backoff, concurrency 64."""

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        script: Sequence[Any] | None = None,
        model: str = "scripted",
        cache: Any = "off",
        **kwargs: Any,
    ):
        kwargs.setdefault("backoff_base_s", 0.0)
        kwargs.setdefault("backoff_max_s", 0.0)
        kwargs.setdefault("concurrency", 64)
        super().__init__(["http://scripted.invalid/v1"], model=model, cache=cache, **kwargs)
        self.responder = responder
        self.script = list(script) if script is not None else None
        self.requests: list[FakeRequest] = []

    async def call(self, messages: Sequence[Mapping[str, Any]], output: type[T], **kwargs: Any) -> CallResult[T]:
        token = _current_output.set(output)
        try:
            return await super().call(messages, output, **kwargs)
        finally:
            _current_output.reset(token)

    async def _send(self, endpoint: Endpoint, request: dict[str, Any]) -> Completion:
        output = _current_output.get()
        schema = (request["response_format"]["json_schema"]["schema"] if "response_format" in request
                  else json_schema_for(output) if output is not None else {})
        params = {k: v for k, v in request.items() if k not in ("messages", "response_format")}
        req = FakeRequest(len(self.requests), [dict(m) for m in request["messages"]], schema, output, params)
        self.requests.append(req)
        if self.script is not None:
            step = self.script[min(req.n, len(self.script) - 1)] if self.script else None
        elif self.responder is not None:
            step = self.responder(req)
        else:
            step = None
        if isinstance(step, TransportError):
            raise step
        if isinstance(step, Completion):
            return step
        if step is None:
            step = example_from_schema(schema, random.Random(req.n))
        if isinstance(step, BaseModel):
            text = step.model_dump_json()
        elif isinstance(step, str):
            text = step
        else:
            text = json.dumps(step)
        return Completion(text=text, finish_reason="stop", prompt_tokens=_approx_tokens(req.prompt),
                          completion_tokens=_approx_tokens(text))


def example_from_schema(schema: dict[str, Any], rng: random.Random | None = None) -> Any:
    """A JSON value valid for `schema` (the subset pydantic emits: $ref, anyOf, enum, const, object,
    array with min/maxItems, string with min/maxLength, integer/number with bounds, boolean, null)."""
    rng = rng or random.Random(0)
    defs = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = defs[node["$ref"].split("/")[-1]]
        return node

    def gen(node: dict[str, Any]) -> Any:
        node = resolve(node)
        if "const" in node:
            return node["const"]
        if "enum" in node:
            return rng.choice(node["enum"])
        for key in ("anyOf", "oneOf"):
            if key in node:
                options = [o for o in node[key] if resolve(o).get("type") != "null"] or node[key]
                return gen(rng.choice(options))
        if "allOf" in node:
            return gen(node["allOf"][0])
        kind = node.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object":
            return {name: gen(sub) for name, sub in node.get("properties", {}).items()}
        if kind == "array":
            low = node.get("minItems", 1)
            high = node.get("maxItems", low + 2)
            return [gen(node.get("items", {})) for _ in range(rng.randint(low, max(low, high)))]
        if kind == "string":
            low, high = node.get("minLength", 0), node.get("maxLength", 24)
            words = ["fine", "ok", "good", "meh", "great", "nice", "bad", "sure"]
            text = " ".join(rng.choice(words) for _ in range(4))
            text = text[:high]
            return text + "x" * max(0, low - len(text))
        if kind == "integer":
            low = node.get("minimum")
            if low is None and "exclusiveMinimum" in node:
                low = node["exclusiveMinimum"] + 1
            low = int(low or 0)
            high = node.get("maximum")
            if high is None and "exclusiveMaximum" in node:
                high = node["exclusiveMaximum"] - 1
            return rng.randint(low, int(high) if high is not None else low + 10)
        if kind == "number":
            low = float(node.get("minimum", 0.0))
            high = float(node.get("maximum", low + 1.0))
            return round(rng.uniform(low, high), 3)
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "null":
            return None
        return None

    return gen(schema)
