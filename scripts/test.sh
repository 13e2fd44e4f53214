#!/usr/bin/env bash
# Install what the tests need (redis-server from Debian's packages, .venv with
# librecache and its test and docs tools) and run the whole suite: lint,
# types, the documentation and its examples, and the tests, against real
# Redis servers started on 127.0.0.1.
source "$(dirname "$0")/venv.sh"
# Debian's packages the suite drives for real: Redis servers, Chromium with
# its driver (browser tests), nginx (the example's load balancer), graphviz
# (the documentation's diagram)
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server redis-tools)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi
.venv/bin/python -m pip install -q -e '.[test,lint,docs]'
.venv/bin/ruff check librecache tests benchmarks docs examples
.venv/bin/mypy
# the documentation builds with warnings as errors, and its examples run
# against real servers started for the build
rm -rf docs/_build
.venv/bin/sphinx-build -q -W --keep-going -b html docs docs/_build/html
.venv/bin/sphinx-build -q -W --keep-going -b doctest docs docs/_build/doctest
exec .venv/bin/python -m pytest "$@"
