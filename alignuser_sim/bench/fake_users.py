"""A deterministic stand-in for the LLM's replies: what the fake server answers, and what tests script.

`fake_decision(messages, schema)` answers a page the way a scripted user would: it reads the page's item
ids from the schema's `items` keys and decides from a hash of the persona and the item, so the same prompt
always gets the same answer (like a completion cache hit) and different personas behave differently. A
schema of another shape (another decision format, a learning reply) gets `schema_example`, the smallest
instance the schema admits, so the fake server never breaks on a format it was not written for.
`fake_text(messages, max_tokens)` answers free text the way the Agent4Rec-style loop asks for it (its
`MOVIE: ...; ALIGN: ...`, `[EXIT]`/`[NEXT]` lines), so its regular expressions have something to find.
The benchmarks' `FakeServer` answers with these; `alignuser_sim.testing.fake_users` wraps them for tests.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

_TITLE = re.compile(r"^<- (.+?) -> <- History ratings")


def _ids(schema: dict[str, Any]) -> list[str]:
    return list(schema["properties"]["items"]["properties"])


def _h(*parts: str) -> int:
    return zlib.crc32("|".join(parts).encode())


def fake_decision(messages: list[dict[str, Any]], schema: dict[str, Any], exit_every: int = 4) -> dict[str, Any]:
    persona = str(messages[0].get("content", ""))
    page = str(messages[-1].get("content", ""))
    items = {}
    for item_id in _ids(schema):
        h = _h(persona, item_id)
        watch = h % 3 == 0
        items[item_id] = {"watch": watch, "rating": 1 + (h >> 3) % 5 if watch else None,
                          "feeling": "looks good" if watch else "not for me"}
    leave = zlib.crc32(page.encode()) % exit_every == 0
    return {"thought": "scripted user", "items": items, "action": "exit" if leave else "next_page"}


def is_page_schema(schema: dict[str, Any]) -> bool:
    items = schema.get("properties", {}).get("items", {})
    return isinstance(items, dict) and isinstance(items.get("properties"), dict) and bool(items["properties"])


def fake_reply(messages: list[dict[str, Any]], schema: dict[str, Any], exit_every: int = 4) -> dict[str, Any]:
    """Any structured reply: `fake_decision` for a page keyed by item ids; for a compact format (a `watched`
    object keyed by page positions) the same hash-chosen watches and exits; else `schema_example`."""
    if is_page_schema(schema):
        return fake_decision(messages, schema, exit_every)
    reply = schema_example(schema)
    watched = schema.get("properties", {}).get("watched", {}).get("properties")
    if isinstance(reply, dict) and isinstance(watched, dict):
        persona, page = str(messages[0].get("content", "")), str(messages[-1].get("content", ""))
        reply["watched"] = {pos: 1 + (_h(persona, page, pos) >> 3) % 5 for pos in watched
                            if _h(persona, page, pos) % 3 == 0}
        leave = zlib.crc32(page.encode()) % exit_every == 0
        if "exit" in reply:
            reply["exit"] = leave
        elif "action" in reply:
            reply["action"] = "exit" if leave else "next_page"
    return reply


def schema_example(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """The smallest instance of a JSON schema (required keys only, first enum value, min lengths)."""
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return schema_example(root.get("$defs", {}).get(name, {}), root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return schema_example(options[0], root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: schema_example(props.get(k, {}), root) for k in schema.get("required", [])}
    if kind == "array":
        return [schema_example(schema.get("items", {}), root) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 0))
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    return None


def fake_text(messages: list[dict[str, Any]], max_tokens: int = 16) -> str:
    """Free text: an Agent4Rec-style page reaction or next decision where the prompt asks for one, else filler
    of about `max_tokens` tokens."""
    persona = str(messages[0].get("content", ""))
    last = str(messages[-1].get("content", ""))
    if "ALIGN: [yes or no]" in last:
        titles = [m.group(1) for m in map(_TITLE.match, last.splitlines()) if m]
        lines = [f"MOVIE: {t}; ALIGN: {'yes' if _h(persona, t) % 2 else 'no'}; REASON: fits my taste" for t in titles]
        chosen = [t for t in titles if _h(persona, t) % 2]
        lines.append(f"NUM: {len(chosen)}; WATCH: {', '.join(chosen)}; REASON: they fit;")
        lines += [f"MOVIE: {t}; RATING: {1 + (_h(persona, t) >> 3) % 5}; FEELING: it was fine" for t in chosen]
        return "\n".join(lines)
    if "[EXIT]" in last:
        leave = _h(persona, last) % 3 == 0
        return ("NEGATIVE: nothing new\n[EXIT]; Reason: tired" if leave else
                "POSITIVE: good picks\n[NEXT]; Reason: curious")
    return "ok " * max(1, max_tokens // 2)
