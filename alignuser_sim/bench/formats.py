"""The decision formats compared by `alignuser-sim bench formats`: which exist, which one a scenario uses,
and a measured row of each as ratios to `full` (today's reply, the reference).

A format is the scenario's `policy.reasoning` (`none | brief | full`); a build whose scenario model has no
such field knows only `full` (what every reply was before the field), so the benchmark runs there too and
says so instead of failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignuser_sim.errors import UserError

FORMATS = ("none", "brief", "full")
REFERENCE = "full"
RATIO_KEYS = ("decisions_per_s", "output_tokens_per_decision", "prompt_tokens_per_decision")


def has_formats() -> bool:
    """Whether this build's scenario model has `policy.reasoning` (so a scenario may name a format)."""
    from alignuser_sim.config import PolicyConfig

    return "reasoning" in PolicyConfig.model_fields


def available_formats() -> tuple[str, ...]:
    """The formats this build's scenario model accepts (`policy.reasoning`'s values), in FORMATS order."""
    from typing import get_args

    from alignuser_sim.config import PolicyConfig

    info = PolicyConfig.model_fields.get("reasoning")
    if info is None:
        return (REFERENCE,)
    values = {str(v) for v in get_args(info.annotation)} or set(FORMATS)
    return tuple(f for f in FORMATS if f in values) or FORMATS


def scenario_format(scenario: Any) -> str:
    """The decision format a scenario's agents answer in."""
    return str(getattr(scenario.policy, "reasoning", REFERENCE))


def parse_formats(text: str) -> list[str]:
    """`--formats none,brief,full` checked against this build; one line naming what is wrong."""
    wanted = [f.strip() for f in text.split(",") if f.strip()]
    known = available_formats()
    bad = [f for f in wanted if f not in FORMATS]
    if not wanted or bad:
        raise UserError(f"--formats: '{text}': give some of {', '.join(FORMATS)}, comma-separated")
    missing = [f for f in wanted if f not in known]
    if missing:
        raise UserError(f"--formats: {', '.join(missing)}: this build's scenarios know only policy.reasoning "
                        f"{', '.join(known)}")
    return list(dict.fromkeys(wanted))


def format_row(fmt: str, summary: dict[str, Any], llm: dict[str, Any], agents: int) -> dict[str, Any]:
    """One format's measures from a run's summary and stats.json `llm` section."""
    decisions = max(1, summary["decisions"])
    elapsed = summary["elapsed_s"] or float("nan")
    cache = llm.get("prefix_cache") or {}
    return {
        "format": fmt, "agents": agents, "decisions": summary["decisions"], "failures": summary.get("failures", 0),
        "llm_requests": llm.get("requests", summary["decisions"]), "elapsed_s": summary["elapsed_s"],
        "prompt_tokens": summary["prompt_tokens"], "completion_tokens": summary["completion_tokens"],
        "decisions_per_s": round(summary["decisions"] / elapsed, 3),
        "output_tokens_per_decision": round(summary["completion_tokens"] / decisions, 1),
        "prompt_tokens_per_decision": round(summary["prompt_tokens"] / decisions, 1),
        "latency_p50_s": summary.get("latency_p50_s"), "prefix_cache_hit_rate": cache.get("hit_rate"),
    }


def with_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with `<measure>_vs_full` for RATIO_KEYS (None when `full` was not run or measured 0)."""
    ref = next((r for r in rows if r["format"] == REFERENCE), None)
    out = []
    for row in rows:
        ratios = {}
        for key in RATIO_KEYS:
            base = ref.get(key) if ref else None
            ratios[f"{key}_vs_full"] = round(row[key] / base, 3) if base and row.get(key) is not None else None
        out.append({**row, **ratios})
    return out
