"""A deterministic stand-in for the LLM's page decisions: what the fake server answers, and what tests script.

`fake_decision(messages, schema)` answers a page the way a scripted user would: it reads the page's item
ids from the schema's `items` keys and decides from a hash of the persona and the item, so the same prompt
always gets the same answer (like a completion cache hit) and different personas behave differently. The
benchmarks' `FakeServer` answers with it; `alignuser_sim.testing.fake_users` wraps it for tests (in-process
and behind a scripted socket).
"""

from __future__ import annotations

import zlib
from typing import Any


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
