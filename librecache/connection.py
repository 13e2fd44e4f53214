"""From a :class:`~librecache.CacheConfig` to redis-py clients.

One :class:`RedisConnection` per registry holds the one client (a
:class:`redis.Redis` or a :class:`redis.cluster.RedisCluster`) that every
Redis region of the registry shares, and the prefixed twin handed to users,
which shares the same connections.
"""

from __future__ import annotations

import copy
import logging
import ssl
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from .config import CacheConfig
from .prefixing import KeySpecs, PrefixedRedis, PrefixedRedisCluster, _adopt

__all__ = ["AnyRedis", "RedisConnection"]

log = logging.getLogger(__name__)

AnyRedis = redis.Redis | RedisCluster

#: Retries of one command after a connection error or time-out. The whole
#: retry schedule of REDIS_RETRY_MAX_ATTEMPTS is never waited out by one
#: call: a cache call must fail fast and let the caller fall through.
MAX_COMMAND_RETRIES = 2


def _retry(config: CacheConfig) -> Retry:
    attempts = config.retry_max_attempts
    retries = MAX_COMMAND_RETRIES if attempts == 0 else min(attempts, MAX_COMMAND_RETRIES)
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=config.retry_max_delay), retries)


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
        options.update(
            ssl=True,
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            ssl_check_hostname=True,
            ssl_ca_certs=str(config.redis_ca) if config.redis_ca else None,
        )
    return options


class RedisConnection:
    """The clients of one registry.

    :param config: the configuration; must have ``redis_uris``.
    :ivar client: the client the backends use (keys given in full).
    :ivar prefixed: the users' client, which prefixes every key with
        ``{prefix}::``; shares ``client``'s connections.
    """

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.cluster = config.cluster
        root = f"{config.key_prefix}::" if config.key_prefix else ""
        options = client_options(config)
        self.client: AnyRedis
        if self.cluster:
            self.client = RedisCluster(
                startup_nodes=[ClusterNode(uri.host, uri.port) for uri in config.redis_uris],
                **options,
            )
        else:
            uri = config.redis_uris[0]
            self.client = redis.Redis(host=uri.host, port=uri.port, db=uri.db, **options)
        self.key_specs = KeySpecs(self._command_info)
        prefixed = copy.copy(self.client)
        self.prefixed: PrefixedRedis | PrefixedRedisCluster = _adopt(
            prefixed,
            PrefixedRedisCluster if self.cluster else PrefixedRedis,
            _Owner(root, self.key_specs),
        )

    def _command_info(self, name: str) -> Any:
        if isinstance(self.client, RedisCluster):
            node = self.client.get_default_node()
            pool = self.client.get_redis_connection(node).connection_pool
        else:
            pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_command("COMMAND", "INFO", name)
            return connection.read_response()
        finally:
            pool.release(connection)

    def close(self) -> None:
        """Close every connection; the clients reconnect if used again."""
        try:
            if isinstance(self.client, RedisCluster):
                self.client.close()
            else:
                self.client.connection_pool.disconnect()
        except Exception:  # closing must not raise on a dead server
            log.debug("error while closing Redis connections", exc_info=True)


class _Owner:
    """What :func:`_adopt` copies onto an adopted client."""

    def __init__(self, key_prefix: str, key_specs: KeySpecs) -> None:
        self._key_prefix = key_prefix
        self._key_specs = key_specs
