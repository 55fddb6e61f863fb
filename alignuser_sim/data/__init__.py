"""Datasets as Arrow tables, cached as Parquet; human rollouts built from them."""

from alignuser_sim.data.loaders import LOADERS, load_dataset
from alignuser_sim.data.tables import Dataset

__all__ = ["LOADERS", "Dataset", "load_dataset"]
