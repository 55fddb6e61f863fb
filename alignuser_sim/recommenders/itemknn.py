"""Item-based k-nearest neighbours on implicit feedback (cosine similarity with shrinkage)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from alignuser_sim.recommenders.base import Param, Recommender

# items per block when computing the item x item co-occurrences (bounds memory to n_items x BLOCK)
BLOCK = 1024


class ItemKNNRecommender(Recommender):
    """Score(u, j) = sum over the items i in u's history of sim(i, j), sim kept for i's nearest neighbours.

    sim(i, j) = |users(i) & users(j)| / (sqrt(|users(i)|) * sqrt(|users(j)|) + shrink), computed once at
    fit time; each item keeps its `neighbours` most similar items (a sparse item x item matrix).
    Items with no support from the history are ordered by popularity (a tie-break far below any real
    similarity).

    Feedback: a watched item joins the user's history, so the next scores are recomputed from the updated
    history: the watched item's neighbours rise. Nothing is refitted; the similarity matrix stays the
    training one. Cold users (no history yet): popularity ranking; after their first watch, neighbours.
    """

    name = "itemknn"
    params_spec = {
        "neighbours": Param(100, 1, "similar items kept per item"),
        "shrink": Param(10.0, 0.0, "added to the cosine denominator: damps similarities of rare items"),
    }

    def _fit_model(self) -> None:
        x = self.train_matrix().tocsc()
        n = self.n_items
        keep = min(self.params["neighbours"], max(n - 1, 1))
        norms = np.sqrt(np.asarray(x.getnnz(axis=0), dtype=np.float64))
        rows, cols, vals = [], [], []
        xt = x.T.tocsr()
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            co = (xt @ x[:, start:stop]).toarray()  # n x block: co-occurrence of every item with the block
            sim = co / (norms[:, None] * norms[None, start:stop] + self.params["shrink"] + 1e-12)
            sim[np.arange(start, stop), np.arange(stop - start)] = 0.0  # no self-similarity
            # for each block item j (a column, by symmetry = a row of S), its `keep` most similar items
            top = np.argpartition(-sim, keep - 1, axis=0)[:keep] if keep < n else np.arange(n)[:, None].repeat(
                stop - start, axis=1)
            top_sim = np.take_along_axis(sim, top, axis=0)
            nz = top_sim > 0
            rows.append(np.broadcast_to(np.arange(start, stop), top.shape)[nz])
            cols.append(top[nz])
            vals.append(top_sim[nz])
        # S[i, j]: similarity of item i to its neighbour j
        self.similarity = sp.csr_matrix(
            (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n, n),
        )
        # popularity tie-break in [0, 1e-6): only decides among items with equal neighbour support
        pop = self.train_pop
        self._tie = (pop / (pop.max() + 1.0) * 1e-6).astype(np.float64)

    def _history_scores(self, user_ids: list[str], histories: list[np.ndarray]) -> np.ndarray:
        indptr = np.concatenate([[0], np.cumsum([len(h) for h in histories])])
        indices = np.concatenate(histories)
        hist = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                             shape=(len(histories), self.n_items))
        return (hist @ self.similarity).toarray().astype(np.float64) + self._tie
