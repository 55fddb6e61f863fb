"""End to end: `alignuser-sim judge` against the real vLLM server (SmolLM2-135M) on a tiny run (simulated with
the scripted fake user, so only the judging is live): schema-constrained replies, judge.json, the report."""

import asyncio
import json

import pytest
from typer.testing import CliRunner

from alignuser_sim.cli import app
from alignuser_sim.config import scenario_from_dict
from alignuser_sim.evaluation.judge import JUDGE_DIR, JUDGE_FILE, open_table, plan_judging
from alignuser_sim.simulation.runs import plan_run, run_local
from alignuser_sim.testing.fake_llm import ScriptedLLM
from alignuser_sim.testing.fake_users import fake_user_responder


@pytest.mark.integration
def test_judge_against_vllm(vllm_server, tmp_path):
    scenario = scenario_from_dict({
        "name": "judged", "seed": 5, "dataset": {"name": "ml-100k"}, "population": {"size": 4},
        "recommender": {"algorithm": "pop"}, "pages": {"count": 2, "items_per_page": 4},
        "llm": {"model": "smollm2", "cache": "off", "concurrency": 4},
        "judge": {"endpoints": [vllm_server.base_url], "sessions": 3}, "output_dir": str(tmp_path),
    })
    run_dir = tmp_path / "run"
    asyncio.run(run_local(plan_run(scenario, run_dir, n_shards=1), ScriptedLLM(fake_user_responder)))
    tasks = plan_judging(run_dir).tasks
    result = CliRunner().invoke(app, ["judge", str(run_dir), "--bootstrap", "100"])
    assert result.exit_code == 0, result.output

    summary = json.loads((run_dir / JUDGE_FILE).read_text())
    failed, like = summary["failed"], summary["likeness"]
    assert summary["judged_users"] == 3 and not summary["missing"]  # every call answered (valid or not)
    for side in ("simulated", "human"):
        assert like["sessions"][side] + failed.get(f"likeness {side}", 0) == 3
        if like[side]["value"] is not None:
            assert 1 <= like[side]["lo"] <= like[side]["value"] <= like[side]["hi"] <= 5
    consistency = summary["consistency"]
    n = sum(t.kind == "consistency" for t in tasks)
    assert n > 0 and consistency["decisions"] + failed.get("consistency simulated", 0) == n
    rows = open_table(run_dir / JUDGE_DIR).read().to_pylist()
    valid = [r for r in rows if r["failure"] is None]
    assert len(rows) == len(tasks) and valid  # the small model answers the constrained schema
    assert all(isinstance(r["reason"], str) and len(r["reason"]) <= 200 for r in valid)
    print("\nlive judge:", json.dumps({"simulated": like["simulated"]["value"], "human": like["human"]["value"],
                                       "consistency": consistency["share"]["value"], "failed": failed}))
    report = CliRunner().invoke(app, ["report", str(run_dir)])
    assert report.exit_code == 0, report.output
    assert "## Judge: human-likeness" in (run_dir / "report.md").read_text()
