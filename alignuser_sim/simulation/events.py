"""Events (one row per agent-page decision) and the macro statistics aggregated from them as a run goes.

The event key is `(run_id, agent_id, session, page)`. Writing is idempotent on that key: the log keeps the
set of keys it holds and drops a second copy, so a shard restarted mid-page, or a resumed driver that
replays a page, never duplicates an event (and never counts it twice in the statistics).

Events are a keyed part table (`store.PartTable`): Parquet parts under `events/`, each written whole, named
by writer and number so two writers never overwrite each other's parts; `finalize()` merges them into
`events.parquet`, one row per key, sorted by key. A resumed run re-reads them to learn what is already done.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from alignuser_sim.config import RunConfig
from alignuser_sim.llm.accounting import LatencyHistogram
from alignuser_sim.store import CALL_FIELDS, PartTable, RunFolder

_RUN = RunConfig()  # the defaults of the `run:` knobs, for a log made without a scenario (tests, benchmarks)

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


# --- macro statistics ----------------------------------------------------------------------------------


@dataclass
class MacroStats:
    """Distributions aggregated event by event; `merge` combines the stats of several processes.

    A session ended by a failed call (a reply that never validated) holds no decision on its last page: it
    counts in `sessions_failed`, not in `exit_page` / `pages_per_session` / `sessions_done`, as the report's
    macro section leaves it out. A session whose page could not be asked (the LLM server unreachable past
    `run.outage_wait_s`) is not over: the driver counts it in `sessions_unfinished` and `--resume` retries it.
    """

    decisions: int = 0
    failures: Counter = field(default_factory=Counter)
    invalid_ids: int = 0
    ratings: Counter = field(default_factory=Counter)  # rating -> count
    watches_per_page: Counter = field(default_factory=Counter)  # watches on a page -> pages
    exit_page: Counter = field(default_factory=Counter)  # page of the exit (or the cap) -> sessions
    pages_per_session: Counter = field(default_factory=Counter)
    sessions_done: int = 0  # sessions that ended by an exit or the page cap
    sessions_failed: int = 0  # sessions ended by a failed call
    sessions_unfinished: int = 0  # set by the driver at the end: sessions left for `--resume`
    transport_retries: int = 0  # pages asked again after a transport failure (set by the driver)
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
        if session_over and event.failure:
            self.sessions_failed += 1
        elif session_over:
            self.sessions_done += 1
            self.exit_page[event.page] += 1
            self.pages_per_session[event.page + 1] += 1

    def merge(self, other: MacroStats) -> None:
        for name in ("decisions", "invalid_ids", "sessions_done", "sessions_failed", "sessions_unfinished",
                     "transport_retries", "prompt_tokens", "completion_tokens", "from_cache"):
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
            "sessions_failed": self.sessions_failed,
            "sessions_unfinished": self.sessions_unfinished,
            "transport_retries": self.transport_retries,
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

    def __init__(self, run_dir: Path, flush_s: float = _RUN.event_flush_s,
                 flush_events: int = _RUN.event_flush_events):
        """Events are buffered and written as one part every `flush_s` seconds (or `flush_events` events)."""
        self.run_dir = Path(run_dir)
        self.table: PartTable[Event] = PartTable(self.run_dir, RunFolder.EVENTS, EVENTS, KEY, flush_s=flush_s,
                                                 flush_events=flush_events, to_table=events_table,
                                                 key_of=lambda e: e.key, keep_parts=True)

    @property
    def duplicates(self) -> int:
        return self.table.duplicates

    def load_existing(self) -> list[Event]:
        """Events already on disk (resume); their keys count as written."""
        return events_from_table(self.table.load())

    def append(self, events: list[Event]) -> list[Event]:
        """Write the events whose key is new; returns them (the ones to count in the statistics)."""
        return self.table.extend(events)

    def flush(self) -> None:
        self.table.flush()

    def finalize(self) -> Path:
        """Merge the parts into `events.parquet`, one row per key (the first written), sorted by key."""
        self.table.finalize()
        return self.table.path
