"""The prefix-cache hit rate of a run, from the servers' own Prometheus counters.

A simulation's prompts are built static-first so that vLLM's prefix cache serves the shared part (the
system text, then each persona); whether it does is the server's business and only the server knows. vLLM
(v1 engine) counts, in tokens, the prompt tokens it looked up in the prefix cache and those it found there
(`vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total` on `GET {root}/metrics`). Read before
and after a run, the differences are the run's: hits / queries is its hit rate.

The counters are per server, not per client: another client of the same server during the run (a second
run, a benchmark) is counted too. A server without /metrics or without these counters (an OpenAI-compatible
server that is not vLLM, the benchmarks' fake server) gives nulls, never an error: the rate is a report,
and no run should fail for want of it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# vLLM names: the v1 engine's counters (the Prometheus client adds `_total`); older builds without the suffix
QUERIES = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries")
HITS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+([-+0-9.eEinfaN]+)(?:\s+\d+)?$")


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition, summed over their labels (one value per metric name)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match:
            with contextlib.suppress(ValueError):
                values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
    return values


def metrics_url(base_url: str) -> str:
    """`http://host:port/v1` -> `http://host:port/metrics` (vLLM serves /metrics at its root)."""
    return base_url.rstrip("/").removesuffix("/v1") + "/metrics"


def _first(values: dict[str, float], names: tuple[str, ...]) -> float | None:
    return next((values[n] for n in names if n in values), None)


def read_counters(base_url: str, timeout_s: float = 5.0) -> tuple[float, float] | None:
    """(queries, hits) of one server now, or None when it has no /metrics or no prefix-cache counters."""
    import httpx

    try:
        response = httpx.get(metrics_url(base_url), timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    values = parse_prometheus(response.text)
    queries, hits = _first(values, QUERIES), _first(values, HITS)
    if queries is None or hits is None:
        return None
    return queries, hits


def endpoint_urls(llm: object) -> list[str]:
    """The base URLs an LLM client sends to (`LLMClient.endpoints`); none for a model without endpoints
    (the scripted fakes)."""
    urls = []
    for endpoint in getattr(llm, "endpoints", None) or []:
        url = getattr(endpoint, "url", endpoint)
        if isinstance(url, str):
            urls.append(url)
    return urls


@dataclass
class PrefixCacheProbe:
    """Reads every endpoint's counters at `start()` and at `stop()`; `stop()` gives the run's
    `{"hits", "queries", "hit_rate", "endpoints", "endpoints_measured"}` (nulls where nothing was measured).

    An endpoint first seen at `stop()` (a vLLM replica started during the run) counts from zero, and a
    counter that went down (its server restarted) counts from its restart: both are this run's tokens."""

    urls: list[str]
    timeout_s: float = 5.0
    before: dict[str, tuple[float, float] | None] = field(default_factory=dict)

    def start(self) -> PrefixCacheProbe:
        self.before = {url: read_counters(url, self.timeout_s) for url in dict.fromkeys(self.urls)}
        return self

    def stop(self, urls: Iterable[str] | None = None) -> dict[str, Any]:
        final = list(dict.fromkeys(urls if urls is not None else self.urls))
        queries = hits = 0.0
        measured = 0
        for url in final:
            now = read_counters(url, self.timeout_s)
            if now is None:
                continue
            if url in self.before and self.before[url] is None:
                continue  # it had no counters at the start: its numbers cannot be this run's alone
            q0, h0 = self.before.get(url) or (0.0, 0.0)
            dq, dh = now[0] - q0, now[1] - h0
            if dq < 0 or dh < 0:  # restarted during the run
                dq, dh = now
            queries += dq
            hits += dh
            measured += 1
        return prefix_cache_result(hits if measured else None, queries if measured else None, len(final), measured)


def prefix_cache_result(hits: float | None, queries: float | None, endpoints: int, measured: int) -> dict[str, Any]:
    rate = round(hits / queries, 4) if hits is not None and queries else None
    return {"hits": None if hits is None else int(hits), "queries": None if queries is None else int(queries),
            "hit_rate": rate, "endpoints": endpoints, "endpoints_measured": measured}
