"""`alignuser-sim recommenders ...`: the recommenders on their own, without simulated users."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from alignuser_sim.cli.common import err, out
from alignuser_sim.config import load_scenario
from alignuser_sim.errors import UserError
from alignuser_sim.recommenders import ALGORITHMS

app = typer.Typer(help="Recommenders: offline evaluation (Recall@K, NDCG@K).", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Recommenders: offline evaluation (Recall@K, NDCG@K)."""


def _k_values(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--k: '{text}' is not a comma-separated list of integers") from None
    if not values or min(values) <= 0:
        raise UserError(f"--k: '{text}': every K must be a positive integer")
    return values


@app.command("offline")
def offline(
    scenario_file: Path = typer.Argument(..., help="Scenario YAML (its dataset and seed are used)"),
    recommenders: str = typer.Option(
        ",".join(ALGORITHMS), "--recommenders", "-r", help="Comma-separated algorithms to evaluate"
    ),
    k: str = typer.Option("10,20", "--k", help="Comma-separated cut-offs K"),
) -> None:
    """Fit each recommender on the training split and print Recall@K / NDCG@K on the held-out split.

    The scenario's own recommender params apply to its algorithm; the others use their defaults.
    """
    from alignuser_sim.data import load_dataset
    from alignuser_sim.evaluation.offline import check_algorithms, evaluate_offline, offline_split

    names = check_algorithms(recommenders.split(","))
    k_values = _k_values(k)
    scenario = load_scenario(scenario_file)
    with err.status(f"loading {scenario.dataset.name}"):
        ds = load_dataset(scenario.dataset)
        split = offline_split(ds)
    params = {scenario.recommender.algorithm: dict(scenario.recommender.params)}
    rows = []
    for name in names:
        with err.status(f"fitting and ranking: {name}"):
            rows += evaluate_offline(ds, [name], k_values, seed=scenario.seed, params=params, split=split,
                                     configs={scenario.recommender.algorithm: scenario.recommender})  # http: its URL
    table = Table(
        title=f"{ds.name}: offline evaluation ({split.kind}; {rows[0]['users']:,} users)",
        header_style="bold",
    )
    table.add_column("recommender")
    for kk in sorted(set(k_values)):
        table.add_column(f"Recall@{kk}", justify="right")
        table.add_column(f"NDCG@{kk}", justify="right")
    table.add_column("fit s", justify="right")
    for row in rows:
        cells = []
        for kk in sorted(set(k_values)):
            cells += [f"{row[f'recall@{kk}']:.4f}", f"{row[f'ndcg@{kk}']:.4f}"]
        table.add_row(row["algorithm"], *cells, f"{row['fit_s']:.2f}")
    out.print(table)
