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
# Node and npm: the format tests run a real keyv client (tests/keyv.py)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi
.venv/bin/python -m pip install -q -e '.[test,lint,docs]'
# keyv 5 and @keyv/redis 4 from the npm registry into .node/, before the
# tests, so that none of them waits for the install
.venv/bin/python -m tests.keyv
.venv/bin/ruff check librecache tests benchmarks docs examples
.venv/bin/mypy
# the documentation builds with warnings as errors, and its examples run
# against real servers started for the build
rm -rf docs/_build
.venv/bin/sphinx-build -q -W --keep-going -b html docs docs/_build/html
.venv/bin/sphinx-build -q -W --keep-going -b doctest docs docs/_build/doctest
# -- dependency floors: the whole suite again in .venv-floors, with exactly
# the lowest version setup.cfg's install_requires allows of each runtime
# dependency (redis 5.1.0, dogpile.cache 1.3.0, ...) and the test tools
[ -x .venv-floors/bin/python ] || python3 -m venv .venv-floors
.venv/bin/python - > .venv-floors/floors.txt <<'PY'
import configparser, re
config = configparser.ConfigParser()
config.read("setup.cfg")
for line in config["options"]["install_requires"].split("\n"):
    if line.strip():
        name, floor = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", line.strip()).groups()
        print(f"{name}=={floor}")
PY
.venv-floors/bin/python -m pip install -q -c .venv-floors/floors.txt -e '.[test]'
echo "dependency floors: $(tr '\n' ' ' < .venv-floors/floors.txt)"
.venv-floors/bin/python -m pytest "$@"
# -- end of the dependency floors
exec .venv/bin/python -m pytest "$@"
