"""One HTTP request to an OpenAI-compatible server: a `Completion` back, or a `TransportError` naming why not.

Everything the client knows about the wire lives here: which base URL a user's address means, how the
`openai` SDK's exceptions map to failure kinds (timeout, connection, http_<status>, bad_response), whether
a kind is worth retrying (the contract's `is_transient_status`), and how long the server asked us to wait
(`Retry-After` / `retry-after-ms`), and which API key it sends (`api_key_from_env`: the scenario names an
environment variable, never the key, so the key stays out of scenario files and run folders). The SDK is
imported on the first request: it is heavy to import.
"""

from __future__ import annotations

import email.utils
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from alignuser_sim.errors import UserError
from alignuser_sim.llm.logprobs import first_token_text
from alignuser_sim.llm.protocol import is_transient_status

NO_KEY = "EMPTY"  # what the SDK sends when the servers need no key (it refuses an empty one)
AUTH_STATUS = (401, 403)


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

    @classmethod
    def for_status(cls, status: int, message: str, retry_after: float | None = None) -> TransportError:
        """An HTTP error status: retried when the server means "not now" (408, 409, 425, 429, 5xx)."""
        return cls(f"http_{status}", message, retryable=is_transient_status(status), retry_after=retry_after)


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


def api_key_from_env(name: str | None) -> str | None:
    """The key held by the environment variable `name` (`llm.api_key_env`); None when no variable is named. A
    named variable that is unset or empty is a setup mistake: one line, before any server starts."""
    if not name:
        return None
    key = os.environ.get(name, "").strip()
    if not key:
        raise UserError(f"llm.api_key_env: the environment variable {name} is not set (it must hold the API key "
                        "the LLM servers require)")
    return key


def auth_hint(status: int, api_key_env: str | None) -> str:
    """What a 401/403 means for the user, on one line."""
    if api_key_env:
        return f"HTTP {status}: the server refused the API key in ${api_key_env}"
    return (f"HTTP {status}: the server requires an API key; set llm.api_key_env to the name of an environment "
            "variable holding it")


def openai_client(url: str, api_key: str, timeout_s: float) -> Any:
    """An AsyncOpenAI for one endpoint, with the SDK's own retries off (the client's policy retries)."""
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=timeout_s)


async def send_chat(sdk: Any, request: dict[str, Any], timeout_s: float) -> Completion:
    """One chat-completions request through an AsyncOpenAI. Raises TransportError when no completion came back."""
    import openai

    try:
        resp = await sdk.chat.completions.create(**request, timeout=timeout_s)
    except openai.APITimeoutError as exc:
        raise TransportError("timeout", f"timed out after {timeout_s:g}s", retryable=True) from exc
    except openai.APIConnectionError as exc:
        cause = exc.__cause__ or exc
        raise TransportError("connection", f"{type(cause).__name__}: {cause}", retryable=True) from exc
    except openai.APIStatusError as exc:
        headers = dict(exc.response.headers) if exc.response is not None else None
        raise TransportError.for_status(exc.status_code, _status_message(exc), parse_retry_after(headers)) from exc
    except openai.APIError as exc:  # a 2xx the SDK could not read
        raise TransportError("bad_response", str(exc), retryable=True) from exc
    if not resp.choices:
        raise TransportError("bad_response", "reply without choices", retryable=True)
    choice = resp.choices[0]
    usage = resp.usage
    text = choice.message.content if choice.message is not None else None
    if request.get("logprobs"):  # a call read by its first token's alternatives (llm/logprobs.py)
        text = first_token_text(choice.logprobs)
    return Completion(
        text=text,
        finish_reason=choice.finish_reason,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
    )


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
