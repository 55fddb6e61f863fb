"""The judge's numbers from its judgements: means with 95% bootstrap intervals over users, the paired
simulated - human difference, the consistency share (pure: no files, no LLM)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from alignuser_sim.metrics.bootstrap import bootstrap_many

DRAWS = 1000
SIDES = ("simulated", "human")


def _ratio(t: np.ndarray, num: int, den: int) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return t[:, num] / t[:, den]


def sessions_judged(selected: Iterable[Sequence[Any]]) -> set[tuple[str, str, int]]:
    return {s for user, sim, hum in selected for s in (("simulated", user, int(sim)), ("human", user, int(hum)))}


def summarize(meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], has_thoughts: bool, draws: int = DRAWS,
              keep: set[tuple[str, str, int]] | None = None) -> dict[str, Any]:
    """Means with 95% bootstrap intervals over users (one unit per user, the same draws for every statistic),
    the paired difference over users judged on both sides, the consistency share. `keep`: the (side, user,
    session) of the selected sessions (a smaller `--sessions` summarizes its own sessions only)."""
    rows = [r for r in rows if keep is None or (r["side"], r["user_id"], int(r["session"])) in keep]
    seed = int(meta.get("seed") or 0)
    failed: Counter[str] = Counter()
    # per user: sim score sum, sim count, human score sum, human count, consistent, consistency count
    per_user: dict[str, list[float]] = defaultdict(lambda: [0.0] * 6)
    histogram = {side: Counter() for side in SIDES}
    for r in rows:
        if r["failure"] is not None:
            failed[f"{r['kind']} {r['side']}"] += 1
            continue
        u = per_user[r["user_id"]]
        if r["kind"] == "likeness":
            col = 0 if r["side"] == "simulated" else 2
            u[col] += r["score"]
            u[col + 1] += 1
            histogram[r["side"]][int(r["score"])] += 1
        else:
            u[4] += bool(r["consistent"])
            u[5] += 1
    users = sorted(per_user)
    table = np.asarray([per_user[u] for u in users], dtype=np.float64).reshape(len(users), 6)
    means = bootstrap_many(table, {"simulated": lambda t: _ratio(t, 0, 1), "human": lambda t: _ratio(t, 2, 3),
                                   "consistency": lambda t: _ratio(t, 4, 5)}, draws, seed)
    paired = table[(table[:, 1] > 0) & (table[:, 3] > 0)]
    difference = bootstrap_many(paired, {"d": lambda t: _ratio(t, 0, 1) - _ratio(t, 2, 3)}, draws, seed)["d"]
    lowest = sorted((r for r in rows if r["kind"] == "likeness" and r["side"] == "simulated" and r["failure"] is None),
                    key=lambda r: (r["score"], r["user_id"]))[:3]
    likeness = {
        "simulated": means["simulated"].as_dict(), "human": means["human"].as_dict(),
        "difference": difference.as_dict(), "paired_users": len(paired),
        "sessions": {side: int(sum(histogram[side].values())) for side in SIDES},
        "histogram": {side: {str(s): histogram[side][s] for s in range(1, 6)} for side in SIDES},
        "lowest": [{"user_id": r["user_id"], "score": r["score"], "reason": r["reason"]} for r in lowest],
    }
    decisions = int(table[:, 5].sum()) if len(table) else 0
    if not has_thoughts:
        why = ("the run's decision format (policy.reasoning: none) writes no thoughts"
               if meta.get("reasoning", "none") == "none" else "no decision of the run carries a thought")
        consistency: dict[str, Any] = {"skipped": f"{why}: thought-action consistency does not apply"}
    else:
        consistency = {"share": means["consistency"].as_dict(), "decisions": decisions,
                       "consistent": int(table[:, 4].sum()) if len(table) else 0}
    return {**meta, "likeness": likeness, "consistency": consistency, "failed": dict(failed), "draws": draws,
            "level": 0.95}
