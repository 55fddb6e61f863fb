"""Scoring helpers shared by the recommenders: BLAS threads, top-k selection, skipping hidden items.

Kept apart from the `Recommender` contract (base.py) because they are numerics only: every model calls
them, none of them knows about users, histories or pages.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# scores of a batch are a (users x items) float matrix (and argpartition makes an index matrix as large):
# cap its cells, so a batch of users is scored in chunks of at most ~16 MB per matrix
MAX_BATCH_CELLS = 2_000_000



_CONTROLLER = None


def blas_threads(n: int):
    """A context limiting BLAS to `n` threads (the controller is built once: building one costs ~1 ms).

    Small GEMMs (a fold-in, a batch of scores) on a busy machine are many times slower with two
    OpenBLAS threads than with one, so serving runs under the algorithm's `threads` (default 1).
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=n, user_api="blas")



def as_codes(values: Iterable[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)



def first_unhidden(order: np.ndarray, hidden: set[int], k: int) -> np.ndarray:
    picked: list[int] = []
    for code in order:
        if int(code) not in hidden:
            picked.append(int(code))
            if len(picked) == k:
                break
    return np.asarray(picked, dtype=order.dtype)


def top_k(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the indices of the `k` highest finite scores, best first.

    Deterministic for a given matrix; models that produce ties (popularity, ItemKNN's zero scores) break
    them in the scores themselves.
    """
    n = scores.shape[1]
    k_eff = min(k, n)
    if k_eff < n:
        part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    else:
        part = np.tile(np.arange(n), (scores.shape[0], 1))
    top = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -top), axis=1)
    part = np.take_along_axis(part, order, axis=1)
    top = np.take_along_axis(top, order, axis=1)
    return [row[np.isfinite(vals)] for row, vals in zip(part, top, strict=True)]
