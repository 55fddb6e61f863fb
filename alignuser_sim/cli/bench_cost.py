"""`alignuser-sim bench agent4rec` and `bench formats`: what a page decision costs (docs/scale.md).

- `bench agent4rec`: our simulation (the real path: Ray, coordinator, shards) and a faithful Agent4Rec-style
  loop (`alignuser_sim.bench.agent4rec`: a 500-thread pool, several free-text calls per page parsed with
  regular expressions) on the same server, model, population and recommender, one after the other in one
  command: agents/hour, LLM calls per page, prompt and output tokens per decision for both, and the ratios.
- `bench formats`: the same population simulated once per decision format (`policy.reasoning`: none, brief,
  full) on one live server, in this process: decisions/s, output and prompt tokens per decision, each as a
  ratio to `full`.

Both start the embedded vLLM server unless given `--endpoint` (on a shared machine wrap them in
`flock /tmp/alignuser-sim-vllm.lock`); results go to benchmarks/results/*.json + .md (`bench/results.py`).
These functions are registered on the `bench` group by `cli/bench.py`.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import typer

from alignuser_sim.cli.common import Bar, err, out

RESULTS = Path("benchmarks/results")

A4R_COLUMNS = [
    ("mode", "loop"), ("agents", "agents"), ("concurrency", "in flight max"), ("decisions", "pages"),
    ("llm_requests", "LLM calls"), ("calls_per_page", "calls/page"), ("failures", "failed calls"),
    ("elapsed_s", "wall s"), ("agents_per_hour", "agents/hour"), ("decisions_per_s", "pages/s"),
    ("prompt_tokens_per_decision", "prompt tok/page"), ("output_tokens_per_decision", "output tok/page"),
    ("output_tok_per_s", "output tok/s"), ("latency_p50_s", "call p50 s"),
]
FORMAT_COLUMNS = [
    ("format", "format"), ("decisions", "decisions"), ("failures", "failed"), ("elapsed_s", "wall s"),
    ("decisions_per_s", "decisions/s"), ("decisions_per_s_vs_full", "x full"),
    ("output_tokens_per_decision", "output tok/decision"), ("output_tokens_per_decision_vs_full", "x full"),
    ("prompt_tokens_per_decision", "prompt tok/decision"), ("prompt_tokens_per_decision_vs_full", "x full"),
    ("prefix_cache_hit_rate", "prefix cache hit rate"),
]


def _format_option(reasoning: str | None) -> str | None:
    """`--reasoning` checked against this build (None: the scenario default)."""
    from alignuser_sim.bench.formats import has_formats, parse_formats

    if reasoning is None:
        return None
    fmt = parse_formats(reasoning)[0]
    return fmt if has_formats() else None


# --- bench agent4rec -----------------------------------------------------------------------------------------


def agent4rec(
    endpoint: str | None = typer.Option(None, help="A running server's base URL (default: start the embedded)."),
    model: str = typer.Option("smollm2", help="Served model name."),
    agents: int = typer.Option(48, min=1, help="Population (the dataset's first users)."),
    pages: int = typer.Option(3, min=1, help="Page cap per session (Agent4Rec's max_pages)."),
    concurrency: int = typer.Option(32, min=1, help="llm.concurrency of our simulation."),
    pool: int = typer.Option(500, min=1, help="Agent4Rec-style loop threads (its default: 500)."),
    max_tokens: int = typer.Option(1000, min=1, help="Agent4Rec-style calls' max_tokens (its value: 1000)."),
    reasoning: str | None = typer.Option(None, help="Our decision format, policy.reasoning (default: the "
                                                    "scenario default)."),
    dataset: str = typer.Option("ml-100k", help="Dataset of the population."),
    warmup: int = typer.Option(8, min=0, help="Warm-up page decisions before measuring."),
    out_stem: Path = typer.Option(RESULTS / "agent4rec", "--out", help="Writes OUT.json and OUT.md."),
) -> None:
    """Our simulation against a faithful Agent4Rec-style loop on one server: agents/hour, calls and tokens
    per page."""
    from actors.bench import scale_scenario, simulate
    from actors.launch import init_ray
    from alignuser_sim.bench.agent4rec import agent4rec_loop, decision_costs, item_mean_ratings
    from alignuser_sim.bench.formats import scenario_format
    from alignuser_sim.bench.naive import rates
    from alignuser_sim.bench.results import SOURCE_NOTE, machine, markdown_table, write_results
    from alignuser_sim.cli.bench import _command, _server, _warm_up
    from alignuser_sim.core import Catalogue
    from alignuser_sim.recommenders import make_recommender

    fmt = _format_option(reasoning)
    init_ray(None, None)
    work = Path(tempfile.mkdtemp(prefix="bench-agent4rec-"))
    with _server(endpoint, work) as (url, _model_dir):
        if warmup:
            err.print(f"warm-up: {warmup} page decisions")
            _warm_up(url, model, warmup)
        scenario = scale_scenario(agents, pages, url, work, concurrency=concurrency, dataset=dataset, model=model,
                                  reasoning=fmt)
        fmt_name = scenario_format(scenario)
        err.print(f"[bold]our simulation[/bold] (policy.reasoning {fmt_name}): {agents} agents, {pages}-page cap")
        plan, sim = simulate(scenario, work / "sim", n_shards=1)
        sim["mode"] = f"alignuser-sim (Ray, {fmt_name})"
        recommender = make_recommender(scenario.recommender, seed=scenario.seed).fit(
            plan.dataset.interactions, plan.dataset.items)
        err.print(f"[bold]Agent4Rec-style loop[/bold]: {pool} threads, reaction + next decision per page, "
                  "a reflection every second page, an interview per agent")
        bar = Bar("Agent4Rec-style loop: pages")
        done, lock = 0, threading.Lock()

        def on_page() -> None:  # from the pool's threads: the bar is built on the first call, once
            nonlocal done
            with lock:
                done += 1
                bar(done, None, {})

        try:
            a4r = agent4rec_loop(plan.personas, Catalogue(plan.dataset.items), recommender, endpoint=url,
                                 model=model, page_cap=scenario.pages.count,
                                 items_per_page=scenario.pages.items_per_page,
                                 mean_ratings=item_mean_ratings(plan.dataset.interactions), pool_size=pool,
                                 max_tokens=max_tokens, on_page=on_page)
        finally:
            bar.close()
    for row in (sim, a4r):
        row.update(rates(row))
        row.update(decision_costs(row))
    result: dict[str, Any] = {
        "decision_format": fmt_name, "simulation": sim, "agent4rec": a4r,
        "ratio_agents_per_hour": _ratio(sim["agents_per_hour"], a4r["agents_per_hour"]),
        "ratio_pages_per_hour": _ratio(sim["decisions_per_hour"], a4r["decisions_per_hour"]),
        "ratio_output_tokens_per_page": _ratio(a4r["output_tokens_per_decision"], sim["output_tokens_per_decision"]),
        "ratio_calls_per_page": _ratio(a4r["calls_per_page"], sim["calls_per_page"]),
    }
    meta = {"command": _command(), "machine": machine(), "llm": f"{SOURCE_NOTE['vllm'] if not endpoint else 'server'}"
            f" {url} (model {model})", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "params": {"agents": agents, "pages": pages, "concurrency": concurrency, "pool": pool,
                       "max_tokens": max_tokens, "dataset": dataset}}
    table = markdown_table([sim, a4r], A4R_COLUMNS)
    kinds = "\n".join(f"- {kind}: {t['calls']} calls, {t['prompt_tokens']:,} prompt / {t['completion_tokens']:,} "
                      f"output tokens, {t['cut']} cut at max_tokens, {t['failures']} failed"
                      for kind, t in a4r["calls_by_kind"].items())
    ratios = "\n".join(f"- {k}: **{v}**" for k, v in result.items() if k.startswith("ratio"))
    md = (f"# Decision cost: alignuser-sim vs an Agent4Rec-style loop\n\nCommand: `{meta['command']}`\n\n"
          f"Machine: {meta['machine']}; {meta['date']}.\n\nLLM: {meta['llm']}. Same population ({agents} {dataset} "
          f"users), recommender (Pop) and page cap ({pages}); ours in policy.reasoning `{fmt_name}`.\n\n{table}\n\n"
          f"Agent4Rec-style calls by kind (pages whose reply its regexes could not read: {a4r['unparsed_pages']}):"
          f"\n{kinds}\n\nRatios (ours over Agent4Rec-style for rates, Agent4Rec-style over ours for costs):\n"
          f"{ratios}\n")
    paths = write_results(out_stem, {**meta, **result}, md)
    out.print(table)
    out.print(ratios)
    out.print(f"written: {', '.join(str(p) for p in paths)}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


# --- bench formats ---------------------------------------------------------------------------------------------


def formats(
    endpoint: str | None = typer.Option(None, help="A running server's base URL (default: start the embedded)."),
    model: str = typer.Option("smollm2", help="Served model name."),
    formats_: str = typer.Option("none,brief,full", "--formats", help="Decision formats (policy.reasoning) to "
                                                                      "run, in this order."),
    agents: int = typer.Option(100, min=1, help="Population (the dataset's first users), the same for each format."),
    pages: int = typer.Option(3, min=1, help="Page cap per session."),
    concurrency: int = typer.Option(32, min=1, help="llm.concurrency: calls in flight."),
    dataset: str = typer.Option("ml-100k", help="Dataset of the population."),
    warmup: int = typer.Option(8, min=0, help="Warm-up agents (one page each) before each format's run."),
    out_stem: Path = typer.Option(RESULTS / "formats", "--out", help="Writes OUT.json and OUT.md."),
) -> None:
    """Decisions/s, output and prompt tokens per decision of each decision format on one live server, as
    ratios to `full`."""
    from actors.bench import scale_scenario
    from alignuser_sim.api import simulate
    from alignuser_sim.bench.formats import format_row, has_formats, parse_formats, with_ratios
    from alignuser_sim.bench.results import SOURCE_NOTE, machine, markdown_table, write_results
    from alignuser_sim.cli.bench import _command, _server

    wanted = parse_formats(formats_)
    work = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    rows = []
    with _server(endpoint, work) as (url, _model_dir):
        for fmt in wanted:
            reasoning = fmt if has_formats() else None

            def scenario(n: int, cap: int, fmt: str = fmt, reasoning: str | None = reasoning) -> Any:
                return scale_scenario(n, cap, url, work / fmt, concurrency=concurrency, dataset=dataset,
                                      model=model, reasoning=reasoning)

            if warmup:
                err.print(f"[bold]{fmt}[/bold]: warm-up, {min(warmup, agents)} agents x 1 page")
                simulate(scenario(min(warmup, agents), 1), out=work / fmt / "warmup")
            bar = Bar(f"{fmt}: agents", "{task.fields[pages]} decisions", pages=0)
            try:
                result = simulate(scenario(agents, pages), out=work / fmt / "run", on_progress=bar)
            finally:
                bar.close()
            stats = json.loads((result.run_dir / "stats.json").read_text())
            row = format_row(fmt, result.summary, stats.get("llm", {}), agents)
            rows.append(row)
            err.print(f"  {row['decisions_per_s']:.3g} decisions/s, {row['output_tokens_per_decision']:.1f} output "
                      f"and {row['prompt_tokens_per_decision']:.0f} prompt tokens per decision")
    rows = with_ratios(rows)
    meta = {"command": _command(), "machine": machine(), "llm": f"{SOURCE_NOTE['vllm']} {url} (model {model})",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "params": {"agents": agents, "pages": pages, "concurrency": concurrency, "dataset": dataset,
                       "items_per_page": 4, "formats": wanted}}
    table = markdown_table(rows, FORMAT_COLUMNS)
    note = "" if has_formats() else ("\n\nThis build's scenarios have no policy.reasoning: every reply is `full`.")
    md = (f"# Decision formats on one live server\n\nCommand: `{meta['command']}`\n\nMachine: {meta['machine']}; "
          f"{meta['date']}.\n\nLLM: {meta['llm']}. {agents} {dataset} users, Pop, {pages}-page cap, 4 items a page, "
          f"{concurrency} calls in flight, in this process; formats run one after the other in the order given."
          f"{note}\n\n{table}\n")
    paths = write_results(out_stem, {**meta, "rows": rows}, md)
    out.print(table)
    out.print(f"written: {', '.join(str(p) for p in paths)}")
