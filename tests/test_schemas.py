"""Reply budgets from a schema's worst case: the longest compact JSON a grammar-constrained server can write."""

import itertools
import json

from alignuser_sim.agent.decision import page_schema
from alignuser_sim.learning.world_model import Question
from alignuser_sim.llm.schemas import reply_budget, worst_case_chars


def compact(value) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def test_worst_case_is_the_longest_admitted_reply():
    labels, candidates = ["A", "B"], [f"B00000000{n}" for n in range(1, 13)]
    schema = Question(labels, candidates, ["Drama", "Science Fiction"], [1, 2], 2).schema()
    longest = {"outcomes": {label: {"next": [12, 12], "genres": [2, 2], "continues": False} for label in labels}}
    assert worst_case_chars(schema) == compact(longest)
    # every admitted reply is at most that long (candidate numbers: every pair)
    for pair in itertools.product(range(1, 13), repeat=2):
        reply = {"outcomes": {label: {"next": list(pair), "genres": [1], "continues": True} for label in labels}}
        assert compact(reply) <= worst_case_chars(schema)


def test_long_ids_grow_the_budget_and_unbounded_schemas_fall_back():
    short = page_schema(["1", "2", "3", "4"])
    long = page_schema([f"B0{i:08d}" for i in range(4)])
    assert worst_case_chars(long) > worst_case_chars(short)
    assert reply_budget(long, fallback=100) > worst_case_chars(long)  # the budget covers the worst case
    assert worst_case_chars({"type": "string"}) is None
    assert worst_case_chars({"type": "array", "items": {"type": "integer"}}) is None
    assert worst_case_chars({"type": "object", "properties": {}}) is None  # open to extra keys
    assert reply_budget({"type": "string"}, fallback=321) == 321
    assert worst_case_chars({"type": "integer", "minimum": 1, "maximum": 5}) == 1
    assert worst_case_chars({"anyOf": [{"type": "integer", "minimum": 1, "maximum": 5}, {"type": "null"}]}) == 4
