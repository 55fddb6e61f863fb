"""What the API's steps return: typed handles on the folders they wrote, whose tables are Arrow (read when
first used), so a notebook goes on with `.to_pandas()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignuser_sim.store import LearningFolder, RunFolder, read_json

if TYPE_CHECKING:
    import pyarrow as pa


# --- results -----------------------------------------------------------------------------------------------


@dataclass
class SimulationResult:
    """A run folder. `events` (one row per agent decision) and `stats` are read from it when first used."""

    run_dir: Path
    run_id: str
    summary: dict[str, Any]

    @cached_property
    def events(self) -> pa.Table:
        import pyarrow.parquet as pq

        return pq.read_table(RunFolder(self.run_dir).events)

    @cached_property
    def stats(self) -> dict[str, Any]:
        return read_json(RunFolder(self.run_dir).stats)


@dataclass
class LearningResult:
    """A learning folder: `summary` is what `alignuser-sim learn` prints; `lessons` one row per lesson."""

    folder: Path
    summary: dict[str, Any]

    @cached_property
    def lessons(self) -> pa.Table:
        import pyarrow.parquet as pq

        return pq.read_table(self.folder / LearningFolder.LESSONS)


@dataclass
class EvalResult:
    """An eval folder: every page decision and rating call (Arrow) and the summary written to `eval.json`.
    The tables hold the reference policies' rows too (`references` names them)."""

    folder: Path
    decisions: pa.Table
    ratings: pa.Table
    summary: dict[str, Any]
    path: Path

    @property
    def references(self) -> list[str]:
        return list(self.summary.get("references", []))


@dataclass
class CompareResult:
    """A compare folder: one simulated run per recommender, the ranking rows and Kendall taus."""

    folder: Path
    summary: dict[str, Any]
    path: Path

    @cached_property
    def rows(self) -> pa.Table:
        import pyarrow as pa

        return pa.Table.from_pylist(self.summary["rows"])

    @cached_property
    def tau(self) -> pa.Table:
        import pyarrow as pa

        return pa.Table.from_pylist(self.summary["tau"])


@dataclass
class ReportResult:
    """The report's files (`report.md`, `report.html`, `plots/`) and the numbers they were written from."""

    folder: Path
    data: dict[str, Any] = field(repr=False)

    @property
    def sections(self) -> list[str]:
        return list(self.data)

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"

    @property
    def html(self) -> Path:
        return self.folder / "report.html"
