"""The public Python API, driven directly as a notebook would, with the scripted fake user (no server, no Ray):
simulate -> Arrow events, evaluate -> Arrow decisions and ratings, compare, report."""

import subprocess
import sys

import pyarrow as pa
import pytest

import alignuser_sim as aus
from alignuser_sim.config import scenario_from_dict
from alignuser_sim.errors import UserError
from alignuser_sim.testing.fake_llm import ScriptedLLM
from alignuser_sim.testing.fake_users import fake_user_responder


def fake_llm():
    """Page decisions from the scripted user; the eval's rating calls answered 1..5 by the item id's length."""

    def respond(request):
        props = request.schema["properties"]
        if "ratings" in props:
            return {"ratings": {i: 1 + len(i) % 5 for i in props["ratings"]["properties"]}}
        return fake_user_responder(request)

    return ScriptedLLM(respond)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return scenario_from_dict({
        "name": "api", "seed": 6, "dataset": {"name": "ml-100k"}, "population": {"size": 8},
        "recommender": {"algorithm": "pop"}, "pages": {"count": 3, "items_per_page": 4},
        "eval": {"ratios": [1], "users": 3, "bootstrap": 20, "recommenders": ["random", "pop"]},
        "output_dir": str(tmp_path_factory.mktemp("api")),
    })


@pytest.fixture(scope="module")
def run(scenario):
    seen = []
    result = aus.simulate(scenario, llm=fake_llm(), on_progress=lambda done, total, fields: seen.append(done))
    return result, seen


def test_import_is_light_and_never_imports_ray():
    code = ("import sys, alignuser_sim as aus; aus.simulate; "
            "assert 'ray' not in sys.modules and 'alignuser_sim.simulation.runs' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_simulate_returns_the_run_with_arrow_events(scenario, run):
    result, progress = run
    assert result.run_dir.parent == scenario.run_dir() and result.run_dir.name == result.run_id
    events = result.events
    assert isinstance(events, pa.Table) and events.num_rows == result.summary["decisions"] > 0
    keys = set(zip(*(events.column(c).to_pylist() for c in ("agent_id", "session", "page")), strict=True))
    assert len(keys) == events.num_rows and len({k[0] for k in keys}) == 8
    frame = events.to_pandas()
    assert len(frame) == events.num_rows and {"agent_id", "page", "watched", "action"} <= set(frame.columns)
    assert result.stats["summary"]["decisions"] == result.summary["decisions"]
    assert progress and progress[-1] == result.summary["agents_done"] == 8


def test_simulate_resume_of_a_finished_run_makes_no_call(run):
    result, _ = run
    llm = fake_llm()
    again = aus.simulate(resume=result.run_dir, llm=llm)
    assert llm.requests == [] and again.run_id == result.run_id
    assert again.summary["decisions"] == result.summary["decisions"]


def test_simulate_needs_a_scenario_or_a_run_to_resume():
    with pytest.raises(UserError, match="one of the two"):
        aus.simulate()


def test_evaluate_returns_arrow_tables_and_resumes(scenario, tmp_path):
    result = aus.evaluate(scenario, llm=fake_llm(), out=tmp_path / "eval")
    assert isinstance(result.decisions, pa.Table) and result.decisions.num_rows > 0
    assert isinstance(result.ratings, pa.Table) and result.ratings.num_rows > 0
    (row,) = [r for r in result.summary["micro"] if r["kind"] == "llm"]
    assert row["ratio"] == 1 and row["policy"] == result.summary["micro"][0]["policy"]
    assert "popularity" in result.references and "item-mean" in result.references
    assert result.path == tmp_path / "eval" / "eval.json" and result.path.exists()
    llm = fake_llm()
    again = aus.evaluate(scenario, llm=llm, out=tmp_path / "eval")
    assert llm.requests == [] and again.summary == result.summary
    assert scenario.eval.users == 3  # the caller's scenario is never changed by a step's overrides
    fewer = aus.evaluate(scenario, llm=fake_llm(), users=2, ratings=False, out=tmp_path / "fewer")
    assert fewer.summary["users"] == 2 and scenario.eval.users == 3


def test_compare_and_report(scenario, run, tmp_path):
    result = aus.compare(scenario, llm=fake_llm(), out=tmp_path / "compare")
    assert {r["recommender"] for r in result.rows.to_pylist()} == {"random", "pop"}
    assert result.tau.num_rows > 0 and result.path.exists()
    assert all((tmp_path / "compare" / name / "events.parquet").exists() for name in ("random", "pop"))
    report = aus.report(run[0].run_dir, compare_dir=tmp_path / "compare", out=tmp_path / "report")
    assert "macro" in report.sections and report.markdown.exists() and report.html.exists()
    assert report.markdown.parent == tmp_path / "report"


def learning_llm():
    """A persona that answers every learning call: taste, page decisions (exits every other page), world-model
    predictions (the first page of candidates next, the session goes on) and reflections with one lesson."""
    from alignuser_sim.bench.fake_users import fake_decision

    def respond(req):
        name = req.output.__name__
        if name == "PageDecision":
            return fake_decision(req.messages, req.schema, exit_every=2)
        if name == "Taste":
            return {"taste": "Dramas and quiet comedies."}
        if name == "Reflection":
            return {"reasoning": "Dramas are what I come for.", "mistakes": "Popular picks.",
                    "lessons": [{"text": "Pick the drama over the blockbuster.", "tag": "genre"}]}
        outcome = req.schema["$defs"]["Outcome"]["properties"]  # a world-model prediction
        return {"outcomes": {label: {"next": list(range(1, outcome["next"]["maxItems"] + 1)), "genres": [],
                                     "continues": True} for label in req.schema["properties"]["outcomes"]["required"]}}

    return ScriptedLLM(respond)


def test_learn_writes_the_lessons_table(tmp_path):
    scenario = scenario_from_dict({
        "name": "api-learn", "seed": 5, "dataset": {"name": "ml-100k"}, "population": {"size": 3},
        "recommender": {"algorithm": "itemknn"}, "output_dir": str(tmp_path),
        "learning": {"transitions_per_persona": 2, "counterfactuals_per_step": 2, "embedder": "lexical",
                     "world_model_examples": 2},
    })
    result = aus.learn(scenario, users=2, llm=learning_llm(), folder=tmp_path / "learned")
    assert result.folder == tmp_path / "learned" and result.summary["personas"] == 2
    assert isinstance(result.lessons, pa.Table) and result.lessons.num_rows == result.summary["lessons_written"] > 0
    assert scenario.learning.folder is None  # the folder override was this call's only
