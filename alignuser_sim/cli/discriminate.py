"""`alignuser-sim discriminate RUN_DIR`: can a classifier tell the run's sessions from the humans'?

Prints the ROC AUC per model (with its interval) and the features that give the simulation away; the
numbers are `evaluation/discriminator.discriminate`'s, the ones `report` shows. scikit-learn is imported
inside the command, so `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from alignuser_sim.cli.common import err
from alignuser_sim.cli.common import out_wide as out


def discriminate_cmd(
    run_dir: Path = typer.Argument(..., help="A simulation run folder (events.parquet, scenario.yaml)"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap draws for the AUC intervals"),
    top: int = typer.Option(5, "--top", min=1, help="How many features to list"),
    seed: int | None = typer.Option(None, "--seed", help="Subsampling, folds and bootstrap seed (default: the "
                                    "scenario's)"),
) -> None:
    """Discriminator test: per-session features of the simulated sessions and of the same users' human
    sessions, cross-validated logistic regression and gradient boosting; ROC AUC with a 95% bootstrap interval
    (0.5 = indistinguishable) and the features that give the simulation away."""
    from alignuser_sim.evaluation.discriminator import MODELS, discriminate, top_features
    from alignuser_sim.evaluation.report import ci

    with err.status("features and cross-validation"):
        result = discriminate(run_dir, draws=bootstrap, seed=seed)
    n = result["sessions"]
    out.print(f"{result['scenario']} ({result['dataset']}, {result['users']} users): {n['simulated']} simulated and "
              f"{n['human']} human sessions, {n['per_side']} of each used; out-of-fold ROC AUC, "
              f"{result['folds']} folds (0.5 = indistinguishable)", highlight=False)
    table = Table()
    table.add_column("model")
    table.add_column("ROC AUC [95%]", justify="right")
    for model, estimate in result["auc"].items():
        table.add_row(MODELS[model], ci(estimate))
    out.print(table)
    out.print("what gives the simulation away (coefficient > 0: simulated sessions have more of it; importance: "
              "held-out AUC lost when the feature is shuffled)", highlight=False)
    features = Table()
    for name in ("feature", "mean simulated", "mean human", "coefficient", "importance"):
        features.add_column(name, justify="left" if name == "feature" else "right")
    for row in top_features(result, top):
        features.add_row(row["label"], _num(row["simulated"]), _num(row["human"]), f"{row['coefficient']:+.2f}",
                         f"{row['importance']:.3f}")
    out.print(features)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
