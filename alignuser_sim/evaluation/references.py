"""Reference policies for the micro evaluation: what an evaluation without any LLM gets on the same pages.

A fidelity number means little alone: on ML-1M a popularity ranking that knows how many positives a page
holds reaches 0.826 accuracy at 1:1, the published AlignUSER number, without a model. So every eval folder
also holds these references, decided on exactly the users and pages (`UserCase.page_items`) the LLM
policies saw, stored in the same decisions and ratings tables under their own policy labels (failure None,
tokens 0), so `summary.py` and the report treat them as policies and pair them user by user.

Everything a reference knows comes from the TRAINING split (`data/training_stats.py`, shared with the
simulation's `popularity` policy): the user's training watch rate, item popularity, rating means.

Deterministic and cheap; written before the LLM calls (`write_references`), only what is not stored yet.
"""

from __future__ import annotations

from typing import Any

from alignuser_sim import store
from alignuser_sim.core import PURPOSE_EVAL_RANDOM_REFERENCE, user_rng
from alignuser_sim.data.training_stats import TrainingStats, round_half_up, training_stats
from alignuser_sim.errors import UserError
from alignuser_sim.evaluation.cases import UserCase
from alignuser_sim.evaluation.micro import EvalPlan
from alignuser_sim.store import EvalFolder, PartTable

REFERENCE_VERSION = 1


def always_watch(items: list[str], positive: list[bool], stats: TrainingStats, user: str, where: tuple[int, int],
                 seed: int) -> list[bool]:
    """Watches everything: recall 1, accuracy 1/(1+r); the floor every LLM policy has sat on so far."""
    return [True] * len(items)


def random_watch(items: list[str], positive: list[bool], stats: TrainingStats, user: str, where: tuple[int, int],
                 seed: int) -> list[bool]:
    """Each item watched with probability = the user's training watch rate (seeded per user, ratio, page)."""
    rng = user_rng(seed, user, PURPOSE_EVAL_RANDOM_REFERENCE, *where)
    return (rng.random(len(items)) < stats.rate(user)).tolist()


def popularity(items: list[str], positive: list[bool], stats: TrainingStats, user: str, where: tuple[int, int],
               seed: int) -> list[bool]:
    """The page's most popular items (training interactions), as many as the user's training rate implies:
    round(rate x page size), halves up."""
    return stats.top(items, round_half_up(stats.rate(user) * len(items)))


def popularity_oracle(items: list[str], positive: list[bool], stats: TrainingStats, user: str,
                      where: tuple[int, int], seed: int) -> list[bool]:
    """The page's most popular items, exactly as many as the page holds positives. It KNOWS that count (no
    real policy does): the reference quoted at 0.826 accuracy at 1:1 on ML-1M, an upper bar for popularity."""
    return stats.top(items, sum(positive))


def least_popular(items: list[str], positive: list[bool], stats: TrainingStats, user: str, where: tuple[int, int],
                  seed: int) -> list[bool]:
    """The page's LEAST popular items, as many as popularity takes. Why: the protocol's negatives are items the
    user never touched, drawn from the whole catalogue; where a dataset's held-out items are the niche ones
    (Amazon-Books: the held-out books have fewer training readers than the negatives beside them), preferring
    the unknown wins without any taste, and a policy's accuracy must be read against that too."""
    return stats.top(items, round_half_up(stats.rate(user) * len(items)), least=True)


DECISION_REFERENCES = {"always-watch": always_watch, "random": random_watch, "popularity": popularity,
                       "popularity-oracle": popularity_oracle, "least-popular": least_popular}
RATING_REFERENCES = ("global-mean", "item-mean", "user-mean")
REFERENCES = (*DECISION_REFERENCES, *RATING_REFERENCES)


def _call_fields() -> dict[str, Any]:
    return {"failure": None, "invalid_ids": 0, "prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0,
            "from_cache": False}


def reference_rows(plan: EvalPlan, stats: TrainingStats, done_decisions: set, done_ratings: set,
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The decisions and ratings rows of every reference not stored yet, on the plan's own pages."""
    seed, k = plan.scenario.seed, plan.items_per_page
    decisions, ratings = [], []
    for case in plan.cases:
        for ratio in plan.ratios:
            for page, (items, labels) in enumerate(case.page_items(ratio, k, seed)):
                for name, decide in DECISION_REFERENCES.items():
                    if (name, ratio, case.user_id, page) in done_decisions:
                        continue
                    decisions.append({
                        "policy": name, "ratio": ratio, "user_id": case.user_id, "page": page, "items": items,
                        "positive": labels, "watched": decide(items, labels, stats, case.user_id, (ratio, page), seed),
                        **_call_fields()})
        if plan.ratings and case.rated and stats.global_mean is not None:
            ratings.extend(_rating_rows(case, stats, done_ratings))
    return decisions, ratings


def _rating_rows(case: UserCase, stats: TrainingStats, done: set) -> list[dict[str, Any]]:
    items = [i for i, _ in case.rated]
    return [{"policy": name, "user_id": case.user_id, "items": items, "truth": [r for _, r in case.rated],
             "predicted": stats.predict(name, case.user_id, items), **_call_fields()}
            for name in RATING_REFERENCES if (name, case.user_id) not in done]


def _missing(plan: EvalPlan, done_decisions: set, done_ratings: set) -> bool:
    """Whether any reference row is still to write (so the training statistics are computed only then)."""
    seed, k = plan.scenario.seed, plan.items_per_page
    for case in plan.cases:
        if plan.ratings and case.rated and plan.dataset.has_ratings and any(
                (name, case.user_id) not in done_ratings for name in RATING_REFERENCES):
            return True
        for ratio in plan.ratios:
            pages = len(case.page_items(ratio, k, seed))
            if any((name, ratio, case.user_id, page) not in done_decisions
                   for name in DECISION_REFERENCES for page in range(pages)):
                return True
    return False


def claim_references(plan: EvalPlan) -> None:
    """Record what the references were computed with in plan.json; refuse a folder whose references came
    from other `pages` settings (their watch rates differ), as a policy's changed learning is refused."""
    layout = EvalFolder(plan.folder)
    meta = store.read_json(layout.plan)
    mine = {"version": REFERENCE_VERSION, "pages": plan.scenario.pages.model_dump(
        mode="json", include={"items_per_page", "distractor_ratio", "session_gap_hours"})}  # what rollouts use
    if meta.get("references", mine) != mine:
        raise UserError(f"{plan.folder}: its reference policies were computed with other `pages` settings; "
                        f"use --out DIR for the new ones, or --no-references")
    if meta.get("references") != mine:
        store.write_json(layout.plan, {**meta, "references": mine})


def write_references(plan: EvalPlan, stores: tuple[PartTable, PartTable]) -> int:
    """Decide and rate with every reference what the folder lacks; returns the rows written."""
    decisions, ratings = stores
    claim_references(plan)
    if not _missing(plan, decisions.keys, ratings.keys):
        return 0
    stats = training_stats(plan.dataset, [c.user_id for c in plan.cases], plan.scenario.pages, plan.scenario.seed)
    new_decisions, new_ratings = reference_rows(plan, stats, decisions.keys, ratings.keys)
    written = len(decisions.extend(new_decisions)) + len(ratings.extend(new_ratings))
    decisions.flush()
    ratings.flush()
    return written
