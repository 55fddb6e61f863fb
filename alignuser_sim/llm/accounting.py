"""Per-run accounting of LLM calls, mergeable across processes.

Each client holds one `Accounting`. `snapshot()` returns a plain JSON-able dict; snapshots from many
processes (e.g. one per Ray shard) merge exactly with `Accounting.merge_snapshots([...])`, because the
latency distribution is kept as a log-bucket histogram (2% wide buckets) rather than a list of samples:
percentiles of the merged histogram are exact to within a bucket, whatever the number of calls.

Counted:
- `calls`: calls made by the program (cache hits included);
- `cache_hits`: calls answered from the completion cache (no request);
- `requests`: HTTP requests sent (retries included);
- `ok`: calls that returned a validated value;
- `prompt_tokens`, `completion_tokens`: the sum of the server's `usage` over every request sent,
  including attempts that were retried (they cost server time too); cache hits add nothing;
- `retries` and `failures`, by kind: `timeout`, `connection`, `http_<status>` (transport) and
  `invalid_json`, `schema`, `length` (a completion that did not validate; `length` = cut at max_tokens);
- `latency_s`: latency of each call that went to a server, from its first request to its result
  (retries and backoff included, time queued for a concurrency slot excluded), as p50/p95/p99/mean/max.

Counts say how many calls failed; `FailureLog` keeps each failure itself (its kind, error and raw text,
one JSON line per failed call in a run's `llm_failures.jsonl`), to read why after the run.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alignuser_sim.llm.protocol import CallResult

_BASE = 1e-4  # seconds: the lower edge of bucket 0
_GROWTH = 1.02  # each bucket is 2% wider than the previous one
_LOG_GROWTH = math.log(_GROWTH)


class LatencyHistogram:
    """A mergeable log-bucket histogram of positive durations (seconds)."""

    __slots__ = ("buckets", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    @staticmethod
    def bucket_of(seconds: float) -> int:
        if seconds <= _BASE:
            return 0
        return int(math.log(seconds / _BASE) / _LOG_GROWTH)

    def add(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.buckets[self.bucket_of(seconds)] += 1
        self.count += 1
        self.total += seconds
        self.min = min(self.min, seconds)
        self.max = max(self.max, seconds)

    def merge(self, other: LatencyHistogram) -> None:
        self.buckets.update(other.buckets)
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def percentile(self, q: float) -> float | None:
        """The q-quantile (0 < q <= 1): the geometric middle of the bucket holding it, clamped to [min, max]."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                middle = _BASE * _GROWTH ** (index + 0.5)
                return min(self.max, max(self.min, middle))
        return self.max

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": self.total,
            "min": None if self.count == 0 else self.min,
            "max": self.max,
            "buckets": {str(k): v for k, v in sorted(self.buckets.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        hist = cls()
        hist.buckets = Counter({int(k): int(v) for k, v in data.get("buckets", {}).items()})
        hist.count = int(data.get("count", 0))
        hist.total = float(data.get("sum", 0.0))
        hist.min = math.inf if data.get("min") is None else float(data["min"])
        hist.max = float(data.get("max", 0.0))
        return hist


_COUNTERS = ("calls", "cache_hits", "requests", "ok", "prompt_tokens", "completion_tokens")


class Accounting:
    """Counters of one client. Thread-safe; cheap enough to update on every call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.cache_hits = 0
        self.requests = 0
        self.ok = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.retries: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.latency = LatencyHistogram()

    # --- updates (called by the client) ---------------------------------------------------------------
    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def retry(self, kind: str) -> None:
        with self._lock:
            self.retries[kind] += 1

    def failure(self, kind: str) -> None:
        with self._lock:
            self.failures[kind] += 1

    def record_latency(self, seconds: float) -> None:
        with self._lock:
            self.latency.add(seconds)

    # --- reading --------------------------------------------------------------------------------------
    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able dict: counters, retries/failures by kind, latency percentiles and histogram."""
        with self._lock:
            lat = self.latency
            return {
                **{name: getattr(self, name) for name in _COUNTERS},
                "failed": sum(self.failures.values()),
                "retries": dict(sorted(self.retries.items())),
                "failures": dict(sorted(self.failures.items())),
                "latency_s": {
                    "p50": lat.percentile(0.50),
                    "p95": lat.percentile(0.95),
                    "p99": lat.percentile(0.99),
                    "mean": (lat.total / lat.count) if lat.count else None,
                    "max": lat.max if lat.count else None,
                    "histogram": lat.to_dict(),
                },
            }

    @classmethod
    def from_snapshot(cls, snap: Mapping[str, Any]) -> Accounting:
        acc = cls()
        for name in _COUNTERS:
            setattr(acc, name, int(snap.get(name, 0)))
        acc.retries = Counter({k: int(v) for k, v in snap.get("retries", {}).items()})
        acc.failures = Counter({k: int(v) for k, v in snap.get("failures", {}).items()})
        acc.latency = LatencyHistogram.from_dict(snap.get("latency_s", {}).get("histogram", {}))
        return acc

    def merge(self, other: Accounting | Mapping[str, Any]) -> Accounting:
        """Add `other` (an Accounting or a snapshot) into this one; returns self."""
        if not isinstance(other, Accounting):
            other = Accounting.from_snapshot(other)
        with self._lock:
            for name in _COUNTERS:
                setattr(self, name, getattr(self, name) + getattr(other, name))
            self.retries.update(other.retries)
            self.failures.update(other.failures)
            self.latency.merge(other.latency)
        return self

    @classmethod
    def merge_snapshots(cls, snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        total = cls()
        for snap in snapshots:
            total.merge(snap)
        return total.snapshot()

    def summary_line(self) -> str:
        """One line for logs: calls, hits, tokens, p50/p95, failures."""
        snap = self.snapshot()
        lat = snap["latency_s"]

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.0f}ms"

        fails = ", ".join(f"{k}={v}" for k, v in snap["failures"].items()) or "0"
        return (
            f"llm: {snap['calls']} calls ({snap['cache_hits']} cached, {snap['requests']} requests), "
            f"tokens in/out {snap['prompt_tokens']}/{snap['completion_tokens']}, "
            f"p50 {ms(lat['p50'])} p95 {ms(lat['p95'])}, failures {fails}"
        )


class FailureLog:
    """Appends each failed call to a JSONL file (None: keeps nothing). Thread-safe.

    `hold=True` keeps the lines in memory instead, for `drain()`: a Ray shard on another node would write the
    file to that node's disk, where nobody looks; its coordinator drains the lines into the head's run folder.
    At most HOLD_MAX lines are held between drains (the rest are counted in `dropped`, not kept)."""

    HOLD_MAX = 10_000

    def __init__(self, path: Path | None, hold: bool = False):
        self.path = path
        self.hold = hold
        self.held: list[str] = []
        self.dropped = 0
        self._lock = threading.Lock()

    def drain(self) -> tuple[list[str], int]:
        """The held lines and how many were dropped since the last drain (both reset)."""
        with self._lock:
            lines, dropped = self.held, self.dropped
            self.held, self.dropped = [], 0
        return lines, dropped

    def write(self, result: CallResult[Any], messages: Sequence[Mapping[str, Any]], model: str) -> None:
        if self.path is None and not self.hold:
            return
        first = messages[0].get("content", "") if messages else ""
        row = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "kind": result.failure,
            "error": result.error,
            "key": result.key,
            "model": model,
            "endpoint": result.endpoint,
            "attempts": result.attempts,
            "finish_reason": result.finish_reason,
            "from_cache": result.from_cache,
            "first_message_start": first[:80] if isinstance(first, str) else None,
            "raw": result.raw,
        }
        line = json.dumps(row, ensure_ascii=False) + "\n"
        if self.hold:
            with self._lock:
                if len(self.held) < self.HOLD_MAX:
                    self.held.append(line)
                else:
                    self.dropped += 1
            return
        self.append([line])

    def append(self, lines: Sequence[str]) -> None:
        """Lines written elsewhere (`drain()`ed from a shard) appended to this log's file."""
        if self.path is None or not lines:
            return
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.writelines(lines)
