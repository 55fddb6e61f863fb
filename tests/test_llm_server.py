"""vLLM replicas as Ray actors: start, health checks, a dead replica replaced, clients told the new URL.

No GPU here: the replicas run the fake OpenAI server of `alignuser_sim.bench.fake_server` (its command line injected as
`argv`, `num_gpus=0`), so the supervisor's logic is tested as it runs around a real vLLM.
"""

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from alignuser_sim.bench.fake_server import fake_server_argv
from alignuser_sim.config import ServeConfig, scenario_from_dict
from alignuser_sim.errors import ScenarioError

ray = pytest.importorskip("ray")

# odd latencies tell this file's fake servers from any other on the machine
FAKE = {"argv": fake_server_argv("{host}", "{port}", latency_s=0.0513), "num_gpus": 0, "check_every_s": 0.3,
        "unhealthy_after": 2, "startup_timeout_s": 60}


def stats(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/stats", timeout=5).json()


def fake_server_pids(latency: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"alignuser_sim.bench.fake_server --host" in cmd and f"--latency {latency} ".encode() in cmd:
                pids.append(int(entry.name))
    return pids


def test_replicas_and_endpoints_together_are_one_line_error():
    with pytest.raises(ScenarioError, match=r"^x.yaml: serve.replicas: must be 0 when llm.endpoints names servers"):
        scenario_from_dict({"dataset": {"name": "ml-100k"}, "serve": {"replicas": 2},
                            "llm": {"endpoints": ["http://127.0.0.1:9/v1"]}}, "x.yaml")
    assert scenario_from_dict({"dataset": {"name": "ml-100k"}, "serve": {"replicas": 2}}).serve.replicas == 2


def test_pool_balances_and_replaces_dead_replicas(ray_local):
    from actors.llm_server import ReplicaPool, wait_for
    from alignuser_sim.agent.decision import PageDecision, page_schema
    from alignuser_sim.llm import LLMClient

    changes: list[list[str]] = []
    with ReplicaPool(ServeConfig(replicas=2), "fake", on_change=changes.append, **FAKE) as pool:
        urls = pool.endpoints()
        assert len(urls) == 2 and len(set(urls)) == 2
        assert all(httpx.get(u.removesuffix("/v1") + "/health", timeout=5).status_code == 200 for u in urls)

        async def calls(client, n):
            messages = [{"role": "user", "content": f"page {i}"} for i in range(n)]
            return await asyncio.gather(*(client.call([m], PageDecision, schema=page_schema(["a", "b"]))
                                          for m in messages))

        client = LLMClient(urls, cache="off", concurrency=8, backoff_base_s=0.05, backoff_max_s=0.2)
        assert all(r.ok for r in asyncio.run(calls(client, 24)))
        assert all(stats(u)["requests"] > 0 for u in urls)  # the client balanced over both replicas

        # a replica's server dies: the pool sees it fail its health checks and starts a new replica
        info = ray.get(pool.replicas[0].info.remote())
        os.kill(info["pid"], signal.SIGKILL)
        assert wait_for(lambda: pool.replaced >= 1 and len(pool.endpoints()) == 2, 30)
        assert any(len(c) == 1 for c in changes)  # told while down to one replica ...
        assert changes[-1] == pool.endpoints() and urls[0] not in changes[-1]  # ... and once it is back
        client = LLMClient(pool.endpoints(), cache="off", concurrency=8)
        assert all(r.ok for r in asyncio.run(calls(client, 8)))

        # a replica's actor dies (its node is lost): replaced too
        ray.kill(pool.replicas[1])
        assert wait_for(lambda: pool.replaced >= 2 and len(pool.endpoints()) == 2, 30)
        assert all(httpx.get(u.removesuffix("/v1") + "/health", timeout=5).status_code == 200
                   for u in pool.endpoints())
    assert not fake_server_pids("0.0513")  # stopping the pool stopped its servers


def test_run_with_replicas_survives_a_replica_dying(ray_local, tmp_path):
    from actors.launch import RayRunner
    from alignuser_sim.api import simulate

    scenario = scenario_from_dict({
        "seed": 2, "dataset": {"name": "ml-100k"}, "population": {"size": 32},
        "recommender": {"algorithm": "pop"}, "pages": {"count": 4, "items_per_page": 4},
        "llm": {"cache": "off", "concurrency": 1, "model": "fake", "max_retries": 8}, "serve": {"replicas": 2},
        "output_dir": str(tmp_path),
    })
    killed = []

    def kill_a_server(plan, coordinator):
        def killer():
            while not killed:
                if ray.get(coordinator.progress.remote())["decisions"] >= 3:
                    pid = fake_server_pids("0.3013")[0]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                time.sleep(0.05)

        threading.Thread(target=killer, daemon=True).start()

    # slow enough (2 calls in flight, 0.3 s each) that the run outlasts the replacement on a loaded machine
    overrides = {**FAKE, "argv": fake_server_argv("{host}", "{port}", latency_s=0.3013)}
    runner = RayRunner(serve_overrides=overrides, on_start=kill_a_server)
    summary = simulate(scenario, out=tmp_path / "run", runner=runner).summary
    assert killed and summary["llm_replicas_replaced"] >= 1
    rows = pq.read_table(tmp_path / "run" / "events.parquet").to_pylist()
    assert len({(r["agent_id"], r["page"]) for r in rows}) == len(rows) == summary["decisions"]
    assert summary["agents_done"] == 32 and summary["failures"] == 0  # the other replica took the calls
