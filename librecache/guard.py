"""What happens when a call to Redis fails: one :class:`RedisConnection`
per registry guards every operation of its regions.

It holds the registry's client (built by :mod:`librecache.clients`) and the
prefixed twin handed to users, which shares the same connections; runs each
operation through :meth:`RedisConnection.guard`, which turns an outage, a
full Redis or a refusal (:func:`librecache.health.classify`) into a
fall-through, or raises it in strict mode; remembers writes and deletes
that could not reach Redis; and runs the maintenance thread (reconnects,
keep-alive) and the fork hooks.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.retry import Retry

from . import forks
from ._compat import pooled_connection, renew_locks, renew_pool_in_child
from .clients import AnyRedis, async_client, build_client
from .clients.retries import Closing
from .clients.sentinel import SentinelWatch
from .config import CacheConfig
from .health import FULL, OUTAGE, UNAVAILABLE, Breaker, classify, ping_idle_connections, run_maintenance
from .logs import RateLimitedLog
from .prefixing import KeySpecs, PrefixedRedis, PrefixedRedisCluster, adopt

__all__ = ["AnyRedis", "RedisConnection", "async_client"]

log = logging.getLogger(__name__)
limited = RateLimitedLog(log, interval=30.0)

#: Deletes remembered while Redis is away, at most; past that, the
#: namespaces concerned are invalidated instead (see ``on_overflow``).
MAX_PENDING_DELETES = 100_000
#: Creation locks whose acquisition failed midway, remembered at most.
MAX_ABANDONED_LOCKS = 10_000
#: Seconds :meth:`RedisConnection.close` and ``Caches.close()`` wait for
#: background threads at most, whatever the server does.
CLOSE_TIMEOUT = 1.0


def demoted(error: Exception) -> bool:
    """A READONLY reply: the server is no longer the master. redis-py's
    sentinel-managed connections turn it into a connection error (``The
    previous master is now a slave``)."""
    return isinstance(error, ReadOnlyError) or "previous master is now a slave" in str(error)


class RedisConnection:
    """The Redis side of one registry: its clients, their health, and the
    maintenance thread (reconnects, keep-alive).

    :param config: the configuration; must have ``redis_uris``.
    :ivar client: the client the backends use (keys given in full), or
        ``None`` while a cluster could not be reached yet.
    :ivar prefixed: the users' client, which prefixes every key with
        ``{prefix}::``; shares ``client``'s connections.
    :ivar breaker: the :class:`~librecache.health.Breaker` of this Redis.
    """

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.cluster = config.cluster
        self.strict = config.strict
        self.root = f"{config.key_prefix}::" if config.key_prefix else ""
        self.breaker = Breaker(config.retry_max_delay, config.retry_max_attempts)
        self.key_specs = KeySpecs(self._command_info)
        self._client: AnyRedis | None = None
        self.prefixed: PrefixedRedis | PrefixedRedisCluster | None = None
        #: Called (in the maintenance thread) when Redis is back.
        self.on_recovery: list[Callable[[], None]] = []
        #: Called with the namespaces whose remembered deletes overflowed.
        self.on_overflow: list[Callable[[set[Any]], None]] = []
        #: Keys whose delete waits for Redis (a write of them was lost), and
        #: their namespace: read them as misses (:meth:`is_pending`; the hit
        #: path tests it inline). Changed under this object's lock only.
        self.deletes_waiting: dict[str, Any] = {}
        self._pending_lock = threading.Lock()
        self._abandoned_locks: dict[str, tuple[str, float]] = {}
        #: The reconnect probe's own connection while it runs (never a pooled one).
        self._probe_connection: Connection | None = None
        self._generation = forks.generation
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        #: Set by :meth:`stop`: the connections stop retrying (shared by their retry policies).
        self._closing = Closing()
        self._thread: threading.Thread | None = None
        forks.register(self)
        self._sentinel_watch: SentinelWatch | None = None
        #: Called (in the sentinel watch thread) when Sentinel moved the master.
        self.on_master_switch: list[Callable[[], None]] = []
        try:
            self._connect()
        except UNAVAILABLE as exc:
            if self.strict:
                raise
            self.breaker.failure(exc, "connect")
        self._start_thread()

    def _start_thread(self) -> None:
        config = self.config
        self._thread = threading.Thread(
            target=run_maintenance,
            args=(self.breaker, self._stop, self._probe, self._recover,
                  self._keepalive if config.ping_interval > 0 else None, config.ping_interval),
            name=f"librecache-maintenance[{self.root or 'no prefix'}]", daemon=True,
        )
        self._thread.start()

    @property
    def client(self) -> AnyRedis | None:
        """The client the backends use (keys given in full), or ``None``
        while a cluster could not be reached yet. Every operation reads it:
        in a forked child, the first read starts the child's maintenance
        thread (see :mod:`librecache.forks`)."""
        if self._generation != forks.generation:
            self._start_in_child()
        return self._client

    @client.setter
    def client(self, client: AnyRedis | None) -> None:
        self._client = client

    # -- fork safety (see librecache.forks) -----------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child: new locks, no inherited connection, no thread
        (it starts on first use)."""
        self._pending_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread = None
        self._probe_connection = None
        closed = self._stop.is_set()
        self._stop = threading.Event()
        if closed:
            self._stop.set()
        renew_locks(self._client, self.prefixed)  # pools, nodes manager, dispatcher...
        for pool in self._all_pools():
            renew_pool_in_child(pool)

    def _start_in_child(self) -> None:
        with self._start_lock:
            if self._generation == forks.generation:
                return
            self._generation = forks.generation
            if not self._stop.is_set() and self._thread is None:
                self._start_thread()
            watch = self._sentinel_watch
            if watch is not None and not self._stop.is_set():  # the parent's watcher thread is not here
                self._sentinel_watch = SentinelWatch(watch.pool, self.on_master_switch)

    def _all_pools(self) -> list[ConnectionPool]:
        """Every pool, the cluster's startup nodes' included."""
        pools = self.pools()
        client = self._client
        if isinstance(client, RedisCluster):
            for node in client.nodes_manager.startup_nodes.values():
                if node.redis_connection is not None and node.redis_connection.connection_pool not in pools:
                    pools.append(node.redis_connection.connection_pool)
        return pools

    # -- clients ----------------------------------------------------------------------

    def _connect(self) -> None:
        """Build the clients (a cluster client connects at once)."""
        client, self._sentinel_watch = build_client(self.config, self.on_master_switch, self._closing)
        self.prefixed = adopt(
            copy.copy(client), PrefixedRedisCluster if self.cluster else PrefixedRedis, self.root, self.key_specs
        )
        self.client = client

    def pools(self) -> list[ConnectionPool]:
        """Every connection pool of the client (one per node of a cluster)."""
        client = self._client
        if client is None:
            return []
        if isinstance(client, RedisCluster):
            return [node.redis_connection.connection_pool
                    for node in client.get_nodes() if node.redis_connection is not None]
        return [client.connection_pool]

    def reset(self) -> None:
        """Forget every connection and the cluster's map, so that the next
        command reaches the current master (after a READONLY reply: a
        failover moved the master, or DNS now names another host)."""
        client = self._client
        if isinstance(client, RedisCluster):
            client.nodes_manager.initialize()
        for pool in self.pools():
            pool.disconnect(inuse_connections=False)  # other threads' replies are not cut off

    # -- the guard every library operation goes through --------------------------------

    @property
    def call_budget(self) -> float:
        """Seconds one cache call may wait for Redis: two attempts, each of
        REDIS_CONNECT_TIMEOUT and LIBRECACHE_SOCKET_TIMEOUT. Waiting for a
        creation lock is bounded by the same budget."""
        return 2 * (self.config.connect_timeout + self.config.socket_timeout)

    def guard(self, operation: str, action: Callable[[Any], Any], fallback: Callable[[], Any],
              write: bool = False, stats: Any = None) -> Any:
        """Run ``action(client)``; when it fails, count it and return
        ``fallback()`` instead (or raise, in strict mode). A READONLY reply
        resets the connections and runs ``action`` once more.

        What a failure does depends on :func:`~librecache.health.classify`:
        an outage opens the breaker (later calls fall through at once until
        the background reconnect succeeds); a full Redis (``OOM``) and
        errors that are not outages are counted and logged, and the breaker
        stays closed. No exception reaches the caller in default mode.

        ``stats``: the namespace's :class:`~librecache.stats.NamespaceStats`,
        whose ``errors`` and ``fallthroughs`` count this operation too."""
        client = self.client
        if (client is None or not self.breaker.up) and self.falls_through(client is None, write, stats):
            return fallback()
        try:
            return action(client)
        except Exception as exc:
            return self.recover(exc, operation, action, fallback, write, stats)

    def recover(self, exc: Exception, operation: str, action: Callable[[Any], Any], fallback: Callable[[], Any],
                write: bool = False, stats: Any = None) -> Any:
        """What :meth:`guard` does when ``action(client)`` raised ``exc``:
        after a READONLY reply (a replica promoted away), reset the
        connections and run ``action`` once more; otherwise, or when that
        fails too, :meth:`failed` and ``fallback()``. For a hot path that
        calls the client itself when :meth:`guard` would (the breaker up, a
        client there): ``RedisBackend.get_serialized``."""
        try:
            if not isinstance(exc, (ReadOnlyError, RedisConnectionError)) or not demoted(exc):
                raise exc
            limited.warning("readonly", "READONLY reply during %s: reconnecting to the current master", operation)
            self.reset()
            return action(self.client)
        except Exception as failure:
            self.failed(failure, operation, write, stats)
            return fallback()

    def falls_through(self, unreachable: bool, write: bool = False, stats: Any = None) -> bool:
        """Whether an operation must fall through without trying Redis (the
        breaker is open, or ``unreachable``; never in strict mode); counted
        when so. Shared by :meth:`guard` and its asyncio twin
        (:func:`librecache.backends.aio_redis.aguard`)."""
        if self.strict or (self.breaker.up and not unreachable):
            return False
        self.breaker.fallthrough(write)
        if stats is not None:
            stats.fallthroughs += 1
        return True

    def failed(self, exc: Exception, operation: str, write: bool = False, stats: Any = None) -> None:
        """An operation failed with ``exc``: raise it in strict mode;
        otherwise open the breaker for an outage, count a full Redis or a
        refusal (:func:`~librecache.health.classify`), and count the
        fall-through the caller then makes."""
        if self.strict:
            raise exc
        breaker = self.breaker
        kind = classify(exc)
        if kind == OUTAGE:
            breaker.failure(exc, operation)
        elif kind == FULL:
            breaker.out_of_memory(exc, operation)
        else:
            breaker.refusal(exc, operation)
        breaker.fallthrough(write)
        if stats is not None:
            stats.errors += 1
            stats.fallthroughs += 1

    # -- writes that did not happen ------------------------------------------------------

    def discard(self, keys: list[str], namespace: Any = None) -> None:
        """A write of ``keys`` failed or was dropped: make sure no older
        value under them is served. Deleted at once when Redis answers (a
        full Redis still accepts DEL), remembered otherwise
        (:meth:`defer_delete`)."""
        client = self.client
        if self.breaker.up and client is not None and not self.strict:
            try:
                client.delete(*keys)
                self.written(keys)
                return
            except Exception as exc:
                if classify(exc) == OUTAGE:
                    self.breaker.failure(exc, "delete")
        self.defer_delete(keys, namespace)

    def defer_delete(self, keys: list[str], namespace: Any = None) -> None:
        """Remember deletes that could not reach Redis; they are replayed when
        it is back, and reads treat these keys as misses meanwhile, so no
        stale value survives the outage. Past :data:`MAX_PENDING_DELETES`,
        the namespaces concerned are invalidated instead (``on_overflow``)."""
        overflowed: set[Any] = set()
        with self._pending_lock:
            for key in keys:
                self.deletes_waiting[key] = namespace
            if len(self.deletes_waiting) > MAX_PENDING_DELETES:
                overflowed = set(self.deletes_waiting.values())
                self.deletes_waiting.clear()
        if overflowed:
            named = sorted(str(getattr(ns, "value", ns)) for ns in overflowed if ns is not None)
            log.error("more than %d writes and deletes wait for Redis; invalidating %s instead of remembering "
                      "each key", MAX_PENDING_DELETES, ", ".join(named) or "nothing (no namespace known)")
            for hook in self.on_overflow:
                hook(overflowed - {None})

    def is_pending(self, key: str) -> bool:
        """Whether a delete of ``key`` waits for Redis (read it as a miss)."""
        return bool(self.deletes_waiting) and key in self.deletes_waiting

    def written(self, keys: list[str]) -> None:
        """``keys`` were written or deleted: no delete of them waits any more."""
        if self.deletes_waiting:
            with self._pending_lock:
                for key in keys:
                    self.deletes_waiting.pop(key, None)

    # -- creation locks whose acquisition failed midway ----------------------------------

    def abandon_lock(self, name: str, token: str, lifetime: float) -> None:
        """An acquisition of the lock ``name`` with ``token`` failed midway:
        its ``SET`` may still land (a lost reply, a healed black hole). A
        waiter of this process that finds the lock held by ``token`` takes
        it over instead of waiting for it to expire."""
        now = time.monotonic()
        with self._pending_lock:
            self._abandoned_locks[name] = (token, now + lifetime)
            if len(self._abandoned_locks) > MAX_ABANDONED_LOCKS:
                for old in [n for n, (_, until) in self._abandoned_locks.items() if until < now]:
                    del self._abandoned_locks[old]
                while len(self._abandoned_locks) > MAX_ABANDONED_LOCKS:
                    del self._abandoned_locks[next(iter(self._abandoned_locks))]

    def is_abandoned(self, name: str, token: str) -> bool:
        """Whether ``token`` on the lock ``name`` is one this process abandoned."""
        found = self._abandoned_locks.get(name)
        return found is not None and found[0] == token and found[1] > time.monotonic()

    @property
    def pending_deletes(self) -> int:
        return len(self.deletes_waiting)

    # -- maintenance (in the maintenance thread) --------------------------------------

    def _probe(self) -> None:
        """One reconnect attempt. Never touches a connection another thread
        may be using: a single server is asked on a connection of the
        probe's own; afterwards only idle pooled connections (which may
        predate the outage) are dropped."""
        if self._client is None:
            self._connect()
        client = self._client
        assert client is not None
        if isinstance(client, RedisCluster):
            client.nodes_manager.initialize()  # drops idle connections of the seeds only
            for node in client.get_primaries():
                client.get_redis_connection(node).ping()
            return
        pool = client.connection_pool
        # one attempt (the maintenance loop is the retry): a probe that close()
        # cuts short must not connect again
        probe = pool.connection_class(**{**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)})
        self._probe_connection = probe
        try:
            probe.connect()
            probe.send_command("PING")
            probe.read_response()
        finally:
            self._probe_connection = None
            probe.disconnect()
        pool.disconnect(inuse_connections=False)

    def _recover(self) -> None:
        with self._pending_lock:
            keys = list(self.deletes_waiting)
        if keys and self.client is not None:
            for start in range(0, len(keys), 1000):
                batch = keys[start:start + 1000]
                self.client.delete(*batch)
                self.written(batch)
            log.warning("replayed %d deletes of values written or deleted while Redis was away", len(keys))
        for hook in self.on_recovery:
            hook()

    def _keepalive(self) -> None:
        timeout = min(self.config.socket_timeout, max(0.5, self.config.ping_interval / 2))
        for pool in self.pools():
            ping_idle_connections(pool, self.config.ping_interval, timeout, self.breaker, self._stop)

    def reconnect(self) -> None:
        """Try to reconnect now, starting a new burst of
        REDIS_RETRY_MAX_ATTEMPTS quick attempts."""
        self.breaker.wake.set()

    def _command_info(self, name: str) -> Any:
        client = self.client
        if isinstance(client, RedisCluster):
            pool = client.get_redis_connection(client.get_default_node()).connection_pool
        else:
            assert client is not None
            pool = client.connection_pool
        connection = pooled_connection(pool)
        try:
            connection.send_command("COMMAND", "INFO", name)
            return connection.read_response()
        finally:
            pool.release(connection)

    def stop(self) -> None:
        """Tell the maintenance thread to end and close every connection,
        without waiting: sockets are shut down, which wakes a thread blocked
        reading one, even when Redis hangs."""
        self._stop.set()
        self._closing.closing = True
        self.breaker.wake.set()
        client = self._client
        try:
            probe = self._probe_connection
            if probe is not None:
                probe.disconnect()
            if isinstance(client, RedisCluster):
                client.close()
            elif client is not None:
                client.connection_pool.disconnect()
        except Exception:  # closing must not raise on a dead server
            log.debug("error while closing Redis connections", exc_info=True)

    def close(self, timeout: float | None = None) -> None:
        """:meth:`stop`, then wait for the background threads ``timeout``
        seconds at most (by default :data:`CLOSE_TIMEOUT`, or
        REDIS_CONNECT_TIMEOUT if shorter; they are daemons and end by
        themselves)."""
        deadline = time.monotonic() + (min(CLOSE_TIMEOUT, self.config.connect_timeout) if timeout is None else timeout)
        self.stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._sentinel_watch is not None:
            self._sentinel_watch.stop(timeout=max(0.0, deadline - time.monotonic()))
