"""LightGCN (He et al., SIGIR 2020), trained with BPR on the CPU with torch; served with numpy.

Training is deliberately small: a few epochs of sampled BPR over the training edges, 64-dimensional
embeddings, `layers` propagation steps over the normalized user-item graph, Adam, a fixed seed and at
most `threads` torch threads. After training only the propagated ITEM embeddings are kept (numpy).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from alignuser_sim.errors import UserError
from alignuser_sim.recommenders.base import Param, Recommender


class LightGCNRecommender(Recommender):
    """Score(u, i) = e_u . e_i, e_u = mean of the propagated embeddings of the items in u's history.

    The user's representation is computed from their history at serving time (the propagated item
    embeddings are fixed after training), not looked up: LightGCN's first propagation step already makes
    a user the normalized mean of their items, and this keeps every user, new or old, on one footing.

    Feedback is therefore a history update: a watched item joins the history and the user's embedding
    becomes the mean over the longer history, which pulls the next page toward the watched item's
    neighbours in embedding space. Cold users (no history): popularity ranking.
    """

    name = "lightgcn"
    params_spec = {
        "dim": Param(64, 1, "embedding size"),
        "layers": Param(2, 0, "propagation steps"),
        "epochs": Param(15, 1),
        "batch_size": Param(4096, 1),
        "lr": Param(0.03, 0.0),
        "weight_decay": Param(1e-4, 0.0, "L2 on the layer-0 embeddings of a batch"),
        "threads": Param(1, 1, "torch threads (fit), BLAS threads (serving); more pays only on an idle machine"),
    }

    def _fit_model(self) -> None:
        try:
            import torch
        except ImportError:
            raise UserError(
                "recommender lightgcn needs torch (CPU is enough): pip install torch, or the project's cpu extra"
            ) from None

        previous = torch.get_num_threads()
        torch.set_num_threads(max(1, min(self.params["threads"], previous)))
        try:
            self.item_embeddings = self._train(torch)
        finally:
            torch.set_num_threads(previous)

    def _train(self, torch) -> np.ndarray:
        p = self.params
        gen = torch.Generator().manual_seed(self.seed)
        n_users, n_items = len(self.train_users), self.n_items
        users = np.repeat(np.arange(n_users), np.diff(self.train_indptr))
        items = self.train_indices.astype(np.int64)
        deg_u = np.diff(self.train_indptr).astype(np.float64)
        deg_i = np.maximum(self.train_pop, 1.0)
        w = 1.0 / np.sqrt(deg_u[users] * deg_i[items])
        n = n_users + n_items
        graph = sp.csr_matrix(
            (np.concatenate([w, w]).astype(np.float32),
             (np.concatenate([users, n_users + items]), np.concatenate([n_users + items, users]))),
            shape=(n, n),
        )
        weights = torch.nn.Parameter(torch.randn(n, p["dim"], generator=gen) * 0.1)
        opt = torch.optim.Adam([weights], lr=p["lr"])
        u_t, i_t = torch.from_numpy(users), torch.from_numpy(items)
        spread = _propagation(torch, graph)

        def propagate(x):
            total, layer = x, x
            for _ in range(p["layers"]):
                layer = spread(layer)
                total = total + layer
            return total / (p["layers"] + 1)

        n_edges = len(items)
        for _ in range(p["epochs"]):
            perm = torch.randperm(n_edges, generator=gen)
            for start in range(0, n_edges, p["batch_size"]):
                idx = perm[start : start + p["batch_size"]]
                bu, bi = u_t[idx], i_t[idx] + n_users
                bj = torch.randint(0, n_items, (len(idx),), generator=gen) + n_users
                emb = propagate(weights)
                # index_select, not emb[idx]: its backward (index_add) is many times faster on CPU
                eu, ei, ej = (emb.index_select(0, b) for b in (bu, bi, bj))
                loss = -torch.nn.functional.logsigmoid((eu * (ei - ej)).sum(1)).mean()
                reg = sum(weights.index_select(0, b).pow(2).sum() for b in (bu, bi, bj))
                loss = loss + p["weight_decay"] * reg / (2 * len(idx))
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            emb = propagate(weights)
        self.train_user_embeddings = emb[:n_users].numpy().copy()  # kept for diagnostics only
        return emb[n_users:].numpy().astype(np.float32).copy()

    def _history_scores(self, user_ids: list[str], histories: list[np.ndarray]) -> np.ndarray:
        lengths = np.array([len(h) for h in histories], dtype=np.float64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.concatenate(histories)
        weights = np.repeat(1.0 / lengths, lengths.astype(np.int64)).astype(np.float32)
        mean = sp.csr_matrix((weights, indices, indptr), shape=(len(histories), self.n_items))
        users = mean @ self.item_embeddings  # (B x dim): mean of the history items' embeddings
        return users @ self.item_embeddings.T


def _propagation(torch, graph):
    """x -> graph @ x as a torch op, by scipy (several times faster than torch's sparse autograd on CPU).

    The normalized adjacency is symmetric, so the gradient is graph @ grad too.
    """

    class Spread(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.from_numpy(graph @ x.detach().numpy())

        @staticmethod
        def backward(ctx, grad):
            return torch.from_numpy(graph @ grad.contiguous().numpy())

    return Spread.apply

