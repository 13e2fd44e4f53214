#!/usr/bin/env bash
# Install what the tests need (Debian's redis-server and the other programs
# the suite drives, .venv with librecache, its tools and nox) and run the
# suite through nox (noxfile.py), against real servers started on 127.0.0.1:
#
#   bash scripts/test.sh                 lint, docs, tests (Python of .venv, newest dependencies)
#   bash scripts/test.sh --matrix        every session: also floors (3.10, lowest dependencies),
#                                        newest (3.13), tests-3.12 and valkey (what CI runs)
#   bash scripts/test.sh -k cluster -x   extra arguments go to pytest
#
# Python 3.10, 3.12 and 3.13 are found through pyenv when it has them, else as
# python3.X on the PATH; a missing one stops the matrix before it starts.
source "$(dirname "$0")/venv.sh"
sessions=(lint docs tests)
if [ "${1:-}" = "--matrix" ]; then
    shift
    sessions=(lint docs tests floors newest tests-3.12 valkey)
fi
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
# .venv: librecache with its test, lint and docs tools (for the README's other
# commands: benchmarks, the example) and nox, which makes the sessions'
# virtualenvs under .nox/ and reuses them
.venv/bin/python -m pip install -q -e '.[test,lint,docs]' 'nox>=2024.3.2'
if [ ${#sessions[@]} -gt 3 ]; then
    .venv/bin/python noxfile.py  # the interpreters the matrix needs, named if missing
fi
start=$SECONDS
status=0
.venv/bin/nox --no-color -s "${sessions[@]}" -- "$@" || status=$?
echo "test.sh: sessions ${sessions[*]}: $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s, exit $status"
exit $status
