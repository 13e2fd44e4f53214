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
    "renew_cluster_locks",
    "renew_lock_registry",
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
    the parent's sockets, with locks no parent thread can hold.

    Stands in for redis-py's own fork check (``ConnectionPool._checkpid``),
    which takes ``_fork_lock`` (and ``reset()`` takes ``_lock``): a lock a
    parent thread held at the fork stays locked in the child for ever. Here
    both are replaced first (``_lock``, ``_fork_lock``), each connection's
    descriptor is closed in this process only (redis-py's ``disconnect``
    skips the socket ``shutdown`` when the pid differs from the one that
    opened it), and ``reset()`` records the child's pid.
    """
    pool._fork_lock = threading.RLock()
    pool._lock = threading.RLock()
    for connection in [*pool._available_connections, *pool._in_use_connections]:
        try:
            connection.disconnect()
        except Exception:  # a broken inherited socket is forgotten all the same
            pass
    pool.reset()


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


# -- redis-py: the cluster client -------------------------------------------------------


def renew_cluster_locks(clients: list[Any]) -> None:
    """In a forked child: give a :class:`~redis.cluster.RedisCluster` (and
    its copies, which share its nodes manager) locks no parent thread can
    hold: the client's ``_lock``, the nodes manager's ``_lock`` and
    ``_initialization_lock``, and its read load balancer's ``_lock``.
    Stands in for fork support, which the cluster client does not have."""
    for client in clients:
        client._lock = threading.RLock()
    manager = clients[0].nodes_manager
    manager._lock = threading.RLock()
    manager._initialization_lock = threading.RLock()
    if manager.read_load_balancer is not None:
        manager.read_load_balancer._lock = threading.Lock()


# -- dogpile.cache ------------------------------------------------------------------------


def renew_lock_registry(region: Any) -> None:
    """In a forked child: a fresh registry of creation mutexes for a
    configured region (``region._lock_registry``, made by ``configure()``
    from ``region._create_mutex``), since a parent thread may have held one
    of them, or the registry's own lock, at the fork."""
    if "_lock_registry" in region.__dict__:
        region._lock_registry = NameRegistry(region._create_mutex)
