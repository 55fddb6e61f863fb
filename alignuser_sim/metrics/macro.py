"""Macro metrics: the simulated population's behaviour against the humans', distribution by distribution.

Five distributions, each built the same way from the simulated events and from the human rollouts of the
same users with the same pages config (see `samples_from_events` / `samples_from_rollouts`):

- ratings: the rating (1-5) of each watched item that has one;
- watches per page: how many items of a page were watched;
- pages per session and exit page (0-based page of the session's last page): sessions are capped at the
  scenario's `pages.count`, as the simulation caps them, so a human session longer than the cap counts as
  one that reached it;
- genres: the genres of the watched items (an item with several genres counts once for each).

Pages whose LLM call failed are left out of the simulated side (they hold no decision), and so are the
sessions they ended. Each distribution is a histogram over the union of both sides' values (numeric
distributions also over their natural range). Numbers per distribution:

- KL(human || simulated) in nats, both histograms smoothed first: p_i <- (p_i + eps) / (1 + K eps) with
  eps = 1e-3 and K bins, so a bin the simulation never hits costs about log(p_i / eps), not infinity;
- total variation: sum |p_i - q_i| / 2, in [0, 1] (no smoothing);
- Wasserstein-1 (earth mover's) distance for numeric distributions: sum over the sorted support of
  |CDF_p - CDF_q| times the gap to the next value, in the distribution's own unit (stars, pages...).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KL_EPSILON = 1e-3
NUMERIC = ("ratings", "watches_per_page", "pages_per_session", "exit_page")
DISTRIBUTIONS = (*NUMERIC, "genres")


def normalized(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("an empty histogram has no distribution")
    return counts / total


def kl_divergence(p_counts: np.ndarray, q_counts: np.ndarray, eps: float = KL_EPSILON) -> float:
    """KL(p || q) in nats of two histograms over the same bins, each smoothed with `eps` (module doc)."""
    p, q = normalized(p_counts), normalized(q_counts)
    k = len(p)
    p = (p + eps) / (1 + k * eps)
    q = (q + eps) / (1 + k * eps)
    return float(np.sum(p * np.log(p / q)))


def total_variation(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    return float(0.5 * np.abs(normalized(p_counts) - normalized(q_counts)).sum())


def wasserstein(support: Sequence[float], p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Wasserstein-1 distance of two histograms over the same numeric support (any order)."""
    x = np.asarray(support, dtype=np.float64)
    order = np.argsort(x)
    x = x[order]
    p, q = normalized(p_counts)[order], normalized(q_counts)[order]
    gaps = np.diff(x)
    return float(np.sum(np.abs(np.cumsum(p)[:-1] - np.cumsum(q)[:-1]) * gaps))


def histogram(values: Iterable[Any], support: Sequence[Any]) -> np.ndarray:
    """Counts of each support value among `values` (values outside the support are an error)."""
    index = {v: i for i, v in enumerate(support)}
    counts = np.zeros(len(support), dtype=np.float64)
    for v in values:
        counts[index[v]] += 1
    return counts


@dataclass
class Samples:
    """The observed values of each distribution on one side (human or simulated)."""

    ratings: list[int] = field(default_factory=list)
    watches_per_page: list[int] = field(default_factory=list)
    pages_per_session: list[int] = field(default_factory=list)
    exit_page: list[int] = field(default_factory=list)
    genres: list[str] = field(default_factory=list)
    pages: int = 0
    sessions: int = 0
    failed_pages: int = 0
    failed_sessions: int = 0  # sessions a failed page ended: left out, as stats.json's `sessions_failed`

    def values(self, name: str) -> list[Any]:
        return getattr(self, name)


def _page_values(samples: Samples, watched: Sequence[bool], ratings: Sequence[Any], items: Sequence[str],
                 genres_of: Callable[[str], Sequence[str]]) -> None:
    samples.pages += 1
    samples.watches_per_page.append(int(sum(bool(w) for w in watched)))
    for item, w, r in zip(items, watched, ratings, strict=True):
        if not w:
            continue
        if r is not None and np.isfinite(r):
            samples.ratings.append(int(min(5, max(1, round(float(r))))))
        samples.genres.extend(genres_of(item))


def samples_from_events(rows: Iterable[Mapping[str, Any]], page_cap: int,
                        genres_of: Callable[[str], Sequence[str]]) -> Samples:
    """The simulated side, from event rows (events.parquet as dicts)."""
    out = Samples()
    last: dict[tuple[str, int], Mapping[str, Any]] = {}
    for row in rows:
        key = (row["agent_id"], int(row["session"]))
        if key not in last or row["page"] > last[key]["page"]:
            last[key] = row
        if row.get("failure"):
            out.failed_pages += 1
            continue
        _page_values(out, row["watched"], row["ratings"], row["items"], genres_of)
    for row in last.values():
        if row.get("failure"):
            out.failed_sessions += 1
            continue
        pages = min(int(row["page"]) + 1, page_cap)
        out.sessions += 1
        out.pages_per_session.append(pages)
        out.exit_page.append(pages - 1)
    return out


def samples_from_rollouts(rows: Iterable[Mapping[str, Any]], page_cap: int,
                          genres_of: Callable[[str], Sequence[str]]) -> Samples:
    """The human side, from rollout rows (data/rollouts.py, as dicts), each session cut at `page_cap`."""
    out = Samples()
    pages: dict[tuple[str, int], int] = defaultdict(int)
    for row in rows:
        key = (row["user_id"], int(row["session"]))
        if row["page"] >= page_cap:
            continue
        pages[key] += 1
        _page_values(out, row["watched"], row["ratings"], row["items"], genres_of)
    for n in pages.values():
        out.sessions += 1
        out.pages_per_session.append(n)
        out.exit_page.append(n - 1)
    return out


def natural_support(name: str, page_cap: int, items_per_page: int) -> list[int]:
    return {
        "ratings": list(range(1, 6)),
        "watches_per_page": list(range(items_per_page + 1)),
        "pages_per_session": list(range(1, page_cap + 1)),
        "exit_page": list(range(page_cap)),
    }.get(name, [])


@dataclass
class Comparison:
    """One distribution, human against simulated, and how far apart they are."""

    name: str
    support: list[Any]
    human: np.ndarray
    simulated: np.ndarray
    kl: float | None
    total_variation: float | None
    wasserstein: float | None

    @property
    def numeric(self) -> bool:
        return self.name in NUMERIC

    def mean(self, counts: np.ndarray) -> float | None:
        if not self.numeric or counts.sum() == 0:
            return None
        return float(np.dot(np.asarray(self.support, dtype=np.float64), counts) / counts.sum())

    def as_dict(self) -> dict[str, Any]:
        return {
            "support": list(self.support), "human": self.human.astype(int).tolist(),
            "simulated": self.simulated.astype(int).tolist(),
            "n_human": int(self.human.sum()), "n_simulated": int(self.simulated.sum()),
            "mean_human": self.mean(self.human), "mean_simulated": self.mean(self.simulated),
            "kl": self.kl, "total_variation": self.total_variation, "wasserstein": self.wasserstein,
        }


def compare(name: str, human: Sequence[Any], simulated: Sequence[Any], base_support: Sequence[Any] = ()) -> Comparison:
    """Histograms over a common support and the distances (None where a side has no observation)."""
    support = sorted(set(base_support) | set(human) | set(simulated))
    h, s = histogram(human, support), histogram(simulated, support)
    if h.sum() == 0 or s.sum() == 0:
        return Comparison(name, support, h, s, None, None, None)
    w = wasserstein(support, h, s) if name in NUMERIC else None
    return Comparison(name, support, h, s, kl_divergence(h, s), total_variation(h, s), w)


def compare_all(human: Samples, simulated: Samples, page_cap: int, items_per_page: int) -> dict[str, Comparison]:
    return {
        name: compare(name, human.values(name), simulated.values(name),
                      natural_support(name, page_cap, items_per_page))
        for name in DISTRIBUTIONS
    }
