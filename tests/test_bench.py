"""The scale machinery: the driver's per-agent pipelining, the fake fast server, the naive loop, process
sampling, result tables and plots, `alignuser-sim bench scale` on a local Ray, and `bench live` against the
real vLLM server (integration)."""

import asyncio
import json
import statistics
import subprocess
import sys
import time

import httpx
import pytest

from alignuser_sim.bench.fake_server import FakeServer
from alignuser_sim.bench.naive import AGENT4REC_POOL, naive_loop, rates
from alignuser_sim.bench.results import markdown_table, plot_scaling, write_results
from alignuser_sim.bench.sampler import ProcessSampler
from alignuser_sim.simulation.driver import Driver, PageRequest
from alignuser_sim.simulation.events import Event, EventLog


class CountingRecommender:
    """Serves fresh item ids; records every call."""

    def __init__(self):
        self.page_calls: list[list[str]] = []
        self.feedback_calls: list[list[str]] = []
        self.served: dict[str, int] = {}

    async def pages(self, user_ids, k):
        self.page_calls.append(list(user_ids))
        out = {}
        for uid in user_ids:
            n = self.served[uid] = self.served.get(uid, 0) + 1
            out[uid] = [f"{uid}-{n}-{i}" for i in range(k)]
        return out

    async def feedback(self, batch):
        self.feedback_calls.append([uid for uid, _, _ in batch])


def event_for(request: PageRequest, shard: int) -> Event:
    n = len(request.items)
    return Event("run", request.agent_id, request.session, request.page, list(request.items), [False] * n, [None] * n,
                 [""] * n, None, "next_page", None, 0, 10, 5, 0.01, False, shard, time.time())


def test_driver_pipelines_agents_and_batches_pages(tmp_path):
    """A slow decision holds up only its own agent; agents coming back together share a recommender call."""
    fast = [f"f{i}" for i in range(20)]

    async def decide(shard, requests):
        out = []
        for r in requests:
            await asyncio.sleep(0.6 if r.agent_id == "slow" and r.page == 0 else 0.01)
            out.append(event_for(r, shard))
        return out

    recommender = CountingRecommender()
    log = EventLog(tmp_path, flush_s=3600)
    driver = Driver(shards={0: ["slow", *fast[:10]], 1: fast[10:]}, decide=decide, recommender=recommender,
                    event_log=log, page_cap=3, items_per_page=2)
    asyncio.run(driver.run())
    assert driver.stats.decisions == 21 * 3 and driver.agents_done == 21
    # the fast agents did all their pages while the slow one was still on its first
    slow_first = min(e.wall_time for e in driver_events(log) if e.agent_id == "slow")
    fast_last = max(e.wall_time for e in driver_events(log) if e.agent_id != "slow")
    assert fast_last < slow_first
    # pages were batched: the first call served a whole shard, and there are far fewer calls than pages
    assert max(len(c) for c in recommender.page_calls) >= 10
    assert len(recommender.page_calls) < driver.stats.decisions
    # each page served once, fed back once
    assert all(n == 3 for n in recommender.served.values())
    assert sorted(u for c in recommender.feedback_calls for u in c) == sorted(["slow", *fast] * 3)


def driver_events(log: EventLog) -> list[Event]:
    log.flush()
    return EventLog(log.run_dir).load_existing()  # a fresh reader: the writer counts its own keys as loaded


def test_driver_streams_decisions_back_as_they_finish(tmp_path):
    """With `decide_stream`, one call per batch and decisions handed back in chunks as they are made."""
    calls = []

    async def decide_stream(shard, requests):
        calls.append(len(requests))
        pending = sorted(requests, key=lambda r: r.agent_id)
        for r in pending:
            await asyncio.sleep(0.002)
            yield [event_for(r, shard)]

    async def decide(shard, requests):  # never used when a stream is given
        raise AssertionError("decide called")

    log = EventLog(tmp_path, flush_s=3600)
    agents = [f"a{i}" for i in range(30)]
    driver = Driver(shards={0: agents}, decide=decide, decide_stream=decide_stream,
                    recommender=CountingRecommender(), event_log=log, page_cap=2, items_per_page=3)
    asyncio.run(driver.run())
    assert driver.stats.decisions == 60 and calls[0] == 30 and sum(calls) == 60
    keys = [(e.agent_id, e.page) for e in driver_events(log)]
    assert len(keys) == len(set(keys)) == 60


def test_fake_server_answers_page_decisions_after_its_latency():
    from alignuser_sim.agent.decision import PageDecision, page_schema
    from alignuser_sim.llm import LLMClient

    with FakeServer(latency_s=0.2, jitter=0.0) as server:
        assert httpx.get(server.base_url.removesuffix("/v1") + "/health").status_code == 200
        client = LLMClient([server.base_url], cache="off", concurrency=16)

        async def go():
            return await asyncio.gather(*(client.call([{"role": "user", "content": f"u{i}"}], PageDecision,
                                                      schema=page_schema(["a", "b", "c"])) for i in range(16)))

        t0 = time.perf_counter()
        results = asyncio.run(go())
        wall = time.perf_counter() - t0
        assert all(r.ok and set(r.value.items) == {"a", "b", "c"} for r in results)
        assert all(r.usage.completion_tokens > 0 for r in results)
        assert statistics.median(r.latency_s for r in results) >= 0.19
        assert wall < 3  # answered concurrently, not one after another (16 x 0.2 s)
        assert server.stats()["requests"] == 16 and server.stats()["max_in_flight"] > 1
    assert server.process.poll() is not None


def test_naive_loop_one_blocking_call_per_agent_page():
    from alignuser_sim.config import DatasetConfig, RecommenderConfig
    from alignuser_sim.core import Catalogue
    from alignuser_sim.data import load_dataset
    from alignuser_sim.data.personas import build_personas
    from alignuser_sim.recommenders import make_recommender

    ml100k = load_dataset(DatasetConfig(name="ml-100k"))
    users = sorted(set(ml100k.interactions["user_id"].to_pylist()))[:12]
    personas = build_personas(ml100k, users)
    recommender = make_recommender(RecommenderConfig(algorithm="pop"), seed=0).fit(ml100k.interactions, ml100k.items)
    with FakeServer(latency_s=0.05, jitter=0.0) as server:
        row = naive_loop(personas, Catalogue(ml100k.items), recommender, endpoint=server.base_url, model="fake",
                         sampling={"max_tokens": 200}, page_cap=3, items_per_page=4, pool_size=4)
        served = server.stats()
    assert row["agents"] == 12 and row["failures"] == 0
    assert 12 <= row["decisions"] <= 36 and served["requests"] == row["decisions"]
    assert served["max_in_flight"] <= 4  # the pool bounds the calls in flight
    assert row["completion_tokens"] > 0 and row["latency_p50_s"] >= 0.04
    r = rates(row)
    assert r["agents_per_hour"] == pytest.approx(12 / row["elapsed_s"] * 3600, rel=0.01)
    assert AGENT4REC_POOL == 500


def test_process_sampler_measures_cpu_and_memory_of_picked_processes():
    burn = "import time\nx = bytearray(60 * 2**20)\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    proc = subprocess.Popen([sys.executable, "-c", burn + "\ntime.sleep(0.5)"])
    sampler = ProcessSampler(lambda pid, cmd: "burner" if pid == proc.pid else None, interval_s=0.05).start()
    proc.wait()
    sampler.stop()
    usage = sampler.usage()
    assert usage["burner"]["processes"] == 1
    assert 0.4 <= usage["burner"]["cpu_s"] <= 3
    assert usage["burner"]["rss_peak_mb"] >= 60


def test_tables_files_and_plot(tmp_path):
    rows = [{"agents": n, "decisions_per_s": 10.0 * n, "calls_per_s": 9.5 * n, "output_tok_per_s": 300.0 * n,
             "latency_p50_s": 1.0, "latency_p99_s": 3.2, "cpu_ms_per_agent": 5.0, "rss_kb_per_agent": 2000 / n}
            for n in (100, 1000, 10000)]
    table = markdown_table(rows, [("agents", "agents"), ("decisions_per_s", "decisions/s")])
    assert table.splitlines()[0] == "| agents | decisions/s |"
    assert "| 10,000 | 100,000 |" in table
    json_path, md_path = write_results(tmp_path / "scale", {"rows": rows}, table)
    assert json.loads(json_path.read_text())["rows"][2]["agents"] == 10000 and md_path.read_text().startswith("|")
    png = plot_scaling(rows, tmp_path / "scale.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bench_scale_command_on_local_ray(ray_local, tmp_path):
    from typer.testing import CliRunner

    from alignuser_sim.cli import app

    result = CliRunner().invoke(app, ["bench", "scale", "--agents", "16,48", "--pages", "2", "--latency", "0.02",
                                      "--jitter", "0.3", "--concurrency", "8", "--dataset", "ml-100k",
                                      "--out", str(tmp_path / "scale")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "scale.json").read_text())
    assert [r["agents"] for r in data["rows"]] == [16, 48]
    for row in data["rows"]:
        assert row["decisions"] >= row["agents"] and row["failures"] == 0
        assert row["server_requests"] == row["llm_requests"] >= row["decisions"]
        assert row["cpu_s"] > 0 and row["rss_mb_shards"] > 50  # the shard processes were found and measured
        assert row["decisions_per_s"] > 0 and row["latency_p50_s"] >= 0.005
    assert (tmp_path / "scale.png").stat().st_size > 10_000
    assert "fake OpenAI-compatible server" in (tmp_path / "scale.md").read_text()


def test_bench_rejects_bad_sizes():
    from alignuser_sim.cli.bench import _ints
    from alignuser_sim.errors import UserError

    assert _ints("100,1_000", "--agents") == [100, 1000]
    with pytest.raises(UserError, match="--agents: 'ten' is not"):
        _ints("ten", "--agents")


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_bench_live_against_vllm(vllm_server, ray_local, tmp_path):
    """The live comparison end to end on the real server, tiny: 4 agents x 1 page in each of the three runs."""
    from typer.testing import CliRunner

    from alignuser_sim.cli import app

    args = ["bench", "live", "--endpoint", vllm_server.base_url, "--tokenizer", str(vllm_server.model),
            "--agents", "4", "--pages", "1", "--concurrency", "4", "--warmup", "0", "--out", str(tmp_path / "live")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "live.json").read_text())
    sim, bench, naive = data["simulation"], data["vllm_bench_serve"], data["naive"]
    assert sim["decisions"] == 4 and naive["decisions"] == 4 and bench["completed"] == sim["llm_requests"]
    assert sim["completion_tokens"] > 0 and bench["output_throughput"] > 0
    assert data["ratio_sim_to_vllm_bench"] == pytest.approx(sim["output_tok_per_s"] / bench["output_throughput"],
                                                            rel=0.01)
    assert data["ratio_sim_to_naive_agents_per_hour"] > 0
