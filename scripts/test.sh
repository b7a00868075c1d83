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
echo "== postgresql"
# The PostgreSQL tests start a throwaway server from Debian's postgresql package
# (tests/pgserver.py); install it when missing and possible, else they skip and say why.
# CYLLAMA_TEST_PG_URL=postgresql://... runs them against an existing server instead.
have_postgres() {
    local bindir
    bindir="$(pg_config --bindir 2>/dev/null || true)"
    [ -n "$bindir" ] && [ -x "$bindir/initdb" ] && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
if [ -z "${CYLLAMA_TEST_PG_URL:-}" ] && ! have_postgres; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing postgresql for the PostgreSQL tests"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
            || echo "could not install postgresql: the PostgreSQL tests will be skipped"
    else
        echo "no PostgreSQL server binaries and no way to install them: the PostgreSQL tests will be skipped"
    fi
fi
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
