"""What every command shares: the consoles, the progress bar, the reporter the API talks through, the LLM
of the commands that call one, and the Ctrl-C exit.

Results go to stdout (`out`), everything about the work to stderr (`err`). A long step draws one bar whose
columns the command names; the rest (what, how far, elapsed, remaining) is the same everywhere, and it stays
on screen when done: its last state is the record of what the command did. Ctrl-C in a resumable command
prints where the work is kept and how to go on, and exits with code 130.

rich.progress is imported when a bar is built, so importing this module keeps `alignuser-sim --help` fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from rich.progress import Progress

    from alignuser_sim.config import LLMConfig, Scenario
    from alignuser_sim.llm.client import LLMClient

out = Console()
out_wide = Console(width=None if sys.stdout.isatty() else 160)  # a piped table keeps its intervals on one line
err = Console(stderr=True)
err_plain = Console(stderr=True, highlight=False, log_path=False)  # `llm`: server logs and URLs as they are


def progress_bar(console: Console, *fields: str) -> Progress:
    """A bar: the task's description in bold, the bar, done/total, one column per `fields` entry (a rich
    format string such as "failures {task.fields[failures]}"), elapsed and remaining time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(text) for text in fields),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class Bar:
    """A progress bar shown from its first update on (so lines printed before the work starts stay above it)
    and closed by `close()`; an API step's `on_progress(done, total, fields)`. `fields` start at `initial`;
    `label` is formatted with the first update's fields (e.g. "learning {personas:,} personas")."""

    def __init__(self, label: str, *columns: str, **initial: Any):
        self.label, self.columns, self.initial = label, columns, initial
        self.progress: Progress | None = None

    def __call__(self, done: int, total: int | None, fields: dict[str, Any]) -> None:
        if self.progress is None:
            self.progress = progress_bar(err, *self.columns)
            self.progress.start()
            self.task = self.progress.add_task(self.label.format_map({**self.initial, **fields}), total=total,
                                               **self.initial)
        self.progress.update(self.task, completed=done, total=total, **fields)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Reporter:
    """The API's `Reporter` on the terminal: phases as rich spinners, notes as lines on stderr."""

    def status(self, text: str) -> Any:
        return err.status(text)

    def note(self, text: str) -> None:
        err.print(text)


reporter = Reporter()


@contextlib.contextmanager
def exit_on_interrupt(message: str) -> Iterator[None]:
    """Ctrl-C (or SIGTERM, see `root.install_sigterm_handler`) in the block: `message` (where the work is kept,
    how to go on) on stderr and exit code 130."""
    try:
        yield
    except KeyboardInterrupt:
        print(message, file=sys.stderr)
        raise typer.Exit(130) from None


@contextlib.contextmanager
def llm_client(config: LLMConfig, folder: Path) -> Iterator[LLMClient]:
    """The scenario's LLM for a command's block (the embedded server started when it names no endpoint)."""
    from alignuser_sim.llm.endpoints import open_client

    with open_client(config, folder, reporter.note) as client:
        yield client


ENDPOINT_OPT = typer.Option(
    None, "--endpoint", help="OpenAI-compatible base URL of a running server instead of the scenario's "
    "llm.endpoints (repeat for several), e.g. a merged adapter served by `alignuser-sim llm serve --port 8731`")


def with_endpoints(scenario: Scenario, urls: list[str] | None) -> Scenario:
    """`--endpoint`: the scenario pointed at servers already running. A run against a merged adapter or a
    second server should not need a copy of the scenario that differs by one line."""
    from pydantic import ValidationError

    from alignuser_sim.errors import UserError

    if urls:
        try:
            scenario.llm.endpoints = list(urls)
        except ValidationError as exc:
            raise UserError(f"--endpoint: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    return scenario


def table(title: str, rows: dict[str, object]) -> Table:
    """A two-column what/value table; integers with thousands separators."""
    result = Table(title=title, show_header=True, header_style="bold")
    result.add_column("what")
    result.add_column("value", justify="right")
    for key, value in rows.items():
        result.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    return result
