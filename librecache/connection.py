"""From a :class:`~librecache.CacheConfig` to redis-py clients.

One :class:`RedisConnection` per registry holds the one client (a
:class:`redis.Redis` or a :class:`redis.cluster.RedisCluster`) that every
Redis region of the registry shares, and the prefixed twin handed to users,
which shares the same connections.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import Connection as AsyncConnection
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.asyncio.sentinel import SentinelManagedSSLConnection as AsyncSentinelManagedSSLConnection
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection, ConnectionPool, SSLConnection
from redis.exceptions import ReadOnlyError, ResponseError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection, SentinelManagedSSLConnection

from . import forks
from ._compat import renew_locks, renew_pool_in_child
from .config import CacheConfig
from .health import FULL, OUTAGE, UNAVAILABLE, Breaker, classify, is_transient, ping_idle_connections, run_maintenance
from .logs import RateLimitedLog
from .prefixing import KeySpecs, PrefixedRedis, PrefixedRedisCluster, _adopt
from .replies import text

__all__ = ["AnyRedis", "RedisConnection", "async_client"]

log = logging.getLogger(__name__)
limited = RateLimitedLog(log, interval=30.0)

#: Deletes remembered while Redis is away, at most; past that, the
#: namespaces concerned are invalidated instead (see ``on_overflow``).
MAX_PENDING_DELETES = 100_000
#: Creation locks whose acquisition failed midway, remembered at most.
MAX_ABANDONED_LOCKS = 10_000

AnyRedis = redis.Redis | RedisCluster

#: Retries of one command after a connection error or time-out: one, to
#: replace a pooled connection that the server or a provider dropped. The
#: whole schedule of REDIS_RETRY_MAX_ATTEMPTS is never waited out by a call:
#: it governs the background reconnects (see librecache.health). So a cache
#: call waits at most two attempts, each bounded by REDIS_CONNECT_TIMEOUT
#: (connect, TLS, AUTH) and LIBRECACHE_SOCKET_TIMEOUT (the reply); once one
#: call has failed, the breaker is open and calls fall through at once.
MAX_COMMAND_RETRIES = 1


def _only_transient(is_retryable: Callable[[Exception], bool] | None) -> Callable[[Exception], bool]:
    """``is_retryable`` narrowed to transient failures (:func:`is_transient`)."""

    def retryable(error: Exception) -> bool:
        return is_transient(error) and (is_retryable is None or is_retryable(error))

    return retryable


class FailFastRetry(Retry):
    """redis-py's :class:`~redis.retry.Retry` that does not retry permanent
    failures (:func:`is_transient`): they are reported at once, with the
    reason, instead of after the whole back-off schedule."""

    def call_with_retry(  # type: ignore[override]
        self,
        do: Callable[[], Any],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        return super().call_with_retry(
            do, fail, is_retryable=_only_transient(is_retryable), with_failure_count=with_failure_count
        )


def _retry(config: CacheConfig) -> Retry:
    attempts = config.retry_max_attempts
    retries = MAX_COMMAND_RETRIES if attempts == 0 else min(attempts, MAX_COMMAND_RETRIES)
    return FailFastRetry(ExponentialWithJitterBackoff(base=0.01, cap=config.retry_max_delay), retries)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True



class _BoundedConnect:
    """REDIS_CONNECT_TIMEOUT bounds the whole connect: TCP, the TLS
    handshake and the AUTH/HELLO exchange (redis-py bounds only the TCP
    connect by it and the rest by the reply time-out)."""

    socket_connect_timeout: float | None
    socket_timeout: float | None
    _sock: Any

    def on_connect_check_health(self, check_health: bool = True) -> None:
        if self._sock is not None:
            self._sock.settimeout(self.socket_connect_timeout)
        try:
            super().on_connect_check_health(check_health=check_health)  # type: ignore[misc]
        except ResponseError as exc:
            if "DB index" not in str(exc):
                raise
            db = getattr(self, "db", "?")
            raise ResponseError(
                f"REDIS_URI: the server refuses database {db} ({exc}); use a database number "
                "the server has (its 'databases' setting)"
            ) from None
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.socket_timeout)


class BoundedConnection(_BoundedConnect, Connection):
    """A plain connection whose connect is bounded as a whole."""


class BoundedSSLConnection(_BoundedConnect, SSLConnection):
    """A TLS connection whose connect, handshake included, is bounded."""

    def _wrap_socket_with_ssl(self, sock: socket.socket) -> Any:
        sock.settimeout(self.socket_connect_timeout)
        return super()._wrap_socket_with_ssl(sock)


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


def pool_class(connection_class: type[Connection]) -> type[ConnectionPool]:
    """A connection pool class that always makes ``connection_class``
    connections, whatever redis-py asks for."""

    class Pool(ConnectionPool):
        def __init__(self, connection_class: Any = None, **kwargs: Any) -> None:
            super().__init__(connection_class=fixed, **kwargs)

    fixed = connection_class
    return Pool


class HostnameBook:
    """The host name each cluster node was given or announced as, by the
    address redis-py knows it by (REDIS_USE_ALTERNATIVE_DNS_LOOKUP).

    redis-py names nodes by address: it swaps ``localhost`` for its IP, and
    takes the IP a node announces even when the node also announces a host
    name. A certificate that names host names only then fails. With this
    book, every connection is opened to the host name instead, so that the
    operating system resolves it at each connect and TLS checks that name.
    Unknown addresses are looked up by asking the configured endpoint for
    ``CLUSTER SLOTS`` (which carries the announced host names).
    """

    @classmethod
    def for_config(cls, config: CacheConfig) -> HostnameBook:
        """The book of ``config``, asking its endpoint with the same
        credentials, TLS verification and time-outs as the clients."""
        return cls(config, {key: value for key, value in client_options(config).items() if key != "retry"})

    def __init__(self, config: CacheConfig, connection_options: dict[str, Any]) -> None:
        self._seeds = [(uri.host, uri.port) for uri in config.redis_uris]
        self._options = connection_options
        self._tls = config.tls
        self._names: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()
        self._next_refresh = 0.0
        for host, port in self._seeds:
            self._remember(host, port)
        forks.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def _remember(self, host: str, port: int, address: str | None = None) -> None:
        if _is_ip(host):
            return
        addresses = [address] if address else []
        if not addresses:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                addresses = [str(info[4][0]) for info in infos]
            except OSError:
                return
        for ip in addresses:
            self._names.setdefault((str(ip), port), host)

    def name_for(self, host: str, port: int) -> str:
        """The host name to connect to for the node redis-py calls
        ``host:port``; ``host`` itself when no name is known."""
        if not _is_ip(host):
            return host
        name = self._names.get((host, port))
        if name is None:
            self.refresh()
            name = self._names.get((host, port))
        return name or host

    def refresh(self) -> None:
        """Learn the announced host names from the configured endpoint (at
        most once a second)."""
        with self._lock:
            if time.monotonic() < self._next_refresh:
                return
            self._next_refresh = time.monotonic() + 1.0
            for host, port in self._seeds:
                connection_class = SSLConnection if self._tls else Connection
                connection = connection_class(host=host, port=port, **self._options)
                try:
                    connection.send_command("CLUSTER", "SLOTS")
                    reply = connection.read_response()
                except Exception as exc:
                    log.warning("cannot read the cluster's host names from %s:%s: %s", host, port, exc)
                    continue
                finally:
                    connection.disconnect()
                for entry in reply:
                    for node in entry[2:]:
                        announced, node_port = text(node[0]), int(node[1])
                        meta = node[3] if len(node) > 3 else {}
                        if isinstance(meta, list):
                            meta = dict(zip(meta[::2], meta[1::2], strict=False))
                        meta = {text(k): text(v) for k, v in (meta or {}).items()}
                        if _is_ip(announced) and meta.get("hostname"):
                            self._names[(announced, node_port)] = meta["hostname"]
                        else:
                            self._remember(announced, node_port, meta.get("ip"))
                return

    def connection_class(self, base: type[Any]) -> type[Any]:
        """``base``, connecting to the host name the book knows."""
        book = self

        class HostnameConnection(base):  # type: ignore[valid-type,misc]
            def __init__(self, host: str = "localhost", port: int = 6379, **kwargs: Any) -> None:
                super().__init__(host=book.name_for(host, int(port)), port=port, **kwargs)

        return HostnameConnection


def client_options(config: CacheConfig) -> dict[str, Any]:
    """The keyword arguments common to single and cluster clients."""
    options: dict[str, Any] = {
        "username": config.username,
        "password": config.password,
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": config.socket_timeout,
        "retry": _retry(config),
    }
    if config.ping_interval > 0:
        # redis-py's lazy check: a PING before a command on a connection
        # idle that long (the background keep-alive pings idle ones first)
        options["health_check_interval"] = config.ping_interval
    if config.tls:
        options.update(tls_options(config))
    return options


def tls_options(config: CacheConfig) -> dict[str, Any]:
    """Certificate and host name verification, with REDIS_CA if given."""
    return {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(config.redis_ca) if config.redis_ca else None,
    }


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


def sentinel_pool(config: CacheConfig) -> SentinelConnectionPool:
    """A pool of connections to the master the sentinels name: each new
    connection asks them (the first that answers), so a reconnect after a
    failover reaches the new master; a READONLY reply drops the connection
    (redis-py turns it into a connection error, which is retried once)."""
    assert config.sentinel_master is not None
    manager = Sentinel([(uri.host, uri.port) for uri in config.redis_uris],
                       sentinel_kwargs=sentinel_options(config))
    connection_class = BoundedSentinelSSLConnection if config.tls else BoundedSentinelConnection
    return SentinelConnectionPool(config.sentinel_master, manager, connection_class=connection_class,
                                  db=config.redis_uris[0].db, **client_options(config))


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
        self._pending_deletes: dict[str, Any] = {}
        self._pending_lock = threading.Lock()
        self._abandoned_locks: dict[str, tuple[str, float]] = {}
        #: The reconnect probe's own connection while it runs (never a pooled one).
        self._probe_connection: Connection | None = None
        self._generation = forks.generation
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
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
        config = self.config
        options = client_options(config)
        connection_class: type[Connection] = BoundedSSLConnection if config.tls else BoundedConnection
        client: AnyRedis
        if self.cluster:
            dynamic = True
            if config.alternative_dns_lookup:
                connection_class = HostnameBook.for_config(config).connection_class(connection_class)
                dynamic = False  # topology refreshes keep using the configured endpoint
            first, *others = config.redis_uris
            client = RedisCluster(
                url=f"{first.scheme}://{first.address}",
                startup_nodes=[ClusterNode(uri.host, uri.port) for uri in others] or None,
                connection_pool_class=pool_class(connection_class),
                dynamic_startup_nodes=dynamic,
                **options,
            )
        elif config.sentinel:
            sentinels = sentinel_pool(config)
            client = redis.Redis(connection_pool=sentinels)
            self._sentinel_watch = SentinelWatch(sentinels, self.on_master_switch)
        else:
            uri = config.redis_uris[0]
            pool = ConnectionPool(connection_class=connection_class, host=uri.host, port=uri.port, db=uri.db, **options)
            client = redis.Redis(connection_pool=pool)
        self.prefixed = _adopt(
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

        ``stats``: the namespace's :class:`~librecache.metrics.NamespaceStats`,
        whose ``errors`` and ``fallthroughs`` count this operation too."""
        breaker = self.breaker
        client = self.client
        if not self.strict and (not breaker.up or client is None):
            breaker.fallthrough(write)
            if stats is not None:
                stats.fallthroughs += 1
            return fallback()
        try:
            try:
                return action(client)
            except ReadOnlyError:
                limited.warning("readonly", "READONLY reply during %s: reconnecting to the current master", operation)
                self.reset()
                return action(self.client)
        except Exception as exc:
            if self.strict:
                raise
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
            return fallback()

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
                self._pending_deletes[key] = namespace
            if len(self._pending_deletes) > MAX_PENDING_DELETES:
                overflowed = set(self._pending_deletes.values())
                self._pending_deletes.clear()
        if overflowed:
            named = sorted(str(getattr(ns, "value", ns)) for ns in overflowed if ns is not None)
            log.error("more than %d writes and deletes wait for Redis; invalidating %s instead of remembering "
                      "each key", MAX_PENDING_DELETES, ", ".join(named) or "nothing (no namespace known)")
            for hook in self.on_overflow:
                hook(overflowed - {None})

    def is_pending(self, key: str) -> bool:
        """Whether a delete of ``key`` waits for Redis (read it as a miss)."""
        return bool(self._pending_deletes) and key in self._pending_deletes

    def written(self, keys: list[str]) -> None:
        """``keys`` were written or deleted: no delete of them waits any more."""
        if self._pending_deletes:
            with self._pending_lock:
                for key in keys:
                    self._pending_deletes.pop(key, None)

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
        return len(self._pending_deletes)

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
        probe = pool.connection_class(**pool.connection_kwargs)
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
            keys = list(self._pending_deletes)
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
        connection = pool.get_connection()
        try:
            connection.send_command("COMMAND", "INFO", name)
            return connection.read_response()
        finally:
            pool.release(connection)

    def close(self, timeout: float | None = None) -> None:
        """Stop the maintenance thread and close every connection; return
        within ``timeout`` seconds (REDIS_CONNECT_TIMEOUT by default) even
        when Redis hangs: sockets are shut down first, which wakes a thread
        blocked reading one, and the thread is waited for no longer than
        that (it is a daemon and ends by itself)."""
        self._stop.set()
        self.breaker.wake.set()
        deadline = time.monotonic() + (self.config.connect_timeout if timeout is None else timeout)
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
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._sentinel_watch is not None:
            self._sentinel_watch.stop(timeout=max(0.0, deadline - time.monotonic()))


class AsyncFailFastRetry(AsyncRetry):
    """The asyncio twin of :class:`FailFastRetry`."""

    async def call_with_retry(  # type: ignore[override]
        self,
        do: Callable[[], Any],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        return await super().call_with_retry(
            do, fail, is_retryable=_only_transient(is_retryable), with_failure_count=with_failure_count
        )


#: Connections per node of an asyncio client (stream subscribers block on one each).
ASYNC_MAX_CONNECTIONS = 10_000


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
    """The asyncio pool of the master the sentinels name, following their
    ``+switch-master`` announcements like :class:`SentinelWatch`: a task of
    the event loop that uses the pool (started by the first connection,
    cancelled when the client is closed) asks the sentinels again on each
    announcement, which drops the idle connections; busy ones (a blocked
    ``XREAD``) are dropped when released."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watch: asyncio.Task[None] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._follow())
        return await super().get_connection(*args, **kwargs)

    async def disconnect(self, inuse_connections: bool = True) -> None:
        watch = self._watch
        if inuse_connections and watch is not None and watch is not asyncio.current_task():
            self._watch = None
            watch.cancel()
        await super().disconnect(inuse_connections)

    async def _follow(self) -> None:
        while True:
            for sentinel in list(self.sentinel_manager.sentinels):
                pubsub = sentinel.pubsub()
                try:
                    await pubsub.subscribe("+switch-master")
                    checked = 0.0
                    while True:
                        message = await pubsub.get_message(timeout=0.5)
                        if _announces(message, self.service_name) or \
                                time.monotonic() - checked > SentinelWatch.RECHECK:
                            checked = time.monotonic()
                            try:
                                await self.get_master_address()
                            except (redis.RedisError, OSError) as exc:
                                limited.warning("sentinel", "no sentinel names the master: %s", exc)
                except (redis.RedisError, OSError):
                    continue  # the next sentinel
                finally:
                    await pubsub.aclose()
            await asyncio.sleep(1.0)


def async_client(config: CacheConfig) -> AsyncRedis | AsyncRedisCluster:
    """A :mod:`redis.asyncio` client of the configured Redis, with the same
    credentials, TLS verification, time-outs and retry rules as the
    registry's client (keys given in full: no prefixing)."""
    options = client_options(config)
    retry = options.pop("retry")
    options["retry"] = AsyncFailFastRetry(retry._backoff, retry.get_retries())
    if config.tls:
        options["ssl"] = True
    if config.cluster:
        # every blocked stream subscriber holds a connection to its node
        cluster = AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(uri.host, uri.port) for uri in config.redis_uris],
            max_connections=ASYNC_MAX_CONNECTIONS, dynamic_startup_nodes=not config.alternative_dns_lookup,
            **options,
        )
        if config.alternative_dns_lookup:
            # The asyncio cluster client connects lazily: before its first
            # command, make every node connection use the host-name book.
            base = AsyncSSLConnection if config.tls else AsyncConnection
            connection_class = HostnameBook.for_config(config).connection_class(base)
            cluster.nodes_manager.connection_kwargs["connection_class"] = connection_class
            for node in cluster.nodes_manager.startup_nodes.values():
                node.connection_class = connection_class
        return cluster
    if config.sentinel:
        assert config.sentinel_master is not None
        sentinel_kwargs = sentinel_options(config)
        sentinel_kwargs["retry"] = AsyncFailFastRetry(NoBackoff(), 0)
        manager = AsyncSentinel([(uri.host, uri.port) for uri in config.redis_uris], sentinel_kwargs=sentinel_kwargs)
        options.pop("ssl", None)
        options["connection_class"] = AsyncSentinelSSLConnection if config.tls else AsyncSentinelConnection
        pool = AsyncSentinelPool(config.sentinel_master, manager, db=config.redis_uris[0].db,
                                 max_connections=ASYNC_MAX_CONNECTIONS, **options)
        return AsyncRedis.from_pool(pool)
    uri = config.redis_uris[0]
    return AsyncRedis(host=uri.host, port=uri.port, db=uri.db, **options)
