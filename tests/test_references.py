"""Reference policies in the micro evaluation: each policy's choice on hand-made pages, the training statistics
of a hand-made dataset counted by hand, and an ML-100K eval with a scripted LLM where the references decide
the very pages the LLM policy decided, next to it in the summary (deltas against the best of them)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import alignuser_sim as aus
from alignuser_sim.config import PagesConfig, scenario_from_dict
from alignuser_sim.data.tables import Dataset, make_interactions, make_items
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.micro import RATING_KEY, RATINGS
from alignuser_sim.evaluation.references import (
    DECISION_REFERENCES,
    RATING_REFERENCES,
    TrainingStats,
    least_popular,
    popularity,
    popularity_oracle,
    random_watch,
    training_stats,
)
from alignuser_sim.evaluation.summary import ratings_kl, summarize
from alignuser_sim.store import PartTable
from alignuser_sim.testing.fake_llm import ScriptedLLM

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluation import answer_page, page_ids, responder  # noqa: E402  (the eval tests' scripted answers)


def stats(**kw):
    base = {"watch_rate": {}, "mean_rate": 0.5, "popularity": {}, "global_mean": 3.0}
    return TrainingStats(**{**base, **kw})


# --- each reference on hand-made pages --------------------------------------------------------------------


def test_popularity_oracle_picks_the_most_popular_as_many_as_positives():
    s = stats(popularity={"x": 10, "y": 5, "z": 1})
    items = ["z", "x", "w", "y"]  # w: never interacted in training
    assert popularity_oracle(items, [True, False, False, True], s, "u", (1, 0), 0) == [False, True, False, True]
    assert popularity_oracle(items, [False, False, True, False], s, "u", (1, 0), 0) == [False, True, False, False]
    assert popularity_oracle(items, [False] * 4, s, "u", (1, 0), 0) == [False] * 4
    # popularity: round(rate x page size), halves up; the user's own rate, else the population's
    s.watch_rate = {"low": 0.25, "mid": 0.375}
    assert popularity(items, [True] * 4, s, "low", (1, 0), 0) == [False, True, False, False]
    assert popularity(items, [True] * 4, s, "mid", (1, 0), 0) == [False, True, False, True]  # 1.5 -> 2
    assert sum(popularity(items, [True] * 4, s, "new", (1, 0), 0)) == 2  # mean_rate 0.5
    assert DECISION_REFERENCES["always-watch"](items, [False] * 4, s, "u", (1, 0), 0) == [True] * 4
    # least-popular: as many as popularity takes, from the other end (never-interacted w first, ties by id)
    assert least_popular(items, [True] * 4, s, "low", (1, 0), 0) == [False, False, True, False]
    assert least_popular(items, [True] * 4, s, "mid", (1, 0), 0) == [True, False, True, False]
    assert sum(least_popular(items, [True] * 4, s, "new", (1, 0), 0)) == 2


def test_random_watches_at_the_users_rate_reproducibly():
    s = stats(watch_rate={"u": 0.3})
    items = [f"i{n}" for n in range(10)]
    pages = [random_watch(items, [False] * 10, s, "u", (1, page), 7) for page in range(300)]
    assert np.mean(pages) == pytest.approx(0.3, abs=0.03)
    assert random_watch(items, [False] * 10, s, "u", (1, 5), 7) == pages[5]  # same user, ratio, page, seed
    assert random_watch(items, [False] * 10, s, "u", (3, 5), 7) != pages[5]
    assert np.mean([random_watch(items, [False] * 10, s, "other", (1, p), 7) for p in range(300)]) == \
        pytest.approx(0.5, abs=0.03)  # no pages of their own: the population's mean rate


def tiny_dataset() -> Dataset:
    """Split given: the `test` rows are held out. c has no training row at all."""
    inter = make_interactions(
        user_id=["a", "a", "a", "b", "b", "a", "b", "c"],
        item_id=["i1", "i2", "i3", "i1", "i4", "i5", "i2", "i3"],
        rating=[5, 3, None, 3, 2, 4, 1, 5],
        split=["train"] * 5 + ["test"] * 3,
    )
    ids = [f"i{n}" for n in range(1, 21)]
    items = make_items(ids, ids, [["Drama"]] * len(ids))
    return Dataset("tiny", inter, items, pa.table({"user_id": ["a", "b", "c"]}))


def test_training_statistics_by_hand():
    s = training_stats(tiny_dataset(), ["a", "b", "c"], PagesConfig(items_per_page=4, distractor_ratio=1), 0)
    # rollout pages of 4 with 2 of the human's items: a (3 training items) pages 2/4 + 1/4, b one page 2/4
    assert s.watch_rate == {"a": pytest.approx(3 / 8), "b": pytest.approx(0.5)}
    assert s.rate("c") == pytest.approx((3 / 8 + 0.5) / 2)
    assert s.popularity == {"i1": 2, "i2": 1, "i3": 1, "i4": 1}  # held-out rows never count
    assert s.global_mean == pytest.approx(13 / 4)  # 5, 3, 3, 2 (a's i3 has no rating)
    assert s.predict("global-mean", "a", ["i1", "i9"]) == [13 / 4, 13 / 4]
    assert s.predict("item-mean", "a", ["i1", "i2", "i3", "i9"]) == [4.0, 3.0, 13 / 4, 13 / 4]
    assert s.predict("user-mean", "b", ["i1", "i9"]) == [2.5, 2.5]
    assert s.predict("user-mean", "c", ["i3"]) == [13 / 4]  # no training rating: the global mean
    # one session each (no timestamps, one split): a ran 2 pages, b 1; c none: the mean of the two
    assert s.session_pages == {"a": 2.0, "b": 1.0} and s.pages("c") == pytest.approx(1.5)
    no_ratings = tiny_dataset()
    no_ratings.interactions = no_ratings.interactions.set_column(
        2, "rating", pa.nulls(no_ratings.interactions.num_rows, pa.float32()))
    assert training_stats(no_ratings, ["a"], PagesConfig(items_per_page=4), 0).global_mean is None


def test_ratings_kl_by_hand():
    assert ratings_kl(np.array([5.0, 5, 1]), np.array([5.0, 4.6, 1.2])) == pytest.approx(0.0)  # rounded bins
    # truth all in bin 1, predictions all in bin 3: each smoothed +0.5 over 5 bins (4.5 in all)
    assert ratings_kl(np.array([1.0, 1]), np.array([3.2, 2.6])) == pytest.approx(2 * math.log(5) / 4.5)
    assert ratings_kl(np.array([1.0, 4]), np.array([np.nan, 4])) == pytest.approx(0.0)  # only items both rated
    assert ratings_kl(np.array([3.0]), np.array([np.nan])) is None


# --- in an evaluation ---------------------------------------------------------------------------------------


def make_scenario(root, **pages):
    return scenario_from_dict({
        "name": "reftest", "seed": 11, "dataset": {"name": "ml-100k"}, "population": {"size": 30},
        "pages": {"items_per_page": 4, **pages},
        "eval": {"ratios": [1, 3], "users": 4, "positives_per_user": 3, "items_per_page": 5, "bootstrap": 50},
        "llm": {"endpoints": ["http://127.0.0.1:9/v1"], "cache": "off"}, "output_dir": str(root),
    })


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    scenario = make_scenario(root)
    llm = ScriptedLLM(responder(None, rating=5))  # prompt-only watches everything, rates everything 5
    return scenario, aus.evaluate(scenario, llm=llm, out=root / "eval"), llm


def test_references_decide_the_llm_policys_pages(evaluated):
    _, result, llm = evaluated
    rows = result.decisions.to_pylist()
    pages = {}
    for r in rows:
        pages.setdefault(r["policy"], {})[(r["ratio"], r["user_id"], r["page"])] = (r["items"], r["positive"])
    assert set(pages) == {"prompt-only", *DECISION_REFERENCES}
    for name in DECISION_REFERENCES:
        assert pages[name] == pages["prompt-only"]  # the very same items on the very same pages
    references = [r for r in rows if r["policy"] != "prompt-only"]
    assert all(r["failure"] is None and r["prompt_tokens"] == r["completion_tokens"] == 0 and not r["from_cache"]
               for r in references)
    rated = {}
    for r in result.ratings.to_pylist():
        rated.setdefault(r["policy"], {})[r["user_id"]] = (r["items"], r["truth"])
    assert set(rated) == {"prompt-only", *RATING_REFERENCES} and len(rated["prompt-only"]) == 4
    assert all(rated[n] == rated["prompt-only"] for n in RATING_REFERENCES)  # the same items of the same users
    assert result.summary["llm"]["calls"] == len(llm.requests)  # references are no LLM calls


def test_summary_shows_references_and_deltas_against_the_best(evaluated):
    _, result, _ = evaluated
    s = result.summary
    assert s["policies"] == ["prompt-only", *DECISION_REFERENCES, *RATING_REFERENCES]
    assert s["references"] == [*DECISION_REFERENCES, *RATING_REFERENCES] == result.references
    micro = {(r["policy"], r["ratio"]): r for r in s["micro"]}
    for ratio in (1, 3):
        watch_all = micro[("always-watch", ratio)]
        assert watch_all["kind"] == "reference" and watch_all["recall"]["value"] == 1.0
        assert watch_all["accuracy"]["value"] == pytest.approx(1 / (1 + ratio))
        assert micro[("prompt-only", ratio)]["kind"] == "llm"
        assert all(micro[(n, ratio)]["f1"]["value"] is not None for n in ("prompt-only", *DECISION_REFERENCES))
        oracle = micro[("popularity-oracle", ratio)]
        assert oracle["watched"] == oracle["positives"]  # exactly as many as the pages hold positives
        best = max(DECISION_REFERENCES, key=lambda n: micro[(n, ratio)]["accuracy"]["value"])
        assert s["best_reference"]["decisions"][str(ratio)] == best
        (delta,) = [d for d in s["deltas"] if d["against"] == "best reference" and d["ratio"] == ratio]
        assert delta["policy"] == "prompt-only" and delta["baseline"] == best and delta["users"] == 4
        assert delta["accuracy"]["value"] == pytest.approx(micro[("prompt-only", ratio)]["accuracy"]["value"]
                                                           - micro[(best, ratio)]["accuracy"]["value"])
        assert delta["accuracy"]["lo"] <= delta["accuracy"]["value"] <= delta["accuracy"]["hi"]
    ratings = {r["policy"]: r for r in s["ratings"]}
    best_rating = min(RATING_REFERENCES, key=lambda n: ratings[n]["rmse"]["value"])
    assert s["best_reference"]["ratings"] == best_rating and ratings[best_rating]["kind"] == "reference"
    (rd,) = s["rating_deltas"]
    assert rd["against"] == "best reference" and rd["baseline"] == best_rating and rd["users"] == 4
    for m in ("rmse", "mae"):
        assert rd[m]["value"] == pytest.approx(ratings["prompt-only"][m]["value"] - ratings[best_rating][m]["value"])
    assert all(isinstance(r["kl"], float) for r in s["ratings"])
    assert json.loads(result.path.read_text()) == s  # eval.json round-trips (string ratio keys)
    from alignuser_sim.evaluation.report import build_report, find_inputs

    build_report(find_inputs(result.folder), result.folder.parent / "report")
    md = (result.folder.parent / "report" / "report.md").read_text()
    assert "| popularity-oracle | reference | 1:1 |" in md and "| prompt-only | llm | 1:1 |" in md
    assert f"| prompt-only - {best_rating} (best reference) | 4 |" in md


def test_references_resume_and_refuse_other_pages(evaluated):
    scenario, result, _ = evaluated
    from alignuser_sim.evaluation.micro import open_stores, plan_eval
    from alignuser_sim.evaluation.references import write_references

    plan = plan_eval(scenario, result.folder)
    assert write_references(plan, open_stores(result.folder)) == 0  # all stored: nothing decided again
    again = aus.evaluate(scenario, llm=ScriptedLLM(responder(None, rating=5)), out=result.folder)
    assert again.summary == result.summary
    other = make_scenario(Path(scenario.output_dir), items_per_page=6)
    with pytest.raises(UserError, match="pages"):
        aus.evaluate(other, llm=ScriptedLLM(responder(None)), out=result.folder)
    assert aus.evaluate(other, llm=ScriptedLLM(responder(None)), out=result.folder, references=False).summary


def test_a_folder_from_before_a_new_reference_gains_its_rows(tmp_path, monkeypatch):
    """least-popular came after folders were written: the next `eval` adds its rows, and no LLM call."""
    from alignuser_sim.evaluation import references

    scenario = make_scenario(tmp_path)
    with monkeypatch.context() as m:
        m.delitem(references.DECISION_REFERENCES, "least-popular")
        old = aus.evaluate(scenario, llm=ScriptedLLM(responder(None, rating=5)), out=tmp_path / "eval")
    assert "least-popular" not in old.summary["policies"]
    llm = ScriptedLLM(responder(None, rating=5))
    new = aus.evaluate(scenario, llm=llm, out=tmp_path / "eval")
    assert not llm.requests and "least-popular" in new.summary["references"]
    rows = [r for r in new.decisions.to_pylist() if r["policy"] == "least-popular"]
    assert len(rows) == len([r for r in new.decisions.to_pylist() if r["policy"] == "popularity"]) > 0
    kept = {(r["policy"], r["ratio"]): r["accuracy"] for r in old.summary["micro"]}
    assert all(kept[(r["policy"], r["ratio"])] == r["accuracy"] for r in new.summary["micro"]
               if r["policy"] != "least-popular")


def test_cli_no_references(tmp_path):
    from typer.testing import CliRunner

    from alignuser_sim.cli import app
    from alignuser_sim.testing.http_server import Reply, ScriptedServer

    def respond(body, n):
        schema = body["response_format"]["json_schema"]["schema"]
        props = schema["properties"]
        if "items" in props:
            return Reply(json.dumps(answer_page(page_ids(schema), set(page_ids(schema)))))
        return Reply(json.dumps({"ratings": {i: 3 for i in props["ratings"]["properties"]}}))

    path = tmp_path / "s.yaml"
    with ScriptedServer(respond) as server:
        path.write_text(f"name: clitest\nseed: 1\ndataset: {{name: ml-100k}}\npopulation: {{size: 5}}\n"
                        f"output_dir: {tmp_path / 'runs'}\nllm: {{endpoints: ['{server.base_url}'], cache: 'off'}}\n"
                        "eval: {ratios: [1], users: 2, bootstrap: 20}\n")
        result = CliRunner().invoke(app, ["eval", str(path), "--no-references"])
        assert result.exit_code == 0, result.output
        folder = tmp_path / "runs" / "clitest" / "eval"
        summary = json.loads((folder / "eval.json").read_text())
        assert summary["references"] == [] and summary["policies"] == ["prompt-only"]
        assert not [d for d in summary["deltas"] if d["against"] == "best reference"]
        calls = server.count
        result = CliRunner().invoke(app, ["eval", str(path)])  # the references added later, with no LLM call
        assert result.exit_code == 0, result.output
        assert server.count == calls
    summary = json.loads((folder / "eval.json").read_text())
    assert "popularity-oracle" in summary["references"] and summary["llm"]["calls"] == calls
    text = " ".join(result.output.split())
    assert "reference" in text and "prompt-only - " in text and "(best reference)" in text


def test_old_int8_rating_parts_still_read(tmp_path):
    """Folders written before predictions became float32 stored them as int8: they read, as floats."""
    old_schema = pa.schema([f if f.name != "predicted" else pa.field("predicted", pa.list_(pa.int8()), nullable=False)
                            for f in RATINGS])
    (tmp_path / "plan.json").write_text(json.dumps({"bootstrap": 0, "seed": 0, "users": ["u1"]}))
    (tmp_path / "ratings").mkdir()
    row = {"policy": "prompt-only", "user_id": "u1", "items": ["a", "b", "c"], "truth": [5.0, 1.0, 3.0],
           "predicted": [4, None, 3], "failure": None, "invalid_ids": 0, "prompt_tokens": 1, "completion_tokens": 1,
           "latency_s": 0.1, "from_cache": False}
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), tmp_path / "ratings" / "part-old-000001.parquet")
    table = PartTable(tmp_path, "ratings", RATINGS, RATING_KEY)
    loaded = table.load()
    assert loaded.schema.field("predicted").type == pa.list_(pa.float32())
    assert loaded.to_pylist()[0]["predicted"] == [4.0, None, 3.0]
    table.add({**row, "policy": "user-mean", "predicted": [3.5, 3.5, 3.5], "from_cache": False})
    table.finalize()  # old and new parts merge into one float32 table
    (rating, mean) = summarize(tmp_path)["ratings"]
    assert rating["rmse"]["value"] == pytest.approx(math.sqrt(1 / 2)) and rating["kind"] == "llm"
    assert mean["policy"] == "user-mean" and mean["mae"]["value"] == pytest.approx((1.5 + 2.5 + 0.5) / 3)
