"""What every recommender shares: the catalogue, the users' histories, pages and feedback.

A recommender is fitted once on a dataset's training interactions (string ids), then serves pages to
users one page at a time and learns from their feedback during the simulation:

    rec = make_recommender(scenario.recommender, seed=scenario.seed).fit(ds.interactions, ds.items)
    page = rec.page("u1", k=4)                          # 4 ranked item ids u1 has never seen
    rec.feedback("u1", watched={page[0]: 4.0}, shown=page)
    rec.pages(["u1", "u2"], k=4)                        # a batch: one vectorized scoring pass

**Seen items.** A page never holds an item the user has seen: their training history, the items they
watched during the simulation, and every item served or shown to them before (a shown-but-not-watched
item is not shown again). `page`/`pages` record what they serve, so calling `page` twice gives two
different pages even without feedback. A user with fewer than `k` unseen items left gets a shorter page.

**Feedback.** `feedback(user, watched, shown)` adds the watched items to the user's history (implicit
feedback: the ratings are kept in the user's state but no model weighs them) and every shown item to
their seen set. What the new history changes depends on the model; each class's docstring says how.

**Cold users.** A user with no history at all (not in the training interactions and nothing watched
yet) gets the most popular unseen items, in every model. Once they watch something, history-based models
(ItemKNN, MF fold-in, LightGCN) rank for them from that history like for any other user.

**State.** The fitted model is shared by all users; what changes per user is small: the watched and
the seen item codes as compact `array('i')` and, for MF, one factor vector, so thousands of users cost
little. Everything is plain Python/numpy and picklable (it lives in a Ray actor). `state_dict()` returns
the per-user dynamic part (with string ids) and `load_state_dict()` restores it onto a freshly fitted
model of the same configuration, for resume. The dynamic state is a function of the feedback alone
when every served page is fed back as `shown` (what the simulation driver does), so replaying the logged
feedback onto a freshly fitted recommender rebuilds the same state too.

Determinism: the model's seed comes from the scenario; Random draws from a generator seeded by
(seed, crc32(user id), number of items the user has seen), so its pages survive a resume unchanged.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignuser_sim.errors import UserError
from alignuser_sim.recommenders.scoring import MAX_BATCH_CELLS, as_codes, blas_threads, first_unhidden, top_k

STATE_VERSION = 1


class Param:
    """One tunable parameter of an algorithm: its default, its type and the smallest allowed value."""

    def __init__(self, default: Any, minimum: float | None = None, help: str = ""):
        self.default, self.minimum, self.help = default, minimum, help

    def coerce(self, algorithm: str, name: str, value: Any) -> Any:
        where = f"recommender.params.{name}"
        kind = type(self.default)
        if kind is bool:
            if not isinstance(value, bool):
                raise UserError(f"{where}: must be true or false")
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
                raise UserError(f"{where}: must be an integer")
            value = int(value)
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise UserError(f"{where}: must be a number")
            value = float(value)
        elif kind is str and not isinstance(value, str):
            raise UserError(f"{where}: must be a string")
        if self.minimum is not None and value < self.minimum:
            raise UserError(f"{where}: must be >= {self.minimum} for {algorithm}")
        return value


class Recommender(ABC):
    """Base of every algorithm: see the module docstring for the contract."""

    name: ClassVar[str]
    params_spec: ClassVar[dict[str, Param]] = {}

    def __init__(self, seed: int = 0, **params: Any):
        unknown = sorted(set(params) - set(self.params_spec))
        if unknown:
            raise UserError(f"recommender.params.{unknown[0]}: unknown parameter for {self.name}")
        self.seed = int(seed)
        self.params = {
            name: spec.coerce(self.name, name, params[name]) if name in params else spec.default
            for name, spec in self.params_spec.items()
        }
        self.fitted = False

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}(seed={self.seed}{', ' if args else ''}{args})"

    # --- fitting ---------------------------------------------------------------------------------------

    def fit(self, interactions: pa.Table, items: pa.Table) -> Recommender:
        """Learn from `interactions(user_id, item_id, ...)`; the catalogue is `items.item_id`.

        Repeated (user, item) pairs count once. Items that appear in the interactions but not in the
        items table join the catalogue (the loaders never produce them, hand-made tables may).
        """
        catalogue = items["item_id"].combine_chunks().cast(pa.string())
        missing = pc.invert(pc.is_in(interactions["item_id"], value_set=catalogue))
        extra = pc.unique(pc.filter(interactions["item_id"], missing))
        if len(extra):
            catalogue = pa.concat_arrays([catalogue, extra.cast(pa.string())])
        self.item_ids: np.ndarray = np.asarray(catalogue.to_pylist(), dtype=object)
        if len(self.item_ids) == 0:
            raise UserError(f"recommender {self.name}: the items table is empty")
        self.item_index: dict[str, int] = {item: i for i, item in enumerate(self.item_ids)}
        n_items = len(self.item_ids)

        users = pc.unique(interactions["user_id"]).to_pylist()
        users.sort()
        self.train_users: list[str] = users
        self.user_index: dict[str, int] = {u: i for i, u in enumerate(users)}
        u_codes = pc.index_in(interactions["user_id"], value_set=pa.array(users, pa.string()))
        i_codes = pc.index_in(interactions["item_id"], value_set=catalogue)
        u_codes = u_codes.to_numpy(zero_copy_only=False).astype(np.int64)
        i_codes = i_codes.to_numpy(zero_copy_only=False).astype(np.int64)
        # one entry per (user, item), users in order: a CSR matrix held as two numpy arrays
        pairs = np.unique(u_codes * n_items + i_codes)
        self.train_indices = (pairs % n_items).astype(np.int32)
        counts = np.bincount(pairs // n_items, minlength=len(users))
        self.train_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.train_pop = np.bincount(self.train_indices, minlength=n_items).astype(np.float64)
        self._reset_dynamic()
        self._fit_model()
        self.fitted = True
        return self

    @abstractmethod
    def _fit_model(self) -> None:
        """Train on `self.train_indptr/train_indices` (users x items, binary)."""

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def train_matrix(self):
        """The training interactions as a scipy CSR matrix (users x items, float32 ones)."""
        import scipy.sparse as sp  # lazily: the command line imports this package for its names only

        data = np.ones(len(self.train_indices), dtype=np.float32)
        return sp.csr_matrix((data, self.train_indices, self.train_indptr),
                             shape=(len(self.train_users), self.n_items))

    # --- per-user dynamic state ------------------------------------------------------------------------

    def _reset_dynamic(self) -> None:
        self._watched: dict[str, array] = {}  # item codes added to the history, in order
        self._ratings: dict[str, array] = {}  # their ratings (nan: none); kept, not used by the models
        self._seen: dict[str, array] = {}  # item codes served or shown (not necessarily watched)
        self.pop = self.train_pop.copy()  # live popularity: training counts + simulated watches
        self.unknown_feedback_items = 0

    def train_history(self, user_id: str) -> np.ndarray:
        u = self.user_index.get(user_id)
        if u is None:
            return np.zeros(0, dtype=np.int32)
        return self.train_indices[self.train_indptr[u] : self.train_indptr[u + 1]]

    def history(self, user_id: str) -> np.ndarray:
        """Item codes the user consumed: training history, then what they watched in the simulation."""
        train = self.train_history(user_id)
        added = self._watched.get(user_id)
        if not added:
            return train
        return np.concatenate([train, np.frombuffer(added, dtype=np.int32)])

    def seen(self, user_id: str) -> np.ndarray:
        """Item codes never to be served to this user again (history + served + shown)."""
        extra = self._seen.get(user_id)
        history = self.history(user_id)
        return history if not extra else np.concatenate([history, np.frombuffer(extra, dtype=np.int32)])

    def _remember_seen(self, user_id: str, codes: Iterable[int]) -> None:
        seen = self._seen.setdefault(user_id, array("i"))
        known = set(seen)
        for code in codes:
            if code not in known:
                seen.append(int(code))
                known.add(code)

    def _add_history(self, user_id: str, watched: dict[str, float | None]) -> list[int]:
        """Append newly watched items to the user's history; returns their codes."""
        already = set(self.history(user_id).tolist())
        added = []
        for item, rating in watched.items():
            code = self.item_index.get(item)
            if code is None:
                self.unknown_feedback_items += 1
                continue
            if code in already:
                continue
            already.add(code)
            self._watched.setdefault(user_id, array("i")).append(code)
            self._ratings.setdefault(user_id, array("f")).append(math.nan if rating is None else float(rating))
            if self.params.get("live_popularity"):  # only Pop offers it: it makes runs order-dependent
                self.pop[code] += 1
            added.append(code)
        return added

    # --- serving ---------------------------------------------------------------------------------------

    def page(self, user_id: str, k: int, exclude: set[str] | None = None) -> list[str]:
        """The `k` best-ranked items `user_id` has not seen (and not in `exclude`); recorded as served."""
        return self.pages([user_id], k, {user_id: exclude} if exclude else None)[user_id]

    def pages(
        self, user_ids: list[str], k: int, exclude: dict[str, set[str]] | None = None
    ) -> dict[str, list[str]]:
        """A page for each user (a repeated id gets one page), scored in vectorized batches."""
        self._check_fitted()
        unique = list(dict.fromkeys(user_ids))
        codes = self.rank(unique, k, self._exclude_codes(exclude))
        result = {}
        for uid, row in zip(unique, codes, strict=True):
            self._remember_seen(uid, row)
            result[uid] = [self.item_ids[c] for c in row]
        return result

    def _exclude_codes(self, exclude: dict[str, set[str]] | None) -> dict[str, np.ndarray]:
        if not exclude:
            return {}
        return {
            uid: as_codes(self.item_index[i] for i in items if i in self.item_index)
            for uid, items in exclude.items()
        }

    def rank(
        self, user_ids: list[str], k: int, exclude: dict[str, np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Top-`k` unseen item codes per user, best first, WITHOUT recording them as served.

        Used by `pages` and by the offline evaluation. `exclude` adds item codes to hide per user.
        """
        self._check_fitted()
        if k <= 0:
            raise UserError(f"recommender {self.name}: page size must be > 0 (got {k})")
        exclude = exclude or {}
        out: list[np.ndarray] = []
        batch = max(1, MAX_BATCH_CELLS // self.n_items)
        with blas_threads(self.params.get("threads", 1)):
            for start in range(0, len(user_ids), batch):
                out.extend(self._rank_chunk(user_ids[start : start + batch], k, exclude))
        return out

    def _uses_popularity(self, user_ids: list[str]) -> list[bool]:
        """Which users are ranked by plain popularity (cold users, in every model but Random)."""
        return [len(self.history(u)) == 0 for u in user_ids]

    def _rank_chunk(self, chunk: list[str], k: int, exclude: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Users ranked by popularity walk one shared order (O(k + seen) each, no score matrix); the others
        get a score matrix. Both give the same items as masking a full matrix would."""
        shared = self._uses_popularity(chunk)
        out: list[np.ndarray | None] = [None] * len(chunk)
        if any(shared):
            order = np.argsort(-self.pop_scores(), kind="stable")
            for r, uid in enumerate(chunk):
                if shared[r]:
                    hidden = set(self.seen(uid).tolist())
                    if uid in exclude:
                        hidden.update(exclude[uid].tolist())
                    out[r] = first_unhidden(order, hidden, k)
        rest = [r for r, s in enumerate(shared) if not s]
        if rest:
            for r, row in zip(rest, self._rank_scored([chunk[r] for r in rest], k, exclude), strict=True):
                out[r] = row
        return out  # type: ignore[return-value]

    def _rank_scored(self, chunk: list[str], k: int, exclude: dict[str, np.ndarray]) -> list[np.ndarray]:
        scores = np.array(self._scores(chunk), dtype=np.float64, copy=True)
        rows, cols = [], []
        for r, uid in enumerate(chunk):
            hidden = self.seen(uid)
            if uid in exclude:
                hidden = np.concatenate([hidden, exclude[uid]])
            rows.append(np.full(len(hidden), r, dtype=np.int64))
            cols.append(hidden)
        if rows:
            scores[np.concatenate(rows), np.concatenate(cols).astype(np.int64)] = -np.inf
        return top_k(scores, k)

    def _scores(self, user_ids: list[str]) -> np.ndarray:
        """A (len(user_ids) x n_items) matrix of scores, higher is better; seen items masked later.

        The default: cold users (no history) get popularity, others `_history_scores`.
        """
        histories = [self.history(u) for u in user_ids]
        warm = [i for i, h in enumerate(histories) if len(h)]
        scores = np.empty((len(user_ids), self.n_items), dtype=np.float64)
        scores[:] = self.pop_scores()
        if warm:
            scores[warm] = self._history_scores([user_ids[i] for i in warm], [histories[i] for i in warm])
        return scores

    def _history_scores(self, user_ids: list[str], histories: list[np.ndarray]) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} ranks every user with its own _scores, not from histories")

    def pop_scores(self) -> np.ndarray:
        """Live popularity, ties broken by catalogue order (the earlier item first)."""
        return self.pop - np.arange(self.n_items) / (self.n_items + 1.0)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__}: call fit() before serving pages")

    # --- feedback --------------------------------------------------------------------------------------

    def feedback(self, user_id: str, watched: dict[str, float | None], shown: list[str]) -> None:
        """The user saw `shown` and watched `watched` (item -> rating or None); later pages change.

        Watched items join the user's history (and Pop's live popularity when on); every shown item is seen.
        Unknown item ids are ignored and counted in `unknown_feedback_items`.
        """
        self._check_fitted()
        added = self._add_history(user_id, watched)
        self._remember_seen(user_id, (self.item_index[i] for i in shown if i in self.item_index))
        if added:
            with blas_threads(self.params.get("threads", 1)):
                self._on_history_change([user_id])

    def feedback_batch(self, batch: Iterable[tuple[str, dict[str, float | None], list[str]]]) -> int:
        """`feedback` for many users at once: one refresh of derived state (MF fold-in) for all of them."""
        self._check_fitted()
        changed: list[str] = []
        n = 0
        for user_id, watched, shown in batch:
            n += 1
            if self._add_history(user_id, watched):
                changed.append(user_id)
            self._remember_seen(user_id, (self.item_index[i] for i in shown if i in self.item_index))
        if changed:
            with blas_threads(self.params.get("threads", 1)):
                self._on_history_change(list(dict.fromkeys(changed)))
        return n

    def _on_history_change(self, user_ids: list[str]) -> None:
        """Hook: a model with per-user derived state (MF's fold-in) refreshes it here."""
        return

    # --- resume ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The per-user dynamic state with string ids (the fitted model is not included)."""
        self._check_fitted()
        users = {}
        for uid in sorted(set(self._watched) | set(self._seen)):
            watched = [self.item_ids[c] for c in self._watched.get(uid, ())]
            ratings = [None if math.isnan(r) else r for r in self._ratings.get(uid, ())]
            users[uid] = {
                "watched": watched,
                "ratings": ratings,
                "seen": [self.item_ids[c] for c in self._seen.get(uid, ())],
            }
        return {"version": STATE_VERSION, "algorithm": self.name, "seed": self.seed, "users": users}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output onto this (fitted) recommender, replacing its dynamic state."""
        self._check_fitted()
        if state.get("version") != STATE_VERSION or state.get("algorithm") != self.name:
            raise UserError(
                f"recommender state: made by {state.get('algorithm')!r} v{state.get('version')}, "
                f"cannot load into {self.name} v{STATE_VERSION}"
            )
        self._reset_dynamic()
        for uid, user in state["users"].items():
            self._add_history(uid, dict(zip(user["watched"], user["ratings"], strict=True)))
            self._remember_seen(uid, (self.item_index[i] for i in user["seen"] if i in self.item_index))
        with blas_threads(self.params.get("threads", 1)):
            self._on_history_change([u for u in state["users"] if u in self._watched])
