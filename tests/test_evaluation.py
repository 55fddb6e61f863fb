"""The micro evaluation on ML-100K with a scripted LLM: the pages it builds, metrics an oracle and a
watch-everything user must get by hand, counted failures, resume, and the CLI's one-line errors."""

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from alignuser_sim.config import scenario_from_dict
from alignuser_sim.data import load_dataset
from alignuser_sim.data.holdout import split_dataset
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.cases import MAX_RATIO, build_cases
from alignuser_sim.evaluation.micro import open_stores, pending_tasks, plan_eval, run_eval
from alignuser_sim.evaluation.summary import summarize
from alignuser_sim.testing.fake_llm import ScriptedLLM

CLI = str(Path(sys.executable).with_name("alignuser-sim"))


def make_scenario(tmp_path, **eval_cfg):
    return scenario_from_dict({
        "name": "evaltest", "seed": 11, "dataset": {"name": "ml-100k"}, "population": {"size": 30},
        "eval": {"ratios": [1, 3], "users": 4, "positives_per_user": 3, "items_per_page": 5, "bootstrap": 50,
                 **eval_cfg},
        "llm": {"endpoints": ["http://127.0.0.1:9/v1"], "cache": "off"},
        "output_dir": str(tmp_path),
    })


@pytest.fixture(scope="module")
def ml100k():
    ds = load_dataset(scenario_from_dict({"dataset": {"name": "ml-100k"}}).dataset)
    return ds, split_dataset(ds)[1]


def page_ids(schema):
    return list(schema["properties"]["items"]["properties"])


def answer_page(ids, watch):
    return {"thought": "t", "action": "next_page",
            "items": {i: {"watch": i in watch, "rating": 4 if i in watch else None, "feeling": "f"} for i in ids}}


def responder(positives_of_page=None, rating=5, fail_if=None):
    """Pages: watch the page's positives (an oracle) or everything (positives_of_page None). Ratings: `rating`."""

    def respond(request):
        props = request.schema["properties"]
        if "items" in props:
            ids = page_ids(request.schema)
            if fail_if and fail_if(ids):
                return '{"not": "a decision"}'
            watch = set(ids) if positives_of_page is None else positives_of_page[frozenset(ids)]
            return answer_page(ids, watch)
        return {"ratings": {i: rating for i in props["ratings"]["properties"]}}

    return respond


def run(plan, llm, tasks=None):
    stores = open_stores(plan.folder)
    todo = pending_tasks(plan, stores[0].keys, stores[1].keys) if tasks is None else tasks
    asyncio.run(run_eval(plan, llm, todo, stores))
    for store in stores:
        store.finalize()
    return summarize(plan.folder)


def test_pages_follow_the_protocol(ml100k):
    ds, heldout = ml100k
    users = ["1", "2", "13", "42", "100"]
    cases, skipped = build_cases(ds, heldout, users, positives_per_user=4, seed=5)
    assert skipped == 0 and [c.user_id for c in cases] == users
    inter = ds.interactions
    for case in cases:
        mine = inter.filter(pc.equal(inter["user_id"], case.user_id))
        held = set(heldout.filter(pc.equal(heldout["user_id"], case.user_id))["item_id"].to_pylist())
        assert len(case.positives) == 4 and set(case.positives) <= held
        assert len(case.negatives) == MAX_RATIO * 4 == len(set(case.negatives))
        assert not set(case.negatives) & set(mine["item_id"].to_pylist())  # never interacted, any split
        assert all(item in held for item, _ in case.rated) and len(case.rated) == 4
        for ratio in (1, 3, 9):
            pages = case.page_items(ratio, 10, seed=5)
            items = [i for page, _ in pages for i in page]
            labels = [x for _, page in pages for x in page]
            assert sorted(items) == sorted(case.positives + case.negatives[: ratio * 4])  # nested negatives
            assert sum(labels) == 4 and len(labels) == 4 * (1 + ratio)
            sizes = [len(p) for p, _ in pages]
            assert max(sizes) <= 10 and max(sizes) - min(sizes) <= 1
    # a user's case does not depend on who else is evaluated, and is reproducible
    again, _ = build_cases(ds, heldout, ["100", "2"], positives_per_user=4, seed=5)
    assert again[1] == cases[1] and again[0] == cases[4]
    other_seed, _ = build_cases(ds, heldout, ["100"], positives_per_user=4, seed=6)
    assert other_seed[0].negatives != cases[4].negatives


def test_oracle_and_watch_everything_by_hand(tmp_path):
    scenario = make_scenario(tmp_path)
    plan = plan_eval(scenario, tmp_path / "oracle")
    tasks = pending_tasks(plan, set(), set())
    positives = {frozenset(t.items): {i for i, p in zip(t.items, t.positive, strict=True) if p}
                 for t in tasks if t.ratio is not None}
    n_users = len(plan.cases)
    summary = run(plan, ScriptedLLM(responder(positives)))
    assert summary["users"] == n_users == 4
    for row in summary["micro"]:
        for metric in ("accuracy", "precision", "recall", "f1"):
            assert row[metric] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
        assert row["positives"] == 3 * n_users and row["negatives"] == 3 * n_users * row["ratio"]

    plan = plan_eval(scenario, tmp_path / "everything")
    llm = ScriptedLLM(responder(None, rating=5))
    summary = run(plan, llm)
    pages = sum(len(c.page_items(r, 5, scenario.seed)) for c in plan.cases for r in (1, 3))
    assert len(llm.requests) == pages + n_users  # one call per page, one rating call per user
    for row in summary["micro"]:
        r = row["ratio"]
        assert row["precision"]["value"] == pytest.approx(1 / (1 + r))
        assert row["accuracy"]["value"] == pytest.approx(1 / (1 + r))
        assert row["recall"]["value"] == 1.0
        assert row["f1"]["value"] == pytest.approx(2 / (2 + r))
        assert row["failed_pages"] == 0
    truth = [t for c in plan.cases for _, t in c.rated]
    (rating,) = summary["ratings"]
    assert rating["asked"] == len(truth) and rating["coverage"] == 1.0
    assert rating["rmse"]["value"] == pytest.approx(math.sqrt(sum((t - 5) ** 2 for t in truth) / len(truth)))
    assert rating["mae"]["value"] == pytest.approx(sum(abs(t - 5) for t in truth) / len(truth))
    assert rating["rmse"]["lo"] <= rating["rmse"]["value"] <= rating["rmse"]["hi"]
    # the folder's own files give the same numbers again (eval.json is never the source)
    assert summarize(plan.folder) == summary


def test_failed_calls_are_counted_and_left_out(tmp_path):
    plan = plan_eval(make_scenario(tmp_path), tmp_path / "eval")
    first = plan.cases[0]
    bad = set(first.positives)  # every page holding one of user 0's positives fails (after the retry)
    summary = run(plan, ScriptedLLM(responder(None, fail_if=lambda ids: bool(bad & set(ids)))))
    for row in summary["micro"]:
        failed = [p for p, _ in first.page_items(row["ratio"], 5, 11) if bad & set(p)]
        assert row["failed_pages"] == len(failed) > 0
        assert row["failed_items"] == sum(len(p) for p in failed)
        assert row["items"] + row["failed_items"] == 3 * 4 * (1 + row["ratio"])
        assert row["recall"]["value"] == 1.0  # the failed items are not counted as misses


def test_resume_decides_only_what_is_missing(tmp_path):
    scenario = make_scenario(tmp_path)
    whole = run(plan_eval(scenario, tmp_path / "whole"), ScriptedLLM(responder(None)))
    plan = plan_eval(scenario, tmp_path / "part")
    tasks = pending_tasks(plan, set(), set())
    stores = open_stores(plan.folder)
    asyncio.run(run_eval(plan, ScriptedLLM(responder(None)), tasks[:5], stores))  # then "killed": no finalize
    plan = plan_eval(scenario, tmp_path / "part")
    llm = ScriptedLLM(responder(None))
    resumed = run(plan, llm)
    assert len(llm.requests) == len(tasks) - 5
    for a, b in zip(whole["micro"], resumed["micro"], strict=True):
        assert {k: v for k, v in a.items() if k != "folder"} == {k: v for k, v in b.items() if k != "folder"}
    # a larger population reuses the first users' decisions
    bigger = plan_eval(make_scenario(tmp_path, users=6), tmp_path / "part")
    stores = open_stores(bigger.folder)
    assert len(pending_tasks(bigger, stores[0].keys, stores[1].keys)) == len(tasks) // 4 * 2


def test_a_folder_of_another_setup_is_refused(tmp_path):
    plan_eval(make_scenario(tmp_path), tmp_path / "eval")
    with pytest.raises(UserError, match="items_per_page|eval"):
        plan_eval(make_scenario(tmp_path, items_per_page=4), tmp_path / "eval")
    with pytest.raises(UserError, match="unknown policy"):
        plan_eval(make_scenario(tmp_path), tmp_path / "eval", policies=["best"])


def write_scenario(tmp_path, extra=""):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: clitest\nseed: 1\ndataset: {{name: ml-100k}}\npopulation: {{size: 5}}\n"
                    f"output_dir: {tmp_path / 'runs'}\n{extra}")
    return path


def test_cli_alignuser_without_learning_folder_is_one_line(tmp_path):
    proc = subprocess.run([CLI, "eval", str(write_scenario(tmp_path)), "--policies", "prompt-only,alignuser"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip() and "planning" not in x]
    assert len(lines) == 1 and "alignuser-sim learn" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs" / "clitest" / "eval" / "decisions").exists()  # nothing written


def test_cli_bad_ratio_is_one_line(tmp_path):
    proc = subprocess.run([CLI, "eval", str(write_scenario(tmp_path)), "--ratios", "1,12"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "--ratios: '1,12': each value must be between 1 and 9"


def test_eval_json_written_by_cli_path(tmp_path):
    """The CLI's own path, in process (typer's runner), against a scripted HTTP server."""
    from typer.testing import CliRunner

    from alignuser_sim.cli import app
    from alignuser_sim.testing.http_server import Reply, ScriptedServer

    def respond(body, n):
        schema = body["response_format"]["json_schema"]["schema"]
        props = schema["properties"]
        if "items" in props:
            return Reply(json.dumps(answer_page(page_ids(schema), set())))
        return Reply(json.dumps({"ratings": {i: 3 for i in props["ratings"]["properties"]}}))

    with ScriptedServer(respond) as server:
        path = write_scenario(tmp_path, f"llm: {{endpoints: ['{server.base_url}'], cache: 'off'}}\n"
                                        "eval: {ratios: [2], users: 2, bootstrap: 20}\n")
        result = CliRunner().invoke(app, ["eval", str(path)])
        assert result.exit_code == 0, result.output
        calls = server.count
        again = CliRunner().invoke(app, ["eval", str(path)])  # nothing left to do: no call, same numbers
        assert server.count == calls and again.exit_code == 0
    folder = tmp_path / "runs" / "clitest" / "eval"
    summary = json.loads((folder / "eval.json").read_text())
    (row,) = [r for r in summary["micro"] if r["kind"] == "llm"]
    assert row["ratio"] == 2 and row["recall"]["value"] == 0.0 and row["accuracy"]["value"] == pytest.approx(2 / 3)
    assert summary["references"] == ["always-watch", "random", "popularity", "popularity-oracle", "least-popular",
                                     "global-mean", "item-mean", "user-mean"]  # on by default, beside the LLM policy
    assert summary["llm"]["calls"] == calls  # the references make no call and are not counted as calls
    assert "0 LLM calls to make" in " ".join(again.output.split())
    assert json.loads((folder / "eval.json").read_text()) == summary
    assert (folder / "decisions.parquet").exists() and not list((folder / "decisions").glob("part-*"))


def test_endpoint_option_points_eval_at_a_running_server(tmp_path):
    """`--endpoint` replaces llm.endpoints (here a dead port) without a second scenario file; `/list` after a
    policy name sets policy.choice for that row; a bad URL is one line, exit code 2."""
    from typer.testing import CliRunner

    from alignuser_sim.cli import app
    from alignuser_sim.testing.http_server import Reply, ScriptedServer

    def respond(body, n):
        props = body["response_format"]["json_schema"]["schema"]["properties"]
        if "items" in props:
            return Reply(json.dumps(answer_page(page_ids(body["response_format"]["json_schema"]["schema"]), set())))
        return Reply(json.dumps({"ratings": {i: 3 for i in props["ratings"]["properties"]}}))

    path = write_scenario(tmp_path, "llm: {endpoints: ['http://127.0.0.1:9/v1'], cache: 'off', max_retries: 0}\n"
                                    "policy: {choice: score}\neval: {ratios: [1], users: 2, bootstrap: 20}\n")
    with ScriptedServer(respond) as server:
        result = CliRunner().invoke(app, ["eval", str(path), "--endpoint", server.base_url, "--policies",
                                          "prompt-only/list", "--no-references"])
        assert result.exit_code == 0, result.output
        assert server.count > 0
    summary = json.loads((tmp_path / "runs" / "clitest" / "eval" / "eval.json").read_text())
    assert [r["policy"] for r in summary["micro"]] == ["prompt-only"]
    assert summary["micro"][0]["failed_pages"] == 0
    bad = subprocess.run([CLI, "eval", str(path), "--endpoint", "localhost:8731"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert [x for x in bad.stderr.splitlines() if x.strip()] == ["--endpoint: 'localhost:8731' is not an http(s) "
                                                                 "URL"]


def test_summarize_a_hand_made_table(tmp_path):
    """Two policies, two users, one ratio; every number below is counted by hand."""
    from alignuser_sim.evaluation.micro import DECISION_KEY, DECISIONS, RATING_KEY, RATINGS
    from alignuser_sim.store import PartTable as PartStore

    (tmp_path / "plan.json").write_text(json.dumps({"bootstrap": 0, "seed": 0, "users": ["u1", "u2"]}))
    decisions = PartStore(tmp_path, "decisions", DECISIONS, DECISION_KEY)
    ratings = PartStore(tmp_path, "ratings", RATINGS, RATING_KEY)

    def page(policy, user, n, positive, watched, failure=None):
        decisions.add({"policy": policy, "ratio": 1, "user_id": user, "page": n, "items": [f"i{k}" for k in
                       range(len(positive))], "positive": positive, "watched": watched, "failure": failure,
                       "invalid_ids": 0, "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.1,
                       "from_cache": False})

    # prompt-only: u1 tp1 fp1 fn0 tn0, u2 tp0 fp0 fn1 tn1 -> pooled tp1 fp1 fn1 tn1
    page("prompt-only", "u1", 0, [True, False], [True, True])
    page("prompt-only", "u2", 0, [True, False], [False, False])
    # alignuser: u1 tp1 tn1, u2 tp1 fp1; u2's second page failed (left out, counted)
    page("alignuser", "u1", 0, [True, False], [True, False])
    page("alignuser", "u2", 0, [True, False], [True, True])
    page("alignuser", "u2", 1, [True, False], [False, False], failure="timeout")
    page("alignuser", "u3", 0, [True, False], [True, True])  # not a user of the latest run: ignored
    ratings.add({"policy": "prompt-only", "user_id": "u1", "items": ["a", "b", "c"], "truth": [5.0, 1.0, 3.0],
                 "predicted": [4, None, 3], "failure": None, "invalid_ids": 0, "prompt_tokens": 1,
                 "completion_tokens": 1, "latency_s": 0.1, "from_cache": True})
    decisions.finalize()
    ratings.finalize()
    s = summarize(tmp_path)
    assert s["policies"] == ["prompt-only", "alignuser"] and s["users"] == 2
    base, align = s["micro"]
    assert base["accuracy"]["value"] == 0.5 and base["precision"]["value"] == 0.5 and base["f1"]["value"] == 0.5
    assert align["accuracy"]["value"] == 0.75 and align["precision"]["value"] == pytest.approx(2 / 3)
    assert align["recall"]["value"] == 1.0 and align["f1"]["value"] == pytest.approx(0.8)
    assert align["failed_pages"] == 1 and align["failed_items"] == 2 and align["items"] == 4
    (delta,) = s["deltas"]
    assert delta["users"] == 2 and delta["accuracy"]["value"] == pytest.approx(0.25)
    assert delta["f1"]["value"] == pytest.approx(0.3)
    (rating,) = s["ratings"]
    assert rating["asked"] == 3 and rating["rated"] == 2 and rating["coverage"] == pytest.approx(2 / 3)
    assert rating["rmse"]["value"] == pytest.approx(math.sqrt(1 / 2)) and rating["mae"]["value"] == 0.5
    assert s["llm"]["calls"] == 6 and s["llm"]["from_cache"] == 1


def test_two_policies_on_the_same_users_and_pages(tmp_path):
    """alignuser's learning (lessons, world-model lines) reaches both its page and its rating prompts; the
    pages are the same for both policies; the summary pairs them."""
    from alignuser_sim.agent.policy import PolicySetup
    from alignuser_sim.config import PolicyConfig

    class Lessons:
        def retrieve(self, query, k):
            return ["LESSON: you skip horror"]

    class WorldModel:
        def hints(self, page, k):
            return ["HINT: watching pushes more of the same"]

    plan = plan_eval(make_scenario(tmp_path), tmp_path / "eval")
    users = [c.user_id for c in plan.cases]
    plan.policies["alignuser"] = PolicySetup(PolicyConfig(kind="alignuser"), {u: Lessons() for u in users},
                                             {u: WorldModel() for u in users})
    llm = ScriptedLLM(responder(None))
    summary = run(plan, llm)
    assert summary["policies"] == ["prompt-only", "alignuser"]
    learned = [r for r in llm.requests if "LESSON: you skip horror" in r.prompt]
    assert len(learned) == len(llm.requests) // 2 and all("HINT: watching" in r.prompt for r in learned)
    pages = {}
    for r in llm.requests:
        if "items" in r.schema["properties"]:
            pages.setdefault("LESSON" in r.prompt, []).append(sorted(page_ids(r.schema)))
    assert sorted(pages[True]) == sorted(pages[False])  # the very same pages
    assert [d["ratio"] for d in summary["deltas"]] == [1, 3] and all(d["users"] == 4 for d in summary["deltas"])
    assert all(d["f1"]["value"] == 0 for d in summary["deltas"])  # both watch everything: no difference
    from alignuser_sim.evaluation.report import build_report, find_inputs

    build_report(find_inputs(plan.folder), tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| alignuser - prompt-only | 1:3 | 4 |" in md and md.count("| prompt-only | llm | 1:") == 2


def test_new_learning_is_not_mixed_with_decisions_made_without_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    scenario = make_scenario(tmp_path)
    plan_eval(scenario, tmp_path / "eval")
    learning = scenario.learning_dir()
    learning.mkdir(parents=True)
    (learning / ".learn.lock").write_text("")  # lock files and logs do not count
    pq.write_table(pa.table({"user_id": ["x"], "taste": ["likes noir"]}), learning / "tastes.parquet")  # this does
    with pytest.raises(UserError, match="learning folder"):
        plan_eval(scenario, tmp_path / "eval")


@pytest.mark.parametrize("reasoning", ["none", "brief"])
def test_compact_formats_answer_pages_and_ratings_by_position(tmp_path, reasoning):
    """The oracle again, answering by the number each item is listed under: positions map back to the ids."""
    from alignuser_sim.agent.decision import numbered_lines
    from alignuser_sim.core import Catalogue
    from alignuser_sim.data.item_stats import agent_items

    scenario = make_scenario(tmp_path)
    scenario.policy.reasoning = reasoning
    plan = plan_eval(scenario, tmp_path / "eval")
    catalogue = Catalogue(agent_items(plan.dataset))  # as the agents see the items: with their rating stats
    tasks = pending_tasks(plan, set(), set())
    positives = {numbered_lines(catalogue.page(t.items)): [str(n) for n, p in enumerate(t.positive, 1) if p]
                 for t in tasks if t.ratio is not None}

    def respond(request):
        props, prompt = request.schema["properties"], request.messages[-1]["content"]
        thought = {"thought": "short"} if "thought" in props else {}
        assert "- id " not in prompt  # the items are listed by number only
        if "watched" in props:
            (listing,) = [text for text in positives if prompt.endswith(text)]
            return {**thought, "watched": {p: 4 for p in positives[listing]}, "exit": False}
        return {**thought, "ratings": {p: 1 + int(p) % 5 for p in props["ratings"]["properties"]}}

    llm = ScriptedLLM(respond)
    summary = run(plan, llm)
    names = {"none": ("CompactDecision", "PositionRatings"), "brief": ("BriefDecision", "BriefRatings")}[reasoning]
    assert {r.output.__name__ for r in llm.requests} == set(names)
    for row in summary["micro"]:
        for metric in ("accuracy", "precision", "recall", "f1"):
            assert row[metric]["value"] == 1.0
    stored = open_stores(plan.folder)[1].load().to_pylist()
    assert len(stored) == len(plan.cases)
    for row in stored:
        assert row["predicted"] == [1 + n % 5 for n in range(1, len(row["items"]) + 1)] and row["invalid_ids"] == 0
    # a folder evaluated in one format is refused to another (their decisions would mix)
    scenario.policy.reasoning = "full"
    with pytest.raises(UserError, match="reasoning"):
        plan_eval(scenario, tmp_path / "eval")
