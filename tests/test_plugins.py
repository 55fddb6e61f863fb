"""Plug-in recommenders: by import path and by entry point they run a short simulation; a class lacking part
of the contract, or one that does not import, is one line before the run starts; offline Recall/NDCG."""

import asyncio
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from alignuser_sim.config import RecommenderConfig, scenario_from_dict
from alignuser_sim.errors import UserError
from alignuser_sim.recommenders import make_recommender
from alignuser_sim.recommenders.plugins import ENTRY_POINT_GROUP, registered
from alignuser_sim.simulation.runs import plan_run, run_local
from alignuser_sim.testing.fake_llm import ScriptedLLM
from alignuser_sim.testing.fake_users import fake_user_responder

# a duck-typed plug-in: no base class, the contract written out (most popular unseen, like `pop`)
DUCK = '''
class TinyRecommender:
    name = "tiny"

    def __init__(self, seed=0, boost=0):
        self.seed, self.boost = seed, boost

    def fit(self, interactions, items):
        from collections import Counter
        self.counts = Counter(interactions["item_id"].to_pylist())
        self.order = [i for i, _ in self.counts.most_common()]
        self.seen = {}
        for u, i in zip(interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist()):
            self.seen.setdefault(u, set()).add(i)
        return self

    def pages(self, user_ids, k, exclude=None):
        out = {}
        for u in dict.fromkeys(user_ids):
            seen = self.seen.setdefault(u, set())
            out[u] = [i for i in self.order if i not in seen][:k]
            seen.update(out[u])
        return out

    def feedback_batch(self, batch):
        for u, watched, shown in batch:
            self.seen.setdefault(u, set()).update(shown)
        return len(batch)

    def state_dict(self):
        return {"seen": {u: sorted(s) for u, s in self.seen.items()}}

    def load_state_dict(self, state):
        self.seen = {u: set(s) for u, s in state["seen"].items()}


class Partial:
    def __init__(self, seed=0):
        pass

    def fit(self, interactions, items):
        return self

    def feedback_batch(self, batch):
        return 0
'''


@pytest.fixture
def plugin_pkg(tmp_path, monkeypatch):
    """A module and a tiny installed distribution (dist-info with entry_points.txt) on sys.path: what
    `pip install` of a package registering `tiny` leaves, without installing anything."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "tinyrec.py").write_text(DUCK)
    dist = site / "tinyrec-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyrec\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(f"""
        [{ENTRY_POINT_GROUP}]
        tiny = tinyrec:TinyRecommender
        partial = tinyrec:Partial
    """))
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("tinyrec", None)


def scenario(tmp_path, recommender, size=8, pages=2):
    return scenario_from_dict({
        "seed": 4, "dataset": {"name": "ml-100k"}, "population": {"size": size},
        "recommender": recommender, "pages": {"count": pages, "items_per_page": 4},
        "output_dir": str(tmp_path),
    })


def run(tmp_path, recommender, out="run", size=8, pages=2):
    plan = plan_run(scenario(tmp_path, recommender, size, pages), tmp_path / out, n_shards=2)
    summary = asyncio.run(run_local(plan, ScriptedLLM(fake_user_responder)))
    return summary, pq.read_table(tmp_path / out / "events.parquet").to_pylist()


def check_run(summary, rows, size, pages):
    assert summary["agents_done"] == size and summary["decisions"] == len(rows) > 0
    by_agent = {}
    for r in rows:
        by_agent.setdefault(r["agent_id"], []).append(r)
    assert len(by_agent) == size
    for events in by_agent.values():
        served = [i for e in events for i in e["items"]]
        assert len(served) == len(set(served)) and len(events) <= pages


def test_plugin_by_import_path_runs_a_short_simulation(tmp_path):
    cfg = {"algorithm": "examples.bpr_plugin:BPRRecommender", "params": {"factors": 8, "iterations": 5}}
    summary, rows = run(tmp_path, cfg)
    check_run(summary, rows, 8, 2)
    assert summary["recommender"]["algorithm"] == "bpr"


def test_plugin_by_entry_point_runs_a_short_simulation(tmp_path, plugin_pkg):
    assert registered()["tiny"] == "tinyrec:TinyRecommender"
    summary, rows = run(tmp_path, {"algorithm": "tiny", "params": {"boost": 1}})
    check_run(summary, rows, 8, 2)
    # the duck-typed class serves the most popular unseen items, as `pop` does: the same first pages
    _, pop_rows = run(tmp_path, {"algorithm": "pop"}, out="pop")
    first = {r["agent_id"]: set(r["items"]) for r in rows if r["page"] == 0}
    assert first == {r["agent_id"]: set(r["items"]) for r in pop_rows if r["page"] == 0}


def test_import_path_works_from_the_module_beside_it(tmp_path, plugin_pkg):
    summary, rows = run(tmp_path, {"algorithm": "tinyrec:TinyRecommender"})
    check_run(summary, rows, 8, 2)


def test_plugin_lacking_part_of_the_contract_is_one_line_before_the_run(tmp_path, plugin_pkg):
    with pytest.raises(UserError) as info:
        plan_run(scenario(tmp_path, {"algorithm": "partial"}), tmp_path / "run", n_shards=1)
    assert str(info.value).startswith(
        "recommender.algorithm: plug-in 'partial' lacks pages, state_dict, load_state_dict of the recommender "
        "contract")
    assert not (tmp_path / "run" / "run.json").exists()  # nothing was started


def test_abstract_subclass_names_the_method_it_did_not_write(tmp_path):
    (tmp_path / "halfrec.py").write_text(
        "from alignuser_sim.recommenders import Recommender\n\nclass Half(Recommender):\n    name = 'half'\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(UserError, match="plug-in 'halfrec:Half' lacks _fit_model of the recommender contract"):
            make_recommender(RecommenderConfig(algorithm="halfrec:Half"))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("halfrec", None)


@pytest.mark.parametrize(("algorithm", "message"), [
    ("nosuchpkg.recs:Rec",
     "recommender.algorithm: cannot import module 'nosuchpkg.recs' (No module named 'nosuchpkg')"),
    ("examples.bpr_plugin:Nope", "recommender.algorithm: module 'examples.bpr_plugin' has no 'Nope'"),
    ("examples.bpr_plugin:np", "recommender.algorithm: 'examples.bpr_plugin:np' is not a class"),
    ("svd", "recommender.algorithm: unknown recommender 'svd' (choose from random, pop, itemknn, mf, lightgcn, "
            "http"),
])
def test_a_plugin_that_cannot_be_built_is_one_line(algorithm, message):
    with pytest.raises(UserError) as info:
        make_recommender(RecommenderConfig(algorithm=algorithm))
    assert str(info.value).startswith(message)


def test_plugin_params_are_checked_at_plan_time(tmp_path, plugin_pkg):
    with pytest.raises(UserError, match=r"^recommender.params: tiny does not take these parameters"):
        plan_run(scenario(tmp_path, {"algorithm": "tiny", "params": {"speed": 3}}), tmp_path / "run", n_shards=1)
    with pytest.raises(UserError, match=r"^recommender.params.factorz: unknown parameter for bpr"):
        plan_run(scenario(tmp_path, {"algorithm": "examples.bpr_plugin:BPRRecommender",
                                     "params": {"factorz": 3}}), tmp_path / "run2", n_shards=1)


def test_scenario_form_of_a_recommender_name(tmp_path):
    from alignuser_sim.errors import ScenarioError

    for bad, key in [({"algorithm": "my recs"}, "recommender.algorithm"), ({"algorithm": "pop", "url": "http://x"},
                     "recommender.url"), ({"algorithm": "http"}, "recommender.url"),
                     ({"algorithm": "http", "url": "http://x", "params": {"a": 1}}, "recommender.params")]:
        with pytest.raises(ScenarioError, match=rf"^x.yaml: {key}: "):
            scenario_from_dict({"dataset": {"name": "ml-100k"}, "recommender": bad}, "x.yaml")
    ok = scenario_from_dict({"dataset": {"name": "ml-100k"}, "eval": {
        "recommenders": ["pop", "examples.bpr_plugin:BPRRecommender", "tiny", "http"]}})
    assert ok.eval.recommenders[1] == "examples.bpr_plugin:BPRRecommender"


def test_offline_recall_ndcg_for_plugins(plugin_pkg):
    from alignuser_sim.config import DatasetConfig
    from alignuser_sim.data import load_dataset
    from alignuser_sim.evaluation.offline import evaluate_offline

    ds = load_dataset(DatasetConfig(name="ml-100k"))
    rows = evaluate_offline(ds, ["pop", "tiny", "examples.bpr_plugin:BPRRecommender"], k_values=[10],
                            params={"examples.bpr_plugin:BPRRecommender": {"factors": 16, "iterations": 20}})
    by = {r["algorithm"]: r for r in rows}
    # tiny (duck-typed, ranked through `pages`) is popularity by interaction count: close to pop's numbers
    assert by["pop"]["recall@10"] > 0.02 and abs(by["tiny"]["recall@10"] - by["pop"]["recall@10"]) < 0.02
    assert by["examples.bpr_plugin:BPRRecommender"]["ndcg@10"] > 0.0
