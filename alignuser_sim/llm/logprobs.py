"""Calls read by their first token's probabilities, not by their text: a yes/no question scored as P(yes).

A small model's greedy yes/no answer is nearly always the same word (the embedded SmolLM2-135M, asked per item
whether an ML-1M user would watch it, gives P(yes) 0.22 +- 0.04: "no" every time), yet the probability still
ranks items (within-page AUC 0.58 against the user's held-out positives, where its page-list replies sit at
0.46-0.50). So such a call asks for one token with its top alternatives (`logprobs`), and the transport hands
the client those alternatives as the reply text, `{"top": {"yes": -1.2, "no": -0.4, ...}}`: the client's cache,
retries and accounting treat it as any other reply, and `FirstToken` validates it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

TOP_LOGPROBS = 20  # vLLM's default ceiling (`--max-logprobs`)
FIRST_TOKEN_SAMPLING: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "logprobs": True,
                                        "top_logprobs": TOP_LOGPROBS}


class FirstToken(BaseModel):
    """The first generated token's most likely alternatives, token -> log-probability."""

    model_config = ConfigDict(extra="forbid")
    top: dict[str, float]

    def mass(self, words: Iterable[str]) -> float:
        """Probability of the alternatives that read as one of `words` (case and spaces aside: "Yes", " yes")."""
        wanted = {w.lower() for w in words}
        return sum(math.exp(lp) for token, lp in self.top.items() if token.strip().lower() in wanted)

    def yes_probability(self) -> float | None:
        """P(yes) / (P(yes) + P(no)); None when neither word is among the alternatives."""
        yes, no = self.mass(("yes",)), self.mass(("no",))
        return yes / (yes + no) if yes + no > 0 else None


def first_token_text(logprobs: Any) -> str | None:
    """The SDK's `choice.logprobs` as `FirstToken` JSON (tokens that print alike merged), None when absent."""
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if not content:
        return None
    top: dict[str, float] = {}
    for alt in content[0].top_logprobs or []:
        if alt.logprob is None or not math.isfinite(alt.logprob):
            continue
        prior = top.get(alt.token)
        top[alt.token] = alt.logprob if prior is None else math.log(math.exp(prior) + math.exp(alt.logprob))
    return json.dumps({"top": top})
