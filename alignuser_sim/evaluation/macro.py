"""Macro evaluation: a simulation run's distributions against the human rollouts of the same users.

The simulated side comes from the run's events (decided pages only: a failed call is no decision), the
human side from the rollouts of the same users with the same pages config (`rollouts.parquet` when the run
folder has one, else rebuilt by `data/rollouts.build_rollouts`); `metrics/macro.py` compares them. The
numbers are computed here, from the run folder's files; `report.py` only renders them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from alignuser_sim.config import load_scenario
from alignuser_sim.data import load_dataset
from alignuser_sim.data.rollouts import build_rollouts, read_rollouts
from alignuser_sim.errors import UserError
from alignuser_sim.metrics.macro import compare_all, samples_from_events, samples_from_rollouts
from alignuser_sim.store import RunFolder

# The distributions compared, as tables and plots name them.
LABELS = {"ratings": "rating", "watches_per_page": "watches per page", "pages_per_session": "pages per session",
          "exit_page": "exit page (0-based)", "genres": "genre of watched items"}


def macro_summary(run_dir: Path) -> dict[str, Any]:
    """The run's distributions against the human rollouts of its users (module doc of metrics/macro.py)."""
    run = RunFolder(run_dir)
    if not run.is_complete():
        raise UserError(f"{run_dir}: the run is not complete; finish it with `alignuser-sim run --resume {run_dir}`")
    meta = run.meta()
    scenario = load_scenario(run.scenario)
    events = pq.read_table(run.events,
                           columns=["agent_id", "session", "page", "items", "watched", "ratings", "failure"])
    users = sorted({u for ids in run.shards().values() for u in ids}) or sorted(
        set(events["agent_id"].to_pylist()))
    ds = load_dataset(scenario.dataset)
    genres = dict(zip(ds.items["item_id"].to_pylist(), ds.items["genres"].to_pylist(), strict=True))

    def genres_of(item: str) -> list[str]:
        return list(genres.get(item) or ())

    if run.rollouts.exists():
        rollouts = read_rollouts(run.rollouts)
        human_source = "rollouts.parquet"
    else:
        rollouts = build_rollouts(ds, users, scenario.pages, scenario.seed)
        human_source = "rebuilt with data/rollouts.build_rollouts"
    keep = set(users)
    human_rows = [r for r in rollouts.to_pylist() if r["user_id"] in keep]
    cap, k = scenario.pages.count, scenario.pages.items_per_page
    human = samples_from_rollouts(human_rows, cap, genres_of)
    simulated = samples_from_events(events.to_pylist(), cap, genres_of)
    comparisons = compare_all(human, simulated, cap, k)
    return {
        "run_dir": str(run_dir), "run_id": meta.get("run_id"), "scenario": scenario.name,
        "dataset": scenario.dataset.name, "recommender": scenario.recommender.algorithm,
        "policy": scenario.policy.label, "users": len(users), "page_cap": cap, "items_per_page": k,
        "human_source": human_source,
        "human": {"sessions": human.sessions, "pages": human.pages},
        "simulated": {"sessions": simulated.sessions, "pages": simulated.pages, "failed_pages": simulated.failed_pages,
                      "failed_sessions": simulated.failed_sessions},
        "distributions": {name: c.as_dict() for name, c in comparisons.items()},
    }
