#!/usr/bin/env bash
# Set everything up and run the main job: a real completion, cached, with stats.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh "demo"
exec .venv/bin/python examples/demo.py "$@"
