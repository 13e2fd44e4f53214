#!/usr/bin/env bash
# Install what the tests need (redis-server from Debian's packages, .venv with
# librecache and its test tools) and run the whole suite: lint, types, tests
# against real Redis servers the suite starts on 127.0.0.1.
source "$(dirname "$0")/venv.sh"
if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server redis-tools
fi
.venv/bin/python -m pip install -q -e '.[test,lint]'
.venv/bin/ruff check librecache tests benchmarks
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
