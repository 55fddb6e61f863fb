"""An example recommender service speaking alignuser-sim's JSON protocol (docs/recommender-protocol.md).

A platform team's recommender usually lives behind its own service; this is the smallest one that keeps the
protocol: most-popular-unseen items (popularity = distinct users who consumed an item in what POST /fit sent,
ties by catalogue order: the same ranking as the built-in `pop`), per-user state from the feedback, and
idempotent feedback (an event whose key was applied before is counted as a duplicate, not applied again).
It depends on FastAPI and numpy only, not on alignuser-sim.

    python examples/http_service.py --port 8765          # or: uvicorn examples.http_service:app --port 8765
    alignuser-sim run examples/http_scenario.yaml

GET /stats (not part of the protocol) reports what the service received, for tests and the benchmark.
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, Field


class FitRequest(BaseModel):
    run_id: str = ""
    seed: int = 0
    items: list[str]
    interactions: dict[str, list[Any] | None]


class UserRequest(BaseModel):
    user_id: str
    page: int = 0
    seen: list[str] = Field(default_factory=list)


class RecommendRequest(BaseModel):
    run_id: str = ""
    k: int
    users: list[UserRequest]


class FeedbackEvent(BaseModel):
    key: str
    user_id: str
    page: int
    shown: list[str]
    watched: dict[str, float | None]


class FeedbackRequest(BaseModel):
    run_id: str = ""
    events: list[FeedbackEvent]


class PopularityModel:
    """Most popular unseen items; a user's seen set = training items + anything shown or watched."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fit([], {"user_id": [], "item_id": []})
        self.fits = 0  # the counters below survive a re-fit: they say what the service received in its life

    def fit(self, items: list[str], interactions: dict[str, list[Any] | None]) -> None:
        users, consumed = interactions.get("user_id") or [], interactions.get("item_id") or []
        catalogue = list(dict.fromkeys([*items, *consumed]))
        self.index = {item: i for i, item in enumerate(catalogue)}
        self.items = np.asarray(catalogue, dtype=object)
        pairs = {(u, self.index[i]) for u, i in zip(users, consumed, strict=True)}
        pop = np.bincount([i for _, i in pairs], minlength=len(catalogue)).astype(np.float64)
        self.order = np.argsort(-(pop - np.arange(len(catalogue)) / (len(catalogue) + 1.0)), kind="stable")
        self.seen: dict[str, set[int]] = {}
        for user, code in pairs:
            self.seen.setdefault(user, set()).add(code)
        self.applied_keys: set[str] = set()
        self.applied = self.duplicates = self.recommend_requests = self.users_served = 0

    def recommend(self, user: str, k: int, seen: list[str]) -> list[str]:
        hidden = self.seen.get(user, set()) | {self.index[i] for i in seen if i in self.index}
        page: list[str] = []
        for code in self.order:
            if len(page) == k:
                break
            if int(code) not in hidden:
                page.append(str(self.items[code]))
        return page

    def feedback(self, event: FeedbackEvent) -> bool:
        if event.key in self.applied_keys:
            return False
        self.applied_keys.add(event.key)
        seen = self.seen.setdefault(event.user_id, set())
        seen.update(self.index[i] for i in [*event.shown, *event.watched] if i in self.index)
        return True


model = PopularityModel()
app = FastAPI(title="alignuser-sim example recommender", version="1")


@app.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "protocol": 1}


@app.post("/fit")
def fit(request: FitRequest) -> dict[str, Any]:
    with model.lock:
        fits = model.fits + 1
        model.fit(request.items, request.interactions)
        model.fits = fits
        return {"status": "ok", "items": len(model.items)}


@app.post("/recommend")
def recommend(request: RecommendRequest) -> dict[str, Any]:
    with model.lock:
        model.recommend_requests += 1
        model.users_served += len(request.users)
        return {"pages": {u.user_id: model.recommend(u.user_id, request.k, u.seen) for u in request.users}}


@app.post("/feedback")
def feedback(request: FeedbackRequest) -> dict[str, Any]:
    with model.lock:
        applied = sum(model.feedback(event) for event in request.events)
        model.applied += applied
        model.duplicates += len(request.events) - applied
        return {"applied": applied, "duplicates": len(request.events) - applied}


@app.get("/stats")
def stats() -> dict[str, Any]:
    with model.lock:
        return {"fits": model.fits, "applied": model.applied, "duplicates": model.duplicates,
                "recommend_requests": model.recommend_requests, "users_served": model.users_served,
                "items": len(model.items)}


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
