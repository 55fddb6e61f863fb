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
