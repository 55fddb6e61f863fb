"""Reading a scenario file: YAML in, a validated `Scenario` out, or ONE line naming the file, the key path and
the problem (`scenarios/x.yaml: population.size: must be > 0`): a person fixes problems one at a time.
Relative paths in a scenario are taken from the file's folder, so a scenario means the same from any cwd.

The YAML is read by a safe loader that also refuses what a scenario never needs and a hostile file uses to
hurt: a key given twice (YAML keeps the last one silently), nesting deeper than `MAX_DEPTH` (the composer
recurses: 20,000 levels would be a RecursionError), and aliases that expand beyond `MAX_SIZE` (nodes and characters)
or refer to themselves (a "billion laughs" file is small, but validating and writing it back expands it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alignuser_sim.config.models import Scenario
from alignuser_sim.errors import ScenarioError

MAX_DEPTH = 64  # levels of nesting, aliases expanded; a scenario needs about 5
MAX_SIZE = 10_000_000  # YAML nodes plus the characters of their scalars, aliases counted as what they stand for

_MERGE = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A YAML file the loader will not read: `line` (1-based) and why."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line, self.message = line, message


class _ScenarioLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` refusing duplicate keys and nesting deeper than MAX_DEPTH while it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(self.peek_event().start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue  # merged keys may be overridden (that is what `<<` is for)
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                earlier = first.get(key)
            except TypeError:  # unhashable: SafeConstructor says so
                continue
            if earlier is not None:
                raise _Refused(line, f"duplicate key '{key}' (first at line {earlier})")
            first[key] = line
        return super().construct_mapping(node, deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Size and depth of the document with every alias expanded, without expanding it: an iterative
    post-order walk over the node graph (aliases make it a DAG, or a cycle, which is refused)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        line = node.start_mark.line + 1
        if finished:
            open_nodes.discard(key)
            kids = _children(node)
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            size[key] = 1 + own + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_SIZE:
                raise _Refused(line, f"too big with its aliases expanded (over {MAX_SIZE:,} values and characters)")
            if depth[key] > MAX_DEPTH:
                raise _Refused(line, f"aliases expand to nesting deeper than {MAX_DEPTH} levels")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _Refused(line, "an alias refers to the value that contains it")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in _children(node) if id(kid) not in size)


def _read_yaml(text: str) -> Any:
    """The document's data, or `_Refused` / `yaml.YAMLError`."""
    loader = _ScenarioLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


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
        "finite_number": "must be a finite number",
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
    except OSError as exc:
        raise ScenarioError(path, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = _read_yaml(text)
    except _Refused as exc:
        raise ScenarioError(path, f"line {exc.line}" if exc.line else "", exc.message) from None
    except RecursionError:  # MAX_DEPTH keeps the composer well inside the limit; a last resort
        raise ScenarioError(path, "", f"nested deeper than {MAX_DEPTH} levels") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(path, where, f"invalid YAML: {problem}") from None
    if data is None:
        raise ScenarioError(path, "", "empty file")
    scenario = scenario_from_dict(data, path)
    if not scenario.name:
        try:
            scenario.name = path.stem
        except ValidationError as exc:  # a file named '...yaml'
            raise ScenarioError(path, "name", _short_message(exc.errors(include_url=False)[0])) from None
    base = path.resolve().parent
    ds = scenario.dataset
    for field in ("path", "interactions", "items", "users"):
        value = getattr(ds, field)
        if value is not None and not value.is_absolute():
            setattr(ds, field, (base / value).resolve())
    if scenario.learning.folder is not None and not scenario.learning.folder.is_absolute():
        scenario.learning.folder = (base / scenario.learning.folder).resolve()
    return scenario


def absolute_paths(scenario: Scenario) -> Scenario:
    """A copy whose paths are absolute, taken from the current directory as the run that uses them does:
    written into a run folder, it means the same to a `--resume` from anywhere (a relative `output_dir` or
    learning folder would otherwise be looked up from the resuming shell's directory; a relative dataset
    path from the run folder's)."""
    copy = scenario.model_copy(deep=True)
    ds = copy.dataset
    for field in ("path", "interactions", "items", "users"):
        value = getattr(ds, field)
        if value is not None:
            setattr(ds, field, value.absolute())
    if copy.learning.folder is not None:
        copy.learning.folder = copy.learning.folder.absolute()
    copy.llm.adapters = {name: folder.absolute() for name, folder in copy.llm.adapters.items()}
    copy.output_dir = copy.output_dir.absolute()
    return copy


def dump_scenario(scenario: Scenario) -> str:
    """The resolved scenario as YAML (written next to every run's results)."""
    return yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)
