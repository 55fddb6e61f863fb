"""User-facing errors.

Every problem caused by input the user controls (a scenario file, a data file, a CLI argument) is raised
as a `UserError` whose `str()` is ONE line naming the place (file, key path or row) and what is wrong.
The CLI prints that line and exits with code 2; nothing else prints a traceback for bad input.

`Terminated` is not bad input: it is the KeyboardInterrupt the CLI raises on SIGTERM (exit code 143).
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""

    exit_code = 2


class ScenarioError(UserError):
    """A scenario file that does not parse or validate: `file: key.path: message`."""

    def __init__(self, file: str | Path, key_path: str, message: str):
        self.file, self.key_path, self.message = str(file), key_path, message
        where = f"{self.file}: {key_path}: " if key_path else f"{self.file}: "
        super().__init__(f"{where}{message}")


class DataError(UserError):
    """A data file that cannot be used: `file: row N: message` (row is 1-based, header excluded)."""

    def __init__(self, file: str | Path, message: str, row: int | None = None, column: str | None = None):
        self.file, self.row, self.column, self.message = str(file), row, column, message
        parts = [self.file]
        if row is not None:
            parts.append(f"row {row}")
        if column is not None:
            parts.append(f"column '{column}'")
        super().__init__(": ".join(parts) + f": {message}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's handler like a Ctrl-C so every interrupt path runs (journals flushed,
    servers stopped); the CLI exits with code 143."""

    exit_code = 143
