"""Where the project keeps what it fetches or derives, and where it finds the shared datasets."""

from __future__ import annotations

import os
from pathlib import Path

from alignuser_sim.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """The cache root: `$ALIGNUSER_SIM_HOME`, default `~/.cache/alignuser-sim`."""
    return Path(os.environ.get("ALIGNUSER_SIM_HOME", Path.home() / ".cache" / "alignuser-sim")).expanduser()


def cache_dir(*parts: str) -> Path:
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_root() -> Path | None:
    """The folder holding the shared datasets (ml-1m-agent4rec/, amazon-books/, steam/).

    `$ALIGNUSER_SIM_DATASETS` wins; otherwise `../shared/datasets` beside the checkout, which is where the
    team's machines and CI lay them. None when neither exists.
    """
    env = os.environ.get("ALIGNUSER_SIM_DATASETS")
    if env:
        return Path(env).expanduser()
    candidate = PROJECT_ROOT.parent / "shared" / "datasets"
    return candidate if candidate.is_dir() else None


def locate_dataset(folder_name: str, explicit: Path | None = None) -> Path:
    """The folder of one shared dataset, or a UserError saying how to point at it."""
    if explicit is not None:
        if not explicit.exists():
            raise UserError(f"{explicit}: dataset path does not exist")
        return explicit
    root = datasets_root()
    if root is None or not (root / folder_name).exists():
        raise UserError(
            f"dataset '{folder_name}' not found: set dataset.path in the scenario "
            f"or ALIGNUSER_SIM_DATASETS to the folder that holds {folder_name}/"
        )
    return root / folder_name
