"""The learning journal: every result appended as soon as it is produced, so an interrupted `learn` resumes.

One JSON line per record, keyed by (kind, user_id, step): `taste` (step -1), `counterfactuals`,
`worldmodel`, `reflection`, and `wm_eval:N` (the world-model evaluation with N in-context examples). A
re-run reads the journal and skips what it holds; the Parquet files of a learning folder are views of it,
rewritten whole (`outputs.consolidate`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from alignuser_sim.store import LearningFolder

JOURNAL_FILE = LearningFolder.JOURNAL


def action_ids(n: int) -> list[str]:
    """How the journal names the actions of a transition: the human's first, then the alternatives."""
    return ["human"] + [f"alt{i}" for i in range(1, n)]


class Journal:
    """Append-only JSONL of everything produced, keyed by (kind, user_id, step). A torn last line (a killed
    process) is skipped and counted."""

    def __init__(self, folder: Path, write: bool = True):
        self.path = folder / JOURNAL_FILE
        self.records: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.bad_lines = 0
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        record = json.loads(line)
                        self.records[(record["kind"], record["user_id"], int(record["step"]))] = record
                    except (ValueError, KeyError, TypeError):
                        self.bad_lines += 1
        self._fh = open(self.path, "a", encoding="utf-8") if write else None  # noqa: SIM115 - see close()
        if self._fh is not None and self.path.stat().st_size and not self._ends_with_newline():
            self._fh.write("\n")  # after a torn last line, the next record starts on a line of its own

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def get(self, kind: str, user_id: str, step: int) -> dict[str, Any] | None:
        return self.records.get((kind, user_id, step))

    def put(self, record: dict[str, Any]) -> None:
        assert self._fh is not None, "a read-only journal"
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        self.records[(record["kind"], record["user_id"], int(record["step"]))] = record

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for (k, _, _), r in sorted(self.records.items()) if k == kind]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
