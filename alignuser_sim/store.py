"""Atomic file writes: write a temporary file next to the target, then rename it over the target.

Every command is resumable, and a resume trusts what it finds on disk (a plan, a summary, a Parquet part,
a learning view). A process killed mid-write (Ctrl-C, out of memory, a lost node) must therefore never
leave a half-written file under the real name: `os.replace` is atomic on POSIX, so a reader sees the old
file or the new one, never a torn one. The temporary file is `<name>.tmp` in the same folder (a rename does
not cross file systems); the readers of part folders glob `part-*.parquet`, which never matches it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield the temporary path to write; a clean exit renames it over `path`, an error removes it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(
    path: str | os.PathLike[str], data: Any, indent: int = 1, default: Callable[[Any], Any] | None = None
) -> None:
    """`data` as JSON; `default=str` writes values JSON lacks (paths, times) as text instead of failing."""
    write_text(path, json.dumps(data, indent=indent, default=default))


def write_parquet(table: Any, path: str | os.PathLike[str], **options: Any) -> None:
    """A pyarrow table as Parquet (`options` go to `pq.write_table`)."""
    import pyarrow.parquet as pq  # here: the text writers (report, finetune) do not load Parquet

    with replacing(path) as tmp:
        pq.write_table(table, tmp, **options)
