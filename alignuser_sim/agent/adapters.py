"""The trained LoRA adapters of a learning folder, as agents and servers need them (`adapters/adapters.json`).

`alignuser-sim train` (learning/training.py) writes one adapter per persona cluster (one when not
clustered) under LEARNING_DIR/adapters/<served name>/ and a manifest: the base model and its checksum,
each adapter's served name and every trained user's adapter. A served name carries a digest of the adapter's
weights, so two trainings never share a name, and thus never share cached completions.

Read here, not in learning/, because agents and launchers read it and must not import learning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignuser_sim.errors import UserError
from alignuser_sim.store import LearningFolder


@dataclass
class AdapterSet:
    folder: Path  # LEARNING_DIR/adapters
    base_model: str | None  # None: the embedded model
    base_checksum: str
    adapters: dict[str, str]  # served name -> subfolder of `folder`
    users: dict[str, str] = field(default_factory=dict)  # user -> served name (clusters)
    default: str = ""  # the adapter of a user no cluster names (the largest cluster's)
    rank: int = 16

    def paths(self) -> dict[str, Path]:
        return {name: self.folder / sub for name, sub in self.adapters.items()}

    def name_for(self, user_id: str) -> str:
        return self.users.get(user_id, self.default)

    def to_json(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "base_checksum": self.base_checksum, "adapters": self.adapters,
                "users": self.users, "default": self.default, "rank": self.rank}


def load_adapters(learning_folder: Path) -> AdapterSet:
    """The adapters trained for a learning folder; one clear error when there are none or they are broken."""
    layout = LearningFolder(Path(learning_folder))
    path = layout.adapters_manifest
    if not path.is_file():
        raise UserError(f"{layout.adapters}: no trained adapter; run `alignuser-sim train SCENARIO` first "
                        "(or choose a policy without the adapter)")
    try:
        data = json.loads(path.read_text())
        adapters = AdapterSet(layout.adapters, data["base_model"], str(data["base_checksum"]),
                              dict(data["adapters"]), dict(data.get("users") or {}), str(data["default"]),
                              int(data.get("rank", 16)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable adapter manifest ({type(exc).__name__}); train again") from None
    for name, sub in adapters.paths().items():
        if not (sub / "adapter_config.json").is_file():
            raise UserError(f"{sub}: adapter '{name}' is incomplete (no adapter_config.json); train again")
    return adapters


def check_base(adapters: AdapterSet, serving: str | None, checksum: str) -> None:
    """An adapter only fits the weights it was trained on: refuse to serve it on another base model."""
    if adapters.base_checksum != checksum:
        what = serving or "the embedded model"
        trained = adapters.base_model or "the embedded model"
        raise UserError(f"{adapters.folder}: the adapters were trained on another base model ({trained}, "
                        f"checksum {adapters.base_checksum[:12]}) than the one served ({what}, checksum "
                        f"{checksum[:12]}); train again for this model")
