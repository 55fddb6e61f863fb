"""Matrix factorization for implicit feedback: ALS (Hu, Koren & Volinsky 2008), fitted with `implicit`.

`implicit`'s ALS is used for training where it is installed (fast, multi-threaded C++); a numpy ALS with
the same objective is the fallback (`backend: numpy`, or automatically when `implicit` cannot be
imported). Serving, fold-in and resume use numpy only, so a fitted model pickles without `implicit`.
"""

from __future__ import annotations

import logging

import numpy as np

from alignuser_sim.errors import UserError
from alignuser_sim.recommenders.base import Param, Recommender

log = logging.getLogger(__name__)
# users per batched least-squares solve (each needs a factors x factors matrix)
SOLVE_BATCH = 2048


class MFRecommender(Recommender):
    """Score(u, i) = x_u . y_i with ALS factors: confidence 1 + alpha on consumed items, 1 elsewhere.

    Fit: `iterations` ALS sweeps; then every training user's factor is re-solved exactly against the
    final item factors, so a user's factor is always the least-squares solution for their history:
        x_u = (Y'Y + (alpha) Y_h'Y_h + reg I)^-1 (1 + alpha) Y_h' 1     (Y_h: the history items' factors)

    Feedback (fold-in): a watched item joins the user's history and the user's factor is re-solved with
    that formula (one factors x factors solve; item factors stay fixed). The user moves toward the
    watched item, so items whose factors resemble it rise on the next page. Cold users (no history):
    popularity ranking; after their first watch, a folded-in factor like everyone else.
    """

    name = "mf"
    params_spec = {
        "factors": Param(32, 1),
        "iterations": Param(15, 1),
        "regularization": Param(5.0, 0.0),
        "alpha": Param(5.0, 0.0, "extra confidence on consumed items"),
        "backend": Param("implicit", None, "implicit or numpy"),
        "threads": Param(1, 1, "implicit + BLAS threads (fit), BLAS threads (serving); more pays only when idle"),
    }

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        if self.params["backend"] not in ("implicit", "numpy"):
            raise UserError("recommender.params.backend: must be implicit or numpy")

    def _fit_model(self) -> None:
        from threadpoolctl import threadpool_limits

        threads = self.params["threads"]
        item_factors = None
        als = _implicit_als() if self.params["backend"] == "implicit" else None
        if als is not None:
            # implicit runs its own threads: BLAS inside them must be single-threaded (its own advice);
            # imported first, so that the limit also reaches the BLAS that implicit's import loads
            with threadpool_limits(limits=1, user_api="blas"):
                item_factors = self._fit_implicit(als, threads)
        with threadpool_limits(limits=threads):
            if item_factors is None:
                item_factors = self._fit_numpy()
            self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
            self._y64 = self.item_factors.astype(np.float64)  # fold-in solves in float64
            self._yty = self._y64.T @ self._y64
            self.user_factors = self._solve_users(
                [self.train_history(u) for u in self.train_users]
            ).astype(np.float32)

    def _fit_implicit(self, als, threads: int) -> np.ndarray:
        model = als(
            factors=self.params["factors"],
            regularization=self.params["regularization"],
            alpha=1.0 + self.params["alpha"],
            iterations=self.params["iterations"],
            random_state=self.seed,
            num_threads=threads,
        )
        model.fit(self.train_matrix(), show_progress=False)
        return np.asarray(model.item_factors)

    def _fit_numpy(self) -> np.ndarray:
        """Plain ALS with exact least squares (the same objective as `implicit`'s)."""
        rng = np.random.default_rng(self.seed)
        f = self.params["factors"]
        n_users = len(self.train_users)
        y = rng.random((self.n_items, f)) * 0.01
        x = rng.random((n_users, f)) * 0.01
        by_item = self.train_matrix().T.tocsr()
        item_users = [by_item.indices[by_item.indptr[i] : by_item.indptr[i + 1]] for i in range(self.n_items)]
        user_items = [self.train_history(u) for u in self.train_users]
        for _ in range(self.params["iterations"]):
            x = _solve(y, y.T @ y, user_items, self.params["alpha"], self.params["regularization"])
            y = _solve(x, x.T @ x, item_users, self.params["alpha"], self.params["regularization"])
        return y

    def _solve_users(self, histories: list[np.ndarray]) -> np.ndarray:
        return _solve(self._y64, self._yty, histories, self.params["alpha"], self.params["regularization"])

    def _on_history_change(self, user_ids: list[str]) -> None:
        user_ids = [u for u in user_ids if len(self.history(u))]
        if user_ids:
            factors = self._solve_users([self.history(u) for u in user_ids]).astype(np.float32)
            self._folded.update(zip(user_ids, factors, strict=True))

    def _reset_dynamic(self) -> None:
        super()._reset_dynamic()
        self._folded: dict[str, np.ndarray] = {}  # users whose history changed: their re-solved factor

    def user_factor(self, user_id: str) -> np.ndarray:
        folded = self._folded.get(user_id)
        if folded is not None:
            return folded
        return self.user_factors[self.user_index[user_id]]

    def _history_scores(self, user_ids: list[str], histories: list[np.ndarray]) -> np.ndarray:
        x = np.stack([self.user_factor(u) for u in user_ids])
        return x @ self.item_factors.T


def _implicit_als():
    try:
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError as exc:  # pragma: no cover - depends on the environment
        log.warning("implicit not importable (%s): using the numpy ALS", exc)
        return None
    return AlternatingLeastSquares


def _solve(y: np.ndarray, yty: np.ndarray, histories: list[np.ndarray], alpha: float, reg: float) -> np.ndarray:
    """Exact implicit-ALS least squares for each row's history (binary preferences), in batches."""
    f = y.shape[1]
    out = np.zeros((len(histories), f))
    base = yty + reg * np.eye(f)
    for start in range(0, len(histories), SOLVE_BATCH):
        chunk = histories[start : start + SOLVE_BATCH]
        a = np.repeat(base[None], len(chunk), axis=0)
        b = np.zeros((len(chunk), f))
        for r, hist in enumerate(chunk):
            if len(hist):
                yh = y[hist]
                a[r] += alpha * (yh.T @ yh)
                b[r] = (1.0 + alpha) * yh.sum(axis=0)
        out[start : start + len(chunk)] = np.linalg.solve(a, b[..., None])[..., 0]
    return out
