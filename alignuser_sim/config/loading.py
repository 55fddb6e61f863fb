"""Reading a scenario file: YAML in, a validated `Scenario` out, or ONE line naming the file, the key path and
the problem (`scenarios/x.yaml: population.size: must be > 0`): a person fixes problems one at a time.
Relative paths in a scenario are taken from the file's folder, so a scenario means the same from any cwd.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alignuser_sim.config.models import Scenario
from alignuser_sim.errors import ScenarioError


def _short_message(error: dict[str, Any]) -> str:
    """pydantic's error, said the way a person fixing a YAML file wants to read it."""
    kind, ctx = error["type"], error.get("ctx") or {}
    ctx = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
    messages = {
        "extra_forbidden": "unknown key",
        "missing": "required key is missing",
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than": "must be < {lt}",
        "less_than_equal": "must be <= {le}",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "path_type": "must be a path",
    }
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}".replace("'", "")
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    template = messages.get(kind)
    return template.format(**ctx) if template else error["msg"].lower()


def _key_path(loc: tuple[Any, ...]) -> str:
    # pydantic puts union branch names ("int", "constrained-int", ...) into loc; they mean nothing to a user
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in ("constrained-int", "int")))]
    return ".".join(parts)


def scenario_from_dict(data: Any, file: str | Path = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(file, "", "must be a YAML mapping of keys to values")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        # one line: the first problem (a person fixes them one at a time; the rest follow on re-run)
        errors = exc.errors(include_url=False)
        first = errors[0]
        message = _short_message(first)
        key = _key_path(first["loc"])
        # a model-level validator reports "key: message" in its text
        if not key or first["type"] == "value_error":
            head, sep, tail = message.partition(": ")
            if sep and re.fullmatch(r"[\w./]+", head):
                key = f"{key}.{head.split('/')[0]}" if key else head
                message = tail
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ScenarioError(file, key, message + more) from None
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read, validate and resolve one scenario file (relative paths are taken from the file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(path, "", "file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(path, "", "not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(path, where, f"invalid YAML: {problem}") from None
    if data is None:
        raise ScenarioError(path, "", "empty file")
    scenario = scenario_from_dict(data, path)
    if not scenario.name:
        scenario.name = path.stem
    base = path.resolve().parent
    ds = scenario.dataset
    for field in ("path", "interactions", "items", "users"):
        value = getattr(ds, field)
        if value is not None and not value.is_absolute():
            setattr(ds, field, (base / value).resolve())
    if scenario.learning.folder is not None and not scenario.learning.folder.is_absolute():
        scenario.learning.folder = (base / scenario.learning.folder).resolve()
    return scenario


def dump_scenario(scenario: Scenario) -> str:
    """The resolved scenario as YAML (written next to every run's results)."""
    return yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)
