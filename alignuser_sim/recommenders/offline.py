"""Offline evaluation: Recall@K and NDCG@K of each algorithm on a held-out split.

Split (deterministic):
- a dataset with a `split` column (ML-1M Agent4Rec: train/valid/test): fit on `train`, evaluate on
  `test`; the user's `valid` items are hidden from the ranking too (they are known interactions that
  are neither training nor target, as RecBole masks them in full-sort evaluation);
- otherwise, per user, a temporal leave-last-20%-out: the user's interactions ordered by `ts`, then by
  `seq` (source order), the last floor(20%) go to the test set. Users with fewer than 5 interactions
  stay whole in training and are not evaluated.
A test item the user also has in training is dropped from their targets (it can never be ranked).

Metrics, binary relevance, averaged over the users with at least one test item; each user's ranking is
over all catalogue items minus their training (and hidden) items:
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

from alignuser_sim.config import RecommenderConfig
from alignuser_sim.data.tables import Dataset
from alignuser_sim.errors import UserError
from alignuser_sim.recommenders import ALGORITHMS, make_recommender

TEST_FRACTION = 0.2
MIN_INTERACTIONS = 5


@dataclass
class Split:
    train: pa.Table
    test: dict[str, set[str]]  # user -> held-out items (never in their training)
    hidden: dict[str, set[str]]  # user -> items excluded from ranking besides training (ML-1M's valid)
    kind: str


def split_dataset(ds: Dataset) -> Split:
    """The held-out split described in the module docstring."""
    inter = ds.interactions
    splits = inter["split"]
    if splits.null_count < inter.num_rows:
        train = inter.filter(pc.equal(splits, "train"))
        test = _grouped(inter.filter(pc.equal(splits, "test")))
        hidden = _grouped(inter.filter(pc.equal(splits, "valid")))
        if not train.num_rows or not test:
            raise UserError(f"{ds.name}: the split column needs 'train' and 'test' rows for offline evaluation")
        kind = "dataset split: train -> test"
    else:
        order = inter.sort_by([("user_id", "ascending"), ("ts", "ascending"), ("seq", "ascending")])
        users = order["user_id"].to_numpy(zero_copy_only=False)
        n = len(users)
        starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]]))
        ends = np.concatenate([starts[1:], [n]])
        lengths = ends - starts
        n_test = np.where(lengths >= MIN_INTERACTIONS, np.floor(lengths * TEST_FRACTION), 0).astype(np.int64)
        is_test = np.zeros(n, dtype=bool)
        for end, m in zip(ends, n_test, strict=True):
            is_test[end - m : end] = True
        mask = pa.array(is_test)
        train = order.filter(pc.invert(mask))
        test = _grouped(order.filter(mask))
        hidden = {}
        kind = f"temporal: last {TEST_FRACTION:.0%} of each user's interactions (by ts, seq)"
    trained = _grouped(train)
    test = {u: items - trained.get(u, set()) for u, items in test.items()}
    test = {u: items for u, items in test.items() if items}
    if not test:
        raise UserError(f"{ds.name}: no user has held-out interactions to evaluate on")
    return Split(train=train, test=test, hidden=hidden, kind=kind)


def _grouped(table: pa.Table) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for user, item in zip(table["user_id"].to_pylist(), table["item_id"].to_pylist(), strict=True):
        out.setdefault(user, set()).add(item)
    return out


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
    names = [n.strip().lower() for n in names if n.strip()]
    if not names:
        raise UserError("--recommenders: name at least one of " + ", ".join(ALGORITHMS))
    for name in names:
        if name not in ALGORITHMS:
            raise UserError(f"--recommenders: unknown recommender '{name}' (choose from {', '.join(ALGORITHMS)})")
    return names


def evaluate_offline(
    dataset: Dataset,
    algorithms: Sequence[str],
    k_values: Sequence[int] = (10, 20),
    seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
    split: Split | None = None,
) -> list[dict[str, Any]]:
    """One row per algorithm: `algorithm, users, fit_s, recall@K, ndcg@K` for each K, in input order.

    `params` gives an algorithm's parameters by name (else its defaults). The split is computed once and
    shared by all algorithms (pass `split` to reuse one across calls).
    """
    algorithms = check_algorithms(algorithms)
    k_values = sorted({int(k) for k in k_values})
    if not k_values or k_values[0] <= 0:
        raise UserError("--k: every K must be > 0")
    split = split or split_dataset(dataset)
    users = sorted(split.test)
    rows = []
    for name in algorithms:
        cfg = RecommenderConfig(algorithm=name, params=(params or {}).get(name, {}))
        rec = make_recommender(cfg, seed)
        t0 = time.perf_counter()
        rec.fit(split.train, dataset.items)
        fit_s = time.perf_counter() - t0
        hidden = {
            u: np.asarray([rec.item_index[i] for i in items if i in rec.item_index], dtype=np.int64)
            for u, items in split.hidden.items()
        }
        t0 = time.perf_counter()
        ranked = rec.rank(users, max(k_values), hidden)
        rank_s = time.perf_counter() - t0
        row: dict[str, Any] = {"algorithm": name, "users": len(users), "fit_s": fit_s, "rank_s": rank_s}
        for k in k_values:
            rn = np.array([
                recall_ndcg([rec.item_ids[c] for c in codes], split.test[u], k)
                for u, codes in zip(users, ranked, strict=True)
            ])
            row[f"recall@{k}"] = float(rn[:, 0].mean())
            row[f"ndcg@{k}"] = float(rn[:, 1].mean())
        rows.append(row)
    return rows
