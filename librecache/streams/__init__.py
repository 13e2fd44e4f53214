"""Resumable streams: a generation's events survive reconnects, tabs and
server instances.

A producer :meth:`~StreamStore.create`\\ s a stream, :meth:`~StreamStore.append`\\ s
events and :meth:`~StreamStore.finish`\\ es it; any number of subscribers, on
any instance, :meth:`~StreamStore.subscribe` from the start or after the last
event id they saw (a browser's ``Last-Event-ID``) and receive every later
event exactly once, live, until the terminal event. An abort can be
requested from any instance. With USE_REDIS_STREAMS (default: USE_REDIS)
Redis coordinates the instances; otherwise one process's memory does.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..config import CacheConfig
from .base import (
    FinishStatus,
    InvalidEventError,
    StreamError,
    StreamEvent,
    StreamExistsError,
    StreamFinishedError,
    StreamStatus,
    StreamStore,
    UnknownStreamError,
)
from .memory import MemoryStreamStore
from .redis import RedisStreamStore
from .sync import SyncStreamStore

__all__ = [
    "FinishStatus",
    "InvalidEventError",
    "MemoryStreamStore",
    "RedisStreamStore",
    "StreamError",
    "StreamEvent",
    "StreamExistsError",
    "StreamFinishedError",
    "StreamStatus",
    "StreamStore",
    "SyncStreamStore",
    "UnknownStreamError",
    "open_streams",
    "open_streams_sync",
]


def _config(config: CacheConfig | Mapping[str, str] | None) -> CacheConfig:
    return config if isinstance(config, CacheConfig) else CacheConfig.from_env(config)


def open_streams(config: CacheConfig | Mapping[str, str] | None = None) -> StreamStore:
    """The asyncio stream store the configuration asks for: Redis when
    USE_REDIS_STREAMS is on, process memory otherwise.

    :param config: a :class:`~librecache.CacheConfig`, a mapping of
        variables, or ``None`` for :data:`os.environ`.
    """
    built = _config(config)
    if built.use_redis_streams:
        return RedisStreamStore(built)
    return MemoryStreamStore(built)


def open_streams_sync(config: CacheConfig | Mapping[str, str] | None = None) -> SyncStreamStore:
    """The sync twin of :func:`open_streams`, for WSGI applications and threads."""
    built = _config(config)
    return SyncStreamStore(lambda: open_streams(built))
