"""Which endpoint gets the next request: least outstanding requests, ties by round robin, sick ones avoided.

Several base URLs (vLLM replicas) serve one client. A request goes to the endpoint with the fewest requests
on the wire; a retry after a transport error goes to another endpoint than the one that just failed; an
endpoint that failed is avoided for a cooldown (`cooldown_s`, doubling per failure in a row, up to 32x)
while others are available, and is back to full health on its first success. With every endpoint sick the
balancer still picks one: a request is never refused here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignuser_sim.errors import UserError
from alignuser_sim.llm.transport import normalize_base_url

MAX_COOLDOWN_DOUBLINGS = 5  # 2**5 = 32x the base cooldown


@dataclass
class Endpoint:
    url: str
    outstanding: int = 0
    sent: int = 0
    failures_in_a_row: int = 0
    cooling_until: float = 0.0  # monotonic time before which the endpoint is avoided when others are fine
    client: Any = None  # AsyncOpenAI, created in the running event loop


class Balancer:
    """The endpoints of one client and their health. Not thread-safe: one event loop uses it."""

    def __init__(self, urls: Sequence[str], cooldown_s: float):
        self.endpoints: list[Endpoint] = []
        self.cooldown_s = cooldown_s
        self._rr = 0
        self.replace(urls)

    def replace(self, urls: Sequence[str]) -> int:
        """Balance over `urls` from now on. Endpoints kept keep their connections and health counters."""
        if not urls:
            raise UserError("llm.endpoints: at least one OpenAI-compatible base URL is needed")
        known = {ep.url: ep for ep in self.endpoints}
        self.endpoints = [known.get(normalize_base_url(u)) or Endpoint(normalize_base_url(u)) for u in urls]
        return len(self.endpoints)

    def pick(self, avoid: Endpoint | None) -> Endpoint:
        """Least outstanding requests (ties: round robin), skipping the endpoint that just failed this
        call and endpoints cooling down after transport errors, unless nothing else is left."""
        candidates = self.endpoints
        if len(candidates) > 1:
            now = time.monotonic()
            healthy = [ep for ep in candidates if ep is not avoid and ep.cooling_until <= now]
            candidates = healthy or [ep for ep in candidates if ep is not avoid] or candidates
        n = len(candidates)
        start = self._rr % n
        self._rr += 1
        best = candidates[start]
        for i in range(1, n):
            ep = candidates[(start + i) % n]
            if ep.outstanding < best.outstanding:
                best = ep
        return best

    def failed(self, endpoint: Endpoint) -> None:
        endpoint.failures_in_a_row += 1
        doublings = min(endpoint.failures_in_a_row - 1, MAX_COOLDOWN_DOUBLINGS)
        endpoint.cooling_until = time.monotonic() + self.cooldown_s * 2**doublings

    @staticmethod
    def succeeded(endpoint: Endpoint) -> None:
        endpoint.failures_in_a_row = 0
        endpoint.cooling_until = 0.0

    def forget_connections(self) -> None:
        """A new event loop: HTTP pools and in-flight counts of the old one mean nothing there."""
        for ep in self.endpoints:
            ep.client = None
            ep.outstanding = 0
