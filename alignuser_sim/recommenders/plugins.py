"""Recommenders the user brings: a plug-in class named by import path or by entry point, checked before use.

A scenario names a plug-in as `recommender: {algorithm: "mypkg.recs:MyRecommender", params: {...}}`, or by a
name an installed package registers in the `alignuser_sim.recommenders` entry-point group:

    [project.entry-points."alignuser_sim.recommenders"]
    myrec = "mypkg.recs:MyRecommender"

The class is built as `cls(seed=seed, **params)` and must keep the `Recommender` contract (recommenders/
base.py): `fit`, `pages`, `feedback_batch`, `state_dict`, `load_state_dict`. Subclassing `Recommender` gives
all of them (a subclass writes `_fit_model` and `_scores` or `_history_scores`); a duck-typed class works too.
`check_recommender` runs at plan time so a plug-in that cannot be imported, or lacks part of the contract, is
one line naming what is missing before any actor starts, not a traceback in a Ray worker.

Import paths are resolved like `python -m` does: the current folder is on the path, so a module beside the
scenario's working folder (`examples.bpr_plugin:BPRRecommender`) imports without being installed. On a
multi-node cluster the module must be importable on the recommender's node (it runs beside the coordinator).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from importlib.metadata import entry_points
from typing import Any

from alignuser_sim.config import BUILTIN_RECOMMENDERS, RecommenderConfig
from alignuser_sim.errors import UserError

ENTRY_POINT_GROUP = "alignuser_sim.recommenders"
# what the simulation and the resume path call on a recommender (see recommenders/base.py)
CONTRACT = ("fit", "pages", "feedback_batch", "state_dict", "load_state_dict")

# name -> "module:Class" of the built-ins, imported on first use (LightGCN pulls in torch, MF implicit)
BUILTINS = {
    "random": "alignuser_sim.recommenders.simple:RandomRecommender",
    "pop": "alignuser_sim.recommenders.simple:PopRecommender",
    "itemknn": "alignuser_sim.recommenders.itemknn:ItemKNNRecommender",
    "mf": "alignuser_sim.recommenders.mf:MFRecommender",
    "lightgcn": "alignuser_sim.recommenders.lightgcn:LightGCNRecommender",
}
assert tuple(BUILTINS) == BUILTIN_RECOMMENDERS


def registered() -> dict[str, str]:
    """Entry-point name -> "module:Class" of every installed package's plug-ins."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def kind_of(algorithm: str) -> str:
    """builtin, http, import (a "module:Class" path) or entry_point."""
    if algorithm in BUILTINS:
        return "builtin"
    if algorithm == "http":
        return "http"
    return "import" if ":" in algorithm else "entry_point"


def _import(target: str, where: str) -> type:
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` would: a module in the working folder imports
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{where}: cannot import module '{module_name}' ({exc})") from None
    except Exception as exc:  # the plug-in's own module failed while importing
        raise UserError(f"{where}: importing '{module_name}' failed: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise UserError(f"{where}: module '{module_name}' has no '{attr}'")
    if not inspect.isclass(cls):
        raise UserError(f"{where}: '{target}' is not a class")
    return cls


def plugin_class(algorithm: str, where: str = "recommender.algorithm") -> type:
    """The class a built-in name, an import path or an entry-point name stands for (not http)."""
    kind = kind_of(algorithm)
    if kind == "builtin":
        return _import(BUILTINS[algorithm], where)
    if kind == "http":
        raise UserError(f"{where}: http is a service, not a class")
    if kind == "entry_point":
        found = registered()
        if algorithm not in found:
            known = ", ".join([*BUILTINS, "http", *sorted(found)])
            raise UserError(f"{where}: unknown recommender '{algorithm}' (choose from {known}, or a plug-in "
                            "class 'package.module:Class')")
        return _import(found[algorithm], f"{where}: entry point '{algorithm}'")
    return _import(algorithm, where)


def missing_methods(cls: type) -> list[str]:
    """The parts of the contract `cls` lacks: methods not there, and abstract methods left unwritten."""
    missing = [name for name in CONTRACT if not callable(getattr(cls, name, None))]
    missing += sorted(getattr(cls, "__abstractmethods__", ()))
    return missing


def check_class(cls: type, algorithm: str, where: str = "recommender.algorithm") -> type:
    missing = missing_methods(cls)
    if missing:
        raise UserError(f"{where}: plug-in '{algorithm}' lacks {', '.join(missing)} of the recommender contract "
                        "(subclass alignuser_sim.recommenders.Recommender, or see docs/recommenders.md)")
    return cls


def check_recommender(cfg: RecommenderConfig, where: str = "recommender") -> None:
    """Plan time: the recommender can be built (plug-in imported, contract kept; HTTP service reachable)."""
    if kind_of(cfg.algorithm) == "http":
        from alignuser_sim.recommenders.http import check_service

        check_service(cfg, f"{where}.url")
        return
    cls = check_class(plugin_class(cfg.algorithm, f"{where}.algorithm"), cfg.algorithm, f"{where}.algorithm")
    build(cls, cfg, 0, f"{where}.params")  # unknown or invalid params are errors now, not in an actor


def build(cls: type, cfg: RecommenderConfig, seed: int, where: str = "recommender.params") -> Any:
    try:
        return cls(seed=seed, **cfg.params)
    except UserError:
        raise
    except TypeError as exc:  # a duck-typed plug-in refusing a parameter
        raise UserError(f"{where}: {cfg.algorithm} does not take these parameters ({exc})") from None
