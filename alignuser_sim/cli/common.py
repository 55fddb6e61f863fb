"""The progress bar of the long commands (`eval`, `learn`, the Ray driver of `run`): one builder, one look.

Each command only names the counters it shows; the rest of the bar (what, how far, elapsed, remaining) is
the same everywhere. rich.progress is imported when a bar is built, so importing this module keeps
`alignuser-sim --help` fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


def progress_bar(console: Console, *fields: str) -> Progress:
    """A bar: the task's description in bold, the bar, done/total, one column per `fields` entry (a rich
    format string such as "failures {task.fields[failures]}"), elapsed and remaining time. It stays on screen
    when done: its last state is the record of what the command did."""
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
