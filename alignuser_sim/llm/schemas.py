"""JSON schemas for structured outputs, generated from pydantic models.

`response_format_for(Model)` gives the `response_format` value sent with every parsed call:
`{"type": "json_schema", "json_schema": {"name": ..., "schema": ..., "strict": true}}`.

The schema is made *strict* the way OpenAI defines it (every object closes with
`additionalProperties: false` and lists every property as required) so that a grammar-constrained
server (vLLM with xgrammar) cannot emit extra or missing keys. Titles are dropped: they mean nothing to
the grammar and only lengthen it. The result is cached per model class.

`validate_reply` is the way back: a reply's text checked against the same model, a failure named by kind
(invalid_json, schema, or length when the reply was cut at `max_tokens`) instead of raised.
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

_NAME_OK = re.compile(r"[^a-zA-Z0-9_-]")

# keys whose value is a mapping of *names* to schemas (a property may itself be called "title")
_NAMED_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def _strictify(node: Any) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "title" and isinstance(value, str):
                continue
            if key in _NAMED_MAPS and isinstance(value, dict):
                out[key] = {name: _strictify(sub) for name, sub in value.items()}
            else:
                out[key] = _strictify(value)
        if out.get("type") == "object" or "properties" in out:
            props = out.get("properties", {})
            out["required"] = list(props)
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(node, list):
        return [_strictify(v) for v in node]
    return node


@lru_cache(maxsize=512)
def _schema_cached(model: type[BaseModel]) -> dict[str, Any]:
    return _strictify(model.model_json_schema())


def json_schema_for(model: type[BaseModel]) -> dict[str, Any]:
    """The strict JSON schema of `model` (a fresh copy: callers may not mutate the cached one)."""
    return copy.deepcopy(_schema_cached(model))


def schema_name(model: type[BaseModel]) -> str:
    return _NAME_OK.sub("_", model.__name__)[:64] or "output"


def response_format_for(model: type[BaseModel], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": schema_name(model),
            "schema": schema if schema is not None else _schema_cached(model),
            "strict": True,
        },
    }


def validate_reply(
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


# --- reply budgets ----------------------------------------------------------------------------------------

_SCALARS = {"boolean": 5, "null": 4, "number": 24}  # "false"; "null"; a float's longest plain repr


def worst_case_chars(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> int | None:
    """The length of the longest compact JSON text `schema` admits, or None when it admits unbounded ones (a
    string without maxLength, an array without maxItems, an object open to extra keys).

    A grammar-constrained server without whitespace (xgrammar, `disable_any_whitespace`) writes exactly
    compact JSON, so this bounds a reply: a token covers at least one character of ASCII text, so the bound
    in characters is a bound in tokens. Strings are counted as ASCII without escapes (`maxLength` characters);
    a reply of quotes or non-ASCII text could exceed it, which is why free text gets a margin (`reply_budget`).
    """
    if defs is None:
        defs = schema.get("$defs", {})
    if "$ref" in schema:
        return worst_case_chars(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "const" in schema:
        return len(json.dumps(schema["const"], separators=(",", ":")))
    if "enum" in schema:
        return max(len(json.dumps(v, separators=(",", ":"))) for v in schema["enum"]) if schema["enum"] else 0
    for key in ("anyOf", "oneOf"):
        if key in schema:
            sizes = [worst_case_chars(s, defs) for s in schema[key]]
            return None if any(s is None for s in sizes) else max(sizes)  # type: ignore[type-var]
    kind = schema.get("type")
    if isinstance(kind, list):
        sizes = [worst_case_chars({**schema, "type": k}, defs) for k in kind]
        return None if any(s is None for s in sizes) else max(sizes)  # type: ignore[type-var]
    if kind == "string":
        return None if "maxLength" not in schema else 2 + int(schema["maxLength"])
    if kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        return 20 if lo is None or hi is None else max(len(str(int(lo))), len(str(int(hi))))
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        if "maxItems" not in schema:
            return None
        n = int(schema["maxItems"])
        item = worst_case_chars(schema.get("items", {}), defs) if n else 0
        return None if item is None else 2 + n * item + max(0, n - 1)
    if kind == "object" or "properties" in schema:
        if schema.get("additionalProperties", True) is not False:
            return None
        total = 2
        props = schema.get("properties", {})
        for name, sub in props.items():
            size = worst_case_chars(sub, defs)
            if size is None:
                return None
            total += len(json.dumps(name)) + 1 + size
        return total + max(0, len(props) - 1)
    return None


def reply_budget(schema: dict[str, Any], fallback: int, margin: float = 0.1, extra: int = 16) -> int:
    """`max_tokens` for a reply under `schema`: its worst case plus a margin when bounded (so no reply the
    schema admits can be cut at the budget, whatever the ids or genre names), else `fallback` (the scenario's
    `llm.sampling.max_tokens`)."""
    chars = worst_case_chars(schema)
    return fallback if chars is None else int(chars * (1 + margin)) + extra
