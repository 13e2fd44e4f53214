"""The private names of redis-py and dogpile.cache that librecache relies on.

Each function stands in for a public behaviour those libraries do not offer
(named in its docstring); ``tests/test_compat.py`` has one test per name, so
that an upgrade which removes one fails loudly, naming it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dogpile.util import NameRegistry
from redis.connection import ConnectionPool

__all__ = [
    "borrow_idle_connection",
    "pool_connections",
    "renew_lock_registry",
    "renew_locks",
    "renew_pool_in_child",
]


# -- redis-py: connection pools ---------------------------------------------------------


def pool_connections(pool: ConnectionPool) -> list[Any]:
    """Every connection of ``pool``, idle and in use (``_available_connections``,
    ``_in_use_connections``). Stands in for a public "list the pool's
    connections", which redis-py does not have."""
    with pool._lock:
        return [*pool._available_connections, *pool._in_use_connections]


def renew_pool_in_child(pool: ConnectionPool) -> None:
    """In a forked child: forget the parent's connections without touching
    the parent's sockets.

    Stands in for redis-py's own fork check (``ConnectionPool._checkpid``),
    which takes ``_fork_lock``, a lock a parent thread may have held at the
    fork (:func:`renew_locks` replaces it first). Each connection's
    descriptor is closed in this process only (redis-py's ``disconnect``
    skips the socket ``shutdown`` when the pid differs from the one that
    connected), then ``reset()`` empties ``_available_connections`` and
    ``_in_use_connections`` and records the child's pid, so that
    ``_checkpid`` has nothing left to do.
    """
    for connection in [*pool._available_connections, *pool._in_use_connections]:
        try:
            connection.disconnect()
        except Exception:  # a broken inherited socket is forgotten all the same
            pass
    pool.reset()


_RLOCK = type(threading.RLock())


def _from_redis_py(cls: type) -> bool:
    """A redis-py class, or a subclass of one (librecache's pools, connections, clients)."""
    return any(base.__module__.startswith("redis.") for base in cls.__mro__)


_LOCK_TYPES = (type(threading.Lock()), _RLOCK)


def renew_locks(*roots: Any, depth: int = 8) -> int:
    """In a forked child: replace every lock held in an attribute of a
    redis-py object reachable from ``roots`` (clients, their pools and
    connections, a cluster's nodes manager, load balancer, event
    dispatcher...) by a new lock of the same kind; a lock that several
    objects share is replaced by one new lock they share. Returns how many
    locks were replaced.

    Stands in for fork support that redis-py does not have: any of these
    locks (``ConnectionPool._lock`` and ``_fork_lock``, ``RedisCluster._lock``,
    ``NodesManager._lock`` and ``_initialization_lock``, ``LoadBalancer._lock``,
    ``EventDispatcher._lock``, taken on every release of a connection, ...)
    may have been held by a parent thread at the fork. Walks the objects'
    ``__dict__`` (private attributes included), redis-py's objects (and
    subclasses of them) only.
    """
    renewed: dict[int, Any] = {}
    seen: set[int] = set()

    def walk(obj: Any, level: int) -> None:
        if level > depth or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            for value in list(obj.values()):
                walk(value, level)
            return
        if isinstance(obj, (list, tuple, set, frozenset)):
            for value in list(obj):
                walk(value, level)
            return
        if not hasattr(obj, "__dict__") or not _from_redis_py(type(obj)):
            return
        for name, value in list(vars(obj).items()):
            if isinstance(value, _LOCK_TYPES):
                new = renewed.get(id(value))
                if new is None:
                    fresh = threading.RLock() if isinstance(value, _RLOCK) else threading.Lock()
                    new = renewed[id(value)] = fresh
                setattr(obj, name, new)
            else:
                walk(value, level + 1)

    for root in roots:
        walk(root, 0)
    return len(renewed)


@contextmanager
def borrow_idle_connection(pool: ConnectionPool, idle_for: float, seen: set[int]) -> Iterator[Any]:
    """One connected connection of ``pool`` that nobody used for ``idle_for``
    seconds and that is not in ``seen`` (by ``id``), taken out of the idle
    list for the duration of the block (``None`` when there is none).

    Stands in for a public "ping idle connections" (redis-py's
    ``health_check_interval`` only pings lazily, before a command). Reads
    ``_lock``, ``_available_connections``, ``_in_use_connections``, the
    connection's ``_sock`` (connected or not) and ``next_health_check``
    (when it was last used, with ``health_check_interval`` set).
    """
    import time

    chosen = None
    now = time.monotonic()
    with pool._lock:
        for connection in pool._available_connections:
            if id(connection) in seen or connection._sock is None:
                continue
            interval = connection.health_check_interval or 0
            last_used = connection.next_health_check - interval if interval else 0.0
            if now - last_used < idle_for:
                continue
            chosen = connection
            break
        if chosen is not None:
            seen.add(id(chosen))
            pool._available_connections.remove(chosen)
            pool._in_use_connections.add(chosen)
    try:
        yield chosen
    finally:
        if chosen is not None:
            pool.release(chosen)


# -- dogpile.cache ------------------------------------------------------------------------


def renew_lock_registry(region: Any) -> None:
    """In a forked child: a fresh registry of creation mutexes for a
    configured region (``region._lock_registry``, made by ``configure()``
    from ``region._create_mutex``), since a parent thread may have held one
    of them, or the registry's own lock, at the fork."""
    if "_lock_registry" in region.__dict__:
        region._lock_registry = NameRegistry(region._create_mutex)
