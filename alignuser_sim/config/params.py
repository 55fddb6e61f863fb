"""Bounds on the free-form values of a scenario: `recommender.params` (any JSON-like value, so bounded in size
and depth: an alias bomb must not pass validation) and recommender names (a built-in, a plug-in's import
path or entry-point name)."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

RecommenderName = Literal["random", "pop", "itemknn", "mf", "lightgcn"]
BUILTIN_RECOMMENDERS: tuple[str, ...] = RecommenderName.__args__

PARAMS_MAX_VALUES = 10_000  # recommender.params: values in all, nested ones counted
PARAMS_MAX_DEPTH = 16
PARAMS_MAX_CHARS = 1_000_000  # of text, keys included


def params_problem(params: Any) -> str | None:
    """Why `params` is not a small JSON-like value (None: it is): text keys; text, finite numbers, booleans,
    null, lists and mappings; at most PARAMS_MAX_VALUES values, PARAMS_MAX_DEPTH deep, PARAMS_MAX_CHARS of
    text. A params tree is written back into every run's scenario.yaml, so shared references (YAML aliases)
    would be expanded there: counting every visit bounds that too. The problem starts with its key path
    (`layers.0: ...`)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(params, ())]
    count = chars = 0
    while stack:
        value, where = stack.pop()
        at = ".".join(where)
        count += 1
        if count > PARAMS_MAX_VALUES:
            return f"more than {PARAMS_MAX_VALUES:,} values"
        if len(where) > PARAMS_MAX_DEPTH:
            return f"{at}: nested deeper than {PARAMS_MAX_DEPTH} levels"
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"{at + ': ' if at else ''}key {key!r} is not text"
                chars += len(key)
                stack.append((item, (*where, key)))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, (*where, str(i))) for i, item in enumerate(value))
        elif isinstance(value, str):
            chars += len(value)
        elif isinstance(value, float) and not math.isfinite(value):
            return f"{at}: must be a finite number"
        elif not (value is None or isinstance(value, (str, int, float))):
            return (f"{at}: a {type(value).__name__} is not allowed (text, numbers, true/false, null, lists and "
                    "mappings only)")
        if chars > PARAMS_MAX_CHARS:
            return f"more than {PARAMS_MAX_CHARS:,} characters of text"
    return None
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # a plug-in class: "package.module:Class"
_PLUGIN_NAME = re.compile(r"^[A-Za-z][\w-]*$")  # a name an installed package registered (entry point)


def recommender_name_problem(name: Any) -> str | None:
    """Why `name` cannot name a recommender (None: it can). The form only: whether a plug-in imports and keeps
    the contract is checked at plan time (`recommenders.plugins.check_recommender`), before any actor starts."""
    if not isinstance(name, str) or not (_IMPORT_PATH.match(name) or _PLUGIN_NAME.match(name)):
        return (f"'{name}' is not a recommender: one of {', '.join(BUILTIN_RECOMMENDERS)}, http, a plug-in class "
                "'package.module:Class' or a name registered in the 'alignuser_sim.recommenders' entry points")
    return None
