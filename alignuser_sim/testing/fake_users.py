"""A deterministic stand-in for the LLM's page decisions, for simulation tests and cache benchmarks.

`fake_decision(messages, schema)` answers a page the way a scripted user would: it reads the page's item
ids from the schema's `items` keys and decides from a hash of the persona and the item, so the same prompt always
gets the same answer (like a completion cache hit) and different personas behave differently. Use it
in-process (`ScriptedLLM(fake_user_responder)`) or behind a real socket (`fake_user_server()`), which is
how Ray shards in tests reach it.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from alignuser_sim.testing.http_server import Reply, ScriptedServer


def _ids(schema: dict[str, Any]) -> list[str]:
    return list(schema["properties"]["items"]["properties"])


def fake_decision(messages: list[dict[str, Any]], schema: dict[str, Any], exit_every: int = 4) -> dict[str, Any]:
    persona = str(messages[0].get("content", ""))
    page = str(messages[-1].get("content", ""))
    items = {}
    for item_id in _ids(schema):
        h = zlib.crc32(f"{persona}|{item_id}".encode())
        watch = h % 3 == 0
        items[item_id] = {"watch": watch, "rating": 1 + (h >> 3) % 5 if watch else None,
                          "feeling": "looks good" if watch else "not for me"}
    leave = zlib.crc32(page.encode()) % exit_every == 0
    return {"thought": "scripted user", "items": items, "action": "exit" if leave else "next_page"}


def fake_user_responder(request: Any) -> dict[str, Any]:
    """For `alignuser_sim.testing.fake_llm.ScriptedLLM`."""
    return fake_decision(request.messages, request.schema)


def fake_user_server(delay_s: float = 0.0) -> ScriptedServer:
    """An OpenAI-compatible HTTP server answering page decisions (start it with `with`)."""

    def respond(body: dict[str, Any], n: int) -> Reply:
        schema = body["response_format"]["json_schema"]["schema"]
        text = json.dumps(fake_decision(body["messages"], schema))
        prompt = sum(len(str(m.get("content", ""))) for m in body["messages"]) // 4
        return Reply(text, prompt_tokens=prompt, completion_tokens=len(text) // 4, delay_s=delay_s)

    return ScriptedServer(respond)
