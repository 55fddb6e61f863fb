#!/usr/bin/env bash
# The project's test command: lint, then the whole pytest suite (integration tests start their own servers).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
