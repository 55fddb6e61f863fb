# The two set-up commands of the README. Each creates .venv from nothing when needed.
.PHONY: quickstart test lint setup
setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/alignuser-sim quickstart

test: setup
	bash scripts/test.sh

# ruff, then the layer contracts of pyproject.toml's [tool.importlinter] (DESIGN.md, Layout)
lint: setup
	.venv/bin/ruff check .
	.venv/bin/lint-imports
