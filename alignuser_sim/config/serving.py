"""The `llm:` and `serve:` blocks of a scenario: where inference runs, how it is sampled, retried and keyed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from alignuser_sim.config.base import Strict


class SamplingConfig(Strict):
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    max_tokens: Annotated[int, Field(gt=0)] = 800  # a 4-item page decision needs ~150-400; room for a ramble


class LLMConfig(Strict):
    endpoints: list[str] | None = Field(default=None, description="OpenAI-compatible base URLs; None: embedded")
    model: str = "smollm2"
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    concurrency: Annotated[int, Field(gt=0, le=4096)] = 32
    timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 120.0
    max_retries: Annotated[int, Field(ge=0, le=20)] = Field(
        default=5, description="Transport retries of one call (connection errors, 429, 5xx, timeouts)")
    validation_retries: Annotated[int, Field(ge=0, le=10)] = Field(
        default=1, description="Calls asked again when a reply does not validate against its schema")
    backoff_base_s: Annotated[float, Field(ge=0, le=600)] = Field(
        default=0.5, description="First retry's backoff; doubles per retry (equal jitter)")
    backoff_max_s: Annotated[float, Field(ge=0, le=3600)] = Field(default=30.0, description="Backoff cap")
    retry_after_max_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=120.0, description="Longest server-asked wait (Retry-After) honoured")
    endpoint_cooldown_s: Annotated[float, Field(ge=0, le=600)] = Field(
        default=1.0, description="How long an endpoint that failed is skipped by the balancer")
    cache: Literal["off", "read_write", "replay"] = "read_write"
    adapters: dict[str, Path] = Field(
        default_factory=dict, description="LoRA adapters the embedded server and serve.replicas load beside the "
        "base model (served name -> adapter folder); filled from the learning folder for policy alignuser+")
    api_key_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="NAME of the environment variable holding the LLM servers' API key (never the key itself): "
        "the embedded server and serve.replicas require it, the client sends it; None: no key")

    @field_validator("endpoints", mode="before")
    @classmethod
    def _one_endpoint(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("must name at least one URL (or be omitted for the embedded model)")
            for url in value:
                if not re.match(r"^https?://", url):
                    raise ValueError(f"'{url}' is not an http(s) URL")
        return value


class ServeConfig(Strict):
    """vLLM replicas started as Ray actors on the cluster's GPU nodes (`actors/llm_server.py`)."""

    replicas: Annotated[int, Field(ge=0, le=1024)] = Field(
        default=0, description="0: no replicas (external endpoints, or the embedded local server)")
    model: str | None = Field(default=None, description="Model path or name for the replicas; None: embedded")
    tensor_parallel: Annotated[int, Field(ge=1, le=16)] = 1
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    max_model_len: Annotated[int, Field(gt=0)] | None = None
    extra_args: list[str] = Field(default_factory=list)
