"""`alignuser-sim report` on a real short run: a simulation of 12 ML-100K users (in process, the scripted
fake user as the LLM), a micro evaluation and a 3-recommender comparison, then the report built from
their files by the CLI. The numbers in it are checked against counts made here from the same files."""

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from alignuser_sim.config import scenario_from_dict
from alignuser_sim.evaluation.micro import open_stores, pending_tasks, plan_eval, run_eval
from alignuser_sim.evaluation.ranking import offline_per_user, simulate_all, summarize_compare, write_plan
from alignuser_sim.simulation.runs import plan_run, resume_plan, run_local
from alignuser_sim.testing.fake_llm import ScriptedLLM
from alignuser_sim.testing.fake_users import fake_user_responder

CLI = str(Path(sys.executable).with_name("alignuser-sim"))


def fake_llm():
    def respond(request):
        props = request.schema["properties"]
        if "ratings" in props:  # the eval's rating call
            return {"ratings": {i: 1 + len(i) % 5 for i in props["ratings"]["properties"]}}
        return fake_user_responder(request)

    return ScriptedLLM(respond)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    scenario = scenario_from_dict({
        "name": "rep", "seed": 4, "dataset": {"name": "ml-100k"}, "population": {"size": 12},
        "recommender": {"algorithm": "pop"}, "pages": {"count": 4, "items_per_page": 4},
        "eval": {"ratios": [1, 3], "users": 4, "bootstrap": 100, "k": 10}, "output_dir": str(root),
    })
    run_dir = root / "rep" / "run1"
    asyncio.run(run_local(plan_run(scenario, run_dir, n_shards=2), fake_llm()))

    plan = plan_eval(scenario, root / "rep" / "eval")
    stores = open_stores(plan.folder)
    asyncio.run(run_eval(plan, fake_llm(), pending_tasks(plan, set(), set()), stores))
    for store in stores:
        store.finalize()

    def simulate(sub, folder):
        p = resume_plan(folder) if sub is None else plan_run(sub, folder, n_shards=1)
        asyncio.run(run_local(p, fake_llm()))

    names = ["random", "pop", "itemknn"]
    compare_dir = root / "rep" / "compare"
    write_plan(compare_dir, scenario, names)
    offline_per_user(scenario, names, compare_dir)
    simulate_all(scenario, names, compare_dir, simulate)
    proc = subprocess.run([CLI, "report", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return run_dir, compare_dir


def test_report_files_and_plots(results):
    run_dir, _ = results
    md = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    for title in ("Macro", "Discriminator", "Micro", "Recommender ranking"):
        assert f"## {title}" in md and f"<h2>{title}" in html
    pngs = sorted((run_dir / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["discriminator.png", "macro_distributions.png", "macro_genres.png",
                                      "micro_metrics.png", "ranking.png"]
    for png in pngs:
        assert f"](plots/{png.name})" in md
        with Image.open(png) as img:
            img.verify()
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200
            colors = img.convert("RGB").getcolors(maxcolors=1_000_000)
            assert colors is None or len(colors) > 20  # something was drawn, not a blank canvas
    assert html.count("src='data:image/png;base64,") == len(pngs)  # self-contained


def test_report_numbers_come_from_the_files(results):
    run_dir, compare_dir = results
    data = json.loads((run_dir / "report.json").read_text())
    events = pq.read_table(run_dir / "events.parquet").to_pylist()
    ratings = Counter(r for e in events if not e["failure"] for w, r in zip(e["watched"], e["ratings"], strict=True)
                      if w and r is not None)
    dist = data["macro"]["distributions"]["ratings"]
    assert dict(zip(dist["support"], dist["simulated"], strict=True)) == {k: ratings.get(k, 0) for k in range(1, 6)}
    watches = Counter(sum(e["watched"]) for e in events if not e["failure"])
    wpp = data["macro"]["distributions"]["watches_per_page"]
    assert {k: v for k, v in zip(wpp["support"], wpp["simulated"], strict=True) if v} == dict(watches)
    assert data["macro"]["users"] == 12
    md = (run_dir / "report.md").read_text()
    assert f"| rating | {dist['n_human']} | {dist['n_simulated']} |" in md
    assert f"{dist['kl']:.3f}" in md
    disc = data["discriminator"]  # one session per simulated user; the AUC in the table is report.json's
    assert disc["users"] == 12 and disc["sessions"]["simulated"] == len({e["agent_id"] for e in events})
    auc = disc["auc"]["logistic"]
    assert f"| logistic regression | {auc['value']:.3f} [{auc['lo']:.3f}, {auc['hi']:.3f}] |" in md
    # the ranking section is what summarize_compare computes from the compare folder now
    assert data["ranking"]["tau"] == summarize_compare(compare_dir)["tau"]
    micro = data["micro"]["micro"]
    assert [r["ratio"] for r in micro] == [1, 3] and all(r["users"] == 4 for r in micro)
    assert f"{micro[0]['f1']['value']:.3f} [{micro[0]['f1']['lo']:.3f}, {micro[0]['f1']['hi']:.3f}]" in md


def test_report_on_an_eval_folder_alone(results, tmp_path):
    run_dir, _ = results
    out = tmp_path / "r"
    proc = subprocess.run([CLI, "report", str(run_dir.parent / "eval"), "--out", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    assert "## Micro" in md and "## Macro" not in md and (out / "plots" / "micro_metrics.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["report", "/nonexistent/run"], "/nonexistent/run: no such folder"),
    (["report", "{tmp}"], "nothing to report"),
    (["report", "{run}", "--eval", "{tmp}"], "not an eval folder"),
])
def test_report_errors_are_one_line(results, tmp_path, args, message):
    run_dir, _ = results
    args = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and message in lines[0]


def test_report_on_an_unfinished_run_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "x", "status": "running", "shards": {}}))
    proc = subprocess.run([CLI, "report", str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "alignuser-sim run --resume" in proc.stderr
    assert len([x for x in proc.stderr.splitlines() if x.strip()]) == 1
