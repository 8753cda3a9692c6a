#!/usr/bin/env bash
# The whole suite: lint, the docs site, then every test including the real offline model (marked slow).
# Fast iteration (tiny model only): .venv/bin/python -m pytest -m 'not slow'
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check harc_interp tests scripts
# the documentation site: a broken page, link or API reference fails the test command (no --quiet:
# it hides the warnings that --strict counts)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "${TMPDIR:-/tmp}/harc_interp_site"
.venv/bin/python -m pytest -q "$@"
