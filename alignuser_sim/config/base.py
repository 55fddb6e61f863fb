"""The base every scenario model derives from, and the types several sections share."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base of every scenario model: unknown keys rejected, values validated on assignment too, and no float
    knob takes NaN or infinity (`.nan` passes no bound check, `.inf` is no timeout)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


# a seed: what numpy, torch and Parquet all take (a negative one is rejected by numpy, deep in a run)
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
