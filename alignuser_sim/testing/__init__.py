"""Test doubles shared by the project's tests (importable, so other packages' tests can use them). Imported
by tests only, never by production code.

- `ScriptedLLM` (fake_llm): the real LLMClient with the HTTP request replaced by a Python function;
- `ScriptedServer` (http_server): an OpenAI-compatible HTTP server on a local socket that plays a
  script of replies and faults (500, 429 + Retry-After, slow replies, dropped connections...);
- `fake_users`: the scripted user of `bench.fake_users`, in-process or behind a `ScriptedServer`.
"""

from alignuser_sim.testing.fake_llm import (
    FakeRequest,
    ScriptedLLM,
    connection_error,
    example_from_schema,
    http_error,
    timeout,
)
from alignuser_sim.testing.http_server import Fault, Reply, ScriptedServer, drop, hold, status

__all__ = [
    "FakeRequest",
    "Fault",
    "Reply",
    "ScriptedLLM",
    "ScriptedServer",
    "connection_error",
    "drop",
    "example_from_schema",
    "hold",
    "http_error",
    "status",
    "timeout",
]
