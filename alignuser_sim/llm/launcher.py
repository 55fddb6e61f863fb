"""Start and stop a vLLM OpenAI-compatible server on this machine.

    with VLLMServer() as server:              # the embedded model, prepared on first use
        client = LLMClient([server.base_url])  # http://127.0.0.1:<free port>/v1

What runs (device, model argument, command line and environment) is `server_command.py`; this module is
the process's life cycle:

- It runs in its own session and process group, led by a small reaper process (`reaper.py`, stdlib only)
  whose child is the API server; the server's EngineCore/worker children are in the same group. Output
  (server and children) goes to a log file. `pid` is the API server's pid, `pgid` (the group id) the
  reaper's.
- `stop()` (and the context manager's exit) sends SIGTERM to the whole group, waits `stop_timeout_s`
  for every member to go, then SIGKILLs the group.
- If the Python that started it dies without cleaning up (SIGKILL, an unhandled SIGTERM, a crash), the
  group still goes: with `die_with_parent` (default) the kernel sends the reaper SIGTERM
  (PR_SET_PDEATHSIG, Linux) and the reaper also watches its parent pid; it then SIGTERMs the group,
  waits up to `stop_timeout_s` and SIGKILLs what is left. The parent-death signal alone would reach
  only the group leader and leave EngineCore orphaned, hence the reaper.
- When the API server exits on its own, the reaper kills any leftovers in the group and exits with the
  server's code (128+N for signal N), so `wait_healthy` fails fast with the log tail.

`reaper=False` runs the API server directly as the group leader (the parent-death signal then reaches
only it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from alignuser_sim.errors import UserError
from alignuser_sim.llm.reaper import sigterm_when_parent_dies
from alignuser_sim.llm.server_command import (
    QUIET_ENV,
    Device,
    check_cpu_environment,
    cpu_has_fast_bf16,
    detect_device,
    lora_args,
    resolve_model,
    served_name,
    server_key_env,
    vllm_argv,
    vllm_env,
)
from alignuser_sim.paths import cache_dir

if TYPE_CHECKING:
    from alignuser_sim.config import LLMConfig


class LauncherError(RuntimeError):
    """The server did not come up (or died): the message ends with the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is still in process group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
            return True
    return False


def _child_pid(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """The pid of `process`'s (first) child, waiting up to timeout_s for it to appear; None if `process`
    exits first or has none by then."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        try:
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        except OSError:  # a kernel without that file: scan for the parent pid
            proc = Path("/proc")
            entries = proc.iterdir() if proc.is_dir() else ()
            children = [e.name for e in entries if e.name.isdigit() and _ppid(e) == process.pid]
        if children:
            return int(children[0])
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
    return None


def _ppid(entry: Path) -> int | None:
    try:
        stat = (entry / "stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[1])


class VLLMServer:
    """A vLLM OpenAI-compatible server in a child process group. Use as a context manager."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        served_model_name: str | None = None,
        device: Device = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        kv_cache_gib: float = 2,
        dtype: str | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        startup_timeout_s: float = 600.0,
        stop_timeout_s: float = 20.0,
        prepare: bool = True,
        die_with_parent: bool = True,
        reaper: bool = True,
        python: str = sys.executable,
        argv: Sequence[str] | None = None,
    ):
        """`argv` replaces the whole vLLM command line (tests use it to run a stand-in server); with
        `reaper` (default) that command runs under the reaper (see the module docstring)."""
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.die_with_parent = die_with_parent
        self.reaper = reaper
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None
        self._pgid: int | None = None
        self._server_pid: int | None = None
        self._log_file_handle = None
        self._finalizer: weakref.finalize | None = None
        self.log_path = Path(log_path) if log_path is not None else None
        self._env_extra = dict(env or {})
        self._custom_argv = list(argv) if argv is not None else None
        self._spec = {
            "model": model, "served_model_name": served_model_name, "device": device,
            "max_model_len": max_model_len, "enforce_eager": enforce_eager, "kv_cache_gib": kv_cache_gib,
            "dtype": dtype, "extra_args": list(extra_args), "prepare": prepare, "python": python,
        }
        self.device: str | None = None
        self.dtype: str | None = None
        self.model: str | None = None
        self.served_model_name: str | None = served_model_name

    # --- addresses ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (what LLMClient and the `openai` SDK take)."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        """The API server's pid (the process to measure). With the reaper it is the reaper's child, looked up
        on first use (waiting up to 2 s for the reaper to start it); None when it is not running."""
        if self.process is None:
            return None
        if not self.reaper:
            return self.process.pid
        if self._server_pid is None:
            self._server_pid = _child_pid(self.process, timeout_s=2.0)
        return self._server_pid

    @property
    def pgid(self) -> int | None:
        """The process-group id: the pid of the group leader started by `start()` (the reaper by default)."""
        return self._pgid

    # --- command line ---------------------------------------------------------------------------------
    def build_command(self) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of the server (resolves the model and the device)."""
        spec = self._spec
        if self.port is None:
            self.port = free_port(self.host)
        if self._custom_argv is not None:
            env = {**os.environ, **QUIET_ENV, **self._env_extra}
            argv = [a.replace("{port}", str(self.port)).replace("{host}", self.host) for a in self._custom_argv]
            return argv, env
        device = spec["device"] if spec["device"] != "auto" else detect_device()
        if device == "cpu":
            check_cpu_environment()
        model, local = resolve_model(spec["model"], prepare=spec["prepare"])
        served = served_name(spec["served_model_name"], spec["model"], model, local)
        dtype = spec["dtype"]
        if dtype is None and device == "cpu" and not cpu_has_fast_bf16():
            dtype = "float32"
        self.device, self.model, self.served_model_name, self.dtype = device, model, served, dtype or "auto"
        argv = vllm_argv(spec["python"], model, served, self.host, self.port, device=device,
                         max_model_len=spec["max_model_len"], enforce_eager=spec["enforce_eager"], dtype=dtype,
                         extra_args=spec["extra_args"])
        env = vllm_env(os.environ, device=device, kv_cache_gib=spec["kv_cache_gib"], local=local)
        env.update(self._env_extra)
        return argv, env

    def reaper_command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run under the reaper (by its file path: no package import in that extra process)."""
        from alignuser_sim.llm import reaper as reaper_module

        wrapper = [sys.executable, reaper_module.__file__, "--grace", f"{self.stop_timeout_s:g}"]
        if self.die_with_parent:
            wrapper += ["--parent", str(os.getpid())]
        return [*wrapper, "--", *argv]

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self) -> VLLMServer:
        """Launch the process (does not wait for it to be healthy: see `wait_healthy`)."""
        if self.process is not None:
            raise RuntimeError("server already started")
        if self.port is not None and port_in_use(self.port, self.host):
            raise UserError(f"--port: {self.port} is already in use on {self.host}")
        argv, env = self.build_command()
        if self.log_path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.log_path = cache_dir("logs") / f"vllm-{stamp}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        if self.reaper:
            argv = self.reaper_command(argv)
        self._t0 = time.monotonic()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file_handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=sigterm_when_parent_dies() if self.die_with_parent else None,  # noqa: PLW1509
        )
        self._pgid = self.process.pid  # new session: the leader's (the reaper's) pid is the group id
        self._finalizer = weakref.finalize(self, _stop_group, self.process, self._pgid, 5.0)
        return self

    def wait_healthy(self, timeout_s: float | None = None) -> float:
        """Poll /health until it answers 200; returns the seconds since start. Raises LauncherError with
        the log tail if the process exits first or the time runs out."""
        assert self.process is not None, "start() first"
        deadline = self._t0 + (timeout_s if timeout_s is not None else self.startup_timeout_s)
        with httpx.Client(timeout=2.0) as http:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise LauncherError(
                        f"vLLM exited with code {code} during start-up; last lines of {self.log_path}:\n"
                        + self.log_tail()
                    )
                try:
                    if http.get(f"{self.url}/health").status_code == 200:
                        self.start_seconds = time.monotonic() - self._t0
                        return self.start_seconds
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise LauncherError(
                        f"vLLM not healthy after {time.monotonic() - self._t0:.0f}s; last lines of "
                        f"{self.log_path}:\n" + self.log_tail()
                    )
                time.sleep(0.25)

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        """SIGTERM the server's process group, wait, SIGKILL what is left. Safe to call twice."""
        if self.process is None:
            return
        _stop_group(self.process, self._pgid, self.stop_timeout_s)
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._log_file_handle is not None:
            self._log_file_handle.close()
            self._log_file_handle = None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        with open(self.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64_000))
            text = fh.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"VLLMServer({self.served_model_name!r} at {self.base_url}, pid={self.pid})"


def _stop_group(process: subprocess.Popen[bytes], pgid: int | None, timeout_s: float) -> None:
    """SIGTERM to the group, wait up to timeout_s for every member to go, then SIGKILL the group."""
    if pgid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None and not _group_alive(pgid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    # a member that ignored SIGTERM and outlived the leader, or one still dying of the SIGKILL (a loaded
    # machine): return only when the group is gone
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.05)


@contextlib.contextmanager
def embedded_endpoints(config: LLMConfig, **server_kwargs: object) -> Iterator[list[str]]:
    """The endpoints of a scenario: its `llm.endpoints`, or else an embedded vLLM server started for
    the duration of the block (serving the embedded model under the name `config.model`, and the
    scenario's LoRA adapters `llm.adapters` under theirs)."""
    if config.endpoints:
        yield list(config.endpoints)
        return
    server_kwargs.setdefault("served_model_name", config.model)
    if config.api_key_env:  # the server requires the scenario's key (llm.api_key_env)
        env = dict(server_kwargs.get("env") or {})  # type: ignore[call-overload]
        server_kwargs["env"] = {**env, **server_key_env(config.api_key_env)}
    if config.adapters:  # the trained adapters, served beside the base model (policy alignuser+)
        extra = list(server_kwargs.get("extra_args") or ())  # type: ignore[call-overload]
        server_kwargs["extra_args"] = extra + lora_args(config.adapters)
    with VLLMServer(**server_kwargs) as server:  # type: ignore[arg-type]
        yield [server.base_url]
