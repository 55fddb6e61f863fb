"""The `alignuser-sim` command: the typer app, its global options, `version` and `validate`, and `main()`.

Every subcommand is registered in `COMMANDS` and `GROUPS` below, one module each. Bad input never shows
a traceback: a `UserError` anywhere below is printed as its one line on stderr and the process exits with
code 2; a model server that does not come up prints `error:` and its log tail, exit code 1. Ctrl-C exits
130, SIGTERM 143. Long work shows a rich status or progress bar on stderr; results go to stdout as tables.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import typer

try:  # typer >= 0.29 raises the exceptions of its own copy of click (typer._click); older typer, click's
    from typer._click import exceptions as _click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as _click_exceptions

from alignuser_sim import __version__
from alignuser_sim.cli.common import err, out
from alignuser_sim.config import load_scenario
from alignuser_sim.errors import Terminated, UserError

app = typer.Typer(
    name="alignuser-sim",
    help="Human-aligned synthetic users (AlignUSER) for evaluating recommender systems.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (module under alignuser_sim.cli, function, command name), in the order `--help` lists them
COMMANDS = [
    ("evaluate", "eval_cmd", "eval"),
    ("evaluate", "compare_cmd", "compare"),
    ("evaluate", "report_cmd", "report"),
    ("discriminate", "discriminate_cmd", "discriminate"),
    ("judge", "judge_cmd", "judge"),
    ("root", "version", "version"),
    ("root", "validate", "validate"),
    ("run", "quickstart", "quickstart"),
    ("run", "run", "run"),
    ("train", "train_cmd", "train"),
]
# (module under alignuser_sim.cli whose `app` is the group, group name, help shown in the command list)
GROUPS = [
    ("data", "data", None),
    ("recommenders", "recommenders", "Recommenders: offline Recall@K / NDCG@K."),
    ("llm", "llm", "The vLLM server and the embedded model."),
    ("bench", "bench", "Benchmarks: scaling, live vLLM, naive loop, Agent4Rec-style loop, decision formats."),
    ("learn", "learn", None),
]


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details (skipped rows, timings)."),
) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # the run log (a file) may take more than the terminal
        handler.setLevel(level)


def version() -> None:
    """Print the version."""
    out.print(__version__)


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


def _launcher_error(exc: Exception) -> bool:
    """Whether `exc` is the launcher's (a server that did not come up); raised only once it is imported, so
    asking `sys.modules` keeps `--help` from importing the LLM layer."""
    launcher = sys.modules.get("alignuser_sim.llm.launcher")
    return launcher is not None and isinstance(exc, launcher.LauncherError)


def main() -> None:
    restore = install_sigterm_handler()
    try:
        try:
            code = app(standalone_mode=False)
        except UserError as exc:
            print(str(exc), file=sys.stderr)
            sys.exit(exc.exit_code)
        except _click_exceptions.UsageError as exc:
            exc.show()
            sys.exit(2)
        except _click_exceptions.Abort:
            _exit_interrupted()
        except KeyboardInterrupt:
            _exit_interrupted()
        except Exception as exc:
            if not _launcher_error(exc):
                raise
            err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
            sys.exit(1)
        if code == 130 and _terminated:  # a command that handled the interrupt itself (typer.Exit(130))
            _exit_interrupted()
        sys.exit(code if isinstance(code, int) else 0)
    finally:
        restore()


def _register() -> None:
    this = sys.modules[__name__]
    for module, function, name in COMMANDS:
        owner = this if module == "root" else importlib.import_module(f"alignuser_sim.cli.{module}")
        app.command(name)(getattr(owner, function))
    for module, name, help_text in GROUPS:
        group = importlib.import_module(f"alignuser_sim.cli.{module}").app
        if help_text is None:
            app.add_typer(group, name=name)
        else:
            app.add_typer(group, name=name, help=help_text)


_register()

if __name__ == "__main__":
    main()
