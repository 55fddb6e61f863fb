"""The public Python API: the same six steps the `alignuser-sim` command runs, for notebooks and scripts.

    import alignuser_sim as aus

    scenario = aus.load_scenario("scenarios/ml-100k.yaml")
    run = aus.simulate(scenario)                  # one process, no Ray; run.events.to_pandas()
    aus.learn(scenario)                           # lessons in the learning folder
    ev = aus.evaluate(scenario, policies=["prompt-only", "alignuser"])
    aus.compare(scenario, recommenders=["pop", "mf"])
    aus.report(run.run_dir)

Every step is resumable exactly as its command is (it does only what its folder lacks) and returns a typed
result whose tables are Arrow (`.to_pandas()` works). Without `llm=` a step opens the scenario's endpoints,
starting the embedded vLLM server when it names none; with `llm=` (any `StructuredLLM`: a client, a
`testing.ScriptedLLM`) it calls that model and starts nothing. `simulate` runs in this process unless given
a `runner`: the CLI passes `actors.launch.RayRunner`, which places the same plan on a Ray cluster.

Progress goes through two optional hooks, so this module never draws: `reporter` (a `Reporter`: named
phases and one-line notes; the default logs the notes) and `on_progress(done, total, fields)`.
The library modules are imported inside the functions: `import alignuser_sim` stays light and never
imports Ray.
"""

from alignuser_sim.api.hooks import OnProgress, Reporter, Runner
from alignuser_sim.api.results import CompareResult, EvalResult, LearningResult, ReportResult, SimulationResult
from alignuser_sim.api.steps import LocalRunner, compare, evaluate, learn, load_scenario, report, simulate

__all__ = [
    "CompareResult", "EvalResult", "LearningResult", "LocalRunner", "OnProgress", "ReportResult", "Reporter",
    "Runner", "SimulationResult", "compare", "evaluate", "learn", "load_scenario", "report", "simulate",
]
