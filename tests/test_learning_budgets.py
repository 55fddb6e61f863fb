"""Learning's replies cannot outgrow their budgets, and nothing it asks or answers grows with the ids.

On an Amazon-like dataset (ten-character ASIN ids, five-level category lists as genres) 6 of 24 world-model
replies were cut at their token budget (the reply repeated every candidate id) and 18 of 33 predictions
failed. Here the same synthetic dataset is learned from twice, with ten-character and with four-character
item ids, with the scripted fake LLM: every budget covers its schema's worst case, and the world-model,
reflection and taste prompts and budgets are the same in both runs."""

import asyncio
import re

import pytest

from alignuser_sim.config import scenario_from_dict
from alignuser_sim.learning.inputs import prepare
from alignuser_sim.learning.learner import run_learning
from alignuser_sim.learning.reflection import Reflection
from alignuser_sim.learning.taste import Taste
from alignuser_sim.llm.schemas import json_schema_for, worst_case_chars
from alignuser_sim.testing import ScriptedLLM

from .longid_data import write_longid_dataset

pytestmark = pytest.mark.timeout(180)
LEARNING_CALLS = ("Prediction", "Reflection", "Taste")
ASIN = re.compile(r"B0\d{8}")


def learn(tmp_path, long_ids: bool) -> ScriptedLLM:
    dataset = write_longid_dataset(tmp_path / ("long" if long_ids else "short"), long_ids=long_ids)
    scenario = scenario_from_dict({
        "name": "amazon-like", "seed": 5, "dataset": dataset, "population": {"size": 4},
        "recommender": {"algorithm": "itemknn"},
        "learning": {"transitions_per_persona": 2, "counterfactuals_per_step": 3, "embedder": "lexical",
                     "world_model_examples": 1},
        "output_dir": str(tmp_path / ("out-long" if long_ids else "out-short")),
    })
    llm = ScriptedLLM()  # schema-valid examples: the longest replies are as possible as any
    summary = asyncio.run(run_learning(prepare(scenario), llm))
    assert summary["transitions"] == 8 and not summary["failures"]
    return llm


def by_call(llm: ScriptedLLM) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in llm.requests:
        out.setdefault(r.output.__name__, []).append(r)
    return out


def test_budgets_cover_the_worst_case_and_nothing_grows_with_ids(tmp_path):
    long, short = by_call(learn(tmp_path, True)), by_call(learn(tmp_path, False))
    assert {len(long[n]) for n in LEARNING_CALLS} and len(long["Prediction"]) == 8 and len(long["Taste"]) == 4
    assert long["Reflection"], "the policy proposed no alternative: nothing was reflected"
    for name in (*LEARNING_CALLS, "PageDecision"):
        for r in long[name]:  # no reply the schema admits can be cut at its budget
            assert worst_case_chars(r.schema) is not None, f"{name}: unbounded schema"
            assert r.params["max_tokens"] >= worst_case_chars(r.schema), name
    # the same questions, the same budgets, whatever the ids' length; and no id in any of them
    for name in LEARNING_CALLS:
        assert [r.messages for r in long[name]] == [r.messages for r in short[name]], name
        assert [r.params["max_tokens"] for r in long[name]] == [r.params["max_tokens"] for r in short[name]]
        assert [r.schema for r in long[name]] == [r.schema for r in short[name]], name
        assert not any(ASIN.search(r.prompt) for r in long[name]), name
    # world-model prompts: each genre of the five-level categories named once, in the numbered list
    for r in long["Prediction"]:
        asked = r.messages[1]["content"].split("Genres: ")[1]
        genre_list, rest = asked.split("\n", 1)
        names = [g.split(" ", 1)[1] for g in genre_list.split("; ")]
        assert "Video Games" in names and "Gaming Mice" in names and len(names) == len(set(names))
        items = [line for line in rest.splitlines() if re.match(r"^(P\d+|\d+)\. ", line)]
        assert len(items) > 4 and all(re.search(r" \[[\d,]+\]$", line) for line in items)  # genres by number
    # fixed budgets: reflection and taste from their schemas, world model from the numbers it may answer
    assert {r.params["max_tokens"] for r in long["Reflection"]} == {
        long["Reflection"][0].params["max_tokens"]} and long["Reflection"][0].params["max_tokens"] < 1000
    assert worst_case_chars(json_schema_for(Reflection)) < 900 and worst_case_chars(json_schema_for(Taste)) < 400
    assert max(r.params["max_tokens"] for r in long["Prediction"]) < 400  # was ~800 (the cap) with ASINs
