"""World-model hints: what a persona learned about how the recommender reacts, as lines its policy reads.

Learning (`learning/learner.py`) writes, for each transition it learned from, one line per action (the
human's and each counterfactual) with the true outcome: "After you watched 'X' (Comedy) and went on, the
next page showed mostly Comedy, Drama". The simulation's agents get the lines whose genres match the page
best. The lines are written by learning but read by every agent, so their text and the file's reader live
here, on the agent's side: an agent never imports learning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from alignuser_sim.core import MOVIES, Action, Domain, ItemView, NextState, State, short_title
from alignuser_sim.store import LearningFolder

TRANSITIONS_FILE = LearningFolder.TRANSITIONS


def _jaccard(a: set[str], b: set[str]) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def hint_text(action: Action, truth: NextState, views: dict[str, ItemView], human: bool,
              domain: Domain = MOVIES) -> str:
    """One transition as a line of advice: what the recommender did after this kind of action (in the domain's
    words)."""
    if action.watched:
        watched = ", ".join(
            f"'{short_title(views[i])}'" + (f" ({views[i].genres[0]})" if views[i].genres else "")
            if i in views else f"'{i}'" for i in action.watched_ids[:2])
        if len(action.watched) > 2:
            watched += f" and {len(action.watched) - 2} more"
    else:
        watched = "nothing"
    genres = ", ".join(truth.genres) or "a mix of genres"
    if human:
        after = "left" if action.exit else "went on"
        page = "your next visit started with" if action.exit else "the next page showed"
        return f"After you {domain.consumed} {watched} and {after}, {page} mostly {genres}"
    after = "left" if action.exit else "gone on"
    page = "your next visit would have started with" if action.exit else "the next page would have shown"
    return f"Had you {domain.consumed} {watched} and {after}, {page} mostly {genres}"


def hint_genres(state: State, action: Action, views: dict[str, ItemView]) -> list[str]:
    """What a hint is about: the genres of the page it came from and of the watched items."""
    return sorted({g for i in [*state.page, *action.watched_ids] if i in views for g in views[i].genres})


@dataclass
class WorldModelHints:
    """A persona's world-model context (plain data: pickled to the simulation's shards)."""

    lines: list[str]
    genres: list[list[str]]

    def hints(self, page: list[ItemView], k: int) -> list[str]:
        if k <= 0 or not self.lines:
            return []
        on_page = {g for item in page for g in item.genres}
        order = sorted(range(len(self.lines)), key=lambda i: (-_jaccard(on_page, set(self.genres[i])), i))
        return [self.lines[i] for i in order[:k]]


def load_world_model_context(folder: Path, user_ids: list[str]) -> dict[str, WorldModelHints]:
    """Each persona's transitions from the learning folder as hint lines ({} when none were learned)."""
    path = Path(folder) / TRANSITIONS_FILE
    if not path.is_file():
        return {}
    wanted = set(user_ids)
    rows = pq.read_table(path, columns=["user_id", "step", "action_id", "hint", "hint_genres"]).to_pylist()
    rows = sorted((r for r in rows if r["user_id"] in wanted),
                  key=lambda r: (r["user_id"], r["action_id"] != "human", r["step"], r["action_id"]))
    out: dict[str, WorldModelHints] = {}
    for row in rows:
        hints = out.setdefault(row["user_id"], WorldModelHints([], []))
        if row["hint"] and row["hint"] not in hints.lines:
            hints.lines.append(row["hint"])
            hints.genres.append(list(row["hint_genres"] or []))
    return out
