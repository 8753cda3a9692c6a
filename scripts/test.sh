#!/usr/bin/env bash
# The whole suite: lint, then every test including the real offline model (marked slow).
# Fast iteration (tiny model only): .venv/bin/python -m pytest -m 'not slow'
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check harc_interp tests scripts
.venv/bin/python -m pytest -q "$@"
