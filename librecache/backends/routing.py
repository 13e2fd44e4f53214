"""Which port of the engine serves a region, per door: the port of its
backend (Redis or memory), through the proxies the region is wrapped in
(:class:`~librecache.engine.ports.ProxiedPort`); made once per backend and
kept on the region. Above the backends and the engine, which do not know it."""

from __future__ import annotations

from typing import Any

from dogpile.cache.proxy import ProxyBackend

from ..engine.ports import AsyncLocalPort, MemoryPort, ProxiedPort, RedisPort
from .aio_redis import AsyncRedisStore
from .memory import MemoryBackend
from .redis import RedisBackend

__all__ = ["async_port", "sync_port"]


def sync_port(region: Any) -> Any:
    """The sync door's port of ``region``'s current backend (made once per backend)."""
    backend = region.backend  # configures the process default on first use
    ports = region.ports
    if ports is None or ports[0] is not backend:
        ports = region.ports = [backend, _sync_port(region, backend), None]
    return ports[1]


def async_port(region: Any) -> Any:
    """The async door's port of ``region``'s current backend (made once per backend)."""
    sync = sync_port(region)
    ports = region.ports
    if ports[2] is None:
        unwrapped = region.unwrapped_backend
        ports[2] = AsyncRedisStore(region, unwrapped) if isinstance(unwrapped, RedisBackend) else AsyncLocalPort(sync)
    return ports[2]


def _sync_port(region: Any, backend: Any) -> Any:
    unwrapped = backend
    while isinstance(unwrapped, ProxyBackend):
        unwrapped = unwrapped.proxied
    if isinstance(unwrapped, RedisBackend):
        port: Any = RedisPort(region, unwrapped)
    elif isinstance(unwrapped, MemoryBackend):
        port = MemoryPort(region, unwrapped)
    else:  # another configuration's backend (librecache.undeclared): dogpile's own calls raise its error
        return ProxiedPort(region, None)
    return ProxiedPort(region, port) if unwrapped is not backend else port
