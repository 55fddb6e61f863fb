"""The on-disk completion cache.

A completion is keyed by the sha256 of the canonical JSON of (model, messages, JSON schema, sampling,
seed). Re-running the same calls returns the stored completions without any request, so a re-run of a
scenario with the same seed gives identical results.

Storage: ONE sqlite3 file (stdlib) in WAL mode. Why sqlite rather than one file per key or a JSONL log:
- many processes (one per Ray shard on a node) write concurrently: sqlite serialises writers with a
  file lock and a busy timeout, and WAL lets readers proceed while one writes; a crash mid-write leaves
  the database consistent (transactions), where a half-written JSONL line or file would not;
- millions of entries stay one file (no directory with millions of inodes), lookups are a B-tree probe;
- `INSERT OR IGNORE` makes the first writer of a key win; a writer that lost the race reads back the
  winner, so every process agrees on what a key maps to.
A damaged page (a disk error, a file copied while written) makes sqlite raise on the rows it holds: such a
lookup counts as a miss and a store as not stored, with one warning per cache, so a run asks the model again
instead of failing on every call that touches the page.
Limit: sqlite's locking needs a local filesystem (not NFS). On a multi-node cluster give each node its
own cache file (the default location is per machine) or point all shards at one node-local path.

Modes: `off` (never read or write), `read_write` (default), `replay` (read only; a miss raises
`ReplayMissError`, so a replayed run can never silently call a model).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alignuser_sim.errors import UserError
from alignuser_sim.paths import cache_dir, home

log = logging.getLogger(__name__)

CacheMode = Literal["off", "read_write", "replay"]
KEY_VERSION = 1
DEFAULT_FILE = "completions.sqlite"


def cache_key(
    model: str,
    messages: list[dict[str, Any]],
    schema: dict[str, Any] | None,
    sampling: dict[str, Any],
    seed: int | None,
) -> str:
    """sha256 hex of the canonical JSON of everything that determines a completion."""
    payload = {
        "v": KEY_VERSION,
        "model": model,
        "messages": messages,
        "schema": schema,
        "sampling": sampling,
        "seed": seed,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ReplayMissError(UserError):
    """A call in `replay` mode whose completion is not in the cache."""

    def __init__(self, key: str, messages: list[dict[str, Any]], path: Path | None):
        first = ""
        if messages:
            content = messages[0].get("content", "")
            first = content if isinstance(content, str) else json.dumps(content)
        start = " ".join(first.split())[:60]
        where = f" in {path}" if path else ""
        self.key = key
        super().__init__(
            f"llm cache replay: no completion for key {key}{where} (first message starts {start!r}); "
            "run once with llm.cache: read_write to record it"
        )


@dataclass(frozen=True)
class CacheEntry:
    raw: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    model: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    raw TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL
)
"""


class CompletionCache:
    """One sqlite file shared by every process that points at it. Safe to use from several threads."""

    def __init__(self, path: str | Path | None = None, mode: CacheMode = "read_write"):
        if mode not in ("off", "read_write", "replay"):
            raise UserError(f"llm.cache: must be one of off, read_write, replay (got {mode!r})")
        self.mode: CacheMode = mode
        if path is None:
            path = (cache_dir("completions") if mode != "off" else home() / "completions") / DEFAULT_FILE
        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path = path / DEFAULT_FILE
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.damaged = 0  # lookups and stores that met a damaged page
        if mode != "off":
            self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.mode == "replay" and not self.path.exists():
            # an absent file is an empty cache: the first lookup will raise ReplayMissError
            self._conn = None
            return
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise UserError(f"{self.path}: not a usable completion cache ({exc})") from None
        self._conn = conn

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def get(self, key: str) -> CacheEntry | None:
        if self._conn is None:
            return None
        try:
            with self._lock:
                row = self._conn.execute(
                    "SELECT raw, finish_reason, prompt_tokens, completion_tokens, attempts, model "
                    "FROM completions WHERE key = ?",
                    (key,),
                ).fetchone()
        except sqlite3.DatabaseError as exc:  # not OperationalError's "locked": the busy timeout handles that
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            self._damaged(exc)
            return None
        return None if row is None else CacheEntry(*row)

    def _damaged(self, exc: Exception) -> None:
        self.damaged += 1
        if self.damaged == 1:
            log.warning("%s: damaged completion cache (%s): its entries count as misses; remove the file to "
                        "rebuild it", self.path, exc)

    def put(self, key: str, entry: CacheEntry) -> CacheEntry:
        """Store `entry` unless the key is already there; returns the entry the cache holds for the key."""
        if self.mode != "read_write" or self._conn is None:
            return entry
        try:
            with self._lock:
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO completions "
                    "(key, model, raw, finish_reason, prompt_tokens, completion_tokens, attempts, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        entry.model,
                        entry.raw,
                        entry.finish_reason,
                        entry.prompt_tokens,
                        entry.completion_tokens,
                        entry.attempts,
                        time.time(),
                    ),
                )
                inserted = cur.rowcount == 1
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            self._damaged(exc)
            return entry
        if inserted:
            return entry
        return self.get(key) or entry

    def __len__(self) -> int:
        if self._conn is None:
            return 0
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
