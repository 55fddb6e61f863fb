"""Two Ray nodes on one machine (`ray.cluster_utils.Cluster`): shards spread over both, the worker node
removed mid-run, its shards restart on the head node, and the run completes with no event lost or doubled.

The LLM is the fake server of `alignuser_sim.bench.fake_server` (fast), so the test runs in seconds. The cluster is this
module's own: Ray is shut down before (another module's local Ray) and after it.
"""

import threading
import time

import pyarrow.parquet as pq
import pytest

from alignuser_sim.bench.fake_server import FakeServer
from alignuser_sim.config import scenario_from_dict

ray = pytest.importorskip("ray")


@pytest.fixture
def two_nodes():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # shard slots: the worker takes 2 shards, the head has room for every shard once the worker is gone
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"shard_slots": 4},
                                                            "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1, resources={"shard_slots": 2})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def node_of(shard, timeout_s=120.0):
    """The node a (restarting) shard runs on, once it answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(shard.where.remote(), timeout=10)["node_id"]
        except ray.exceptions.RayError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_node_lost_mid_run_loses_no_event(two_nodes, tmp_path):
    from actors.launch import RayRunner
    from alignuser_sim.api import simulate

    cluster, worker = two_nodes
    head_id = cluster.head_node.node_id
    assert ray.get_runtime_context().get_node_id() == head_id  # the driver (and so the coordinator) is on the head
    seen: dict = {}

    def remove_worker_mid_run(plan, coordinator):
        seen["plan"] = plan

        def run():
            while ray.get(coordinator.progress.remote())["decisions"] < 12:
                time.sleep(0.05)
            shards = ray.get(coordinator.shard_handles.remote())
            seen["before"] = {i: ray.get(h.where.remote())["node_id"] for i, h in shards.items()}
            cluster.remove_node(worker)
            seen["removed_at"] = ray.get(coordinator.progress.remote())["decisions"]
            moved = [i for i, node in seen["before"].items() if node == worker.node_id]
            seen["after"] = {i: node_of(shards[i]) for i in moved}

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        seen["thread"] = thread

    with FakeServer(latency_s=0.1, jitter=0.0) as server:
        scenario = scenario_from_dict({
            "seed": 4, "dataset": {"name": "ml-100k"}, "population": {"size": 32},
            "recommender": {"algorithm": "pop"}, "pages": {"count": 5, "items_per_page": 4},
            "llm": {"endpoints": [server.base_url], "cache": "off", "concurrency": 2},
            "output_dir": str(tmp_path),
        })
        summary = simulate(scenario, out=tmp_path / "run", runner=RayRunner(on_start=remove_worker_mid_run)).summary
        seen["thread"].join(timeout=120)
        served = server.stats()["requests"]

    assert set(seen["before"].values()) == {head_id, worker.node_id}  # shards were placed on both nodes
    assert seen["removed_at"] < summary["decisions"]  # the node went while the run had work left
    assert seen["after"] and set(seen["after"].values()) == {head_id}  # its shards came back on the head
    assert summary["shard_restarts"] >= 1 and summary["agents_done"] == 32
    rows = pq.read_table(tmp_path / "run" / "events.parquet").to_pylist()
    keys = [(r["agent_id"], r["session"], r["page"]) for r in rows]
    assert len(keys) == len(set(keys)) == summary["decisions"]  # none doubled
    by_agent: dict = {}
    for r in rows:
        by_agent.setdefault(r["agent_id"], []).append(r)
    assert len(by_agent) == 32
    for pages in by_agent.values():  # none lost: every session is whole, from page 0 to its exit or the cap
        pages.sort(key=lambda r: r["page"])
        assert [r["page"] for r in pages] == list(range(len(pages)))
        assert pages[-1]["action"] == "exit" or len(pages) == 5
    assert served >= len(rows)  # pages in flight on the lost node were decided again
    assert {r["shard"] for r in rows} == set(seen["plan"].shards)
