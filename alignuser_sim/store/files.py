"""Atomic writes, keyed Parquet part tables, folder locks and claims (see the package docstring for why)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from alignuser_sim.errors import UserError

log = logging.getLogger(__name__)

# --- atomic writes -------------------------------------------------------------------------------------------


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A temporary beside `path`, unique to this writer (process and call): two processes writing one file at
    once (two first loads of a dataset) each write their own and the last rename wins, whole."""
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield the temporary path to write; a clean exit renames it over `path` (both flushed to disk), an
    error removes it."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        _fsync(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    _fsync(path.parent, directory=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(
    path: str | os.PathLike[str], data: Any, indent: int = 1, default: Callable[[Any], Any] | None = None
) -> None:
    """`data` as JSON; `default=str` writes values JSON lacks (paths, times) as text instead of failing."""
    write_text(path, json.dumps(data, indent=indent, default=default))


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON object, or {} when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def write_parquet(table: pa.Table, path: str | os.PathLike[str], **options: Any) -> None:
    """A pyarrow table as Parquet (`options` go to `pq.write_table`)."""
    with replacing(path) as tmp:
        pq.write_table(table, tmp, **options)


# --- keyed part tables -----------------------------------------------------------------------------------------

# The accounting of one LLM call, in every table that stores calls (the simulation's events, the evaluation's
# decisions and ratings): one definition, so the tables cannot drift apart. Spliced in where each table had
# them: a schema's field order must not change, or the files already written no longer read with it.
CALL_FIELDS = (
    pa.field("failure", pa.string()),
    pa.field("invalid_ids", pa.int32(), nullable=False),
    pa.field("prompt_tokens", pa.int32(), nullable=False),
    pa.field("completion_tokens", pa.int32(), nullable=False),
    pa.field("latency_s", pa.float32(), nullable=False),
    pa.field("from_cache", pa.bool_(), nullable=False),
)


def part_files(folder: Path) -> list[Path]:
    """The parts of a part folder, oldest first (of a key written twice, the first write is the one kept)."""
    return sorted(Path(folder).glob("part-*.parquet"), key=lambda p: p.stat().st_mtime_ns)


QUARANTINE = ".corrupt"


def _read_part(path: Path, schema: pa.Schema) -> pa.Table | None:
    """A part file, or None for one that does not read (truncated by a crash or a full disk before the writes
    were atomic, or damaged since): it is renamed aside (`*.corrupt`, kept for a look) with one warning, so
    the resume that reads the folder redoes the rows it held instead of failing on every attempt."""
    try:
        return pq.read_table(path, schema=schema)
    except (OSError, pa.ArrowException) as exc:
        if not path.exists():  # merged and removed by a finishing writer meanwhile: nothing lost
            return None
        aside = path.with_name(path.name + QUARANTINE)
        with contextlib.suppress(OSError):
            path.replace(aside)
        log.warning("%s: unreadable part (%s), moved aside to %s; its rows will be redone", path,
                    " ".join(str(exc).split())[:200], aside.name)
        return None


def merge_parts(files: Sequence[Path], schema: pa.Schema, key: Sequence[str]) -> pa.Table:
    """The files as one table: one row per key (the first in file order), sorted by key. A part that does not
    read is moved aside (`_read_part`)."""
    tables = [t for t in (_read_part(Path(f), schema) for f in files) if t is not None]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    seen: set[tuple] = set()
    keep = []
    for i, k in enumerate(zip(*(table[c].to_pylist() for c in key), strict=True)):
        if k not in seen:
            seen.add(k)
            keep.append(i)
    if len(keep) < table.num_rows:
        table = table.take(pa.array(keep, pa.int64()))
    return table.sort_by([(c, "ascending") for c in key])


def read_parts(folder: Path, name: str, schema: pa.Schema, key: Sequence[str]) -> pa.Table:
    """The table `name` of a folder: its finished `<name>.parquet` and its parts `<name>/part-*.parquet`."""
    merged = Path(folder) / f"{name}.parquet"
    return merge_parts(([merged] if merged.exists() else []) + part_files(Path(folder) / name), schema, key)


R = TypeVar("R")


class PartTable(Generic[R]):
    """A keyed table written as it comes (see the module docstring): `<folder>/<name>/part-*.parquet` while
    it grows, `<folder>/<name>.parquet` once finalized.

    Rows are dicts by default; a caller holding its own row type gives `to_table` (rows -> a table of
    `schema`) and `key_of` (row -> key). A part is written every `flush_s` seconds, or once `flush_events`
    rows wait: one small Parquet file per batch was the largest cost of a cached run. What a crash loses
    from the buffer is decided again by the resume. The keys on disk count as written only after `load()`
    (a resume reads them; a fresh writer does not need to). `finalize` removes the parts it merged unless
    `keep_parts`."""

    def __init__(self, folder: Path, name: str, schema: pa.Schema, key: Sequence[str], *, flush_s: float = 1.0,
                 flush_events: int | None = None, to_table: Callable[[list[R]], pa.Table] | None = None,
                 key_of: Callable[[R], Hashable] | None = None, keep_parts: bool = False):
        self.folder, self.name, self.schema, self.key = Path(folder), name, schema, tuple(key)
        self.flush_s, self.flush_events, self.keep_parts = flush_s, flush_events, keep_parts
        self.parts = self.folder / name
        self.parts.mkdir(parents=True, exist_ok=True)
        self._to_table = to_table or (lambda rows: pa.Table.from_pylist(rows, schema=schema))
        self.key_of = key_of or (lambda row: tuple(row[k] for k in self.key))
        self.keys: set[Hashable] = set()
        self.duplicates = 0
        self.writer = uuid.uuid4().hex[:8]
        self._next_part = 1
        self._buffer: list[R] = []
        self._last_flush = time.monotonic()

    @property
    def path(self) -> Path:
        return self.folder / f"{self.name}.parquet"

    def read(self) -> pa.Table:
        return read_parts(self.folder, self.name, self.schema, self.key)

    def load(self) -> pa.Table:
        """What is on disk (a resume); its keys count as written from now on."""
        table = self.read()
        self.keys.update(zip(*(table[c].to_pylist() for c in self.key), strict=True))
        return table

    def add(self, row: R) -> bool:
        """Buffer the row unless its key is held; returns whether it was new."""
        return bool(self.extend([row]))

    def extend(self, rows: Iterable[R]) -> list[R]:
        """Buffer the rows whose key is new; returns them."""
        fresh = []
        for row in rows:
            key = self.key_of(row)
            if key in self.keys:
                self.duplicates += 1
                continue
            self.keys.add(key)
            fresh.append(row)
        self._buffer.extend(fresh)
        full = self.flush_events is not None and len(self._buffer) >= self.flush_events
        if full or time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()
        return fresh

    def flush(self) -> None:
        """Write the buffered rows as one part file (whole or not at all)."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        path = self.parts / f"part-{self.writer}-{self._next_part:06d}.parquet"
        self._next_part += 1
        write_parquet(self._to_table(self._buffer), path)
        self._buffer = []

    def finalize(self) -> pa.Table:
        """Merge everything into `<name>.parquet`, one row per key (the first written), sorted by key."""
        self.flush()
        table = self.read()
        write_parquet(table, self.path)
        if not self.keep_parts:
            for part in part_files(self.parts):
                part.unlink()
        return table


# --- locks and claims -------------------------------------------------------------------------------------------


class FolderLock:
    """An exclusive lock on a folder, held in `<folder>/<name>` (flock: released by the kernel when its
    holder dies). `wait_s` > 0 waits that long for a holder to finish (a killed driver's actors may outlive
    it for a few seconds); otherwise a held lock fails at once, with `busy` in the message."""

    def __init__(self, folder: Path, name: str, *, wait_s: float = 0.0,
                 busy: str = "another process is working in this folder"):
        self.folder, self.path, self.wait_s, self.busy = Path(folder), Path(folder) / name, wait_s, busy
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise UserError(f"{self.folder}: {self.busy}") from None
                time.sleep(0.2)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None



def claim(path: Path, fingerprint: dict[str, Any], holds: str) -> dict[str, Any]:
    """Refuse a folder whose plan file (`path`) was written with another fingerprint; returns the plan found
    ({} for a new folder) so the caller can merge what it records. `holds` names the folder's content in
    the error ("an evaluation")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = read_json(path)
    theirs = old.get("fingerprint", fingerprint)
    if theirs != fingerprint:
        changed = sorted(k for k in set(fingerprint) | set(theirs) if theirs.get(k) != fingerprint.get(k))
        raise UserError(f"{path.parent}: holds {holds} of another setup (differs in: {', '.join(changed)}); "
                        f"use --out DIR or remove the folder")
    return old
