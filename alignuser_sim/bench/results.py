"""Benchmark results as files: the machine they ran on, Markdown tables, JSON + Markdown pairs, the scaling plot.

Every benchmark writes `OUT.json` (all numbers, the command and the machine) and `OUT.md` (the table a
reader sees) through `write_results`, so that a later run can be compared with an earlier one.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SOURCE_NOTE = {
    "fake": "fake OpenAI-compatible server (alignuser_sim.bench.fake_server.FakeServer) standing in for a GPU vLLM "
            "server",
    "vllm": "live vLLM server",
}


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
