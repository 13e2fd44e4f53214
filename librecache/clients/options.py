"""The options every client shares: credentials, time-outs, TLS
verification and the retry policy; and a pool class that keeps to one
connection class (the bounded connections of :mod:`librecache._compat`,
whose whole connect REDIS_CONNECT_TIMEOUT bounds)."""

from __future__ import annotations

from typing import Any

from redis.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError, TimeoutError

from ..config import CacheConfig
from .retries import Closing, retry_policy

__all__ = ["client_options", "pool_class", "tls_options"]


def client_options(config: CacheConfig, closing: Closing | None = None) -> dict[str, Any]:
    """The keyword arguments common to single and cluster clients (whose
    connections stop retrying once ``closing`` is set)."""
    options: dict[str, Any] = {
        "username": config.username,
        "password": config.password,
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": config.socket_timeout,
        "retry": retry_policy(config, closing=closing),
        # what the retry policy retries: redis-py before 6 retries only these
        # (its Retry's own list is ignored), redis-py 6 on adds them to it
        "retry_on_error": [ConnectionError, TimeoutError],
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
        "ssl_cert_reqs": "required",  # a string: redis-py 5.x's asyncio client takes no ssl.VerifyMode
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(config.redis_ca) if config.redis_ca else None,
    }


def pool_class(connection_class: type[Connection]) -> type[ConnectionPool]:
    """A connection pool class that always makes ``connection_class``
    connections, whatever redis-py asks for."""

    class Pool(ConnectionPool):
        def __init__(self, connection_class: Any = None, **kwargs: Any) -> None:
            super().__init__(connection_class=fixed, **kwargs)

    fixed = connection_class
    return Pool
