"""The LLM layer: the one contract every caller is typed against (`StructuredLLM`, `CallResult`), an async
client for OpenAI-compatible servers (vLLM) with its completion cache and accounting, the vLLM launcher,
and the embedded model. See docs/llm.md.

Importing this package is cheap: it never imports vLLM, torch or transformers (those load only in the
launched server process and in the model-conversion child process), and the `openai` SDK is imported on
the first request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alignuser_sim.llm.accounting import Accounting, LatencyHistogram
from alignuser_sim.llm.cache import CacheEntry, CompletionCache, ReplayMissError, cache_key
from alignuser_sim.llm.client import LLMClient
from alignuser_sim.llm.prompts import build_messages
from alignuser_sim.llm.protocol import CallResult, StructuredLLM, Usage, is_transient
from alignuser_sim.llm.schemas import json_schema_for, response_format_for
from alignuser_sim.llm.transport import Completion, TransportError

if TYPE_CHECKING:
    from alignuser_sim.llm.launcher import LauncherError, VLLMServer, embedded_endpoints
    from alignuser_sim.llm.model_prep import model_dir, prepare_model

__all__ = [
    "Accounting",
    "CacheEntry",
    "CallResult",
    "Completion",
    "CompletionCache",
    "LLMClient",
    "LatencyHistogram",
    "LauncherError",
    "ReplayMissError",
    "StructuredLLM",
    "TransportError",
    "Usage",
    "VLLMServer",
    "build_messages",
    "cache_key",
    "embedded_endpoints",
    "is_transient",
    "json_schema_for",
    "model_dir",
    "prepare_model",
    "response_format_for",
]

_LAZY = {
    "VLLMServer": "launcher",
    "LauncherError": "launcher",
    "embedded_endpoints": "launcher",
    "prepare_model": "model_prep",
    "model_dir": "model_prep",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'alignuser_sim.llm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
