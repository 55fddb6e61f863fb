"""Fixtures for datasets: where the shared datasets are, and a skip when a machine lacks them."""

from pathlib import Path

import pytest

from alignuser_sim.paths import datasets_root


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    root = datasets_root()
    if root is None:
        pytest.fail("shared datasets not found: set ALIGNUSER_SIM_DATASETS or lay ../shared/datasets")
    return root
