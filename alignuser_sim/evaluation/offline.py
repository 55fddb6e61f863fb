"""Offline evaluation: Recall@K and NDCG@K of each algorithm on the held-out split.

Split: the ONE train / held-out split learning and the micro evaluation agree on (`data/holdout.py`): the
recommender is fitted on the training interactions, the very ones learning sees, and ranked against each
user's held-out items (ML-1M as split by Agent4Rec: its `test` split, plus each user's last 20% of rated rows
since that split holds no ratings; elsewhere each user's last 20% in time). A live simulation's recommender
is fitted on all interactions instead: it serves the users as a platform would, it is not being scored.
A held-out item the user also has in training is dropped from their targets (it can never be ranked); users
without a held-out item are not evaluated.

Any recommender is evaluated the same way: built-ins and plug-ins that subclass `Recommender` rank without
recording what they rank (`rank`); other plug-ins and HTTP services are asked for one page of K items per
user, freshly fitted on the training split (HTTP: sent by POST /fit, the same protocol the simulation uses; a
service without /fit, or with `fit: false`, ranks with its own model, which may have seen the held-out items).

Metrics, binary relevance, averaged over the users with at least one test item; each user's ranking is
over all catalogue items minus their training items:
    Recall@K = |top-K & test| / |test|
    NDCG@K   = DCG@K / IDCG@K,  DCG@K = sum over hits at rank r (1-based) of 1 / log2(r + 1),
               IDCG@K = sum_{r=1..min(|test|, K)} 1 / log2(r + 1)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.config import BUILTIN_RECOMMENDERS, RecommenderConfig, recommender_name_problem
from alignuser_sim.data.holdout import HELDOUT_FRACTION, heldout_mask
from alignuser_sim.data.tables import Dataset
from alignuser_sim.errors import UserError
from alignuser_sim.recommenders import make_recommender
from alignuser_sim.recommenders.base import Recommender
from alignuser_sim.recommenders.plugins import check_class, plugin_class


@dataclass
class Split:
    train: pa.Table
    test: dict[str, set[str]]  # user -> held-out items (never in their training)
    kind: str


def offline_split(ds: Dataset) -> Split:
    """The held-out split of `data/holdout.py`, as offline metrics need it (targets per user)."""
    mask = pa.array(heldout_mask(ds.interactions))
    train = ds.interactions.filter(pc.invert(mask))
    test = _grouped(ds.interactions.filter(mask))
    trained = _grouped(train)
    test = {u: items - trained.get(u, set()) for u, items in test.items()}
    test = {u: items for u, items in test.items() if items}
    if not test:
        raise UserError(f"{ds.name}: no user has held-out interactions to evaluate on")
    has_split = ds.interactions["split"].null_count < ds.interactions.num_rows
    kind = ("dataset split: test (+ each user's last rated rows where the test split has no ratings)" if has_split
            else f"temporal: last {HELDOUT_FRACTION:.0%} of each user's interactions (by ts, seq)")
    return Split(train=train, test=test, kind=kind)


def _grouped(table: pa.Table) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for user, item in zip(table["user_id"].to_pylist(), table["item_id"].to_pylist(), strict=True):
        out.setdefault(user, set()).add(item)
    return out


def ranked_ids(rec: Any, users: Sequence[str], k: int) -> list[list[str]]:
    """Each user's top-`k` unseen item ids from a fitted recommender (its training items are never ranked):
    `rank` where the class has it, else one page per user (batched; plug-ins without `rank`, HTTP)."""
    if isinstance(rec, Recommender):
        return [[rec.item_ids[c] for c in codes] for codes in rec.rank(list(users), k, None)]
    pages = rec.pages(list(users), k)
    return [list(pages.get(u, []))[:k] for u in users]


def offline_ranking(cfg: RecommenderConfig, seed: int, split: Split, items: pa.Table, users: Sequence[str],
                    k: int) -> tuple[list[list[str]], float, float]:
    """(each user's top-`k`, fit seconds, rank seconds) of one recommender fitted on the training split."""
    rec = make_recommender(cfg, seed)
    t0 = time.perf_counter()
    rec.fit(split.train, items)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranked = ranked_ids(rec, users, k)
    rank_s = time.perf_counter() - t0
    close = getattr(rec, "close", None)
    if callable(close):
        close()
    return ranked, fit_s, rank_s


def per_user_recall_ndcg(ranked: Sequence[Sequence[str]], split: Split, users: Sequence[str], k: int) -> np.ndarray:
    """(users x 2) array: Recall@k and NDCG@k of each user's ranking against their held-out items."""
    return np.array([recall_ndcg(items, split.test[u], k) for u, items in zip(users, ranked, strict=True)])


def recall_ndcg(ranked: Sequence[str], relevant: set[str], k: int) -> tuple[float, float]:
    """Recall@k and NDCG@k of one ranked list against a set of relevant items (binary relevance)."""
    if not relevant:
        raise ValueError("no relevant items")
    top = list(ranked)[:k]
    hits = [r for r, item in enumerate(top, start=1) if item in relevant]
    dcg = sum(1.0 / np.log2(r + 1) for r in hits)
    idcg = sum(1.0 / np.log2(r + 1) for r in range(1, min(len(relevant), k) + 1))
    return len(hits) / len(relevant), dcg / idcg


def check_algorithms(names: Sequence[str]) -> list[str]:
    """The names, built-ins lower-cased (a plug-in's import path keeps its case); each plug-in imported and its
    contract checked (an HTTP service is checked when its run or offline ranking starts)."""
    names = [n.strip().lower() if n.strip().lower() in BUILTIN_RECOMMENDERS else n.strip() for n in names
             if n.strip()]
    if not names:
        raise UserError("--recommenders: name at least one of " + ", ".join(BUILTIN_RECOMMENDERS))
    for name in names:
        problem = recommender_name_problem(name)
        if problem:
            raise UserError(f"--recommenders: {problem}")
        if name != "http":  # a plug-in that does not import or lacks part of the contract: now, before any fit
            check_class(plugin_class(name, "--recommenders"), name, "--recommenders")
    return names


def config_of(name: str, params: dict[str, dict[str, Any]] | None,
              configs: dict[str, RecommenderConfig] | None) -> RecommenderConfig:
    if configs and name in configs:
        return configs[name]
    if name == "http":
        raise UserError("--recommenders: http needs the scenario's recommender to be the service "
                        "(recommender: {algorithm: http, url: ...})")
    return RecommenderConfig(algorithm=name, params=(params or {}).get(name, {}))


def evaluate_offline(
    dataset: Dataset,
    algorithms: Sequence[str],
    k_values: Sequence[int] = (10, 20),
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
    split: Split | None = None,
    configs: dict[str, RecommenderConfig] | None = None,
) -> list[dict[str, Any]]:
    """One row per algorithm: `algorithm, users, fit_s, recall@K, ndcg@K` for each K, in input order.

    `params` gives an algorithm's parameters by name (else its defaults); `configs` a whole recommender
    section by name (an HTTP service's URL: `{"http": scenario.recommender}`). The split is computed once and
    shared by all algorithms (pass `split` to reuse one across calls).
    """
    algorithms = check_algorithms(algorithms)
    k_values = sorted({int(k) for k in k_values})
    if not k_values or k_values[0] <= 0:
        raise UserError("--k: every K must be > 0")
    split = split or offline_split(dataset)
    users = sorted(split.test)
    rows = []
    for name in algorithms:
        cfg = config_of(name, params, configs)
        ranked, fit_s, rank_s = offline_ranking(cfg, seed, split, dataset.items, users, max(k_values))
        row: dict[str, Any] = {"algorithm": name, "users": len(users), "fit_s": fit_s, "rank_s": rank_s}
        for k in k_values:
            rn = per_user_recall_ndcg(ranked, split, users, k)
            row[f"recall@{k}"] = float(rn[:, 0].mean())
            row[f"ndcg@{k}"] = float(rn[:, 1].mean())
        rows.append(row)
    return rows
