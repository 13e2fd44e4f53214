"""A tiny WSGI app for the gunicorn ``--preload`` test: the default registry
is configured at import, in the master, before the workers are forked.

``/version``: a memoised read of ``{prefix}::version`` with the worker's pid,
whether it was served from the cache and whether Redis is up;
``/invalidate``: invalidates the namespace (in every worker and process).
``?hold=SECONDS`` keeps the worker busy that long first.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

import librecache

librecache.configure()  # from the environment, in the master (--preload)
computed = 0


@librecache.get_region("ROLES").cache_on_arguments()
def version() -> int:
    global computed
    computed += 1
    client = librecache.redis_client()
    try:
        return int(client.get("version") or 0) if client is not None else -1
    except redis.RedisError:
        return -1


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    hold = environ.get("QUERY_STRING", "").partition("hold=")[2]
    if hold:
        time.sleep(float(hold))  # keeps this sync worker busy: the next request goes to another
    if path == "/invalidate":
        librecache.get_region("ROLES").invalidate()
        body: dict[str, Any] = {"pid": os.getpid(), "invalidated": True}
    else:
        before = computed
        value = version()
        health = librecache.get_caches().health()
        body = {"pid": os.getpid(), "version": value, "cached": computed == before,
                "up": bool(health and health["up"])}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
