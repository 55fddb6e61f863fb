"""Counterfactual alternatives, reflection prompts and lesson extraction, with the scripted fake LLM."""

import asyncio
import re

import pyarrow.parquet as pq
import pytest

from alignuser_sim.agent.memory import load_lesson_memories
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.bench.fake_users import fake_decision
from alignuser_sim.config import scenario_from_dict
from alignuser_sim.core import Action, ItemView, NextState, State
from alignuser_sim.data.personas import Persona
from alignuser_sim.learning.inputs import prepare
from alignuser_sim.learning.learner import run_learning
from alignuser_sim.learning.reflection import Reflection, clean_lessons, reflection_messages, sample_alternatives
from alignuser_sim.learning.wording import item_lines
from alignuser_sim.testing import ScriptedLLM

pytestmark = pytest.mark.timeout(120)

VIEWS = {"1": ItemView("1", "Toy Story (1995)", ("Animation", "Comedy")),
         "2": ItemView("2", "Heat (1995)", ("Action",)),
         "3": ItemView("3", "Scream (1996)", ("Horror",)), "4": ItemView("4", "Fargo (1996)", ("Crime",))}
PERSONA = Persona("u1", activity=2, diversity=1, conformity=2, n_interactions=40, n_genres_80=3,
                  rating_deviation=0.8, taste="You love animation.")
STATE = State("u1", 3, 0, 1, history=[("9", 4.0)], page=["1", "2", "3", "4"])


def decision(watched: dict[str, int], action: str = "next_page") -> dict:
    return {"thought": "t", "action": action, "items": {
        i: {"watch": i in watched, "rating": watched.get(i), "feeling": "f"} for i in STATE.page}}


def test_alternatives_are_distinct_and_unlike_the_human():
    human = Action.of({"1": 5.0}, exit=False)
    replies = [decision({"1": 4}), decision({"2": 3}), decision({"2": 5}), decision({"2": 3}, "exit")]
    llm = ScriptedLLM(script=replies)
    agent = PersonaAgent(PERSONA, history=[("Alien", 4)])
    alts = asyncio.run(sample_alternatives(llm, agent, STATE, human, VIEWS, k=4, temperature=1.3, seed=7))
    # the human's choice (whatever its rating) and a repeat of another sample are dropped, counted
    assert alts.samples == 4 and alts.same_as_human == 1 and alts.duplicates == 1
    assert sorted(a.key for a in alts.actions) == sorted([(frozenset({"2"}), False), (frozenset({"2"}), True)])
    assert len(llm.requests) == 4 and all(r.params["temperature"] == 1.3 for r in llm.requests)
    prompt = llm.requests[0].prompt
    assert "You love animation." in prompt and "Alien (you rated 4)" in prompt and "- id 3: Scream (1996)" in prompt

    bad = ScriptedLLM(script=["not json"])
    alts = asyncio.run(sample_alternatives(bad, agent, STATE, human, VIEWS, k=2, temperature=1.0, seed=7))
    assert alts.actions == [] and alts.failures == ["invalid_json", "invalid_json"]


def test_reflection_prompt_contrasts_the_human_with_the_alternatives():
    human, alt = Action.of({"1": 5.0}, exit=False), Action.of({"3": 2.0}, exit=True)
    t_human = NextState(["5", "6"], ["Comedy"], True, ["1"], hits=2)
    t_alt = NextState(["7", "8"], ["Horror"], False, ["3"], hits=0)
    system, user = reflection_messages(PERSONA.describe(), STATE, human, t_human, [alt], [t_alt], VIEWS)
    assert "You love animation." in system["content"] and "Toy Story" not in system["content"]
    text = user["content"]
    assert "What the real person did: watched P1 (rated 5); then went on" in text  # its place on the page
    assert "P1. Toy Story (1995) (Animation, Comedy)\nP2. Heat (1995) (Action)\n" in text
    assert "(mostly Comedy; 2 watched later)" in text
    assert "- watched P3 (rated 2); then left (exit)." in text
    assert "Next visit would start with: (untitled item); (untitled item) (mostly Horror; 0 watched later)" in text
    assert "id " not in text  # items by title: ids say nothing and only lengthen the prompt
    assert text.index("You recently watched") < text.index("Recommended items")
    assert "how many of those items the person really watched later" in system["content"]  # said once


def test_reflection_prompt_says_shared_genres_once():
    views = {i: ItemView(i, f"Game {i}", ("Video Games", "PC", f"Kind {i}")) for i in STATE.page}
    human, alt = Action.of({"1": 5.0}, exit=False), Action.of({}, exit=True)
    truth = NextState(["2"], ["Video Games"], True, [], hits=0)
    _, user = reflection_messages(PERSONA.describe(), STATE, human, truth, [alt], [truth], views)
    assert "(every item: Video Games, PC)\nP1. Game 1 (Kind 1)\nP2. Game 2 (Kind 2)" in user["content"]
    assert user["content"].count("Video Games, PC") == 1


def test_clean_lessons_drops_item_specific_short_and_repeated():
    reply = Reflection.model_validate({"reasoning": "r", "mistakes": "m", "lessons": [
        {"text": "I rarely watch horror, even when it is popular.", "tag": "genre"},
        {"text": "I loved toy story so I watch it again", "tag": "other"},  # names a page title
        {"text": "ok", "tag": "other"},  # too short to be a rule
    ]})
    kept, dropped = clean_lessons(reply, list(VIEWS.values()))
    assert [x.text for x in kept] == ["I rarely watch horror, even when it is popular."] and dropped == 2
    reply.lessons = [reply.lessons[0], reply.lessons[0].model_copy(update={"text": "I rarely watch  horror, "
                                                                             "even when it is popular."})]
    kept, dropped = clean_lessons(reply, list(VIEWS.values()))
    assert len(kept) == 1 and dropped == 1  # a repeat


# --- lesson extraction end to end ---------------------------------------------------------------------

HORROR = "I rarely watch horror, even when it is popular."


def scripted_world(views: dict, broken_marker: str | None = None):
    """A fake LLM for every call of learning: page decisions, predictions, tastes, and reflections whose
    lessons repeat (to be merged), name a title (to be dropped), or are malformed for one transition."""

    def respond(req):
        name = req.output.__name__
        if name == "PageDecision":
            return fake_decision(req.messages, req.schema, exit_every=3)
        if name == "Taste":
            return {"taste": "You love thoughtful dramas and avoid gore."}
        if name == "Reflection":
            if broken_marker and broken_marker in req.prompt:
                return '{"reasoning": "cut'
            # a title from a next page the prompt shows (titles of 4 letters are not matched: "Bent")
            shown = [t for line in re.findall(r"(?:Next page|Next visit would start with): (.+?) \(mostly", req.prompt)
                     for t in line.split("; ")]
            title = next(t for t in shown if len(t) > 8 and not t.endswith("..."))
            return {"reasoning": "I watch what fits my taste.", "mistakes": "They ignore my taste.", "lessons": [
                {"text": HORROR, "tag": "genre"},
                {"text": f"I always watch {title} when I see it", "tag": "other"},
                {"text": f"I go on when a page has {len(req.prompt) % 3 + 2} dramas or more.", "tag": "exit"}]}
        return None  # a schema-valid example (the world model's prediction)

    return respond


@pytest.fixture
def small(tmp_path):
    scenario = scenario_from_dict({
        "seed": 5, "dataset": {"name": "ml-100k"}, "population": {"size": 3},
        "recommender": {"algorithm": "itemknn"},
        "learning": {"transitions_per_persona": 3, "counterfactuals_per_step": 2, "lessons_per_persona": 2,
                     "embedder": "lexical", "world_model_examples": 1},
        "output_dir": str(tmp_path),
    })
    return scenario, prepare(scenario)


def test_lessons_are_extracted_merged_capped_and_retrieved(small):
    scenario, inputs = small
    uid = inputs.users[0]
    step = inputs.sampled_steps(uid)[0]
    page = inputs.steps[uid][step].items
    marker = item_lines(page, inputs.views_for(uid), tags=True, stats=True)  # this page's block, as its user sees it
    llm = ScriptedLLM(scripted_world(inputs.views, broken_marker=marker))
    summary = asyncio.run(run_learning(inputs, llm))
    folder = scenario.learning_dir()

    reflections = pq.read_table(folder / "reflections.parquet").to_pylist()
    assert len(reflections) == 9 and summary["transitions"] == 9
    failed = [r for r in reflections if r["failure"]]
    done = [r for r in reflections if not r["failure"] and not r["skipped"]]
    # the malformed reply: a counted failure (the call and its validation retry), no lessons, no crash
    assert [(r["user_id"], r["step"]) for r in failed] == [(uid, step)]
    assert summary["failures"]["reflection:invalid_json"] == 1
    assert all(r["dropped"] == 1 for r in done)  # the title-naming lesson, every time
    assert summary["lessons_dropped"] == len(done) and summary["lessons_raw"] == 2 * len(done)

    lessons = pq.read_table(folder / "lessons.parquet").to_pylist()
    by_user = {}
    for row in lessons:
        by_user.setdefault(row["user_id"], []).append(row)
    assert set(by_user) == set(inputs.users) and summary["lessons_written"] == len(lessons)
    for user, rows in by_user.items():
        reflected = sum(1 for r in done if r["user_id"] == user)
        assert len(rows) <= 2  # the cap
        horror = [r for r in rows if r["text"] == HORROR]
        assert horror and horror[0]["support"] == reflected  # merged across the persona's reflections
        assert not any("I always watch" in r["text"] for r in rows)

    memories = load_lesson_memories(folder, inputs.users, embedder="lexical")
    assert memories[uid].retrieve("Scream (1996) Horror Thriller", 1) == [HORROR]
    assert all(len(m.retrieve("anything", 5)) == len(by_user[u]) for u, m in memories.items())
