#!/usr/bin/env bash
# Set everything up and run the whole test suite (plus lint and type checks).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh "dev,llama"
echo "== ruff"
.venv/bin/ruff check src tests benchmarks examples
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
