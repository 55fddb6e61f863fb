"""An authenticated cluster: Ray's token authentication stays on, the LLM servers require the scenario's key.

- `init_ray` no longer turns Ray's token authentication off (only the tests' private clusters do, in conftest).
- cluster.yaml starts every node with token authentication, the dashboard on loopback, a security group that
  opens only SSH from one range, and no unpinned `curl | sh`.
- `llm.api_key_env` names the variable holding the key: a client without it gets 401 from a server that
  requires one (vLLM's rule, mimicked by the fake server) and the endpoint check says so in one line, without
  a retry storm; a variable that is not set is one line too; the embedded server and the replicas require it.
- A local Ray cluster with token authentication on (its own process: Ray's auth mode is process-wide) runs a
  short simulation against a keyed fake server, once with `llm.endpoints` and once with `serve.replicas`, while
  a driver holding the wrong token is refused in one line.
"""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from alignuser_sim.bench.fake_server import FakeServer, fake_server_argv
from alignuser_sim.config import LLMConfig
from alignuser_sim.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
KEY_VAR = "ALIGNUSER_TEST_LLM_KEY"


# --- Ray token authentication ------------------------------------------------------------------------------------


def test_init_ray_leaves_token_auth_on(monkeypatch):
    ray = pytest.importorskip("ray")
    from actors import launch

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    launch.init_ray(None, 1)
    assert calls and "RAY_AUTH_MODE" not in os.environ  # Ray's own default (token for a local cluster) applies


def test_cluster_yaml_is_locked_down():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    text = (ROOT / "cluster.yaml").read_text()
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert "RAY_AUTH_MODE=disabled" not in text
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    # the token reaches every node through the file mounts (head; the workers get the head's copies)
    assert any(remote.endswith("/.ray/auth_token") for remote in config["file_mounts"])
    group = config["provider"]["security_group"]
    assert group["GroupName"]
    rules = group["IpPermissions"]
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in rules] == [("tcp", 22, 22)]
    cidrs = [ip["CidrIp"] for r in rules for ip in r["IpRanges"]]
    assert cidrs and "0.0.0.0/0" not in cidrs
    commands = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands") for c in config[key]]
    commands += [c for t in config["available_node_types"].values() for c in t.get("worker_setup_commands", [])]
    assert not any("curl" in c or "| sh" in c for c in commands)  # nothing unpinned piped into a shell
    assert any("--require-hashes" in c for c in commands)
    pins = (ROOT / "cluster" / "uv-requirements.txt").read_text()
    assert "uv==" in pins and "--hash=sha256:" in pins


# --- the LLM servers' key ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server():
    with FakeServer(latency_s=0.0, jitter=0.0, api_key="s3cret-key") as server:
        yield server


def test_endpoint_check_without_key_is_one_line(keyed_server, monkeypatch):
    from alignuser_sim.llm.endpoints import check_endpoints

    with pytest.raises(UserError, match=r"HTTP 401: the server requires an API key; set llm.api_key_env") as exc:
        check_endpoints([keyed_server.base_url])
    assert "\n" not in str(exc.value)
    monkeypatch.setenv(KEY_VAR, "wrong")
    with pytest.raises(UserError, match=rf"HTTP 401: the server refused the API key in \${KEY_VAR}$"):
        check_endpoints([keyed_server.base_url], api_key_env=KEY_VAR)
    monkeypatch.setenv(KEY_VAR, "s3cret-key")
    check_endpoints([keyed_server.base_url], api_key_env=KEY_VAR)


def test_missing_key_variable_is_one_line(keyed_server, monkeypatch):
    from alignuser_sim.llm import LLMClient

    monkeypatch.delenv(KEY_VAR, raising=False)
    config = LLMConfig(endpoints=[keyed_server.base_url], api_key_env=KEY_VAR)
    with pytest.raises(UserError, match=rf"^llm.api_key_env: the environment variable {KEY_VAR} is not set"):
        LLMClient.from_config(config)


def test_api_key_env_names_a_variable_not_a_key():
    with pytest.raises(ValueError, match="api_key_env"):
        LLMConfig(api_key_env="sk-abc/def=")


def test_client_without_key_gets_401_once_and_with_key_answers(keyed_server, monkeypatch):
    import asyncio

    from alignuser_sim.agent.decision import PageDecision, page_schema
    from alignuser_sim.llm import LLMClient
    from alignuser_sim.llm.prompts import build_messages

    messages = build_messages("You browse movies.", "1. Heat (1995)\n2. Fargo (1996)")
    schema = page_schema(["1", "2"])

    async def ask(client):
        async with client:
            return await client.call(messages, PageDecision, schema=schema), client.snapshot()

    before = keyed_server.stats()["unauthorized"]
    result, counts = asyncio.run(ask(LLMClient([keyed_server.base_url], cache="off", max_retries=5,
                                               backoff_base_s=0.01)))
    assert result.failure == "http_401" and "401" in (result.error or "")
    assert counts["requests"] == 1  # not transient: no retry storm
    assert keyed_server.stats()["unauthorized"] == before + 1
    monkeypatch.setenv(KEY_VAR, "s3cret-key")
    config = LLMConfig(endpoints=[keyed_server.base_url], api_key_env=KEY_VAR, cache="off")
    result, _ = asyncio.run(ask(LLMClient.from_config(config)))
    assert result.ok, result.error


def test_embedded_server_requires_the_scenario_key(tmp_path, monkeypatch):
    from alignuser_sim.llm.launcher import embedded_endpoints

    monkeypatch.setenv(KEY_VAR, "embedded-key")
    config = LLMConfig(api_key_env=KEY_VAR)  # no endpoints: the embedded server (here the fake's command line)
    argv = fake_server_argv("{host}", "{port}")
    with embedded_endpoints(config, argv=argv, log_path=tmp_path / "vllm.log", startup_timeout_s=60) as urls:
        models = urls[0] + "/models"
        assert httpx.get(models, timeout=10).status_code == 401
        assert httpx.get(models, headers={"Authorization": "Bearer embedded-key"}, timeout=10).status_code == 200


def test_replica_servers_get_the_key_in_their_environment(monkeypatch):
    from alignuser_sim.llm.server_command import server_key_env

    assert server_key_env(None) == {}
    monkeypatch.setenv(KEY_VAR, "replica-key")
    assert server_key_env(KEY_VAR) == {"VLLM_API_KEY": "replica-key"}  # vLLM's --api-key, kept out of `ps`


# --- a cluster with token authentication on ------------------------------------------------------------------------


def cluster_job(out: str) -> None:
    """Run in a process of its own with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN set: a local two-CPU cluster, a
    driver with the wrong token knocking, then two short simulations against keyed fake servers."""
    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode
    from ray.cluster_utils import Cluster

    from actors.launch import RayRunner
    from alignuser_sim.api import simulate
    from alignuser_sim.config import scenario_from_dict

    folder = Path(out)
    key = secrets.token_hex(16)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    knock = ("from actors.launch import init_ray\nfrom alignuser_sim.errors import UserError\n"
             f"try:\n    init_ray({cluster.address!r}, None)\n    print('JOINED')\n"
             "except UserError as exc:\n    print('REFUSED', exc)\n")
    intruder = subprocess.Popen([sys.executable, "-c", knock], env={**os.environ, "RAY_AUTH_TOKEN": "not-the-token"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    # set after the nodes started: their worker processes lack it, the coordinator's runtime env carries it
    os.environ[KEY_VAR] = key
    base = {"seed": 3, "dataset": {"name": "ml-100k"}, "population": {"size": 8},
            "recommender": {"algorithm": "pop"}, "pages": {"count": 3, "items_per_page": 4},
            "output_dir": str(folder)}
    result: dict = {}
    try:
        with FakeServer(latency_s=0.0, jitter=0.0, api_key=key) as server:
            scenario = scenario_from_dict({**base, "llm": {"endpoints": [server.base_url], "cache": "off",
                                                           "api_key_env": KEY_VAR, "max_retries": 0}})
            summary = simulate(scenario, out=folder / "endpoints", runner=RayRunner(address=cluster.address)).summary
            result["endpoints"] = {**{k: summary[k] for k in ("agents_done", "decisions", "failures")},
                                   **server.stats()}
        result["token_mode"] = get_authentication_mode() == AuthenticationMode.TOKEN
        replicas = {"argv": fake_server_argv("{host}", "{port}"), "num_gpus": 0, "startup_timeout_s": 60}
        scenario = scenario_from_dict({**base, "serve": {"replicas": 1},
                                       "llm": {"cache": "off", "model": "fake", "api_key_env": KEY_VAR,
                                               "max_retries": 0}})
        summary = simulate(scenario, out=folder / "replicas", runner=RayRunner(serve_overrides=replicas)).summary
        result["replicas"] = {k: summary[k] for k in ("agents_done", "decisions", "failures")}
        stdout, stderr = intruder.communicate(timeout=180)
        result["intruder"] = (stdout.strip() or stderr.strip()[-500:])
    finally:
        if intruder.poll() is None:
            intruder.kill()
        ray.shutdown()
        cluster.shutdown()
    (folder / "result.json").write_text(json.dumps(result))


def test_token_auth_cluster_runs_a_simulation_with_keyed_llm(tmp_path):
    pytest.importorskip("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop(KEY_VAR, None)
    env.pop("RAY_ADDRESS", None)
    code = f"from tests.test_cluster_auth import cluster_job; cluster_job({str(tmp_path)!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["token_mode"]
    run = result["endpoints"]
    assert run["agents_done"] == 8 and run["failures"] == 0 and run["decisions"] > 0
    assert run["requests"] >= run["decisions"] and run["unauthorized"] == 0  # every shard sent the key
    assert result["replicas"]["agents_done"] == 8 and result["replicas"]["failures"] == 0
    intruder = result["intruder"]
    assert intruder.startswith("REFUSED Ray cluster") and "token authentication failed" in intruder, intruder
    assert "\n" not in intruder
