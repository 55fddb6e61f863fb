"""A recommender behind an HTTP service: the user's own system, in any language, evaluated by the simulation.

The protocol is docs/recommender-protocol.md (OpenAPI: docs/recommender-openapi.yaml): `POST /fit` (optional:
the training interactions), `POST /recommend` (a batch of users -> ranked item ids per user) and `POST
/feedback` (what each user was shown and watched, one event per page, each with an idempotency key).

This class keeps the `Recommender` contract on the simulation's side, so the driver, the Ray actor, resume
and the offline metrics use it like a built-in. It owns what a remote model cannot be trusted with:

- every reply is validated: ids not in the catalogue, duplicates, items the user has already seen (training
  history or served earlier in the run) are dropped, over-long pages cut and short ones counted; each kind is
  counted in `stats()` and logged (the first few, then every 100th), and the run never stops for it;
- transient failures (connection errors, timeouts, 408/429/5xx) are retried with exponential backoff; a
  request that still fails leaves those users an empty page (their session ends: counted as `pages_failed`)
  and feedback that could not be delivered is sent again with the next feedback request;
- feedback is exactly-once for the service: an event's key is `RUN_ID/USER/PAGE` (the user's page number in
  the run), so a retried request, a shard restart or a resumed run that sends an event again is recognized
  and not applied twice (the service reports such events as `duplicates`). A resumed run calls `replay`:
  it rebuilds the client's state from the logged feedback and sends those events again under their keys,
  asking for no pages (a service that was re-fitted applies them, one that kept its state skips them).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from alignuser_sim.config import RecommenderConfig
from alignuser_sim.errors import UserError

log = logging.getLogger(__name__)
PROTOCOL_VERSION = 1
STATE_VERSION = 1
TRANSIENT_STATUS = {408, 425, 429} | set(range(500, 600))
NOT_OFFERED = {404, 405, 501}  # POST /fit not offered: the service keeps its own model
Feedback = tuple[str, dict[str, float | None], list[str]]


class ServiceError(Exception):
    """A request that failed for good (after its retries, or a reply that is not the protocol's)."""


def check_service(cfg: RecommenderConfig, where: str = "recommender.url") -> None:
    """Plan time: the service answers at all (any HTTP status will do), so a wrong URL is one line."""
    import httpx

    try:
        httpx.get(f"{cfg.url.rstrip('/')}/health", timeout=min(cfg.timeout_s, 5.0))
    except httpx.HTTPError as exc:
        raise UserError(f"{where}: {cfg.url}: not reachable ({type(exc).__name__}: {exc})") from None


class HTTPRecommender:
    """The client side of the protocol (see the module docstring)."""

    name = "http"

    def __init__(self, cfg: RecommenderConfig, seed: int = 0, run_id: str | None = None):
        if cfg.url is None:
            raise UserError("recommender.url: algorithm http needs the service's URL")
        self.cfg, self.seed, self.url = cfg, int(seed), cfg.url.rstrip("/")
        self.run_id = run_id or f"adhoc-{uuid.uuid4().hex[:12]}"
        self.params: dict[str, Any] = {}
        self.fitted = False
        self.fit_mode = "not fitted"
        self._client: Any = None
        self._rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []
        self._served: dict[str, list[str]] = {}  # user -> items served in this run, in order
        self._pages_fed: dict[str, int] = {}  # user -> pages fed back so far (the next event's page number)
        self._unsent: list[dict[str, Any]] = []  # feedback events not delivered yet, in order

    def __repr__(self) -> str:
        return f"HTTPRecommender(url={self.url!r}, run_id={self.run_id!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}  # a connection pool does not travel

    # --- transport --------------------------------------------------------------------------------------

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=self.cfg.timeout_s)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _post(self, path: str, body: dict[str, Any], allow: Iterable[int] = ()) -> tuple[int, Any]:
        """POST with retries of transient failures; (status, JSON reply). A status in `allow` is returned."""
        import httpx

        allow = set(allow)
        body = {"protocol": PROTOCOL_VERSION, "run_id": self.run_id, **body}
        attempt = 0
        while True:
            self.counts["requests"] += 1
            t0 = time.perf_counter()
            problem = None
            try:
                response = self._http().post(f"{self.url}{path}", json=body)
                self.latencies.append(time.perf_counter() - t0)
                if response.status_code in allow:
                    return response.status_code, None
                if response.status_code < 300:
                    try:
                        return response.status_code, response.json()
                    except ValueError:
                        self._note("malformed_replies", f"{path}: reply is not JSON")
                        raise ServiceError(f"{path}: reply is not JSON") from None
                problem = f"HTTP {response.status_code}"
                if response.status_code not in TRANSIENT_STATUS:
                    self._note("rejected_requests", f"{path}: {problem}: {response.text[:200]}")
                    raise ServiceError(f"{path}: {problem}")
            except httpx.HTTPError as exc:
                self.latencies.append(time.perf_counter() - t0)
                problem = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, httpx.TimeoutException):
                    self.counts["timeouts"] += 1
            attempt += 1
            if attempt > self.cfg.max_retries:
                self._note("failed_requests", f"{path}: gave up after {attempt} tries ({problem})")
                raise ServiceError(f"{path}: {problem}")
            self.counts["retries"] += 1
            delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1))
            time.sleep(delay / 2 + self._rng.random() * delay / 2)

    def _note(self, kind: str, message: str, n: int = 1) -> None:
        """Count a problem; log the first few of each kind, then every 100th (a broken service says it often)."""
        before = self.counts[kind]
        self.counts[kind] += n
        if before < 5 or before // 100 != self.counts[kind] // 100:
            log.warning("http recommender %s: %s (%s so far: %d)", self.url, message, kind, self.counts[kind])

    # --- fitting ----------------------------------------------------------------------------------------

    def fit(self, interactions: pa.Table, items: pa.Table) -> HTTPRecommender:
        """Know the catalogue and each user's training items (to validate replies); send the training
        interactions to POST /fit unless `fit: false` or the service does not offer it."""
        item_ids = [str(i) for i in items["item_id"].to_pylist()]
        users, inter_items = interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist()
        self.catalogue = set(item_ids) | set(inter_items)
        if not self.catalogue:
            raise UserError("recommender http: the items table is empty")
        self._train: dict[str, set[str]] = {}
        for user, item in zip(users, inter_items, strict=True):
            self._train.setdefault(user, set()).add(item)
        self._served, self._pages_fed, self._unsent = {}, {}, []
        self.fit_mode = "service's own model"
        if self.cfg.fit:
            ratings = interactions["rating"].to_pylist() if "rating" in interactions.column_names else None
            body = {"seed": self.seed, "items": item_ids,
                    "interactions": {"user_id": users, "item_id": inter_items, "rating": ratings}}
            try:
                status, _ = self._post("/fit", body, allow=NOT_OFFERED)
            except ServiceError as exc:
                raise UserError(f"recommender.url: {self.url}: POST /fit failed ({exc})") from None
            if status in NOT_OFFERED:
                log.info("http recommender %s: no POST /fit (HTTP %d): it keeps its own model", self.url, status)
            else:
                self.fit_mode = "fitted by /fit"
        self.fitted = True
        return self

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("HTTPRecommender: call fit() before serving pages")

    # --- serving ----------------------------------------------------------------------------------------

    def page(self, user_id: str, k: int, exclude: set[str] | None = None) -> list[str]:
        return self.pages([user_id], k)[user_id]

    def pages(self, user_ids: list[str], k: int, exclude: dict[str, set[str]] | None = None) -> dict[str, list[str]]:
        """A validated page per user (a repeated id gets one), `batch_size` users per request; recorded as
        served. A request that fails for good leaves its users an empty page (counted as `pages_failed`)."""
        self._check_fitted()
        if k <= 0:
            raise UserError(f"recommender http: page size must be > 0 (got {k})")
        unique = list(dict.fromkeys(user_ids))
        out: dict[str, list[str]] = {}
        for start in range(0, len(unique), self.cfg.batch_size):
            chunk = unique[start : start + self.cfg.batch_size]
            body = {"k": k, "users": [{"user_id": u, "page": self._pages_fed.get(u, 0),
                                       "seen": self._served.get(u, [])} for u in chunk]}
            try:
                _, reply = self._post("/recommend", body)
                pages = reply.get("pages") if isinstance(reply, dict) else None
                if not isinstance(pages, dict):
                    self._note("malformed_replies", "/recommend: reply has no 'pages' mapping")
                    raise ServiceError("no pages")
            except ServiceError:
                self._note("pages_failed", f"/recommend: {len(chunk)} users get no page", len(chunk))
                pages = None
            for user in chunk:
                out[user] = page = [] if pages is None else self._valid_page(user, pages.get(user), k)
                self._served.setdefault(user, []).extend(page)
                self.counts["pages_served"] += 1
        return out

    def _valid_page(self, user: str, page: Any, k: int) -> list[str]:
        if not isinstance(page, list):
            self._note("malformed_pages", f"user {user}: no page in the reply, or not a list")
            return []
        seen = self._train.get(user, set()) | set(self._served.get(user, ()))
        kept: list[str] = []
        for item in page:
            if not isinstance(item, str) or item not in self.catalogue:
                self._note("unknown_ids", f"user {user}: unknown item id {item!r}")
            elif item in kept:
                self._note("duplicate_ids", f"user {user}: item {item} twice on one page")
            elif item in seen:
                self._note("seen_ids", f"user {user}: item {item} already seen")
            else:
                kept.append(item)
        if len(kept) > k:
            self._note("long_pages", f"user {user}: {len(kept)} items for a page of {k}")
            kept = kept[:k]
        if len(kept) < k and len(self.catalogue) - len(seen) > len(kept):
            self._note("short_pages", f"user {user}: {len(kept)} valid items for a page of {k}")
        return kept

    # --- feedback ---------------------------------------------------------------------------------------

    def _event(self, user: str, watched: dict[str, float | None], shown: list[str]) -> dict[str, Any]:
        page = self._pages_fed.get(user, 0)
        self._pages_fed[user] = page + 1
        served = self._served.setdefault(user, [])
        known = set(served)
        served.extend(i for i in dict.fromkeys(shown) if i not in known)
        return {"key": f"{self.run_id}/{user}/{page}", "user_id": user, "page": page, "shown": list(shown),
                "watched": {i: (None if r is None else float(r)) for i, r in watched.items()}}

    def feedback(self, user_id: str, watched: dict[str, float | None], shown: list[str]) -> None:
        self.feedback_batch([(user_id, watched, shown)])

    def feedback_batch(self, batch: Iterable[Feedback]) -> int:
        """One event per (user, page), sent with any not delivered before, `batch_size` per request."""
        self._check_fitted()
        events = [self._event(user, watched, shown) for user, watched, shown in batch]
        self._send(events)
        return len(events)

    def _send(self, events: list[dict[str, Any]]) -> None:
        queue = self._unsent + events
        self._unsent = []
        for start in range(0, len(queue), self.cfg.batch_size):
            chunk = queue[start : start + self.cfg.batch_size]
            try:
                _, reply = self._post("/feedback", {"events": chunk})
            except ServiceError:
                self._unsent = queue[start:]  # kept in order, sent again with the next feedback (same keys)
                self._note("feedback_deferred", f"/feedback: {len(self._unsent)} events kept to send again",
                           len(chunk))
                return
            self.counts["feedback_sent"] += len(chunk)
            if isinstance(reply, dict):
                self.counts["feedback_applied"] += int(reply.get("applied", 0) or 0)
                self.counts["feedback_duplicates"] += int(reply.get("duplicates", 0) or 0)

    def flush(self) -> int:
        """Try once more to deliver feedback kept after failures; returns how many are still undelivered."""
        if self._unsent:
            self._send([])
        return len(self._unsent)

    def replay(self, rounds: Sequence[Sequence[Feedback]], k: int) -> int:
        """Resume: the logged feedback, round by round, rebuilds the served items and page numbers and is
        sent again under the same keys (see the module docstring). No pages are asked for."""
        self._check_fitted()
        events = [self._event(user, watched, shown) for batch in rounds for user, watched, shown in batch]
        self._send(events)
        self.counts["feedback_replayed"] += len(events)
        return len(events)

    # --- resume state and statistics --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The client's per-user state (what was served, how many pages were fed back); the service keeps
        its own (resume goes through `replay`)."""
        users = sorted(set(self._served) | set(self._pages_fed))
        return {"version": STATE_VERSION, "algorithm": self.name, "run_id": self.run_id,
                "users": {u: {"served": list(self._served.get(u, [])), "pages": self._pages_fed.get(u, 0)}
                          for u in users}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_fitted()
        if state.get("version") != STATE_VERSION or state.get("algorithm") != self.name:
            raise UserError(f"recommender state: made by {state.get('algorithm')!r} v{state.get('version')}, "
                            f"cannot load into http v{STATE_VERSION}")
        self.run_id = state["run_id"]
        self._served = {u: list(s["served"]) for u, s in state["users"].items()}
        self._pages_fed = {u: int(s["pages"]) for u, s in state["users"].items()}

    def stats(self) -> dict[str, Any]:
        """Requests, retries, latency (seconds, every try) and each kind of reply problem, for stats.json."""
        lat = np.asarray(self.latencies, dtype=np.float64)

        def pct(q: float) -> float | None:
            return round(float(np.percentile(lat, q)), 5) if len(lat) else None

        kinds = ("requests", "retries", "timeouts", "failed_requests", "rejected_requests", "malformed_replies",
                 "pages_served", "pages_failed", "malformed_pages", "unknown_ids", "duplicate_ids", "seen_ids",
                 "long_pages", "short_pages", "feedback_sent", "feedback_applied", "feedback_duplicates",
                 "feedback_deferred", "feedback_replayed")
        return {"url": self.url, "fit": self.fit_mode, **{kind: self.counts[kind] for kind in kinds},
                "feedback_undelivered": len(self._unsent),
                "latency_mean_s": round(float(lat.mean()), 5) if len(lat) else None,
                "latency_p50_s": pct(50), "latency_p95_s": pct(95), "latency_p99_s": pct(99)}
