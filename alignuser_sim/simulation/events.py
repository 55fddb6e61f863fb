"""Events (one row per agent-page decision) and the macro statistics aggregated from them as a run goes.

The event key is `(run_id, agent_id, session, page)`. Writing is idempotent on that key: the log keeps the
set of keys it holds and drops a second copy, so a shard restarted mid-page, or a resumed driver that
replays a page, never duplicates an event (and never counts it twice in the statistics).

Events are appended as Parquet part files named by writer and number (`events/part-<writer>-000001.parquet`,
each written to a temporary name and renamed, so a crash leaves whole parts only, and two writers never
overwrite each other's parts); `finalize()` merges them into `events.parquet`, one row per key, sorted by
key. A resumed run re-reads the parts to learn what is already done. `RunLock` keeps two drivers of one
run folder from running at once (a killed driver's actors may outlive it for a few seconds).
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from alignuser_sim import store
from alignuser_sim.llm.accounting import LatencyHistogram

# The accounting of one LLM call, in every table that stores calls (these events, evaluation.py's decisions
# and ratings): one definition, so the tables cannot drift apart. Spliced in where each table had them: a
# schema's field order must not change, or the files already written no longer read with it.
CALL_FIELDS = (
    pa.field("failure", pa.string()),
    pa.field("invalid_ids", pa.int32(), nullable=False),
    pa.field("prompt_tokens", pa.int32(), nullable=False),
    pa.field("completion_tokens", pa.int32(), nullable=False),
    pa.field("latency_s", pa.float32(), nullable=False),
    pa.field("from_cache", pa.bool_(), nullable=False),
)
EVENTS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("agent_id", pa.string(), nullable=False),
        pa.field("session", pa.int32(), nullable=False),
        pa.field("page", pa.int32(), nullable=False),
        pa.field("items", pa.list_(pa.string()), nullable=False),
        pa.field("watched", pa.list_(pa.bool_()), nullable=False),
        pa.field("ratings", pa.list_(pa.int8()), nullable=False),
        pa.field("feelings", pa.list_(pa.string()), nullable=False),
        pa.field("thought", pa.string()),
        pa.field("action", pa.string(), nullable=False),
        *CALL_FIELDS,
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("wall_time", pa.float64(), nullable=False),
    ]
)
KEY = ("run_id", "agent_id", "session", "page")


@dataclass
class Event:
    run_id: str
    agent_id: str
    session: int
    page: int
    items: list[str]
    watched: list[bool]
    ratings: list[int | None]
    feelings: list[str]
    thought: str | None
    action: str
    failure: str | None
    invalid_ids: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    from_cache: bool
    shard: int
    wall_time: float

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.run_id, self.agent_id, self.session, self.page)


def events_table(events: list[Event]) -> pa.Table:
    columns = {name: [getattr(e, name) for e in events] for name in EVENTS.names}
    return pa.table(columns, schema=EVENTS)


def events_from_table(table: pa.Table) -> list[Event]:
    return [Event(**row) for row in table.to_pylist()]


# --- part folders (this log's and evaluation.py's PartStore) ------------------------------------------------


def part_files(folder: Path) -> list[Path]:
    """The parts of a part folder, oldest first (of a key written twice, the first write is the one kept)."""
    return sorted(Path(folder).glob("part-*.parquet"), key=lambda p: p.stat().st_mtime_ns)


def merge_parts(files: Sequence[Path], schema: pa.Schema, key: Sequence[str]) -> pa.Table:
    """The files as one table: one row per key (the first in file order), sorted by key."""
    table = pa.concat_tables([pq.read_table(f, schema=schema) for f in files]) if files else schema.empty_table()
    seen: set[tuple] = set()
    keep = []
    for i, k in enumerate(zip(*(table[c].to_pylist() for c in key), strict=True)):
        if k not in seen:
            seen.add(k)
            keep.append(i)
    if len(keep) < table.num_rows:
        table = table.take(pa.array(keep, pa.int64()))
    return table.sort_by([(c, "ascending") for c in key])


# --- macro statistics ----------------------------------------------------------------------------------


@dataclass
class MacroStats:
    """Distributions aggregated event by event; `merge` combines the stats of several processes."""

    decisions: int = 0
    failures: Counter = field(default_factory=Counter)
    invalid_ids: int = 0
    ratings: Counter = field(default_factory=Counter)  # rating -> count
    watches_per_page: Counter = field(default_factory=Counter)  # watches on a page -> pages
    exit_page: Counter = field(default_factory=Counter)  # page of the exit (or the cap) -> sessions
    pages_per_session: Counter = field(default_factory=Counter)
    sessions_done: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    from_cache: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # of calls that went to a server

    def add(self, event: Event, session_over: bool) -> None:
        self.decisions += 1
        self.prompt_tokens += event.prompt_tokens
        self.completion_tokens += event.completion_tokens
        self.from_cache += int(event.from_cache)
        self.invalid_ids += event.invalid_ids
        if not event.from_cache:
            self.latency.add(event.latency_s)
        if event.failure:
            self.failures[event.failure] += 1
        else:
            self.watches_per_page[sum(event.watched)] += 1
            for watched, rating in zip(event.watched, event.ratings, strict=True):
                if watched and rating is not None:
                    self.ratings[int(rating)] += 1
        if session_over:
            self.sessions_done += 1
            self.exit_page[event.page] += 1
            self.pages_per_session[event.page + 1] += 1

    def merge(self, other: MacroStats) -> None:
        for name in ("decisions", "invalid_ids", "sessions_done", "prompt_tokens", "completion_tokens", "from_cache"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("failures", "ratings", "watches_per_page", "exit_page", "pages_per_session"):
            getattr(self, name).update(getattr(other, name))
        self.latency.merge(other.latency)

    def summary(self) -> dict[str, Any]:
        def pct(q: float) -> float:
            value = self.latency.percentile(q)
            return round(value, 4) if value is not None else 0.0

        watched = sum(k * v for k, v in self.watches_per_page.items())
        judged = sum(self.watches_per_page.values())
        rated = sum(self.ratings.values())
        return {
            "decisions": self.decisions,
            "sessions_done": self.sessions_done,
            "failures": sum(self.failures.values()),
            "failures_by_kind": dict(self.failures),
            "invalid_ids": self.invalid_ids,
            "watches_per_page_mean": round(watched / judged, 4) if judged else None,
            "rating_mean": round(sum(k * v for k, v in self.ratings.items()) / rated, 4) if rated else None,
            "pages_per_session_mean": (
                round(sum(k * v for k, v in self.pages_per_session.items()) / self.sessions_done, 4)
                if self.sessions_done else None
            ),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "from_cache": self.from_cache,
            "latency_p50_s": pct(0.50),
            "latency_p95_s": pct(0.95),
            "latency_p99_s": pct(0.99),
        }

    def to_dict(self) -> dict[str, Any]:
        hist = {
            name: {str(k): v for k, v in sorted(getattr(self, name).items())}
            for name in ("ratings", "watches_per_page", "exit_page", "pages_per_session")
        }
        return {"summary": self.summary(), "histograms": hist}


# --- the event log ---------------------------------------------------------------------------------------


class EventLog:
    """Append-only, idempotent event storage of one run (see the module docstring)."""

    def __init__(self, run_dir: Path, flush_s: float = 0.5, flush_events: int = 20_000):
        """Events are buffered and written as one part every `flush_s` seconds (or `flush_events` events):
        one small Parquet file per batch was the largest cost of a cached run. What a crash loses from the
        buffer was never fed back to the recommender's durable state either: a resume decides it again."""
        self.run_dir = Path(run_dir)
        self.flush_s, self.flush_events = flush_s, flush_events
        self._buffer: list[Event] = []
        self._last_flush = time.monotonic()
        self.parts_dir = self.run_dir / "events"
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.keys: set[tuple[str, str, int, int]] = set()
        self.duplicates = 0
        self.writer = uuid.uuid4().hex[:8]
        self._next_part = 1

    def load_existing(self) -> list[Event]:
        """Events already on disk (resume); their keys count as written."""
        events = []
        for part in part_files(self.parts_dir):
            for event in events_from_table(pq.read_table(part, schema=EVENTS)):
                if event.key not in self.keys:
                    self.keys.add(event.key)
                    events.append(event)
        return events

    def append(self, events: list[Event]) -> list[Event]:
        """Write the events whose key is new; returns them (the ones to count in the statistics)."""
        fresh = []
        for event in events:
            if event.key in self.keys:
                self.duplicates += 1
                continue
            self.keys.add(event.key)
            fresh.append(event)
        self._buffer.extend(fresh)
        if len(self._buffer) >= self.flush_events or time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()
        return fresh

    def flush(self) -> None:
        """Write the buffered events as one part file (whole or not at all)."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        path = self.parts_dir / f"part-{self.writer}-{self._next_part:06d}.parquet"
        self._next_part += 1
        store.write_parquet(events_table(self._buffer), path)
        self._buffer = []

    def finalize(self) -> Path:
        """Merge the parts into `events.parquet`, one row per key (the first written), sorted by key."""
        self.flush()
        path = self.run_dir / "events.parquet"
        store.write_parquet(merge_parts(part_files(self.parts_dir), EVENTS, KEY), path)
        return path


class RunLock:
    """An exclusive lock on a run folder (flock: released by the kernel when its holder dies)."""

    def __init__(self, run_dir: Path, wait_s: float = 120.0):
        self.path = Path(run_dir) / "run.lock"
        self.wait_s = wait_s
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    from alignuser_sim.errors import UserError

                    raise UserError(f"{self.path.parent}: another process is still driving this run") from None
                time.sleep(0.2)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """A run's JSON file (run.json, stats.json), atomically; values JSON lacks are written as text."""
    store.write_json(path, data, default=str)
