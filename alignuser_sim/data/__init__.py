"""Datasets as Arrow tables, cached as Parquet; human rollouts built from them."""

from .loaders import LOADERS, load_dataset
from .tables import Dataset

__all__ = ["LOADERS", "Dataset", "load_dataset"]
