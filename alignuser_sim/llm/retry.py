"""When a call is asked again, and after how long: the client's retry policy, apart from its call path.

Two kinds of retry, counted separately:

- transport: the request produced no completion (connection refused or reset, timeout, HTTP 408, 409,
  425, 429 or 5xx). Asked again up to `max_retries` times, after exponential backoff with "equal jitter",
  or after the wait the server asked for (`Retry-After`, capped at `retry_after_max_s`). Other 4xx (400:
  prompt too long, unknown model...) are not retried: asking again gets the same answer.
- validation: a reply came back but did not validate (invalid JSON, wrong schema, cut at `max_tokens`).
  Asked again `validation_retries` times with a new seed derived from the call's, so that a seeded call
  stays reproducible.

The numbers come from `LLMConfig` (`llm:` in a scenario): see `from_config`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alignuser_sim.config import LLMConfig
    from alignuser_sim.llm.transport import TransportError


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    validation_retries: int
    backoff_base_s: float
    backoff_max_s: float
    retry_after_max_s: float

    @classmethod
    def from_config(cls, config: LLMConfig) -> RetryPolicy:
        return cls(config.max_retries, config.validation_retries, config.backoff_base_s, config.backoff_max_s,
                   config.retry_after_max_s)

    def retries_transport(self, error: TransportError, retries_so_far: int) -> bool:
        return error.retryable and retries_so_far < self.max_retries

    def retries_validation(self, retries_so_far: int) -> bool:
        return retries_so_far < self.validation_retries

    def transport_delay(self, retry: int, error: TransportError, rng: random.Random) -> float:
        """Seconds to wait before transport retry number `retry` (1-based)."""
        if error.retry_after is not None:
            return min(error.retry_after, self.retry_after_max_s)
        return backoff_delay(retry, self.backoff_base_s, self.backoff_max_s, rng)


def backoff_delay(retry: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": d = min(max, base * 2**(retry-1)); wait in [d/2, d]."""
    delay = min(max_s, base_s * (2 ** max(0, retry - 1)))
    return delay / 2 + rng.random() * delay / 2


def derived_seed(seed: int | None, attempt: int) -> int | None:
    """The seed of the `attempt`-th validation retry (0 = the original seed)."""
    if seed is None or attempt == 0:
        return seed
    return (seed * 1_000_003 + attempt * 7_919) % (2**31 - 1)
