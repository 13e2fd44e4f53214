"""REDIS_USE_ALTERNATIVE_DNS_LOOKUP: the host name of every cluster node,
learnt from the configuration and from ``CLUSTER SLOTS``."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any

from redis.connection import Connection, SSLConnection

from .. import forks
from ..config import CacheConfig
from ..replies import text
from .options import client_options

__all__ = ["HostnameBook", "is_ip"]

log = logging.getLogger(__name__)


def is_ip(host: str) -> bool:
    """True for an IPv4 or IPv6 address (not a host name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
        if is_ip(host):
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
        if not is_ip(host):
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
                        if is_ip(announced) and meta.get("hostname"):
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
