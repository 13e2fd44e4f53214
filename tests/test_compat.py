"""The private names of redis-py and dogpile.cache that ``librecache/_compat.py``
relies on: one test per name, failing with a message that names it, so that
an upgrade that removes or changes one is caught here and not in production."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dogpile.cache import make_region
from dogpile.util import NameRegistry
from redis.cluster import RedisCluster
from redis.connection import ConnectionPool

from librecache import CacheConfig, _compat
from librecache.connection import RedisConnection
from tests.servers import RedisClusterFarm, RedisServer

LOCKS = (type(threading.Lock()), type(threading.RLock()))


def require(obj: Any, name: str, kind: Any = None) -> Any:
    """``obj.name``, failing loudly when the library dropped or changed it."""
    owner = type(obj).__module__ + "." + type(obj).__qualname__
    assert hasattr(obj, name), f"{owner}.{name} is gone: librecache/_compat.py relies on it"
    value = getattr(obj, name)
    if kind is not None:
        assert isinstance(value, kind), f"{owner}.{name} is now a {type(value).__name__}: librecache/_compat.py relies on it"
    return value


@pytest.fixture
def pool(redis_server: RedisServer) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(host=redis_server.host, port=redis_server.port, health_check_interval=1)
    yield pool
    pool.disconnect()


# -- redis-py: ConnectionPool ----------------------------------------------------------------


def test_pool_lock(pool: ConnectionPool) -> None:
    require(pool, "_lock", LOCKS)


def test_pool_fork_lock(pool: ConnectionPool) -> None:
    require(pool, "_fork_lock", LOCKS)


def test_pool_available_connections(pool: ConnectionPool) -> None:
    connection = pool.get_connection()
    pool.release(connection)
    assert require(pool, "_available_connections", list) == [connection]


def test_pool_in_use_connections(pool: ConnectionPool) -> None:
    connection = pool.get_connection()
    assert connection in require(pool, "_in_use_connections", set)
    pool.release(connection)


def test_pool_reset_records_the_pid(pool: ConnectionPool) -> None:
    pool.reset()
    assert require(pool, "pid") == os.getpid(), "ConnectionPool.reset() no longer records the pid"
    assert pool._available_connections == [] and pool._in_use_connections == set()


# -- redis-py: Connection ----------------------------------------------------------------------


def test_connection_sock(pool: ConnectionPool) -> None:
    connection = pool.get_connection()
    assert require(connection, "_sock") is not None
    pool.release(connection)
    connection.disconnect()
    assert connection._sock is None, "Connection._sock is no longer None once disconnected"


def test_connection_next_health_check(pool: ConnectionPool) -> None:
    connection = pool.get_connection()
    connection.send_command("PING")
    connection.read_response()
    assert require(connection, "health_check_interval") == 1
    assert require(connection, "next_health_check", float) > 0, "Connection.next_health_check: no longer set"
    pool.release(connection)


def test_disconnect_in_a_child_leaves_the_parents_socket_alone(pool: ConnectionPool) -> None:
    """renew_pool_in_child relies on Connection.disconnect() skipping the
    socket shutdown in another process than the one that connected (its
    ``pid`` check)."""
    connection = pool.get_connection()
    child = os.fork()
    if child == 0:
        _compat.renew_pool_in_child(pool)
        os._exit(0 if pool._in_use_connections == set() else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    connection.send_command("PING")
    assert connection.read_response() in (b"PONG", "PONG"), "a child's disconnect() closed the parent's socket"
    pool.release(connection)


def test_borrow_idle_connection(pool: ConnectionPool) -> None:
    first, second = pool.get_connection(), pool.get_connection()
    pool.release(first)
    pool.release(second)
    seen: set[int] = set()
    with _compat.borrow_idle_connection(pool, 0.0, seen) as borrowed:
        assert borrowed in pool._in_use_connections and borrowed not in pool._available_connections
    assert borrowed in pool._available_connections
    with _compat.borrow_idle_connection(pool, 3600.0, set()) as none:
        assert none is None  # nobody idle that long


# -- redis-py: every lock of a client ----------------------------------------------------------


def reachable_locks(*roots: Any) -> dict[int, tuple[str, Any]]:
    """The locks in attributes of redis-py objects reachable from ``roots``
    (by id: name, lock)."""
    found: dict[int, tuple[str, Any]] = {}
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 8:
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            for value in obj.values():
                walk(value, depth)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for value in obj:
                walk(value, depth)
        elif hasattr(obj, "__dict__") and any(base.__module__.startswith("redis.") for base in type(obj).__mro__):
            for name, value in vars(obj).items():
                if isinstance(value, LOCKS):
                    owner = next(base for base in type(obj).__mro__ if base.__module__.startswith("redis."))
                    found[id(value)] = (f"{owner.__name__}.{name}", value)
                else:
                    walk(value, depth + 1)

    for root in roots:
        walk(root, 0)
    return found


@pytest.mark.parametrize("topology", ["single", "cluster", "librecache's cluster"])
def test_renew_locks_replaces_every_lock_of_a_client(
    topology: str, redis_server: RedisServer, redis_cluster: RedisClusterFarm
) -> None:
    """renew_locks walks redis-py objects' ``__dict__``: the locks the fork
    hook must replace include ``ConnectionPool._lock`` and ``_fork_lock``,
    ``RedisCluster._lock``, ``NodesManager._lock`` and
    ``_initialization_lock``, ``LoadBalancer._lock``, ``EventDispatcher._lock``."""
    client: Any
    connection: Any = None
    if topology == "single":
        client = redis.Redis(host=redis_server.host, port=redis_server.port)
        expected = {"ConnectionPool._lock", "ConnectionPool._fork_lock", "EventDispatcher._lock"}
    elif topology == "cluster":
        client = RedisCluster(host=redis_cluster.nodes[0].host, port=redis_cluster.nodes[0].port)
        expected = {"RedisCluster._lock", "NodesManager._lock", "NodesManager._initialization_lock",
                    "LoadBalancer._lock", "ConnectionPool._lock", "ConnectionPool._fork_lock"}
    else:  # its pools and connections are librecache's subclasses
        connection = RedisConnection(CacheConfig.from_env({"USE_REDIS": "true", "REDIS_URI": redis_cluster.uri(3)}))
        client = connection.client
        expected = {"RedisCluster._lock", "NodesManager._lock", "NodesManager._initialization_lock",
                    "LoadBalancer._lock", "ConnectionPool._lock", "ConnectionPool._fork_lock"}
    try:
        client.ping()
        before = reachable_locks(client)
        missing = expected - {name for name, _ in before.values()}
        assert not missing, f"redis-py no longer has {sorted(missing)}: check librecache/_compat.py renew_locks"
        assert _compat.renew_locks(client) == len(before)
        after = reachable_locks(client)
        kept = {name for key, (name, _) in after.items() if key in before}  # before holds the old ones
        assert not kept, f"locks not renewed: {sorted(kept)}"
        assert client.ping()
    finally:
        client.close()
        if connection is not None:
            connection.close()


# -- dogpile.cache -----------------------------------------------------------------------------


def test_region_lock_registry() -> None:
    region = make_region().configure("dogpile.cache.memory")
    registry = require(region, "_lock_registry", NameRegistry)
    require(region, "_create_mutex")
    held = registry.get("k")
    held.acquire()
    _compat.renew_lock_registry(region)
    assert region._lock_registry is not registry
    fresh = region._lock_registry.get("k")
    assert fresh.acquire(False), "a renewed registry still hands out the held mutex"
    fresh.release()
    held.release()
    assert region.get_or_create("k", lambda: 1) == 1


def test_redis_is_a_version_these_names_were_checked_on() -> None:
    """The names above were read in redis-py 8.1 and dogpile.cache 1.5."""
    assert int(redis.__version__.split(".")[0]) >= 5
