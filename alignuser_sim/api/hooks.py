"""How the API's steps talk to their caller without drawing anything: a `Reporter` for phases and notes,
`on_progress(done, total, fields)` for counters, and the `Runner` a simulation's plan executes on (in this
process, or on Ray through `actors.launch.RayRunner`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from alignuser_sim.simulation.runs import RunPlan


log = logging.getLogger(__name__)

OnProgress = Callable[[int, "int | None", dict[str, Any]], None]
"""`on_progress(done, total, fields)`: units done of `total` (None: not known yet) and the step's counters."""


class Status(Protocol):
    def update(self, text: str) -> None: ...


class Reporter(Protocol):
    """Where a step tells what it is doing: a named phase (a spinner in the CLI) and one-line notes."""

    def status(self, text: str) -> AbstractContextManager[Status]: ...

    def note(self, text: str) -> None: ...


class LogReporter:
    """The default: notes go to the log, phases are silent."""

    def update(self, text: str) -> None:
        log.info("%s", text)

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[Status]:
        log.info("%s", text)
        yield self

    def note(self, text: str) -> None:
        log.info("%s", text)


class Runner(Protocol):
    """Where a run's plan executes. It sizes the shards before the plan is made (a cluster decides how many
    it can place), then runs the plan and returns its summary."""

    def shard_count(self, agents: int) -> int: ...

    def __call__(self, plan: RunPlan, on_progress: OnProgress | None = None) -> dict[str, Any]: ...
