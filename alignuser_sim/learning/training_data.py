"""The examples AlignUSER's two training stages learn from, built from the TRAINING split only.

- Stage 1, world modeling (`world_model_examples`): next-state prediction. For every human training page
  (state + the human's action) and every counterfactual action learning sampled around it (`learn`'s
  journal), the reply is the TRUE next state from the recommender fitted on the training split, in the
  exact numbered format the world-model prompt asks for.
- Stage 2, counterfactual alignment (`policy_examples`): the persona agent's own prompt for every human
  training page, the reply the human's decision in the scenario's decision format. Where learning reflected
  on the page, the reflection's first-person reasoning is the thought; elsewhere a format with a thought gets
  a plain one that states what the human did (never invented taste).
- With `policy.choice: score` a page is as many examples as it has items, each the scoring agent's yes/no
  question with the human's answer (`item_examples`).
- Stage 2 also learns the questions the evaluation asks (`judgment_examples`), on TRAINING items: pages of
  the user's training-split items among items the user never touched, at the evaluation's ratios and page
  size, and the rating call on the user's rated training items. Without them the adapter learns the rollout
  pages' shape (how many items a 4-item page holds) and answers an 8- or 10-item page by count, not taste.

No held-out data reaches an example: rollouts, the recommender and the item statistics are built from the
training split (`learning/inputs.prepare`), distractors are items the user never rated at all, and a world-
model example's true next page is the recommender's ranking with the user's held-out items taken out (a
recommender trained on the past may well rank them next), and an example whose random candidates would name one
is dropped and counted. Each example keeps the item ids it shows so a test
can prove it (`SFTExample.items`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel

from alignuser_sim.agent.decision import FULL, Decision, DecisionFormat, clip_thought, decision_format, positions
from alignuser_sim.agent.item_scoring import ScoringAgent, answer_word
from alignuser_sim.agent.persona_agent import PersonaAgent
from alignuser_sim.agent.policy import PolicySetup
from alignuser_sim.agent.rating import RatingFormat, rating_messages
from alignuser_sim.core import MOVIES, PURPOSE_EXPORT_PAGES, Action, Domain, ItemView, NextState, user_rng
from alignuser_sim.data.personas import Persona
from alignuser_sim.data.taste_probes import UserCase
from alignuser_sim.learning.inputs import LearningInputs
from alignuser_sim.learning.journal import Journal
from alignuser_sim.learning.world_model import Question, candidate_items, dominant_genres, prediction_messages

WORLD_MODEL = "world_model"
POLICY = "policy"
JUDGMENT = "judgment"  # stage 2 too: the evaluation's questions on training items
STAGES = (WORLD_MODEL, POLICY)


@dataclass
class SFTExample:
    """One supervised example: a prompt (system + user) and the reply the model should give."""

    stage: str
    user_id: str
    step: int
    messages: list[dict[str, str]]
    reply: str
    items: set[str] = field(default_factory=set)  # every item id the prompt or the reply shows

    def chat(self) -> dict[str, Any]:
        """OpenAI fine-tuning's / TRL's "messages" format."""
        return {"messages": [*self.messages, {"role": "assistant", "content": self.reply}]}

    def prompt_completion(self) -> dict[str, Any]:
        """TRL's conversational prompt-completion format: the loss falls on the completion only."""
        return {"prompt": self.messages, "completion": [{"role": "assistant", "content": self.reply}]}


def rating_of(value: float | None) -> int | None:
    if value is None:
        return None
    rating = int(round(value))
    return rating if 1 <= rating <= 5 else None


def human_decision(page: list[ItemView], action: Action, thought: str, fmt: DecisionFormat = FULL) -> BaseModel:
    """The human's action on a page as the reply the persona agent is asked for, in its decision format (no
    feelings: the human data has none; the thought cut to the format's length, dropped where it has none)."""
    decision = Decision(ratings={i: rating_of(r) for i, r in action.watched}, feelings={},
                        thought=clip_thought(thought, fmt.thought_max) if fmt.thought_max else None,
                        action="exit" if action.exit else "next_page")
    return fmt.to_reply(decision, page)


def plain_thought(page: list[ItemView], action: Action) -> str:
    """What the human did, said in the first person, for a format with a thought where no reflection wrote
    one: it states the choice, so it always agrees with the action."""
    titles = {v.item_id: v.title for v in page}
    picked = [titles.get(i, i) for i in action.watched_ids]
    text = ("I pick " + ", ".join(picked[:3]) + ("" if len(picked) <= 3 else " and more") + ".") if picked else (
        "Nothing here is for me.")
    return text + (" I am done for now." if action.exit else "")


def _pages(inputs: LearningInputs, uid: str, max_pages: int | None, seed: int) -> list[int]:
    steps = list(range(len(inputs.steps[uid])))
    if max_pages is not None and len(steps) > max_pages:
        rng = user_rng(seed, uid, PURPOSE_EXPORT_PAGES)
        steps = sorted(int(s) for s in rng.choice(len(steps), size=max_pages, replace=False))
    return steps


def _without(truth: NextState, hidden: set[str], k: int, views: Mapping[str, ItemView]) -> NextState:
    """The next state as the recommender serves it once the user's held-out items are taken out of its ranking
    (the next-ranked items move up): a recommender fitted on the past ranks them high, and the example must
    not name them."""
    ranked = [i for i in [*truth.items, *truth.near] if i not in hidden]
    items = ranked[:k]
    return replace(truth, items=items, near=ranked[k:], genres=dominant_genres([views[i] for i in items if i in views]))


def world_model_examples(inputs: LearningInputs, journal: Journal | None, personas: dict[str, Persona],
                         heldout: dict[str, set[str]] | None = None, max_pages: int | None = None,
                         domain: Domain = MOVIES) -> tuple[list[SFTExample], int]:
    """Stage 1's examples and how many were dropped because they would show a held-out item of their user."""
    scenario, k = inputs.scenario, inputs.k
    heldout = heldout or {}
    out: list[SFTExample] = []
    dropped = 0
    for uid in inputs.users:
        views = inputs.views_for(uid)  # the user's own interactions out of the stats, as the evaluation shows items
        text = personas[uid].describe(domain)
        pairs: list[tuple[int, Action, NextState | None]] = [
            (s, inputs.human_action(uid, s), None) for s in _pages(inputs, uid, max_pages, scenario.seed)]
        if journal is not None:
            for s in range(len(inputs.steps[uid])):
                record = journal.get("counterfactuals", uid, s)
                if record is not None:
                    pairs += [(s, Action.from_dict(a), NextState.from_dict(t))
                              for a, t in zip(record["actions"][1:], record["truths"][1:], strict=True)]
        hidden = heldout.get(uid, set())
        for s, action, truth in pairs:
            state = inputs.state(uid, s)
            truth = truth if truth is not None and truth.near else inputs.truth(state, action, near=k)
            if hidden & (set(truth.items) | set(truth.near)):
                truth = _without(truth, hidden, k, views)
            candidates = candidate_items([truth], state, k, inputs.catalogue_ids, scenario.seed)
            shown = set(state.page) | set(candidates) | {i for i, _ in state.history[-inputs.history_size:]}
            if shown & hidden:
                dropped += 1
                continue
            question = Question.build(state, 1, candidates, k, views)  # the numbered lists learning asks with
            messages = prediction_messages(text, state, [action], question, views, history_size=inputs.history_size,
                                           domain=domain)
            out.append(SFTExample(WORLD_MODEL, uid, s, messages, question.answer([truth]).model_dump_json(), shown))
    return out, dropped


def policy_examples(inputs: LearningInputs, journal: Journal | None, personas: dict[str, Persona],
                    max_pages: int | None = None, reflected_only: bool = False,
                    domain: Domain = MOVIES, setup: PolicySetup | None = None) -> list[SFTExample]:
    """Stage 2's examples: every training page (or only the reflected ones), the human's decision as reply.
    `setup`: the policy whose prompts the examples are written in (its lessons and world-model lines, its
    decision format); None: the scenario's decision format and the persona alone."""
    scenario = inputs.scenario
    fmt = decision_format(setup.config.reasoning if setup else scenario.policy.reasoning)
    reasoning: dict[tuple[str, int], str] = {}
    if journal is not None:
        for record in journal.of_kind("reflection"):
            if record.get("reasoning"):
                reasoning[(record["user_id"], int(record["step"]))] = record["reasoning"]
    out: list[SFTExample] = []
    for uid in inputs.users:
        views = inputs.views_for(uid)
        steps: Iterable[int] = (sorted(s for u, s in reasoning if u == uid and s < len(inputs.steps[uid]))
                                if reflected_only else _pages(inputs, uid, max_pages, scenario.seed))
        for s in steps:
            state = inputs.state(uid, s)
            recent = state.history[-inputs.history_size:] if inputs.history_size else []
            history = [(views[i].title if i in views else i, rating_of(r)) for i, r in recent]
            if setup is not None:
                agent = setup.agent(personas[uid], seed=scenario.seed, history=history,
                                    history_size=inputs.history_size)
            else:
                agent = PersonaAgent(personas[uid], seed=scenario.seed, history=history,
                                     history_size=inputs.history_size, decision_format=fmt, domain=domain)
            page = [views.get(i) or ItemView(i, f"item {i}") for i in state.page]
            action = inputs.human_action(uid, s)
            shown = set(state.page) | {i for i, _ in recent}
            if isinstance(agent, ScoringAgent):
                out += item_examples(POLICY, uid, s, agent, page, set(action.watched_ids), shown)
                continue
            thought = reasoning.get((uid, s)) or plain_thought(page, action)
            reply = human_decision(page, action, thought, fmt).model_dump_json()
            out.append(SFTExample(POLICY, uid, s, agent.messages(state.page_no, page), reply, shown))
    return out


def item_examples(stage: str, uid: str, step: int, agent: ScoringAgent, page: list[ItemView], watched: set[str],
                  shown: set[str]) -> list[SFTExample]:
    """`policy.choice: score`: one yes/no example per item of the page, in the scoring agent's own question
    (`agent/item_scoring.py`). Every reply token is the choice: a page-list reply spends a handful of its
    ~600 tokens on which items, the rest on a prompt the loss does not see."""
    return [SFTExample(stage, uid, step, agent.item_messages(item), answer_word(item.item_id in watched), shown)
            for item in page]


def rating_reply(fmt: RatingFormat, items: list[ItemView], truths: list[float]) -> BaseModel:
    """The human's ratings as the rating call's reply in its format (a brief format's thought names the
    favourite: it states the ratings, so it always agrees with them)."""
    keys = positions(len(items)) if fmt.by_position else [v.item_id for v in items]
    ratings = {k: min(5, max(1, int(round(r)))) for k, r in zip(keys, truths, strict=True)}
    fields: dict[str, Any] = {"ratings": ratings}
    if "thought" in fmt.reply.model_fields:
        best = max(range(len(items)), key=lambda i: truths[i])
        fields["thought"] = clip_thought(f"I liked {items[best].title} the most.", 80)
    return fmt.reply(**fields)


def judgment_examples(cases: list[UserCase], agents: dict[str, PersonaAgent],
                      views_for: Callable[[str], Mapping[str, ItemView]],
                      ratios: list[int], items_per_page: int, seed: int, ratings: dict[str, dict[str, float]],
                      fmt: DecisionFormat, rating_fmt: RatingFormat) -> list[SFTExample]:
    """The evaluation's questions on training items (see the module docstring): every ratio's pages of each
    case (`UserCase.page_items`, as the evaluation cuts them) with the human's positives as the watched items,
    and one rating call on the case's rated items. `cases` come from the TRAINING split; the agents are built
    as the evaluated policy builds them (history off, the policy's lessons and world-model lines)."""
    out: list[SFTExample] = []
    for case in cases:
        agent = agents[case.user_id]
        views = views_for(case.user_id)  # the user's own training ratings out of the stats (inputs.views_for)
        known = ratings.get(case.user_id, {})
        for ratio in ratios:
            for page_no, (ids, labels) in enumerate(case.page_items(ratio, items_per_page, seed)):
                page = [views.get(i) or ItemView(i, f"item {i}") for i in ids]
                if isinstance(agent, ScoringAgent):
                    out += item_examples(JUDGMENT, case.user_id, page_no, agent, page,
                                         {i for i, pos in zip(ids, labels, strict=True) if pos}, set(ids))
                    continue
                action = Action(tuple((i, known.get(i)) for i, pos in zip(ids, labels, strict=True) if pos), False)
                thought = plain_thought(page, action)
                reply = human_decision(page, action, thought, fmt).model_dump_json()
                out.append(SFTExample(JUDGMENT, case.user_id, page_no, agent.messages(page_no, page), reply, set(ids)))
        if case.rated:
            items = [views.get(i) or ItemView(i, f"item {i}") for i, _ in case.rated]
            reply = rating_reply(rating_fmt, items, [r for _, r in case.rated]).model_dump_json()
            out.append(SFTExample(JUDGMENT, case.user_id, -1, rating_messages(agent, items, rating_fmt), reply,
                                  {i for i, _ in case.rated}))
    return out
