"""Trained adapters merged into their base model, for serving on a CPU.

vLLM's LoRA path runs about ten times slower than the base model on a CPU (docs/learning.md, "Serving on
CPU"), so `train --merge` writes each adapter folded into a full copy of its base model, served under the
adapter's name: the same weights without LoRA kernels.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from alignuser_sim import store
from alignuser_sim.config import Scenario
from alignuser_sim.learning.training import _base_path, _require_training_libraries
from alignuser_sim.store import LearningFolder


def merge_adapters(scenario: Scenario, on_note: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Each trained adapter merged into its base model (peft's `merge_and_unload`), saved as a full model under
    LEARNING_DIR/merged/<served name>/: for CPU serving, where vLLM's LoRA path runs ~10x slower than the base
    model (docs/learning.md). Serve one with `alignuser-sim llm serve --model DIR --served-model-name NAME`.
    An up-to-date merge (same adapter weights) is kept."""
    from alignuser_sim.agent.adapters import load_adapters

    _require_training_libraries()
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    layout = LearningFolder(scenario.learning_dir())
    adapters = load_adapters(layout.path)
    base = _base_path(adapters.base_model)
    out: dict[str, Path] = {}
    for name, path in adapters.paths().items():
        target = layout.path / "merged" / name
        stamp = hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()
        if (target / "merged.json").is_file() and store.read_json(target / "merged.json").get("adapter") == stamp:
            out[name] = target
            continue
        if on_note:
            on_note(f"merging {name} into {adapters.base_model or 'the embedded model'} -> {target}")
        staging = target.with_name(target.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        # the base's own dtype, read before loading: loading at float32 rewrites the loaded config's dtype
        config = AutoConfig.from_pretrained(base)
        saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        dtype = getattr(torch, str(saved).replace("torch.", ""), torch.float32) if saved else torch.float32
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # merge at full precision
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        model.to(dtype)
        model.config.dtype = dtype
        model.save_pretrained(str(staging))  # in the base model's own dtype
        AutoTokenizer.from_pretrained(base).save_pretrained(str(staging))
        store.write_json(staging / "merged.json", {"adapter": stamp, "served_name": name})
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        out[name] = target
    return out
