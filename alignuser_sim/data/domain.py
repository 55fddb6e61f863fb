"""A scenario's domain: which words its prompts use (`core.Domain`), from `dataset.domain` or the dataset.

The built-in datasets know their domain (MovieLens: movies, Amazon Books: books, Steam: games); a generic
dataset is neutral ("items" that users "try") unless the scenario names one or gives its own words.
"""

from __future__ import annotations

from alignuser_sim.config import DatasetConfig, DomainWords
from alignuser_sim.core import DOMAINS, Domain

DATASET_DOMAINS = {"ml-100k": "movies", "ml-1m-agent4rec": "movies", "amazon-books": "books", "steam": "games",
                   "generic": "items"}


def dataset_domain(cfg: DatasetConfig) -> Domain:
    """The domain a scenario's `dataset:` section names, else its dataset's own."""
    chosen = cfg.domain
    if isinstance(chosen, DomainWords):
        return Domain("custom", **chosen.model_dump())
    return DOMAINS[chosen or DATASET_DOMAINS.get(cfg.name, "items")]
