"""The HTTP recommender: the example service started as a real local process serves simulations end to end;
a service that returns garbage, times out or dies mid-run yields counted failures and a completed, resumable
run; feedback is never applied twice (resume, shard restart)."""

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from alignuser_sim.config import DatasetConfig, RecommenderConfig, scenario_from_dict
from alignuser_sim.errors import UserError
from alignuser_sim.recommenders.http import HTTPRecommender
from alignuser_sim.simulation.runs import plan_run, resume_plan, run_local
from alignuser_sim.testing.fake_llm import ScriptedLLM
from alignuser_sim.testing.fake_users import fake_user_responder

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def example_service(port: int | None = None):
    """examples/http_service.py as a real process (uvicorn); yields (url, process)."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "examples/http_service.py", "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, "the example service did not start"
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.kill()
        proc.wait(10)


def service_stats(url: str) -> dict:
    return httpx.get(f"{url}/stats", timeout=5).json()


def scenario(tmp_path, recommender, size=12, pages=3, run=None):
    return scenario_from_dict({
        "seed": 9, "dataset": {"name": "ml-100k"}, "population": {"size": size},
        "recommender": recommender, "pages": {"count": pages, "items_per_page": 4},
        "run": run or {}, "output_dir": str(tmp_path),
    })


def http(url, **kw):
    return {"algorithm": "http", "url": url, "timeout_s": 5, "max_retries": 2, "backoff_base_s": 0.02,
            "backoff_max_s": 0.05, **kw}


def simulate(sc, out, on_events=None, n_shards=2):
    plan = plan_run(sc, out, n_shards=n_shards)
    return asyncio.run(run_local(plan, ScriptedLLM(fake_user_responder), on_events))


def events(run_dir):
    return pq.read_table(run_dir / "events.parquet").to_pylist()


def check_complete(rows, agents, page_cap):
    keys = [(r["agent_id"], r["page"]) for r in rows]
    assert len(keys) == len(set(keys))
    by_agent = {}
    for r in rows:
        by_agent.setdefault(r["agent_id"], []).append(r)
    assert len(by_agent) == agents
    for pages in by_agent.values():
        pages.sort(key=lambda r: r["page"])
        assert [r["page"] for r in pages] == list(range(len(pages)))
        assert pages[-1]["action"] == "exit" or len(pages) == page_cap


# --- the example service, end to end -----------------------------------------------------------------------


def test_example_service_serves_a_simulation_end_to_end(tmp_path):
    with example_service() as (url, _):
        summary = simulate(scenario(tmp_path, http(url)), tmp_path / "http")
        got = service_stats(url)
    rows = events(tmp_path / "http")
    check_complete(rows, 12, 3)
    # the service ranks as the built-in pop does: the same pages, the same decisions
    simulate(scenario(tmp_path, {"algorithm": "pop"}), tmp_path / "pop")
    pop = {(r["agent_id"], r["page"]): r["items"] for r in events(tmp_path / "pop")}
    assert {(r["agent_id"], r["page"]): r["items"] for r in rows} == pop
    # feedback: one event per logged page, applied once; latency and reply checks in stats.json
    assert got["fits"] == 1 and got["applied"] == len(rows) and got["duplicates"] == 0
    rec = json.loads((tmp_path / "http" / "stats.json").read_text())["recommender"]
    assert rec["algorithm"] == "http" and rec["fit"] == "fitted by /fit"
    assert rec["latency_p50_s"] > 0 and rec["requests"] >= 1 + 3  # /fit, then at least a page round each
    assert rec["feedback_sent"] == len(rows) and rec["pages_failed"] == rec["unknown_ids"] == 0
    assert summary["recommender"]["pages_served"] >= len(rows)


def test_offline_recall_ndcg_through_the_protocol():
    from alignuser_sim.data import load_dataset
    from alignuser_sim.evaluation.offline import evaluate_offline

    ds = load_dataset(DatasetConfig(name="ml-100k"))
    with example_service() as (url, _):
        cfg = RecommenderConfig(**http(url, batch_size=200))
        rows = evaluate_offline(ds, ["pop", "http"], k_values=[10], configs={"http": cfg})
    pop, service = rows
    assert service["algorithm"] == "http" and service["users"] == pop["users"]
    assert service["recall@10"] == pytest.approx(pop["recall@10"]) and service["ndcg@10"] == pytest.approx(
        pop["ndcg@10"])


def test_unreachable_service_is_one_line_before_the_run(tmp_path):
    port = free_port()
    with pytest.raises(UserError, match=rf"^recommender.url: http://127.0.0.1:{port}: not reachable"):
        plan_run(scenario(tmp_path, http(f"http://127.0.0.1:{port}")), tmp_path / "run", n_shards=1)


# --- a service that misbehaves -----------------------------------------------------------------------------


class Garbage(BaseHTTPRequestHandler):
    """/recommend answers, in turn: a 500, invalid JSON, a page with an unknown id, a duplicate, an item
    the user has seen and a short page, a reply slower than the timeout, then a good page; /feedback 503
    on its first two calls."""

    calls = {"recommend": 0, "feedback": 0}
    catalogue: list[str] = []

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply(200, {"status": "ok"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/fit":
            type(self).catalogue = body["items"]
            return self.reply(200, {"status": "ok"})
        if self.path == "/feedback":
            self.calls["feedback"] += 1
            if self.calls["feedback"] <= 2:  # the first request and its one retry: kept, sent with the next
                return self.reply(503, {"error": "busy"})
            return self.reply(200, {"applied": len(body["events"]), "duplicates": 0})
        n = self.calls["recommend"] = self.calls["recommend"] + 1
        k, users = body["k"], body["users"]
        if n == 1:
            return self.reply(500, {"error": "boom"})
        if n == 2:
            return self.reply(200, "{not json")
        if n == 3:
            time.sleep(1.5)  # longer than the 1 s timeout
        pages = {}
        for i, u in enumerate(users):
            fresh = [c for c in self.catalogue if c not in set(u["seen"])][200 + 7 * i: 200 + 7 * i + k + 2]
            if n % 4 == 0 and fresh:
                page = ["no-such-item", fresh[0], fresh[0], *(u["seen"][:1] or ["1"]), *fresh[1:k - 1]]
            else:
                page = fresh[:k]
            pages[u["user_id"]] = page
        return self.reply(200, {"pages": pages})


def test_garbage_and_timeouts_are_counted_and_the_run_completes(tmp_path):
    Garbage.calls = {"recommend": 0, "feedback": 0}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        summary = simulate(scenario(tmp_path, http(url, timeout_s=1, max_retries=1)), tmp_path / "run")
    finally:
        server.shutdown()
    rec = summary["recommender"]
    assert rec["retries"] >= 2 and rec["timeouts"] >= 1 and rec["malformed_replies"] >= 1
    assert rec["pages_failed"] >= 1  # the 500 then the invalid JSON: a batch of users without a page
    assert rec["unknown_ids"] >= 1 and rec["duplicate_ids"] >= 1 and rec["seen_ids"] >= 1
    assert rec["short_pages"] >= 1 and rec["feedback_deferred"] >= 1 and rec["feedback_undelivered"] == 0
    rows = events(tmp_path / "run")
    assert summary["decisions"] == len(rows) > 0 and summary["agents_done"] == 12
    for r in rows:  # no bad id ever reached an agent
        assert len(r["items"]) == len(set(r["items"])) and "no-such-item" not in r["items"]


def test_service_dying_mid_run_completes_counted_then_resumes(tmp_path):
    port = free_port()
    sc = scenario(tmp_path, http(f"http://127.0.0.1:{port}", max_retries=1), size=16, pages=4,
                  run={"event_flush_events": 1})
    with example_service(port) as (url, proc):
        def kill_after_some(evs, seen=[]):  # noqa: B006 - a counter across calls
            seen.extend(evs)
            if len(seen) >= 20 and proc.poll() is None:
                proc.kill()
                proc.wait(10)

        first = simulate(sc, tmp_path / "run", on_events=kill_after_some)
    assert first["recommender"]["pages_failed"] > 0  # counted, and the run completed
    cut = len(events(tmp_path / "run"))
    assert first["agents_done"] == 16 and cut < 16 * 4
    # the service is back (empty: a new process): resume re-fits it, replays the feedback, continues
    with example_service(port) as (url, _):
        resumed = asyncio.run(run_local(resume_plan(tmp_path / "run"), ScriptedLLM(fake_user_responder)))
        got = service_stats(url)
    rows = events(tmp_path / "run")
    check_complete(rows, 16, 4)
    assert len(rows) > cut and resumed["recommender"]["pages_failed"] == 0
    assert got["applied"] == len(rows) and got["duplicates"] == 0  # every page's feedback exactly once


def test_resume_does_not_double_feedback_to_a_service_that_kept_its_state(tmp_path):
    from alignuser_sim.data import load_dataset

    sc = scenario(tmp_path, {"algorithm": "pop"}, size=16, pages=4, run={"event_flush_events": 1})
    with example_service() as (url, _):
        ds = load_dataset(sc.dataset)
        HTTPRecommender(RecommenderConfig(**http(url))).fit(ds.interactions, ds.items)  # the service's own model
        sc.recommender = RecommenderConfig(**http(url, fit=False))

        class Interrupted(Exception):
            pass

        def interrupt(evs, seen=[]):  # noqa: B006
            seen.extend(evs)
            if len(seen) >= 25:
                raise Interrupted  # after logging, before this chunk's feedback: as a killed driver leaves it

        with pytest.raises(Interrupted):
            simulate(sc, tmp_path / "run", on_events=interrupt)
        before = service_stats(url)
        logged = len(pq.read_table(tmp_path / "run" / "events").to_pylist())
        resumed = asyncio.run(run_local(resume_plan(tmp_path / "run"), ScriptedLLM(fake_user_responder)))
        got = service_stats(url)
    rows = events(tmp_path / "run")
    check_complete(rows, 16, 4)
    assert 0 < before["applied"] < logged  # the interrupted chunk's feedback was never sent
    assert got["applied"] == len(rows)  # ... and now each page's feedback is applied exactly once
    assert got["duplicates"] == before["applied"] == resumed["recommender"]["feedback_duplicates"]
    assert resumed["recommender"]["fit"] == "service's own model" and got["fits"] == 1


# --- on Ray: a shard restart ------------------------------------------------------------------------------


@pytest.mark.slow
def test_shard_restart_does_not_double_feedback(ray_local, tmp_path):
    ray = pytest.importorskip("ray")
    from actors.launch import RayRunner
    from alignuser_sim.api import simulate as api_simulate
    from alignuser_sim.testing.fake_users import fake_user_server

    killed = []

    def kill_a_shard(plan, coordinator):
        def killer():
            while not killed:
                if ray.get(coordinator.progress.remote())["decisions"] >= 10:
                    ray.kill(ray.get(coordinator.shard_handles.remote())[0], no_restart=False)
                    killed.append(True)
                time.sleep(0.05)

        threading.Thread(target=killer, daemon=True).start()

    with example_service() as (url, _), fake_user_server(delay_s=0.05) as llm:
        sc = scenario(tmp_path, http(url), size=32, pages=4)
        sc.llm.endpoints, sc.llm.cache, sc.llm.concurrency = [llm.base_url], "off", 8
        summary = api_simulate(sc, out=tmp_path / "run", runner=RayRunner(on_start=kill_a_shard)).summary
        got = service_stats(url)
    assert killed and summary["shard_restarts"] >= 1
    rows = events(tmp_path / "run")
    check_complete(rows, 32, 4)
    assert got["applied"] == len(rows) and got["duplicates"] == 0
    assert summary["recommender"]["latency_p50_s"] > 0


# --- against the real vLLM server --------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_http_recommender_with_real_vllm(vllm_server, tmp_path):
    from alignuser_sim.llm import LLMClient

    with example_service() as (url, _):
        sc = scenario(tmp_path, http(url), size=4, pages=2)
        sc.llm.endpoints, sc.llm.cache = [vllm_server.base_url], "off"
        llm = LLMClient.from_config(sc.llm, endpoints=[vllm_server.base_url])
        summary = asyncio.run(run_local(plan_run(sc, tmp_path / "run", n_shards=1), llm))
        got = service_stats(url)
    rows = events(tmp_path / "run")
    check_complete(rows, 4, 2)
    assert got["applied"] == len(rows) == summary["decisions"]
    assert sum(r["failure"] is None for r in rows) >= 0.5 * len(rows)
