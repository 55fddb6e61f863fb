"""The domain's words (`core.Domain`, `dataset.domain`): a games scenario's prompts say player / play / games
and never viewer / watch in their prose (JSON keys stay `watch` / `watched`); the movie domain's prompts are
the ones every earlier run asked (completion caches and fine-tuning data keep working)."""

import re

import pytest

from alignuser_sim.agent.decision import FORMATS, FULL, ROLE
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.agent.world_hints import hint_text
from alignuser_sim.config import scenario_from_dict
from alignuser_sim.core import DOMAINS, MOVIES, Action, ItemView, NextState, State
from alignuser_sim.data.domain import dataset_domain
from alignuser_sim.data.loaders import _fingerprint, _loader
from alignuser_sim.data.personas import Persona
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.micro import RATING_FORMATS, rating_messages
from alignuser_sim.learning.reflection import reflection_messages
from alignuser_sim.learning.taste import taste_messages
from alignuser_sim.learning.world_model import Example, Question, prediction_messages

GAMES = DOMAINS["games"]
PERSONA = Persona("u1", activity=1, diversity=3, conformity=2, n_interactions=12, n_genres_80=5,
                  rating_deviation=0.4, taste="You like strategy.")
PAGE = [ItemView("1", "Portal", ("Puzzle",), avg_rating=4.6, n_ratings=1200), ItemView("2", "Doom", ("Action",))]
VIEWS = {v.item_id: v for v in [*PAGE, ItemView("3", "Tetris", ("Puzzle",)), ItemView("4", "Myst", ("Adventure",))]}
STATE = State("u1", 2, 0, 1, history=[("3", 4.0)], page=["1", "2"], future=frozenset({"4"}))
HUMAN, OTHER = Action.of({"1": 5.0}, False), Action.of({}, True)
TRUTH = NextState(["3", "4"], ["Puzzle"], True, ["1"], 1, [])

# the movie domain's format instructions, as every run before `dataset.domain` asked them
MOVIE_INSTRUCTIONS = {
    "full": "For every item on the page give: watch (true or false), your rating from 1 to 5 if you watch it (null "
            "if you do not), and a short feeling. Then choose the action: next_page to see more items, or exit to "
            "leave. Answer with JSON only, in plain ASCII without emoji. Keep the thought under 30 words and each "
            "feeling under 12 words.",
    "brief": "The items are numbered. First `thought`: one short sentence (under 15 words, plain ASCII) on what you "
             "pick and why. Then `watched` maps the number of each item you watch to your rating from 1 (hated it) "
             "to 5 (loved it); leave out the items you skip. `exit` is true to leave, false to see the next page. "
             'Answer with JSON only, e.g. {"thought":"Nothing here for me.","watched":{},"exit":true} or '
             '{"thought":"Two films I like.","watched":{"1":2,"3":5},"exit":false}.',
    "none": "The items are numbered. `watched` maps the number of each item you watch to your rating from 1 (hated "
            "it) to 5 (loved it); leave out the items you skip. `exit` is true to leave, false to see the next page. "
            'Answer with JSON only, e.g. {"watched":{},"exit":false} or {"watched":{"1":2,"3":5},"exit":true}.',
}
# the JSON keys, which every domain keeps: what remains after them is prose
KEYS = re.compile(r'`watched`|"watched"|\bwatch \(true if you')


def prose(text: str) -> str:
    return KEYS.sub("", text).lower()


def movie_free(text: str) -> bool:
    words = prose(text)
    return not any(w in words for w in ("watch", "viewer", "film", "movie"))


def games_scenario(**dataset):
    return scenario_from_dict({"name": "g", "dataset": {"name": "ml-100k", "domain": "games", **dataset},
                               "policy": {"reasoning": "full"}})


def test_domain_by_dataset_and_by_scenario():
    def domain(**cfg):
        return dataset_domain(scenario_from_dict({"dataset": cfg}).dataset)

    assert domain(name="ml-100k") is MOVIES and domain(name="ml-1m-agent4rec") is MOVIES
    assert domain(name="amazon-books").name == "books" and domain(name="steam").name == "games"
    assert domain(name="generic", interactions="x.csv").name == "items"
    assert domain(name="steam", domain="products").consumed == "bought"
    custom = domain(name="generic", interactions="x.csv", domain={
        "item": "course", "items": "courses", "consume": "take", "consumed": "took", "consumes": "takes",
        "consuming": "taking", "user": "learner"})
    assert (custom.user, custom.consumed, custom.spoken_items) == ("learner", "took", "courses")
    with pytest.raises(UserError, match="domain"):
        scenario_from_dict({"dataset": {"name": "ml-100k", "domain": "podcasts"}})


def test_games_persona_and_system_prompt_speak_of_players():
    setup = PolicySetup.for_scenario(games_scenario(), ["u1"])
    assert setup.domain is GAMES and setup.subset(["u1"]).domain is GAMES  # shipped to the shards with the setup
    agent = setup.agent(PERSONA, seed=1)
    agent.observe(agent.decision_format.to_decision(
        agent.decision_format.reply.model_validate({"thought": "t", "action": "next_page", "items": {
            "1": {"watch": True, "rating": 5, "feeling": "f"}, "2": {"watch": False, "rating": None, "feeling": "f"}}}),
        PAGE), PAGE)
    system, user = (m["content"] for m in agent.messages(0, PAGE))
    assert "You are an occasional player who plays widely across genres." in system
    assert "You recently played: Portal (you rated 5)" in user
    assert "if you play it" in system and "watch (true if you play it, else false)" in system  # the key, explained
    assert movie_free(system) and movie_free(user)
    for fmt in FORMATS.values():
        text = fmt.system_for(GAMES)
        assert movie_free(text) and " play" in text
        assert '"watched"' in text or "watch (" in text  # the JSON keys are the same in every domain
    assert "Two games I like." in FORMATS["brief"].system_for(GAMES)


def test_games_learning_and_rating_prompts_speak_of_playing():
    text = PERSONA.describe(GAMES)
    reflection = reflection_messages(text, STATE, HUMAN, TRUTH, [OTHER], [TRUTH], VIEWS, domain=GAMES)
    question = Question.build(STATE, 2, ["3", "4"], 2, VIEWS)
    world = prediction_messages(text, STATE, [HUMAN, OTHER], question, VIEWS, [Example(STATE, HUMAN, TRUTH)],
                                domain=GAMES)
    taste = taste_messages(PERSONA, [VIEWS["1"]], [VIEWS["2"]], GAMES)
    for messages in (reflection, world, taste):
        assert all(movie_free(m["content"]) for m in messages)
    assert "played P1 (rated 5)" in reflection[1]["content"] and "1 played later" in reflection[1]["content"]
    assert "P1. Portal (Puzzle) - rated 4.6/5 by 1,200 users" in reflection[1]["content"]  # the page as it was shown
    assert "playing an item brings similar items up" in world[0]["content"]
    assert hint_text(HUMAN, TRUTH, VIEWS, human=True, domain=GAMES).startswith("After you played 'Portal'")
    agent = PersonaAgent(PERSONA, decision_format=FULL, domain=GAMES)
    for fmt in RATING_FORMATS.values():
        system, user = (m["content"] for m in rating_messages(agent, PAGE, fmt))
        assert "You played each item listed below" in system and user.startswith("Items you played:")
        assert movie_free(system) and movie_free(user)


def test_movie_prompts_are_unchanged():
    for name, fmt in FORMATS.items():
        assert fmt.system == fmt.system_for(MOVIES) == ROLE + MOVIE_INSTRUCTIONS[name]
    assert PERSONA.describe() == PERSONA.describe(MOVIES) == (
        "You are an occasional viewer who watches widely across genres.\nYou sometimes depart from the crowd's "
        "average.\nYour taste: You like strategy.")
    setup = PolicySetup.for_scenario(scenario_from_dict({"name": "m", "dataset": {"name": "ml-100k"}}), ["u1"])
    agent = setup.agent(PERSONA)
    assert agent.domain is MOVIES
    assert agent.messages(0, PAGE)[0]["content"].startswith(agent.decision_format.system)
    system, user = (m["content"] for m in rating_messages(agent, PAGE[1:], RATING_FORMATS["full"]))
    assert system.startswith(RATING_FORMATS["full"].system) and user.startswith("Items you watched:\n- id 2: Doom")
    assert STATE.recent(VIEWS, 5) == "You recently watched: Tetris (rated 4)."


def test_the_domain_is_not_part_of_the_dataset_cache_key():
    base = scenario_from_dict({"dataset": {"name": "ml-100k"}}).dataset
    module = _loader("ml-100k")
    assert _fingerprint(base, [], module) == _fingerprint(games_scenario().dataset, [], module)
