"""`alignuser-sim bench ...`: the scale benchmarks (docs/scale.md).

- `bench scale`: the scaling curve (100 .. 10,000+ agents) of the real Ray simulation against the fake fast
  server (`alignuser_sim.bench.fake_server.FakeServer`, a stand-in for a GPU vLLM server): decisions/s, LLM calls/s,
  output tokens/s, call latency p50/p99, CPU and memory per agent; JSON, Markdown and a PNG plot.
- `bench live`: against a live vLLM server (the embedded one by default: wrap it in
  `flock /tmp/alignuser-sim-vllm.lock` on a shared machine): the simulation's output tokens/s as a ratio of
  vLLM's own serving benchmark at the same concurrency and prompt/output lengths, and the simulation
  against the naive loop (Agent4Rec's thread pool) on the same endpoint and population.
- `bench naive`: the simulation against the naive loop on the fake server, at a scale the CPU model cannot
  reach. It shares our one-call-per-page design, so it measures only concurrency.
- `bench agent4rec`, `bench formats` (in `cli/bench_cost.py`): what a decision costs, against a faithful
  Agent4Rec-style loop and per decision format.

Heavy imports (Ray, vLLM, matplotlib) happen inside the commands; Ray only through `actors/` (`actors.bench`,
`actors.launch.init_ray`).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from alignuser_sim.errors import UserError
from alignuser_sim.store import VLLM_LOG

if TYPE_CHECKING:
    from alignuser_sim.simulation.runs import RunPlan

app = typer.Typer(help="Benchmarks: scaling curve, live vLLM ratio, naive loop, Agent4Rec-style loop, decision "
                       "formats.", no_args_is_help=True,
                  add_completion=False)
err = Console(stderr=True)
out = Console()
RESULTS = Path("benchmarks/results")

SCALE_COLUMNS = [
    ("agents", "agents"), ("shards", "shards"), ("concurrency", "in flight max"), ("decisions", "decisions"),
    ("llm_requests", "LLM calls"), ("elapsed_s", "loop s"), ("decisions_per_s", "decisions/s"),
    ("calls_per_s", "LLM calls/s"), ("output_tok_per_s", "output tok/s"), ("latency_p50_s", "latency p50 s"),
    ("latency_p99_s", "latency p99 s"), ("cpu_ms_per_agent", "CPU ms/agent"),
    ("cpu_ms_per_decision", "CPU ms/decision"), ("rss_kb_per_agent", "shard RSS KB/agent"),
    ("rss_mb_shards", "shard RSS MB"), ("server_cpu_s", "fake server CPU s"),
]
COMPARE_COLUMNS = [
    ("mode", "run"), ("agents", "agents"), ("concurrency", "in flight max"), ("decisions", "decisions"),
    ("failures", "failed"), ("elapsed_s", "wall s"), ("decisions_per_s", "decisions/s"),
    ("output_tok_per_s", "output tok/s"), ("agents_per_hour", "agents/hour"),
    ("latency_p50_s", "latency p50 s"), ("latency_p99_s", "latency p99 s"),
]


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what}: '{text}' is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise UserError(f"{what}: give positive integers, e.g. 100,1000,10000")
    return values


def _command() -> str:
    return "alignuser-sim " + " ".join(sys.argv[1:])


# --- bench scale --------------------------------------------------------------------------------------------


@app.command("scale")
def scale(
    agents: str = typer.Option("100,1000,10000", help="Population sizes, comma-separated."),
    pages: int = typer.Option(3, min=1, help="Page cap per session."),
    latency: float = typer.Option(1.0, min=0.0, help="Fake server: median seconds per LLM call."),
    jitter: float = typer.Option(0.5, min=0.0, help="Fake server: log-normal sigma of the latency."),
    concurrency: int = typer.Option(32, min=1, help="llm.concurrency: calls in flight per shard."),
    dataset: str = typer.Option("steam", help="Dataset of the population (steam has 25,458 users)."),
    num_cpus: int | None = typer.Option(None, help="CPUs of the local Ray cluster (default: all)."),
    out_stem: Path = typer.Option(RESULTS / "scale", "--out", help="Writes OUT.json, OUT.md and OUT.png."),
) -> None:
    """The scaling curve of the Ray simulation against the fake fast LLM server."""
    from actors.bench import scale_scenario, simulate
    from actors.launch import init_ray
    from alignuser_sim.bench.fake_server import FakeServer
    from alignuser_sim.bench.results import SOURCE_NOTE, machine, markdown_table, plot_scaling, write_results

    sizes = _ints(agents, "--agents")
    init_ray(None, num_cpus)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as work:
        for i, n in enumerate(sizes):
            err.print(f"[bold]{n:,} agents[/bold] against the fake server (latency {latency:g} s, jitter {jitter:g})")
            with FakeServer(latency_s=latency, jitter=jitter) as server:
                scenario = scale_scenario(n, pages, server.base_url, Path(work), concurrency=concurrency,
                                          dataset=dataset, model="fake")
                _, row = simulate(scenario, Path(work) / f"run-{i}-{n}", server_pid=server.pid)
                row["server_requests"] = server.stats()["requests"]
            row["server_cpu_s"] = row["cpu_by_process"].get("llm_server")
            row["source"] = "fake"
            rows.append(row)
            err.print(f"  {row['decisions_per_s']:.1f} decisions/s, {row['calls_per_s']:.1f} calls/s, "
                      f"p50 {row['latency_p50_s']:.2f} s, {row['cpu_ms_per_agent']:.1f} CPU ms/agent, "
                      f"{row['rss_kb_per_agent']:.1f} KB/agent")
    meta = {"command": _command(), "machine": machine(), "llm": SOURCE_NOTE["fake"],
            "params": {"pages": pages, "latency_s": latency, "jitter": jitter, "concurrency_per_shard": concurrency,
                       "dataset": dataset}, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    table = markdown_table(rows, SCALE_COLUMNS)
    title = f"alignuser-sim on Ray vs fake server ({latency:g} s median, sigma {jitter:g}); {meta['machine']}"
    png = plot_scaling(rows, out_stem.with_suffix(".png"), title)
    md = (f"# Scaling curve\n\nCommand: `{meta['command']}`\n\nMachine: {meta['machine']}; {meta['date']}.\n\n"
          f"LLM: {meta['llm']}, median latency {latency:g} s, log-normal sigma {jitter:g}; llm.concurrency "
          f"{concurrency} per shard; {dataset} users, Pop, {pages}-page cap, 4 items a page.\n\n{table}\n\n"
          f"Plot: `{png.name}`.\n")
    paths = write_results(out_stem, {**meta, "rows": rows}, md)
    out.print(table)
    out.print(f"written: {', '.join(str(p) for p in (*paths, png))}")


# --- bench live -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _server(endpoint: str | None, log_dir: Path) -> Iterator[tuple[str, str | None]]:
    """(base URL, the model folder for the tokenizer or None): the given endpoint, or the embedded server."""
    if endpoint:
        yield endpoint, None
        return
    from alignuser_sim.llm.launcher import VLLMServer

    err.print("starting the embedded vLLM server (on a shared machine run this under "
              "`flock /tmp/alignuser-sim-vllm.lock`) ...")
    with VLLMServer(served_model_name="smollm2", log_path=log_dir / VLLM_LOG) as server:
        err.print(f"vLLM ready in {server.start_seconds:.0f} s at {server.base_url}")
        yield server.base_url, server.model


def _prefix_tokens(tokenizer: str | None) -> int:
    """Tokens of the system prompt every page decision starts with (shared, so the server's prefix cache
    serves it): the serving benchmark's shared prefix."""
    if not tokenizer:
        return 0
    from transformers import AutoTokenizer

    from alignuser_sim.agent.persona_agent import SYSTEM_PROMPT

    return len(AutoTokenizer.from_pretrained(tokenizer).encode(SYSTEM_PROMPT))


def _warm_up(endpoint: str, model: str, n: int) -> None:
    """A few page decisions first: a server's first requests pay one-time costs (grammar compilation)."""
    import asyncio

    from alignuser_sim.bench.pages import page_call
    from alignuser_sim.llm import LLMClient

    async def go() -> None:
        client = LLMClient([endpoint], model=model, cache="off", concurrency=n, timeout_s=900)
        try:
            calls = [page_call(i, tag="warm") for i in range(n)]
            await asyncio.gather(*(client.call(messages, output) for messages, output in calls))
        finally:
            await client.aclose()

    asyncio.run(go())


def _naive(plan: RunPlan, endpoint: str, model: str, pool: int) -> dict[str, Any]:
    from rich.progress import Progress

    from alignuser_sim.bench.naive import naive_loop, rates
    from alignuser_sim.core import Catalogue
    from alignuser_sim.recommenders import make_recommender

    scenario = plan.scenario
    recommender = make_recommender(scenario.recommender, seed=scenario.seed).fit(
        plan.dataset.interactions, plan.dataset.items)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(f"naive loop ({pool} threads)", total=None)
        row = naive_loop(
            plan.personas, Catalogue(plan.dataset.items), recommender, endpoint=endpoint, model=model,
            sampling=scenario.llm.sampling.model_dump(), page_cap=scenario.pages.count,
            items_per_page=scenario.pages.items_per_page, pool_size=pool, seed=scenario.seed,
            on_decision=lambda: bar.advance(task))
    row["concurrency"] = min(pool, plan.agents)
    row.update(rates(row))
    return row


@app.command("live")
def live(
    endpoint: str | None = typer.Option(None, help="A running vLLM server's base URL (default: start the embedded)."),
    tokenizer: str | None = typer.Option(None, help="Tokenizer folder for `vllm bench serve` (default: the "
                                                    "embedded model's)."),
    model: str = typer.Option("smollm2", help="Served model name."),
    agents: int = typer.Option(96, min=1, help="Population (ML-100K's first users)."),
    pages: int = typer.Option(2, min=1, help="Page cap per session."),
    concurrency: int = typer.Option(32, min=1, help="Calls in flight (the simulation's and vLLM bench's)."),
    naive_pool: int = typer.Option(500, min=1, help="Naive loop threads (Agent4Rec's default: 500)."),
    skip_naive: bool = typer.Option(False, help="Skip the naive loop."),
    skip_vllm_bench: bool = typer.Option(False, help="Skip vLLM's own serving benchmark."),
    warmup: int = typer.Option(8, min=0, help="Warm-up page decisions before measuring."),
    out_stem: Path = typer.Option(RESULTS / "scale-live", "--out", help="Writes OUT.json and OUT.md."),
) -> None:
    """The simulation against vLLM's own serving benchmark and the naive loop, on one live server."""
    from actors.bench import scale_scenario, simulate
    from actors.launch import init_ray
    from alignuser_sim.bench.results import SOURCE_NOTE, machine, markdown_table, write_results
    from alignuser_sim.bench.vllm_bench import vllm_serving_benchmark

    init_ray(None, None)
    work = Path(tempfile.mkdtemp(prefix="bench-live-"))
    with _server(endpoint, work) as (url, model_dir):
        tokenizer = tokenizer or model_dir
        if tokenizer is None and not skip_vllm_bench:
            from alignuser_sim.llm import model_prep

            if not model_prep.is_prepared():
                raise UserError("--tokenizer: needed for vllm bench serve against an external endpoint")
            tokenizer = str(model_prep.model_dir())
        if warmup:
            err.print(f"warm-up: {warmup} page decisions")
            _warm_up(url, model, warmup)
        scenario = scale_scenario(agents, pages, url, work, concurrency=concurrency, dataset="ml-100k", model=model)
        err.print(f"[bold]simulation[/bold]: {agents} agents, {concurrency} calls in flight at most")
        plan, sim = simulate(scenario, work / "sim", n_shards=1)
        sim["mode"] = "simulation (Ray, pipelined)"
        rows, result = [sim], {"simulation": sim}
        requests = max(1, sim["llm_requests"])
        prompt_len = round(sim["prompt_tokens"] / requests)
        output_len = max(1, round(sim["completion_tokens"] / requests))
        if not skip_vllm_bench:
            prefix = min(_prefix_tokens(tokenizer), prompt_len - 1)
            err.print(f"[bold]vllm bench serve[/bold]: {requests} prompts of {prompt_len} tokens ({prefix} shared), "
                      f"{output_len} output tokens, max concurrency {min(concurrency, agents)}")
            sampling = scenario.llm.sampling
            bench = vllm_serving_benchmark(
                url, model=model, tokenizer=tokenizer, concurrency=min(concurrency, agents), num_prompts=requests,
                input_len=prompt_len - prefix, output_len=output_len, prefix_len=prefix,
                temperature=sampling.temperature, top_p=sampling.top_p, result_dir=work / "vllm-bench")
            result["vllm_bench_serve"] = bench
            result["ratio_sim_to_vllm_bench"] = round(sim["output_tok_per_s"] / bench["output_throughput"], 3)
            rows.append({"mode": "vllm bench serve (random, --ignore-eos)", "agents": None,
                         "concurrency": min(concurrency, agents), "decisions": bench["completed"], "failures":
                         bench["num_prompts"] - bench["completed"] if "num_prompts" in bench else None,
                         "elapsed_s": round(bench["duration"], 2),
                         "decisions_per_s": round(bench["request_throughput"], 3),
                         "output_tok_per_s": round(bench["output_throughput"], 2),
                         "latency_p50_s": round(bench.get("p50_e2el_ms", bench.get("median_e2el_ms", 0)) / 1000, 2),
                         "latency_p99_s": round(bench.get("p99_e2el_ms", 0) / 1000, 2)})
        if not skip_naive:
            err.print(f"[bold]naive loop[/bold]: {naive_pool} threads, one blocking call per agent-page")
            naive = _naive(plan, url, model, naive_pool)
            result["naive"] = naive
            result["ratio_sim_to_naive_agents_per_hour"] = round(sim["agents_per_hour"] / naive["agents_per_hour"], 3)
            result["ratio_sim_to_naive_decisions_per_hour"] = round(
                sim["decisions_per_hour"] / naive["decisions_per_hour"], 3)
            rows.append(naive)
    meta = {"command": _command(), "machine": machine(), "llm": f"{SOURCE_NOTE['vllm']} {url} (model {model})",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "lengths": {"prompt_tokens_mean": prompt_len, "output_tokens_mean": output_len}}
    table = markdown_table(rows, COMPARE_COLUMNS)
    ratios = "\n".join(f"- {k}: **{v}**" for k, v in result.items() if k.startswith("ratio"))
    md = (f"# Live vLLM: simulation vs vLLM's serving benchmark vs the naive loop\n\nCommand: `{meta['command']}`"
          f"\n\nMachine: {meta['machine']}; {meta['date']}.\n\nLLM: {meta['llm']}. Mean prompt {prompt_len} tokens, "
          f"mean output {output_len} tokens per call (the simulation's, given to vllm bench serve).\n\n{table}\n\n"
          f"{ratios}\n")
    paths = write_results(out_stem, {**meta, **result}, md)
    out.print(table)
    out.print(ratios)
    out.print(f"written: {', '.join(str(p) for p in paths)}")


# --- bench naive ----------------------------------------------------------------------------------------------


@app.command("naive")
def naive(
    agents: int = typer.Option(2000, min=1, help="Population (the dataset's first users)."),
    pages: int = typer.Option(3, min=1, help="Page cap per session."),
    latency: float = typer.Option(1.0, min=0.0, help="Fake server: median seconds per LLM call."),
    jitter: float = typer.Option(0.5, min=0.0, help="Fake server: log-normal sigma of the latency."),
    concurrency: int = typer.Option(256, min=1, help="llm.concurrency per shard of the simulation."),
    naive_pool: int = typer.Option(500, min=1, help="Naive loop threads (Agent4Rec's default: 500)."),
    dataset: str = typer.Option("steam", help="Dataset of the population."),
    out_stem: Path = typer.Option(RESULTS / "scale-naive", "--out", help="Writes OUT.json and OUT.md."),
) -> None:
    """The simulation against the naive loop on the fake fast server (same population, same server)."""
    from actors.bench import scale_scenario, simulate
    from actors.launch import init_ray
    from alignuser_sim.bench.fake_server import FakeServer
    from alignuser_sim.bench.results import SOURCE_NOTE, machine, markdown_table, write_results

    init_ray(None, None)
    work = Path(tempfile.mkdtemp(prefix="bench-naive-"))
    with FakeServer(latency_s=latency, jitter=jitter) as server:
        scenario = scale_scenario(agents, pages, server.base_url, work, concurrency=concurrency, dataset=dataset,
                                  model="fake")
        err.print(f"[bold]simulation[/bold]: {agents:,} agents")
        plan, sim = simulate(scenario, work / "sim", server_pid=server.pid)
        sim["mode"] = "simulation (Ray, pipelined)"
    with FakeServer(latency_s=latency, jitter=jitter) as server:  # a fresh server: same seed, same latencies
        err.print(f"[bold]naive loop[/bold]: {naive_pool} threads")
        naive_row = _naive(plan, server.base_url, "fake", naive_pool)
    result = {"simulation": sim, "naive": naive_row,
              "ratio_sim_to_naive_agents_per_hour": round(sim["agents_per_hour"] / naive_row["agents_per_hour"], 3),
              "ratio_sim_to_naive_decisions_per_hour": round(
                  sim["decisions_per_hour"] / naive_row["decisions_per_hour"], 3)}
    meta = {"command": _command(), "machine": machine(), "llm": SOURCE_NOTE["fake"],
            "params": {"latency_s": latency, "jitter": jitter, "pages": pages, "dataset": dataset},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    table = markdown_table([sim, naive_row], COMPARE_COLUMNS)
    ratios = "\n".join(f"- {k}: **{v}**" for k, v in result.items() if k.startswith("ratio"))
    md = (f"# Simulation vs the naive loop on the fake server\n\nCommand: `{meta['command']}`\n\nMachine: "
          f"{meta['machine']}; {meta['date']}.\n\nLLM: {meta['llm']}, median latency {latency:g} s, sigma {jitter:g}."
          f"\n\n{table}\n\n{ratios}\n")
    paths = write_results(out_stem, {**meta, **result}, md)
    out.print(table)
    out.print(ratios)
    out.print(f"written: {', '.join(str(p) for p in paths)}")


# --- bench agent4rec, bench formats (cli/bench_cost.py) ----------------------------------------------------------

from alignuser_sim.cli.bench_cost import agent4rec, formats  # noqa: E402  (they import this module's helpers lazily)

app.command("agent4rec")(agent4rec)
app.command("formats")(formats)
