#!/usr/bin/env bash
# The main job: install librecache into .venv and print the cache
# configuration the environment describes (no Redis needed: without
# USE_REDIS every namespace lives in process memory).
source "$(dirname "$0")/venv.sh"
.venv/bin/python -m pip install -q .
exec .venv/bin/librecache config "$@"
