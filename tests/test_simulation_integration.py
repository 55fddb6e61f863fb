"""A short simulation on Ray against the REAL vLLM server with the embedded SmolLM2-135M."""

import json

import pyarrow.parquet as pq
import pytest

from alignuser_sim.config import scenario_from_dict

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
ray = pytest.importorskip("ray")


def test_short_run_against_vllm(vllm_server, ray_local, tmp_path):
    from actors.launch import RayRunner
    from alignuser_sim.api import simulate
    from alignuser_sim.store import RunFolder

    agents, pages = 8, 2
    scenario = scenario_from_dict({
        "seed": 11, "dataset": {"name": "ml-100k"}, "population": {"size": agents},
        "recommender": {"algorithm": "mf"}, "pages": {"count": pages, "items_per_page": 4},
        "llm": {"endpoints": [vllm_server.base_url], "model": "smollm2", "concurrency": 8, "cache": "off",
                "sampling": {"temperature": 0.7, "top_p": 1.0, "max_tokens": 800}},
        "output_dir": str(tmp_path),
    })
    result = simulate(scenario, out=tmp_path / "run", runner=RayRunner(cache_path=str(tmp_path / "cache.sqlite")))
    shards = RunFolder(result.run_dir).shards()
    rows = pq.read_table(tmp_path / "run" / "events.parquet").to_pylist()
    keys = {(r["agent_id"], r["page"]) for r in rows}
    assert len(keys) == len(rows)
    assert {r["agent_id"] for r in rows} == {u for ids in shards.values() for u in ids}
    ok = [r for r in rows if r["failure"] is None]
    assert len(ok) >= 0.8 * len(rows), [r["failure"] for r in rows]
    for r in ok:  # decisions of a real model, checked against the page
        assert len(r["items"]) == 4 and r["invalid_ids"] == 0  # the schema pins each page id once
        assert all((rating is None) or 1 <= rating <= 5 for rating in r["ratings"])
        assert r["prompt_tokens"] > 100 and r["completion_tokens"] > 10
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    # the events' tokens are the LLM client's accounting, summed over the shards
    assert stats["llm"]["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    assert stats["llm"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
    assert result.summary["decisions"] == len(rows) and result.summary["agents_done"] == agents
