"""From a :class:`~librecache.CacheConfig` to redis-py clients.

One :class:`RedisConnection` per registry holds the one client (a
:class:`redis.Redis` or a :class:`redis.cluster.RedisCluster`) that every
Redis region of the registry shares, and the prefixed twin handed to users,
which shares the same connections.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import socket
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
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection, ConnectionPool, SSLConnection
from redis.exceptions import ReadOnlyError
from redis.retry import Retry

from ._compat import (
    async_cluster_options,
    call_transient_only,
    call_transient_only_async,
    jitter_backoff,
    pooled_connection,
)
from .config import CacheConfig
from .health import UNAVAILABLE, Breaker, is_transient, ping_idle_connections, run_maintenance
from .logs import RateLimitedLog
from .prefixing import KeySpecs, PrefixedRedis, PrefixedRedisCluster, _adopt
from .replies import text

__all__ = ["AnyRedis", "RedisConnection", "async_client"]

log = logging.getLogger(__name__)
limited = RateLimitedLog(log, interval=30.0)

#: Deletes remembered while Redis is away, at most.
MAX_PENDING_DELETES = 100_000

AnyRedis = redis.Redis | RedisCluster

#: Retries of one command after a connection error or time-out: one, to
#: replace a pooled connection that the server or a provider dropped. The
#: whole schedule of REDIS_RETRY_MAX_ATTEMPTS is never waited out by a call:
#: it governs the background reconnects (see librecache.health). So a cache
#: call waits at most two attempts, each bounded by REDIS_CONNECT_TIMEOUT
#: (connect, TLS, AUTH) and LIBRECACHE_SOCKET_TIMEOUT (the reply); once one
#: call has failed, the breaker is open and calls fall through at once.
MAX_COMMAND_RETRIES = 1


class FailFastRetry(Retry):
    """redis-py's :class:`~redis.retry.Retry` that does not retry permanent
    failures (:func:`is_transient`): they are reported at once, with the
    reason, instead of after the whole back-off schedule."""

    def call_with_retry(self, do: Callable[[], Any], fail: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return call_transient_only(super().call_with_retry, do, fail, args, kwargs, is_transient)


def _retry(config: CacheConfig, retry_class: type[Retry] | type[AsyncRetry] = FailFastRetry) -> Any:
    attempts = config.retry_max_attempts
    retries = MAX_COMMAND_RETRIES if attempts == 0 else min(attempts, MAX_COMMAND_RETRIES)
    return retry_class(jitter_backoff(base=0.01, cap=config.retry_max_delay), retries)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True



class _BoundedConnect:
    """REDIS_CONNECT_TIMEOUT bounds the whole connect: TCP, the TLS
    handshake and the AUTH/HELLO exchange (redis-py bounds only the TCP
    connect by it and the rest by the reply time-out). Uses redis-py's
    ``_sock`` and ``_wrap_socket_with_ssl``: see librecache._compat."""

    socket_connect_timeout: float | None
    socket_timeout: float | None
    _sock: Any

    def _bounded(self, handshake: Callable[[], None]) -> None:
        if self._sock is not None:
            self._sock.settimeout(self.socket_connect_timeout)
        try:
            handshake()
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.socket_timeout)

    def on_connect_check_health(self, check_health: bool = True) -> None:  # redis-py >= 6
        self._bounded(lambda: super(_BoundedConnect, self).on_connect_check_health(  # type: ignore[misc]
            check_health=check_health))

    def on_connect(self) -> None:  # redis-py 5: the handshake itself (>= 6: calls the above)
        self._bounded(lambda: super(_BoundedConnect, self).on_connect())  # type: ignore[misc]


class BoundedConnection(_BoundedConnect, Connection):
    """A plain connection whose connect is bounded as a whole."""


class BoundedSSLConnection(_BoundedConnect, SSLConnection):
    """A TLS connection whose connect, handshake included, is bounded."""

    def _wrap_socket_with_ssl(self, sock: socket.socket) -> Any:
        sock.settimeout(self.socket_connect_timeout)
        return super()._wrap_socket_with_ssl(sock)


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
    if config.tls:
        options.update(tls_options(config))
    return options


def tls_options(config: CacheConfig) -> dict[str, Any]:
    """Certificate and host name verification, with REDIS_CA if given."""
    return {
        "ssl_cert_reqs": "required",  # a string: redis-py 5.x's asyncio client takes no ssl.VerifyMode
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(config.redis_ca) if config.redis_ca else None,
    }


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
        self.client: AnyRedis | None = None
        self.prefixed: PrefixedRedis | PrefixedRedisCluster | None = None
        #: Called (in the maintenance thread) when Redis is back.
        self.on_recovery: list[Callable[[], None]] = []
        self._pending_deletes: dict[str, None] = {}
        self._pending_lock = threading.Lock()
        try:
            self._connect()
        except UNAVAILABLE as exc:
            if self.strict:
                raise
            self.breaker.failure(exc, "connect")
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=run_maintenance,
            args=(self.breaker, self._stop, self._probe, self._recover,
                  self._keepalive if config.ping_interval > 0 else None, config.ping_interval),
            name=f"librecache-maintenance[{self.root or 'no prefix'}]", daemon=True,
        )
        self._thread.start()

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
        client = self.client
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
        client = self.client
        if isinstance(client, RedisCluster):
            client.nodes_manager.initialize()
        for pool in self.pools():
            pool.disconnect()

    # -- the guard every library operation goes through --------------------------------

    def guard(self, operation: str, action: Callable[[Any], Any], fallback: Callable[[], Any],
              write: bool = False) -> Any:
        """Run ``action(client)``; when Redis is unavailable, count it and
        return ``fallback()`` instead (or raise, in strict mode). A READONLY
        reply resets the connections and runs ``action`` once more."""
        breaker = self.breaker
        client = self.client
        if not self.strict and (not breaker.up or client is None):
            breaker.fallthrough(write)
            return fallback()
        try:
            try:
                return action(client)
            except ReadOnlyError:
                limited.warning("readonly", "READONLY reply during %s: reconnecting to the current master", operation)
                self.reset()
                return action(self.client)
        except UNAVAILABLE as exc:
            if self.strict:
                raise
            breaker.failure(exc, operation)
            breaker.fallthrough(write)
            return fallback()

    def defer_delete(self, keys: list[str]) -> None:
        """Remember deletes that could not reach Redis; they are replayed when
        it is back, so no stale value survives the outage."""
        with self._pending_lock:
            for key in keys:
                self._pending_deletes[key] = None
            overflow = len(self._pending_deletes) - MAX_PENDING_DELETES
            if overflow > 0:
                for key in list(self._pending_deletes)[:overflow]:
                    del self._pending_deletes[key]
                log.error("more than %d deletes wait for Redis; the oldest %d are forgotten",
                          MAX_PENDING_DELETES, overflow)

    @property
    def pending_deletes(self) -> int:
        return len(self._pending_deletes)

    # -- maintenance (in the maintenance thread) --------------------------------------

    def _probe(self) -> None:
        if self.client is None:
            self._connect()
        client = self.client
        assert client is not None
        if isinstance(client, RedisCluster):
            client.nodes_manager.initialize()
            for node in client.get_primaries():
                client.get_redis_connection(node).ping()
        else:
            client.connection_pool.disconnect()
            client.ping()

    def _recover(self) -> None:
        with self._pending_lock:
            keys = list(self._pending_deletes)
            self._pending_deletes.clear()
        if keys and self.client is not None:
            for start in range(0, len(keys), 1000):
                self.client.delete(*keys[start:start + 1000])
            log.warning("replayed %d deletes made while Redis was away", len(keys))
        for hook in self.on_recovery:
            hook()

    def _keepalive(self) -> None:
        timeout = min(self.config.socket_timeout, max(0.5, self.config.ping_interval / 2))
        for pool in self.pools():
            ping_idle_connections(pool, timeout, self.breaker)

    def reconnect(self) -> None:
        """Start the reconnect schedule again after it gave up."""
        self.breaker.gave_up = False
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

    def close(self) -> None:
        """Stop the maintenance thread and close every connection."""
        self._stop.set()
        self.breaker.wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            if isinstance(self.client, RedisCluster):
                self.client.close()
            elif self.client is not None:
                self.client.connection_pool.disconnect()
        except Exception:  # closing must not raise on a dead server
            log.debug("error while closing Redis connections", exc_info=True)


class AsyncFailFastRetry(AsyncRetry):
    """The asyncio twin of :class:`FailFastRetry`."""

    async def call_with_retry(  # type: ignore[override]
        self, do: Callable[[], Any], fail: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        return await call_transient_only_async(super().call_with_retry, do, fail, args, kwargs, is_transient)


#: Connections per node of an asyncio client (stream subscribers block on one each).
ASYNC_MAX_CONNECTIONS = 10_000


def async_client(config: CacheConfig) -> AsyncRedis | AsyncRedisCluster:
    """A :mod:`redis.asyncio` client of the configured Redis, with the same
    credentials, TLS verification, time-outs and retry rules as the
    registry's client (keys given in full: no prefixing)."""
    options = client_options(config)
    options["retry"] = _retry(config, AsyncFailFastRetry)
    if config.tls:
        options["ssl"] = True
    if config.cluster:
        # every blocked stream subscriber holds a connection to its node
        cluster = AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(uri.host, uri.port) for uri in config.redis_uris],
            max_connections=ASYNC_MAX_CONNECTIONS, **async_cluster_options(not config.alternative_dns_lookup),
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
    uri = config.redis_uris[0]
    return AsyncRedis(host=uri.host, port=uri.port, db=uri.db, **options)
