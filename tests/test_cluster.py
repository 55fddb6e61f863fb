"""cluster.yaml is `ray up`-ready: it passes Ray's own preparation and schema validation (what `ray up` runs
before it touches the cloud), and every node type's set-up installs this project into the venv whose `ray`
starts the node."""

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster.yaml"
pytest.importorskip("ray")


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def effective_setup(prepared: dict, node_type: str) -> list[str]:
    """The set-up commands a node of this type runs: a node type's own `worker_setup_commands` replace the
    merged ones (Ray's autoscaler `_get_node_type_specific_fields`)."""
    if node_type == prepared["head_node_type"]:
        return prepared["head_setup_commands"]
    return prepared["available_node_types"][node_type].get("worker_setup_commands", prepared["worker_setup_commands"])


def test_ray_accepts_the_config(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # raises on a schema violation or an inconsistent node-type layout
    assert prepared["provider"]["type"] == "aws"


def test_required_keys_and_node_types(config):
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type", "file_mounts",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in config, key
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    assert types["cpu_worker"]["resources"].get("shard_slots", 0) > 0  # shards are placed on the CPU workers
    assert "shard_slots" not in types[config["head_node_type"]]["resources"]
    assert re.match(r"^(g|p)\d", types["gpu_worker"]["node_config"]["InstanceType"])  # an NVIDIA GPU instance
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]


def test_every_node_installs_the_project_where_its_ray_starts(config):
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(copy.deepcopy(config))
    mounts = {remote: local for remote, local in config["file_mounts"].items()}
    project = next(remote for remote, local in mounts.items() if local in (".", "./"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    venv_python = "~/alignuser-venv/bin/python"
    for node_type in prepared["available_node_types"]:
        commands = effective_setup(prepared, node_type)
        creates_venv = [c for c in commands if "venv" in c and "3.11" in c]
        installs = [c for c in commands if "pip install" in c and f"-e \"{project}" in c and venv_python in c]
        assert creates_venv and installs, node_type
        if node_type == "gpu_worker":
            assert any(f'{project}[gpu]"' in c for c in installs)  # vLLM for CUDA on the GPU nodes
    assert "gpu" in pyproject["project"]["optional-dependencies"]
    start = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    assert all("~/alignuser-venv/bin/ray" in c for c in start)  # the venv's Ray, which can import the project
    assert any("--head" in c for c in prepared["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in prepared["worker_start_ray_commands"])


def test_nodes_run_the_pinned_ray_version():
    import ray

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = next(d for d in deps if d.startswith("ray=="))
    assert pinned == f"ray=={ray.__version__}"  # `ray up` needs the same Ray on the laptop and the nodes
