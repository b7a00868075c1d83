#!/usr/bin/env bash
# Set everything up and run the whole test suite (plus lint and type checks).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh "dev,llama"
echo "== ruff"
.venv/bin/ruff check src tests benchmarks examples
echo "== mypy"
.venv/bin/mypy
echo "== browser"
# tests/test_dashboard.py drives a real headless Chromium. Install Debian's
# `chromium` package when no Chromium/Chrome is on PATH; where that is not
# possible the browser test is skipped and says why.
have_browser() {
    for b in chromium chromium-browser google-chrome google-chrome-stable; do
        command -v "$b" >/dev/null 2>&1 && return 0
    done
    return 1
}
if ! have_browser; then
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    fi
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
        echo "installing chromium for the dashboard browser test"
        { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
            || echo "could not install chromium: the browser test will be skipped"
    else
        echo "no Chromium and no way to install it (needs root and apt-get): the browser test will be skipped"
    fi
fi
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
