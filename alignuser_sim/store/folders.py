"""Folder layouts: the one place that names the files of run, eval, compare and learning folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignuser_sim.errors import UserError
from alignuser_sim.store.files import FolderLock, read_json, write_json

SCENARIO_FILE = "scenario.yaml"  # the resolved scenario, in every folder a command writes
VLLM_LOG = "vllm.log"  # the embedded server's log, in the folder of the command that started it
LLM_FAILURES = "llm_failures.jsonl"  # one line per failed LLM call, beside the results it concerns


@dataclass(frozen=True)
class _Folder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def scenario(self) -> Path:
        return self.path / SCENARIO_FILE


@dataclass(frozen=True)
class RunFolder(_Folder):
    """A simulation run: `run.json` (run id, shard layout, status), `scenario.yaml`, `events/` parts while it
    runs, then `events.parquet` and `stats.json`; `run.log`, `llm_failures.jsonl` and, when exported,
    `rollouts.parquet` beside them. Everything a resume needs is here."""

    LOCK = "run.lock"
    EVENTS = "events"

    @property
    def meta_path(self) -> Path:
        return self.path / "run.json"

    @property
    def events(self) -> Path:
        return self.path / f"{self.EVENTS}.parquet"

    @property
    def stats(self) -> Path:
        return self.path / "stats.json"

    @property
    def log(self) -> Path:
        return self.path / "run.log"

    @property
    def llm_failures(self) -> Path:
        return self.path / LLM_FAILURES

    @property
    def rollouts(self) -> Path:
        return self.path / "rollouts.parquet"

    def exists(self) -> bool:
        return self.meta_path.exists()

    def check_new(self) -> None:
        """Refuse to start a run here unless the folder is new or empty: a new run writes scenario.yaml, run.json,
        events/ ... and would overwrite a user's files of those names (`--out` at the scenario's own folder)."""
        path = self.path
        if self.exists():
            raise UserError(f"{path}: already holds a run; use --resume {path} or another --out")
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                raise UserError(f"{path}: exists and is not a folder; give --out a new or empty folder")
            entries = sorted(p.name for p in path.iterdir())
            if entries:
                raise UserError(f"{path}: a folder that is not a run (it holds {len(entries)} entries, e.g. "
                                f"'{entries[0]}'); give --out a new or empty folder")

    def meta(self) -> dict[str, Any]:
        """run.json ({} without one); a damaged or hand-edited one is a UserError, not a traceback."""
        try:
            meta = read_json(self.meta_path)
        except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise UserError(f"{self.meta_path}: damaged run.json ({' '.join(str(exc).split())[:120]})") from None
        if not isinstance(meta, dict) or (meta and not isinstance(meta.get("run_id"), str)):
            raise UserError(f"{self.meta_path}: damaged run.json (not an object with a run_id)")
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_json(self.meta_path, meta, default=str)

    def update_meta(self, **changes: Any) -> None:
        self.write_meta({**self.meta(), **changes})

    def status(self) -> str:
        """absent, running (started, not finished, or sessions left unfinished by an LLM outage: resume it) or
        complete (ended: run.json's status says how, complete, degraded or failed)."""
        if not self.exists():
            return "absent"
        meta = self.meta()
        ended = meta.get("status") in ("complete", "degraded", "failed") and not meta.get("unfinished")
        return "complete" if ended else "running"

    def is_complete(self) -> bool:
        return self.status() == "complete" and self.events.exists()

    def shards(self) -> dict[int, list[str]]:
        shards = self.meta().get("shards", {})
        if not (isinstance(shards, dict) and all(isinstance(k, str) and k.isdigit() and isinstance(v, list)
                                                 and all(isinstance(u, str) for u in v) for k, v in shards.items())):
            raise UserError(f"{self.meta_path}: damaged run.json (shards: not shard numbers to lists of user ids)")
        return {int(k): list(v) for k, v in shards.items()}

    def lock(self, wait_s: float = 120.0) -> FolderLock:
        """Keeps two drivers of one run from running at once (a killed driver's actors may outlive it)."""
        return FolderLock(self.path, self.LOCK, wait_s=wait_s, busy="another process is still driving this run")


@dataclass(frozen=True)
class EvalFolder(_Folder):
    """A micro evaluation: `plan.json` (the claim, the users of the latest run, the learning each policy
    used), `scenario.yaml`, the `decisions` and `ratings` part tables, and `eval.json` once summarized."""

    DECISIONS = "decisions"
    RATINGS = "ratings"

    @property
    def plan(self) -> Path:
        return self.path / "plan.json"

    @property
    def summary(self) -> Path:
        return self.path / "eval.json"

    def exists(self) -> bool:
        return self.plan.exists()

    def lock(self) -> FolderLock:
        """One `eval` per folder: two would interleave their parts and summaries."""
        return FolderLock(self.path, ".eval.lock", busy="another `alignuser-sim eval` is working in this folder")


@dataclass(frozen=True)
class CompareFolder(_Folder):
    """A recommender comparison: `compare_plan.json` (the claim, recommenders, K, bootstrap), `scenario.yaml`,
    one run folder per recommender (`<algorithm>/`), `offline.parquet` and `compare.json` once summarized."""

    @property
    def plan(self) -> Path:
        return self.path / "compare_plan.json"

    @property
    def offline(self) -> Path:
        return self.path / "offline.parquet"

    @property
    def summary(self) -> Path:
        return self.path / "compare.json"

    def run(self, algorithm: str) -> RunFolder:
        return RunFolder(self.path / algorithm)

    def exists(self) -> bool:
        return self.plan.exists()

    def lock(self) -> FolderLock:
        """One `compare` per folder: two would drive the same runs and rewrite the same summaries."""
        return FolderLock(self.path, ".compare.lock",
                          busy="another `alignuser-sim compare` is working in this folder")


@dataclass(frozen=True)
class LearningFolder(_Folder):
    """What `learn` writes for a scenario: the journal it resumes from (`journal.jsonl`), then per persona
    `lessons.parquet` (the lesson memories), `tastes.parquet` (LLM-written taste), `transitions.parquet`
    (world-model transitions with their true outcome: the policy's hints), the world model's
    `worldmodel_predictions.parquet`, the `reflections.parquet`, `summary.json` and, from `learn worldmodel`,
    `worldmodel_eval.json`. The simulation and the evaluation read lessons, tastes and transitions."""

    JOURNAL = "journal.jsonl"
    LESSONS = "lessons.parquet"
    TASTES = "tastes.parquet"
    TRANSITIONS = "transitions.parquet"
    PREDICTIONS = "worldmodel_predictions.parquet"
    REFLECTIONS = "reflections.parquet"
    SUMMARY = "summary.json"
    WORLD_MODEL_EVAL = "worldmodel_eval.json"
    LOCK = ".learn.lock"
    # `alignuser-sim train`: checkpoints per stage under training/, the served adapters under adapters/
    TRAINING = "training"
    ADAPTERS = "adapters"
    ADAPTERS_MANIFEST = "adapters.json"
    TRAIN_LOCK = ".train.lock"

    def lock(self) -> FolderLock:
        """One `learn` per folder: two would append to one journal and rewrite the same Parquet files."""
        return FolderLock(self.path, self.LOCK, busy="another `alignuser-sim learn` is working in this folder")

    def train_lock(self) -> FolderLock:
        """One `train` per folder: two would write the same checkpoints."""
        return FolderLock(self.path, self.TRAIN_LOCK, busy="another `alignuser-sim train` is working on this folder")

    @property
    def training(self) -> Path:
        return self.path / self.TRAINING

    @property
    def adapters(self) -> Path:
        return self.path / self.ADAPTERS

    @property
    def adapters_manifest(self) -> Path:
        return self.adapters / self.ADAPTERS_MANIFEST
