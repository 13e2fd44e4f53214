"""How one connection to Redis is made: the options every client shares
(credentials, time-outs, TLS verification, the retry policy), connections
whose whole connect is bounded by REDIS_CONNECT_TIMEOUT, and a pool class
that keeps to one connection class."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from redis.connection import Connection, ConnectionPool, SSLConnection
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from .config import CacheConfig
from .retries import Closing, retry_policy

__all__ = ["BoundedConnection", "BoundedSSLConnection", "client_options", "pool_class", "tls_options"]


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
