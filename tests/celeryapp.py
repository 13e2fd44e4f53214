"""A Celery app for the prefork test: the worker's main process configures
the default registry when it imports this module, before it forks its
children (``celery -A tests.celeryapp worker -P prefork -c 2``)."""

from __future__ import annotations

import os

import redis
from celery import Celery

import librecache

app = Celery("librecache-forks", broker=os.environ.get("CELERY_BROKER_URL"),
             backend=os.environ.get("CELERY_RESULT_BACKEND"))
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)

if os.environ.get("USE_REDIS"):
    librecache.configure()  # in the main process: the children inherit it


@librecache.get_region("ROLES").cache_on_arguments()
def current_version() -> int:
    client = librecache.redis_client()
    try:
        return int(client.get("version") or 0) if client is not None else -1
    except redis.RedisError:
        return -1


@app.task(name="tests.celeryapp.version")
def version() -> tuple[int, int]:
    """The child's pid and the memoised version."""
    return os.getpid(), current_version()
