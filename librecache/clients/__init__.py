"""Every Redis client librecache uses is built here: from a
:class:`~librecache.CacheConfig` to the redis-py client of a single server,
a cluster or a Sentinel-managed master (and the :mod:`redis.asyncio` twin
the stream store uses), with the same credentials, TLS verification,
time-outs and retry policy everywhere.

- :mod:`~librecache.clients.options`: the options every client shares;
- :mod:`~librecache.clients.retries`: the retry policy of a command;
- :mod:`~librecache.clients.sentinel`: connections to the master the
  sentinels name, and following their failovers;
- :mod:`~librecache.clients.hostnames`: the cluster's host names
  (REDIS_USE_ALTERNATIVE_DNS_LOOKUP).

What happens when a call on such a client fails is
:class:`librecache.guard.RedisConnection`'s business.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import Connection as AsyncConnection
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection, ConnectionPool

from .._compat import BoundedConnection, BoundedSSLConnection, async_cluster_options, timed_send
from ..config import CacheConfig
from .hostnames import HostnameBook
from .options import client_options, pool_class
from .retries import AsyncFailFastRetry, Closing, retry_policy
from .sentinel import SentinelWatch, async_sentinel_client, sentinel_pool

__all__ = ["ASYNC_MAX_CONNECTIONS", "AnyRedis", "async_client", "build_client"]

AnyRedis = redis.Redis | RedisCluster


def build_client(
    config: CacheConfig, on_master_switch: list[Callable[[], None]], closing: Closing | None = None
) -> tuple[AnyRedis, SentinelWatch | None]:
    """The client of the configured Redis (a cluster client connects at
    once), and for Sentinel the watcher that follows failovers (its
    ``on_master_switch`` hooks run when the master moves). Its connections
    stop retrying once ``closing`` is set."""
    options = client_options(config, closing)
    connection_class: type[Connection] = BoundedSSLConnection if config.tls else BoundedConnection
    if config.cluster:
        dynamic = True
        if config.alternative_dns_lookup:
            connection_class = HostnameBook.for_config(config).connection_class(connection_class)
            dynamic = False  # topology refreshes keep using the configured endpoint
        first, *others = config.redis_uris
        cluster = RedisCluster(
            url=f"{first.scheme}://{first.address}",
            startup_nodes=[ClusterNode(uri.host, uri.port) for uri in others] or None,
            connection_pool_class=pool_class(connection_class),
            dynamic_startup_nodes=dynamic,
            **options,
        )
        return cluster, None
    if config.sentinel:
        sentinels = sentinel_pool(config, closing)
        return redis.Redis(connection_pool=sentinels), SentinelWatch(sentinels, on_master_switch)
    uri = config.redis_uris[0]
    pool = ConnectionPool(connection_class=connection_class, host=uri.host, port=uri.port, db=uri.db, **options)
    return redis.Redis(connection_pool=pool), None


#: Connections per node of an asyncio client (stream subscribers block on one each).
ASYNC_MAX_CONNECTIONS = 10_000


def async_client(config: CacheConfig) -> AsyncRedis | AsyncRedisCluster:
    """A :mod:`redis.asyncio` client of the configured Redis, with the same
    credentials, TLS verification, time-outs and retry rules as the
    registry's client (keys given in full: no prefixing)."""
    options = client_options(config)
    options["retry"] = retry_policy(config, AsyncFailFastRetry)
    if config.tls:
        options["ssl"] = True
    base = timed_send(AsyncSSLConnection if config.tls else AsyncConnection)
    if config.cluster:
        # every blocked stream subscriber holds a connection to its node
        cluster = AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(uri.host, uri.port) for uri in config.redis_uris],
            max_connections=ASYNC_MAX_CONNECTIONS, **async_cluster_options(not config.alternative_dns_lookup),
            **options,
        )
        # The asyncio cluster client connects lazily: before its first
        # command, make every node connection bound its writes without a Task
        # (and use the host-name book).
        connection_class = HostnameBook.for_config(config).connection_class(base) \
            if config.alternative_dns_lookup else base
        cluster.nodes_manager.connection_kwargs["connection_class"] = connection_class
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class
        return cluster
    if config.sentinel:
        return async_sentinel_client(config, options, ASYNC_MAX_CONNECTIONS)
    uri = config.redis_uris[0]
    client = AsyncRedis(host=uri.host, port=uri.port, db=uri.db, **options)
    client.connection_pool.connection_class = base  # no connection is made before the first command
    return client
