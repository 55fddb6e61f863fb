#!/usr/bin/env bash
# The project's test command: lint (ruff, then the import-linter layer contracts), then the whole pytest suite
# (integration tests start their own servers).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
