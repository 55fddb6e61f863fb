"""The simulation on a local Ray cluster: a full run, a shard killed mid-run, the library never importing Ray.

The LLM here is the scripted fake user behind a real local HTTP socket (`fake_user_server`), so the
shards' LLM clients do real HTTP, retries and caching exactly as against vLLM.
"""

import json
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

from alignuser_sim.config import scenario_from_dict
from alignuser_sim.testing.fake_users import fake_user_server

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def fake_server():
    with fake_user_server(delay_s=0.01) as server:
        yield server


def make_scenario(tmp_path, endpoint, size=24, pages=3):
    return scenario_from_dict({
        "seed": 5, "dataset": {"name": "ml-100k"}, "population": {"size": size},
        "recommender": {"algorithm": "pop"}, "pages": {"count": pages, "items_per_page": 4},
        "llm": {"endpoints": [endpoint], "cache": "off", "concurrency": 8},
        "output_dir": str(tmp_path),
    })


def check_exactly_once(run_dir, agents, page_cap):
    rows = pq.read_table(run_dir / "events.parquet").to_pylist()
    keys = [(r["agent_id"], r["session"], r["page"]) for r in rows]
    assert len(keys) == len(set(keys))
    by_agent = {}
    for r in rows:
        by_agent.setdefault(r["agent_id"], []).append(r)
    assert len(by_agent) == agents
    for pages in by_agent.values():
        pages.sort(key=lambda r: r["page"])
        assert [r["page"] for r in pages] == list(range(len(pages)))
        assert pages[-1]["action"] == "exit" or len(pages) == page_cap
    return rows


def test_library_never_imports_ray():
    code = ("import sys, alignuser_sim.cli, alignuser_sim.simulation.runs, alignuser_sim.simulation.driver, "
            "alignuser_sim.agent.persona_agent, alignuser_sim.recommenders; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_full_run_on_ray(ray_local, fake_server, tmp_path):
    from actors.launch import RayRunner
    from alignuser_sim.api import simulate
    from alignuser_sim.store import RunFolder

    result = simulate(make_scenario(tmp_path, fake_server.base_url), out=tmp_path / "run", runner=RayRunner())
    shards = RunFolder(result.run_dir).shards()
    assert len(shards) >= 2  # 2 CPUs -> 2 shards
    rows = check_exactly_once(tmp_path / "run", 24, 3)
    summary = result.summary
    assert summary["decisions"] == len(rows) and summary["agents_done"] == 24
    assert {r["shard"] for r in rows} == set(shards)
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["llm"]["calls"] >= len(rows)


def test_shard_killed_mid_run_restarts_and_loses_nothing(ray_local, tmp_path):
    from actors.launch import RayRunner
    from alignuser_sim.api import simulate

    killed = []

    def kill_a_shard(plan, coordinator):
        def killer():
            while not killed:
                p = ray.get(coordinator.progress.remote())
                if p["decisions"] >= 40:  # past page 1: the agents have histories to restore
                    shard = ray.get(coordinator.shard_handles.remote())[0]
                    ray.kill(shard, no_restart=False)
                    killed.append(p["decisions"])
                time.sleep(0.05)

        threading.Thread(target=killer, daemon=True).start()

    with fake_user_server(delay_s=0.05) as server:
        summary = simulate(make_scenario(tmp_path, server.base_url, size=32, pages=4), out=tmp_path / "run",
                           runner=RayRunner(on_start=kill_a_shard)).summary
        whole = simulate(make_scenario(tmp_path, server.base_url, size=32, pages=4), out=tmp_path / "whole",
                         runner=RayRunner()).summary
    assert killed, "the shard was never killed"
    assert summary["shard_restarts"] >= 1 and whole["shard_restarts"] == 0
    check_exactly_once(tmp_path / "run", 32, 4)
    # the restored shard's agents had the same short histories (the coordinator keeps only each agent's last
    # events with a watch for that): the prompts, so the scripted user's exits, are those of the run never killed
    cols = ["agent_id", "session", "page", "items", "watched", "ratings", "action"]
    assert pq.read_table(tmp_path / "run" / "events.parquet").select(cols).equals(
        pq.read_table(tmp_path / "whole" / "events.parquet").select(cols))


def test_unreachable_endpoint_is_one_line_before_the_run(tmp_path):
    import socket

    from alignuser_sim.errors import UserError
    from alignuser_sim.llm.endpoints import check_endpoints

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=rf"^llm.endpoints: http://127.0.0.1:{port}/v1: not reachable"):
        check_endpoints([f"http://127.0.0.1:{port}/v1"], timeout_s=2)
