"""Who is asked about what in the micro evaluation: each held-out user's positives, negatives and pages, and
the policy variants compared on them.

Protocol (Agent4Rec's user-taste alignment, as SimUSER and AlignUSER also report it; docs/evaluation.md):
for each evaluated user, positives are up to `eval.positives_per_user` items the human interacted with in
the held-out split (`data/holdout.split_dataset`: learning never saw them), negatives are items the human
never interacted with at all, `ratio` negatives per positive (1:1, 1:2, 1:3, 1:9). The items are shuffled
and cut into pages of at most `eval.items_per_page` (near-equal sizes). Separately, up to
`eval.positives_per_user` held-out items that carry a real rating are picked for the rating call.

Determinism: each user's draws come from generators seeded by (scenario seed, crc32(user id), purpose), so
a user's pages never depend on the other users or on which ratios are evaluated: negatives are one
fixed draw of 9 x positives_per_user items and ratio r uses its first r x positives, so the 1:1 negatives
are a subset of the 1:3 ones.
"""

from __future__ import annotations

from alignuser_sim.config import PolicyConfig, Scenario
from alignuser_sim.data.taste_probes import MAX_RATIO, UserCase, build_cases  # noqa: F401  (the evaluation's names)
from alignuser_sim.errors import UserError

# --- policies --------------------------------------------------------------------------------------------

POLICY_NAMES = {
    "prompt-only": {"kind": "prompt-only", "lessons": None, "world_model": None},
    "alignuser": {"kind": "alignuser", "lessons": None, "world_model": None},
    "+lessons": {"kind": "alignuser", "lessons": True, "world_model": False},
    "+world-model": {"kind": "alignuser", "lessons": False, "world_model": True},
    "alignuser+": {"kind": "alignuser+", "lessons": None, "world_model": None},
    "adapter": {"kind": "alignuser+", "lessons": False, "world_model": False},
    "popularity": {"kind": "popularity", "lessons": None, "world_model": None},  # no LLM (compare --policy)
}
POLICY_ALIASES = {"lessons": "+lessons", "world-model": "+world-model", "+world model": "+world-model",
                  "prompt_only": "prompt-only", "alignuser-plus": "alignuser+", "adapter-only": "adapter"}


def policy_variant(scenario: Scenario, name: str, option: str = "--policies") -> Scenario:
    """The scenario with its policy replaced by the named one (retrieval sizes, decision format, choice and
    rate_watched kept: `compare --policy alignuser+` on a scenario that rates its watches must still rate them).

    A `/list` or `/score` suffix, as the eval tables label rows (`prompt-only/score`), sets `policy.choice`,
    so one scenario gives both rows of a policy; without one the scenario's choice is kept."""
    text = name.strip().lower()
    base, slash, suffix = text.partition("/")
    if slash and suffix not in ("list", "score"):
        raise UserError(f"{option}: '{name}': after '/' comes list or score (policy.choice)")
    key = POLICY_ALIASES.get(base, base)
    if key not in POLICY_NAMES:
        raise UserError(f"{option}: unknown policy '{name}' (choose from {', '.join(POLICY_NAMES)}; "
                        "add /score or /list to set policy.choice)")
    variant = scenario.model_copy(deep=True)
    kept = scenario.policy.model_dump(include={"lessons_k", "world_model_k", "history_size", "reasoning", "choice",
                                               "rate_watched"})
    if slash:
        kept["choice"] = suffix
    if POLICY_NAMES[key]["kind"] == "popularity":
        if suffix == "score":
            raise UserError(f"{option}: '{name}': popularity makes no LLM call, so it has no /score")
        kept.update(choice="list", rate_watched=False)  # the reference user of a scoring scenario (compare's run)
    variant.policy = PolicyConfig(**POLICY_NAMES[key], **kept)
    return variant
