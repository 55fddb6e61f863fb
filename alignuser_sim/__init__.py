"""alignuser-sim: human-aligned synthetic users (AlignUSER) for evaluating recommender systems.

The public API (see `alignuser_sim.api` and docs/api.md) is loaded on first use, so `import alignuser_sim`
stays light and never imports Ray:

    import alignuser_sim as aus
    run = aus.simulate(aus.load_scenario("scenarios/quickstart.yaml"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__", "load_scenario", "simulate", "learn", "evaluate", "compare", "report",
    "SimulationResult", "LearningResult", "EvalResult", "CompareResult", "ReportResult", "LocalRunner",
]

if TYPE_CHECKING:
    from alignuser_sim.api import (
        CompareResult,
        EvalResult,
        LearningResult,
        LocalRunner,
        ReportResult,
        SimulationResult,
        compare,
        evaluate,
        learn,
        load_scenario,
        report,
        simulate,
    )


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        from alignuser_sim import api

        return getattr(api, name)
    raise AttributeError(f"module 'alignuser_sim' has no attribute {name!r}")
