"""Redis Sentinel: connections to the master the sentinels name, and
following their ``+switch-master`` announcements (sync and asyncio)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.asyncio.sentinel import SentinelManagedSSLConnection as AsyncSentinelManagedSSLConnection
from redis.backoff import NoBackoff
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection, SentinelManagedSSLConnection

from .._compat import BoundedConnection, BoundedSSLConnection, timed_send
from ..config import CacheConfig
from ..logs import RateLimitedLog
from ..replies import text
from .options import client_options
from .retries import AsyncFailFastRetry, Closing, FailFastRetry

__all__ = ["MOVES", "AsyncSentinelPool", "SentinelWatch", "async_sentinel_client", "sentinel_options",
           "sentinel_pool"]

log = logging.getLogger(__name__)
limited = RateLimitedLog(log, interval=30.0)


class _AskSentinelsOnReconnect:
    """A dropped sentinel-managed connection reconnects through the
    sentinels. redis-py (7.x, 8.x: redis/redis-py#3874) reconnects it in
    ``send_packed_command`` with ``connect_check_health``, which skips the
    sentinel lookup of ``connect`` and returns to the last address: after a
    READONLY reply (the demoted master) the retry went there again.
    Sentinel's ``connect`` returns at once when connected."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.connect()  # type: ignore[attr-defined]
        super().send_packed_command(command, check_health)  # type: ignore[misc]


class BoundedSentinelConnection(_AskSentinelsOnReconnect, BoundedConnection, SentinelManagedConnection):
    """A connection to the master the sentinels name, bounded as a whole."""


class BoundedSentinelSSLConnection(_AskSentinelsOnReconnect, BoundedSSLConnection, SentinelManagedSSLConnection):
    """A TLS connection to the master the sentinels name, bounded as a whole."""


def sentinel_options(config: CacheConfig) -> dict[str, Any]:
    """The keyword arguments of the connections to the sentinels themselves:
    REDIS_SENTINEL_USERNAME/PASSWORD, the same time-outs as the data nodes,
    and no retry (the next sentinel is the retry: one that is down is
    skipped at once)."""
    return {
        "username": config.sentinel_username,
        "password": config.sentinel_password,
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": config.socket_timeout,
        "retry": FailFastRetry(NoBackoff(), 0),
    }


def sentinel_pool(config: CacheConfig, closing: Closing | None = None) -> SentinelConnectionPool:
    """A pool of connections to the master the sentinels name: each new
    connection asks them (the first that answers), so a reconnect after a
    failover reaches the new master; a READONLY reply drops the connection
    (redis-py turns it into a connection error, which is retried once, and
    not at all once ``closing`` is set)."""
    assert config.sentinel_master is not None
    manager = Sentinel([(uri.host, uri.port) for uri in config.redis_uris],
                       sentinel_kwargs=sentinel_options(config))
    connection_class = BoundedSentinelSSLConnection if config.tls else BoundedSentinelConnection
    return SentinelConnectionPool(config.sentinel_master, manager, connection_class=connection_class,
                                  db=config.redis_uris[0].db, **client_options(config, closing))


#: Master moves seen by this process's :class:`SentinelWatch` objects, by
#: service name: the asyncio pools ask the sentinels again when it changes.
MOVES: dict[str, int] = {}


class SentinelWatch:
    """Follows the sentinels' ``+switch-master`` announcements, so that a
    failover is acted on at once.

    After ``SENTINEL FAILOVER`` the demoted master keeps answering the
    connections it has, as a master, until Sentinel reconfigures it (about
    ten seconds later): writes made there meanwhile are lost and the
    invalidation channel hears nothing. On an announcement for our master
    (and every :attr:`RECHECK` seconds, in case one was missed), the pool
    asks the sentinels for the master; when it moved, the idle connections
    are dropped at once, those in use when released, and the ``on_switch``
    hooks run (the invalidation listener resubscribes).
    """

    #: Seconds between two checks when nothing is announced.
    RECHECK = 5.0

    def __init__(self, pool: SentinelConnectionPool, on_switch: list[Callable[[], None]]) -> None:
        #: The sentinel-managed pool this watcher keeps on the current master.
        self.pool = pool
        self._on_switch = on_switch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"librecache-sentinel[{pool.service_name}]",
                                        daemon=True)
        self._thread.start()

    def _check(self) -> None:
        before = self.pool.master_address
        try:
            address = self.pool.get_master_address()  # drops idle connections when it moved
        except (redis.RedisError, OSError) as exc:
            limited.warning("sentinel", "no sentinel names the master: %s", exc)
            return
        if before is not None and address != before:
            MOVES[self.pool.service_name] = MOVES.get(self.pool.service_name, 0) + 1
            log.warning("Sentinel moved the master %s from %s:%s to %s:%s", self.pool.service_name,
                        *before, *address)
            for hook in self._on_switch:
                hook()

    def _run(self) -> None:
        manager = self.pool.sentinel_manager
        while not self._stop.is_set():
            for sentinel in list(manager.sentinels):
                pubsub = sentinel.pubsub()
                try:
                    pubsub.subscribe("+switch-master")
                    checked = 0.0
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=0.5)
                        if _announces(message, self.pool.service_name) or \
                                time.monotonic() - checked > self.RECHECK:
                            checked = time.monotonic()
                            self._check()
                except (redis.RedisError, OSError):
                    continue  # the next sentinel
                finally:
                    pubsub.close()
                if self._stop.is_set():
                    return
            self._stop.wait(1.0)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)


def _announces(message: Any, service_name: str) -> bool:
    """True for a ``+switch-master`` message about ``service_name``."""
    return message is not None and message["type"] == "message" and \
        text(message["data"]).split(" ", 1)[0] == service_name


class _AsyncAskSentinelsOnReconnect:
    """The asyncio twin of :class:`_AskSentinelsOnReconnect`."""

    is_connected: bool

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[attr-defined]
        await super().send_packed_command(command, check_health)  # type: ignore[misc]


class AsyncSentinelConnection(_AsyncAskSentinelsOnReconnect, AsyncSentinelManagedConnection):
    """An asyncio connection to the master the sentinels name."""


class AsyncSentinelSSLConnection(_AsyncAskSentinelsOnReconnect, AsyncSentinelManagedSSLConnection):
    """An asyncio TLS connection to the master the sentinels name."""


class AsyncSentinelPool(AsyncSentinelConnectionPool):
    """The asyncio pool of the master the sentinels name, kept on the
    current master without a task of its own: taking a connection asks the
    sentinels again when a :class:`SentinelWatch` of this process saw the
    master move (:data:`MOVES`; :func:`watch_for_async` starts one) or
    :attr:`SentinelWatch.RECHECK` seconds have passed, which drops the idle
    connections when it moved; busy ones (a blocked ``XREAD``) are dropped
    when released. (A task following the sentinels' channel, one per event
    loop, could not always be cancelled when its loop ended: redis-py's
    asyncio pub/sub read swallows a cancellation, and ``asyncio.run`` then
    waits for the task for ever.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._checked = time.monotonic()
        self._moves = MOVES.get(self.service_name, 0)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        moves = MOVES.get(self.service_name, 0)
        now = time.monotonic()
        if moves != self._moves or now - self._checked > SentinelWatch.RECHECK:
            self._moves, self._checked = moves, now
            try:
                await self.get_master_address()  # drops the idle connections when it moved
            except (redis.RedisError, OSError) as exc:
                limited.warning("sentinel", "no sentinel names the master: %s", exc)
        return await super().get_connection(*args, **kwargs)


#: The watchers :func:`watch_for_async` started: (pid, watch) by master
#: name and sentinel addresses.
_ASYNC_WATCHES: dict[tuple[str, tuple[tuple[str, int], ...]], tuple[int, SentinelWatch]] = {}
_ASYNC_WATCHES_LOCK = threading.Lock()


def watch_for_async(config: CacheConfig) -> None:
    """Follow the sentinels' announcements for the asyncio pools of this
    process: one :class:`SentinelWatch` thread (a daemon) per master and
    set of sentinels, started once per process (again in a forked child),
    whose moves (:data:`MOVES`) the pools act on."""
    assert config.sentinel_master is not None
    identity = (config.sentinel_master, tuple((uri.host, uri.port) for uri in config.redis_uris))
    with _ASYNC_WATCHES_LOCK:
        known = _ASYNC_WATCHES.get(identity)
        if known is not None and known[0] == os.getpid():
            return
        _ASYNC_WATCHES[identity] = (os.getpid(), SentinelWatch(sentinel_pool(config), []))


def async_sentinel_client(config: CacheConfig, options: dict[str, Any], max_connections: int) -> AsyncRedis:
    """An asyncio client of the master the sentinels name (``options``: the
    data nodes' client options), its moves followed (:func:`watch_for_async`)."""
    assert config.sentinel_master is not None
    watch_for_async(config)
    sentinel_kwargs = sentinel_options(config)
    sentinel_kwargs["retry"] = AsyncFailFastRetry(NoBackoff(), 0)
    manager = AsyncSentinel([(uri.host, uri.port) for uri in config.redis_uris], sentinel_kwargs=sentinel_kwargs)
    options = {key: value for key, value in options.items() if key != "ssl"}
    options["connection_class"] = timed_send(AsyncSentinelSSLConnection if config.tls else AsyncSentinelConnection)
    pool = AsyncSentinelPool(config.sentinel_master, manager, db=config.redis_uris[0].db,
                             max_connections=max_connections, **options)
    return AsyncRedis.from_pool(pool)
