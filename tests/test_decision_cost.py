"""What a decision costs: the prefix-cache hit rate of a run (llm/metrics.py, stats.json `llm.prefix_cache`),
the Agent4Rec-style baseline loop (bench/agent4rec.py), the decision-format comparison (bench/formats.py) and
the `bench agent4rec` / `bench formats` commands against the fake server; against the real vLLM server in the
integration tests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignuser_sim.bench.agent4rec import (
    REFLECTION_THRESHOLD,
    Avatar,
    agent4rec_loop,
    decision_costs,
    item_mean_ratings,
    parse_reaction,
    wants_exit,
)
from alignuser_sim.bench.fake_server import FakeServer
from alignuser_sim.bench.fake_users import fake_reply, fake_text
from alignuser_sim.bench.formats import format_row, parse_formats, with_ratios
from alignuser_sim.core import ItemView
from alignuser_sim.data.personas import Persona
from alignuser_sim.errors import UserError
from alignuser_sim.llm.metrics import PrefixCacheProbe, endpoint_urls, parse_prometheus, read_counters

METRICS = """# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{engine="0",model_name="smollm2"}} {q0}
vllm:prefix_cache_queries_total{{engine="1",model_name="smollm2"}} {q1}
vllm:prefix_cache_queries_created{{engine="0",model_name="smollm2"}} 1.7962177636775846e+09
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{engine="0",model_name="smollm2"}} {h0}
vllm:prefix_cache_hits_total{{engine="1",model_name="smollm2"}} 0.0
vllm:num_requests_running{{engine="0"}} 3
"""


class MetricsServer:
    """An OpenAI-compatible server with vLLM's prefix-cache counters: every chat completion (answered like
    the fake server) adds 100 queried and 80 hit tokens; `metrics=False` serves no /metrics at all."""

    def __init__(self, metrics: bool = True):
        self.queries, self.hits, self.requests = 1000.0, 500.0, 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body, kind="application/json"):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/metrics" and metrics:
                    self._send(200, METRICS.format(q0=owner.queries, q1=0.0, h0=owner.hits), "text/plain")
                elif self.path.startswith("/v1/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}))
                else:
                    self._send(404, "{}")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                schema = body["response_format"]["json_schema"]["schema"]
                text = json.dumps(fake_reply(body["messages"], schema))
                owner.queries += 100
                owner.hits += 80
                owner.requests += 1
                self._send(200, json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": "fake",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def persona(uid="u1", activity=2, conformity=3) -> Persona:
    return Persona(uid, activity=activity, diversity=1, conformity=conformity, n_interactions=30, n_genres_80=2,
                   rating_deviation=1.2, demographics={"gender": "F"}, taste="Loves animation.")


# --- prefix cache ----------------------------------------------------------------------------------------------


def test_prometheus_text_is_summed_over_labels():
    values = parse_prometheus(METRICS.format(q0=300.0, q1=200.0, h0=125.5))
    assert values["vllm:prefix_cache_queries_total"] == 500.0
    assert values["vllm:prefix_cache_hits_total"] == 125.5
    assert values["vllm:num_requests_running"] == 3
    assert "# TYPE" not in " ".join(values)


def test_probe_gives_the_run_share_of_the_counters_and_nulls_without_metrics():
    with MetricsServer() as server, MetricsServer(metrics=False) as bare:
        assert read_counters(server.base_url) == (1000.0, 500.0)
        assert read_counters(bare.base_url) is None
        assert read_counters("http://127.0.0.1:9/v1", timeout_s=1) is None  # nothing listening
        probe = PrefixCacheProbe([server.base_url]).start()
        server.queries += 400
        server.hits += 300
        assert probe.stop() == {"hits": 300, "queries": 400, "hit_rate": 0.75, "endpoints": 1,
                                "endpoints_measured": 1}
        # a server without counters, or none answering: nulls, never an error
        nulls = PrefixCacheProbe([bare.base_url, "http://127.0.0.1:9/v1"], timeout_s=1).start().stop()
        assert nulls == {"hits": None, "queries": None, "hit_rate": None, "endpoints": 2, "endpoints_measured": 0}
        # a replica first seen at the end counts from zero; a counter that went down counts from its restart
        probe = PrefixCacheProbe([bare.base_url]).start()
        assert probe.stop([server.base_url])["queries"] == 1400
        probe = PrefixCacheProbe([server.base_url]).start()
        server.queries, server.hits = 50.0, 10.0
        assert probe.stop()["hit_rate"] == 0.2
        # no work done: no rate (0 queries), but measured
        probe = PrefixCacheProbe([server.base_url]).start()
        assert probe.stop() == {"hits": 0, "queries": 0, "hit_rate": None, "endpoints": 1, "endpoints_measured": 1}


def test_in_process_run_writes_the_prefix_cache_hit_rate_to_stats(tmp_path):
    from alignuser_sim.config import scenario_from_dict
    from alignuser_sim.llm import LLMClient
    from alignuser_sim.simulation.runs import plan_run, run_local
    from alignuser_sim.testing.fake_llm import ScriptedLLM
    from alignuser_sim.testing.fake_users import fake_user_responder

    scenario = scenario_from_dict({"name": "pc", "seed": 3, "dataset": {"name": "ml-100k"},
                                   "population": {"size": 6, "sampling": "first"}, "recommender": {"algorithm": "pop"},
                                   "pages": {"count": 2, "items_per_page": 4}, "llm": {"cache": "off"},
                                   "output_dir": str(tmp_path)})
    with MetricsServer() as server:
        llm = LLMClient([server.base_url], cache="off")
        assert endpoint_urls(llm) == [server.base_url]
        summary = asyncio.run(run_local(plan_run(scenario, tmp_path / "run", n_shards=2), llm))
        requests = server.requests
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    cache = stats["llm"]["prefix_cache"]
    assert requests == summary["decisions"] > 0
    assert cache == {"hits": 80 * requests, "queries": 100 * requests, "hit_rate": 0.8, "endpoints": 1,
                     "endpoints_measured": 1}
    assert summary["prefix_cache_hit_rate"] == 0.8
    # a model whose endpoint has no server behind it (the scripted fake): measured nowhere, nulls, no error
    asyncio.run(run_local(plan_run(scenario, tmp_path / "run2", n_shards=1), ScriptedLLM(fake_user_responder)))
    stats = json.loads((tmp_path / "run2" / "stats.json").read_text())
    assert stats["llm"]["prefix_cache"]["hit_rate"] is None and stats["llm"]["prefix_cache"]["endpoints_measured"] == 0
    assert endpoint_urls(object()) == []


# --- the Agent4Rec-style loop ----------------------------------------------------------------------------------

PAGE = [ItemView("1", "Toy Story (1995)", ("Animation",)), ItemView("2", "Heat (1995)", ("Action",)),
        ItemView("3", "Fargo (1996)", ("Crime",))]


def test_its_regexes_read_the_free_text_reply():
    reply = ("MOVIE: Toy Story (1995); ALIGN: yes; REASON: animation\nMOVIE: Heat (1995); ALIGN: no; REASON: meh\n"
             "MOVIE: Fargo (1996); ALIGN: yes; REASON: crime\n"
             "NUM: 2; WATCH: Toy Story (1995), Fargo (1996); REASON: x;\n"
             "MOVIE: Toy Story (1995); RATING: 5; FEELING: wonderful\nMOVIE: fargo; RATING: 3; FEELING: odd")
    reaction = parse_reaction(reply, PAGE)
    assert reaction.parsed and reaction.watched == {"1": 5.0, "3": 3.0}
    prose = parse_reaction("I would watch Heat, it looks great!", PAGE)
    assert not prose.parsed and prose.watched == {}
    assert wants_exit("NEGATIVE: dull\n[EXIT]; Reason: tired") and not wants_exit("POSITIVE: ok\n[NEXT]; Reason: x")


def test_its_prompts_and_memory_follow_its_code():
    avatar = Avatar(persona(activity=1))
    reaction = avatar.reaction_messages("<- Heat (1995) -> <- History ratings: 3.9 -> <- Summary: x ->\n", 1)
    assert [m["role"] for m in reaction] == ["system", "user"]
    assert "PAGE 1\n<- Heat (1995) ->" in reaction[1]["content"]
    assert "MOVIE: [movie name]; ALIGN: [yes or no]; REASON: [brief reason]" in reaction[1]["content"]
    assert "What you remember" not in reaction[0]["content"]  # no memory yet
    assert "[EXIT]; Reason:" in avatar.next_messages(1)[1]["content"]
    reflections = []
    for i in range(9):
        avatar.remember(f"m{i}", lambda: reflections.append(1) or "satisfied because fine")
    # importance 1 per entry, a reflection once the sum passes the threshold (then reset)
    assert len(reflections) == 9 // (REFLECTION_THRESHOLD + 1)
    assert "satisfied because fine" in avatar.memory
    assert "What you remember" in avatar.reaction_messages("", 2)[0]["content"]
    # the fake server speaks its format, so the regexes find what it chose
    text = fake_text(reaction, 1000)
    assert "ALIGN:" in text and parse_reaction(text, [ItemView("9", "Heat (1995)")]).parsed


def test_agent4rec_loop_makes_its_calls_per_page_against_the_fake_server():
    from alignuser_sim.config import DatasetConfig, RecommenderConfig
    from alignuser_sim.core import Catalogue
    from alignuser_sim.data import load_dataset
    from alignuser_sim.data.personas import build_personas
    from alignuser_sim.recommenders import make_recommender

    ml100k = load_dataset(DatasetConfig(name="ml-100k"))
    users = sorted(set(ml100k.interactions["user_id"].to_pylist()))[:10]
    personas = build_personas(ml100k, users)
    recommender = make_recommender(RecommenderConfig(algorithm="pop"), seed=0).fit(ml100k.interactions, ml100k.items)
    means = item_mean_ratings(ml100k.interactions)
    assert min(means.values()) >= 1 and max(means.values()) <= 5
    pages_seen = []
    with FakeServer(latency_s=0.01, jitter=0.0) as server:
        row = agent4rec_loop(personas, Catalogue(ml100k.items), recommender, endpoint=server.base_url, model="fake",
                             page_cap=4, items_per_page=4, mean_ratings=means, pool_size=3,
                             on_page=lambda: pages_seen.append(1))
        served = server.stats()
    kinds = row["calls_by_kind"]
    assert row["agents"] == 10 and row["failures"] == 0 and served["requests"] == row["llm_requests"]
    assert served["max_in_flight"] <= 3  # the pool bounds the calls in flight
    assert 10 <= row["decisions"] == len(pages_seen) <= 40
    assert kinds["reaction"]["calls"] == kinds["next_decision"]["calls"] == row["decisions"]
    assert kinds["interview"]["calls"] == 10
    assert kinds["reflection"]["calls"] >= row["decisions"] // 2 - 10  # every second page of a session
    assert row["unparsed_pages"] == 0 and row["watched"] > 0 and 0 < row["exits"] <= 10
    costs = decision_costs(row)
    assert costs["calls_per_page"] > 2 and costs["output_tokens_per_decision"] > 0
    assert costs["calls_per_page"] == pytest.approx(row["llm_requests"] / row["decisions"], abs=0.001)


# --- decision formats ------------------------------------------------------------------------------------------


def test_formats_are_checked_and_ratios_are_to_full():
    assert parse_formats("none, full,none") == ["none", "full"]
    with pytest.raises(UserError, match="--formats: 'none,terse'"):
        parse_formats("none,terse")
    summary = {"decisions": 200, "elapsed_s": 50.0, "prompt_tokens": 50_000, "completion_tokens": 6_000}
    slow = {"decisions": 200, "elapsed_s": 200.0, "prompt_tokens": 60_000, "completion_tokens": 48_000}
    rows = with_ratios([format_row("none", summary, {"prefix_cache": {"hit_rate": 0.9}}, 80),
                        format_row("full", slow, {}, 80)])
    assert rows[0]["decisions_per_s_vs_full"] == 4.0 and rows[0]["output_tokens_per_decision"] == 30.0
    assert rows[0]["output_tokens_per_decision_vs_full"] == 0.125 and rows[0]["prefix_cache_hit_rate"] == 0.9
    assert rows[1]["decisions_per_s_vs_full"] == 1.0 and rows[1]["prefix_cache_hit_rate"] is None
    assert with_ratios([format_row("none", summary, {}, 80)])[0]["decisions_per_s_vs_full"] is None


def test_bench_formats_command_against_the_fake_server(tmp_path):
    from typer.testing import CliRunner

    from alignuser_sim.bench.formats import available_formats
    from alignuser_sim.cli import app

    fmts = ",".join(available_formats())
    with FakeServer(latency_s=0.01, jitter=0.0) as server:
        result = CliRunner().invoke(app, ["bench", "formats", "--endpoint", server.base_url, "--model", "fake",
                                          "--formats", fmts, "--agents", "6", "--pages", "2", "--warmup", "2",
                                          "--out", str(tmp_path / "formats")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "formats.json").read_text())
    assert [r["format"] for r in data["rows"]] == fmts.split(",")
    for row in data["rows"]:
        assert 6 <= row["decisions"] <= 12 and row["failures"] == 0 and row["output_tokens_per_decision"] > 0
    full = data["rows"][-1]
    assert full["format"] == "full" and full["decisions_per_s_vs_full"] == 1.0
    assert "# Decision formats" in (tmp_path / "formats.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "alignuser_sim.cli", "bench", "formats", "--formats", "tiny"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "--formats: 'tiny': give some of none, brief, full, comma-separated"]


def test_bench_agent4rec_command_on_local_ray(ray_local, tmp_path):
    from typer.testing import CliRunner

    from alignuser_sim.cli import app

    with FakeServer(latency_s=0.01, jitter=0.0) as server:
        result = CliRunner().invoke(app, ["bench", "agent4rec", "--endpoint", server.base_url, "--model", "fake",
                                          "--agents", "8", "--pages", "2", "--concurrency", "8", "--pool", "8",
                                          "--warmup", "0", "--reasoning", "full", "--out", str(tmp_path / "a4r")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "a4r.json").read_text())
    sim, a4r = data["simulation"], data["agent4rec"]
    assert data["decision_format"] == "full"
    assert sim["calls_per_page"] == 1.0 and a4r["calls_per_page"] > 2
    assert sim["agents"] == a4r["agents"] == 8 and sim["failures"] == a4r["failures"] == 0
    assert data["ratio_calls_per_page"] == pytest.approx(a4r["calls_per_page"], abs=0.01)
    assert data["ratio_agents_per_hour"] == pytest.approx(sim["agents_per_hour"] / a4r["agents_per_hour"], rel=0.01)
    assert "Agent4Rec-style calls by kind" in (tmp_path / "a4r.md").read_text()


# --- against the real vLLM server ------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_prefix_cache_rate_of_a_short_run_against_vllm(vllm_server, tmp_path):
    from alignuser_sim.api import simulate
    from alignuser_sim.config import scenario_from_dict

    scenario = scenario_from_dict({"name": "pc", "seed": 5, "dataset": {"name": "ml-100k"},
                                   "population": {"size": 4, "sampling": "first"}, "recommender": {"algorithm": "pop"},
                                   "pages": {"count": 1, "items_per_page": 4},
                                   "llm": {"endpoints": [vllm_server.base_url], "cache": "off", "concurrency": 4},
                                   "output_dir": str(tmp_path)})
    result = simulate(scenario, out=tmp_path / "run")
    cache = json.loads((tmp_path / "run" / "stats.json").read_text())["llm"]["prefix_cache"]
    assert cache["endpoints_measured"] == 1 and cache["queries"] >= result.summary["prompt_tokens"] > 0
    assert 0.0 <= cache["hit_rate"] <= 1.0 and cache["hits"] <= cache["queries"]


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_bench_formats_and_agent4rec_against_vllm(vllm_server, ray_local, tmp_path):
    """Both commands end to end on the real server, tiny: 2 agents x 1 page."""
    from typer.testing import CliRunner

    from alignuser_sim.bench.formats import available_formats
    from alignuser_sim.cli import app

    url = vllm_server.base_url
    fmts = available_formats()
    result = CliRunner().invoke(app, ["bench", "formats", "--endpoint", url, "--formats", ",".join(fmts),
                                      "--agents", "2", "--pages", "1", "--warmup", "0", "--out", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "f.json").read_text())["rows"]
    assert [r["format"] for r in rows] == list(fmts)
    assert all(r["decisions"] == 2 and r["output_tokens_per_decision"] > 0 for r in rows)
    assert all(r["prefix_cache_hit_rate"] is not None and 0 <= r["prefix_cache_hit_rate"] <= 1 for r in rows)
    result = CliRunner().invoke(app, ["bench", "agent4rec", "--endpoint", url, "--agents", "2", "--pages", "1",
                                      "--max-tokens", "120", "--warmup", "0", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "a.json").read_text())
    a4r = data["agent4rec"]
    assert a4r["decisions"] == 2 and a4r["calls_by_kind"]["interview"]["calls"] == 2
    assert a4r["calls_per_page"] >= 3 and a4r["completion_tokens"] > 0
    assert data["simulation"]["decisions"] == 2 and data["ratio_agents_per_hour"] > 0
