"""End to end: `alignuser-sim eval` against the real vLLM server (SmolLM2-135M), and `alignuser-sim compare`
on Ray against the scripted fake user behind a real socket; the compare folder's resume rules."""

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from alignuser_sim.cli import app
from alignuser_sim.config import dump_scenario, load_scenario, scenario_from_dict
from alignuser_sim.evaluation.ranking import simulate_all, variant


@pytest.mark.integration
def test_eval_against_vllm(vllm_server, tmp_path):
    """2 users, ratios 1:1 and 1:3, 4 positives each, pages of at most 10: 3 page calls + 1 rating call a user."""
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: live\nseed: 2\ndataset: {name: ml-100k}\npopulation: {size: 20}\n"
        f"llm: {{endpoints: ['{vllm_server.base_url}'], model: smollm2, cache: 'off', concurrency: 4}}\n"
        "eval: {ratios: [1, 3], users: 2, bootstrap: 100}\n"
        f"output_dir: {tmp_path / 'runs'}\n")
    result = CliRunner().invoke(app, ["eval", str(path)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "live" / "eval"
    decisions = [r for r in pq.read_table(folder / "decisions.parquet").to_pylist() if r["policy"] == "prompt-only"]
    ratings = [r for r in pq.read_table(folder / "ratings.parquet").to_pylist() if r["policy"] == "prompt-only"]
    assert len(decisions) == 2 * 3 and len(ratings) == 2
    summary = json.loads((folder / "eval.json").read_text())
    llm_rows = [r for r in summary["micro"] if r["kind"] == "llm"]  # the reference policies are rows too
    assert summary["users"] == 2 and [r["ratio"] for r in llm_rows] == [1, 3] and summary["references"]
    for row in llm_rows:
        assert row["items"] + row["failed_items"] == 2 * 4 * (1 + row["ratio"])
        for metric in ("accuracy", "precision", "recall", "f1"):
            e = row[metric]
            if e["value"] is not None:  # None only when every page of the ratio failed
                assert 0 <= e["lo"] <= e["value"] <= e["hi"] <= 1
    (rating,) = [r for r in summary["ratings"] if r["kind"] == "llm"]
    assert rating["asked"] == 8 and (rating["coverage"] is None or 0 <= rating["coverage"] <= 1)
    if rating["rmse"]["value"] is not None:
        assert 0 <= rating["mae"]["value"] <= rating["rmse"]["value"] <= 4
    print("\nlive eval:", json.dumps({f"1:{r['ratio']}": {m: r[m]["value"] for m in ("accuracy", "f1")}
                                      for r in llm_rows}), "rmse", rating["rmse"]["value"])
    report = CliRunner().invoke(app, ["report", str(folder)])
    assert report.exit_code == 0, report.output
    assert (folder / "plots" / "micro_metrics.png").stat().st_size > 1000


def test_compare_on_ray(ray_local, tmp_path):
    from alignuser_sim.testing.fake_users import fake_user_server

    with fake_user_server() as server:
        path = tmp_path / "s.yaml"
        path.write_text(
            "name: cmp\nseed: 5\ndataset: {name: ml-100k}\npopulation: {size: 8}\n"
            "pages: {count: 3, items_per_page: 4}\n"
            f"llm: {{endpoints: ['{server.base_url}'], cache: 'off'}}\neval: {{bootstrap: 100, k: 10}}\n"
            f"output_dir: {tmp_path / 'runs'}\n")
        result = CliRunner().invoke(app, ["compare", str(path), "--recommenders", "random,pop,itemknn"])
        assert result.exit_code == 0, result.output
        calls = server.count
        again = CliRunner().invoke(app, ["compare", str(path), "--recommenders", "random,pop,itemknn"])
        assert again.exit_code == 0 and server.count == calls  # complete runs are not simulated again
    folder = tmp_path / "runs" / "cmp" / "compare"
    summary = json.loads((folder / "compare.json").read_text())
    assert [r["recommender"] for r in summary["rows"]] == ["random", "pop", "itemknn"]
    assert summary["simulated_users"] == 8 and len(summary["tau"]) == 8
    for name in ("random", "pop", "itemknn"):
        assert load_scenario(folder / name / "scenario.yaml").recommender.algorithm == name
    # offline: itemknn beats pop beats random on ML-100K, as `recommenders offline` reports
    ndcg = [r["ndcg@10"]["value"] for r in summary["rows"]]
    assert ndcg[0] < ndcg[1] < ndcg[2]


def test_simulate_all_keeps_resumes_and_starts(tmp_path):
    scenario = scenario_from_dict({"name": "x", "dataset": {"name": "ml-100k"}, "recommender": {"algorithm": "mf",
                                   "params": {"factors": 8}}, "output_dir": str(tmp_path)})
    for name, status in (("random", "complete"), ("pop", "running")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"run_id": name, "status": status}))
        (tmp_path / name / "scenario.yaml").write_text(dump_scenario(variant(scenario, name, ["http://old:1/v1"])))
    calls = []
    simulate_all(scenario, ["random", "pop", "mf", "itemknn"], tmp_path, lambda s, d: calls.append((s, d.name)),
                 endpoints=["http://new:2/v1"])
    assert [(s is None, d) for s, d in calls] == [(True, "pop"), (False, "mf"), (False, "itemknn")]
    assert load_scenario(tmp_path / "pop" / "scenario.yaml").llm.endpoints == ["http://new:2/v1"]
    mf, knn = calls[1][0], calls[2][0]
    assert mf.recommender.params == {"factors": 8} and knn.recommender.params == {}  # params only for its own
    assert mf.llm.endpoints == ["http://new:2/v1"] and scenario.llm.endpoints is None  # copies, not the original


def test_a_compare_folder_of_another_setup_is_refused(tmp_path):
    from alignuser_sim.errors import UserError
    from alignuser_sim.evaluation.ranking import write_plan

    scenario = scenario_from_dict({"name": "x", "dataset": {"name": "ml-100k"}, "population": {"size": 5}})
    write_plan(tmp_path, scenario, ["random", "pop"])
    write_plan(tmp_path, scenario, ["random", "pop", "mf"])  # more recommenders: fine
    bigger = scenario.model_copy(deep=True)
    bigger.population.size = 6
    with pytest.raises(UserError, match="population"):
        write_plan(tmp_path, bigger, ["random", "pop"])
