"""One test per private name of another library that librecache uses
(librecache/_compat.py lists them): each fails, naming the internal, when
an upgrade removes or changes it, so that it is caught here and not in
production. Sections per library."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from dogpile.cache.api import NO_VALUE
from dogpile.cache.region import CacheRegion
from redis.backoff import AbstractBackoff
from redis.cluster import RedisCluster
from redis.connection import Connection, ConnectionPool, SSLConnection
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from librecache import CacheConfig, _compat, config, parsing, variables
from librecache.clients.retries import AsyncFailFastRetry, FailFastRetry
from librecache.engine.judge import parse_metadata
from librecache.guard import RedisConnection
from librecache.prefixing import PrefixedRedis, adopt
from tests.servers import RedisClusterFarm, RedisServer

DOGPILE = f"dogpile.cache {importlib.metadata.version('dogpile.cache')}"
REDIS = f"redis-py {importlib.metadata.version('redis')}"
REDIS_MAJOR = int(importlib.metadata.version("redis").split(".")[0])

# --------------------------------------------------------------------------
# environs: none left (the configuration reads its text itself)
# --------------------------------------------------------------------------


def test_the_configuration_reads_no_private_name_of_environs() -> None:
    for module in (config, parsing, variables):
        text = Path(module.__file__).read_text(encoding="utf-8")
        for private in ("._environ", "._get_value", " invalid: "):
            assert private not in text, f"{module.__name__} uses environs' {private!r} again"


# --------------------------------------------------------------------------
# dogpile.cache
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", _compat.DOGPILE_REGION_PRIVATES)
def test_dogpile_region_private(name: str) -> None:
    region = CacheRegion()
    region.configure("librecache.memory", arguments={"name": "ROLES", "max_entries": 10})
    assert hasattr(region, name), f"{DOGPILE} has no CacheRegion.{name}, which librecache._compat.RegionHooks uses"


def test_dogpile_wire_format_header_bar_payload() -> None:
    region = CacheRegion(serializer=pickle.dumps, deserializer=pickle.loads)
    region.configure("librecache.memory", arguments={"name": "ROLES", "max_entries": 10})
    region.set("k", {"a": 1})
    raw = region.backend.get_serialized("k")
    assert isinstance(raw, bytes)
    header, bar, payload = raw.partition(_compat.DOGPILE_METADATA_DELIMITER)
    assert bar, f"{DOGPILE} no longer writes serialized values as header|payload"
    metadata = parse_metadata(header)
    assert isinstance(metadata.get("ct"), float) and "v" in metadata, f"{DOGPILE}: metadata header {header!r}"
    assert pickle.loads(payload) == {"a": 1}
    assert region.get("k") == {"a": 1}
    assert region.get("missing") is NO_VALUE


# --------------------------------------------------------------------------
# redis-py
# --------------------------------------------------------------------------


def test_redis_cluster_partition_keys_by_slot() -> None:
    assert hasattr(RedisCluster, "_partition_keys_by_slot"), (
        f"{REDIS} has no RedisCluster._partition_keys_by_slot, which PrefixedRedisCluster overrides"
    )


def test_redis_class_swap_of_a_built_client() -> None:
    client = redis.Redis(host="127.0.0.1", port=1)
    adopted = adopt(client, PrefixedRedis, "p", None)  # type: ignore[arg-type]
    assert isinstance(adopted, PrefixedRedis), f"{REDIS}: a built client's __class__ cannot be swapped"
    assert adopted.connection_pool is client.connection_pool
    client.close()


def test_redis_connection_sock() -> None:
    connection = Connection(host="127.0.0.1", port=1)
    assert hasattr(connection, "_sock"), f"{REDIS} has no Connection._sock, which _BoundedConnect sets time-outs on"


def test_redis_ssl_wrap_socket_with_ssl() -> None:
    assert hasattr(SSLConnection, "_wrap_socket_with_ssl"), (
        f"{REDIS} has no SSLConnection._wrap_socket_with_ssl, which BoundedSSLConnection bounds by the connect time-out"
    )


def test_jitter_backoff_is_a_public_backoff_capped() -> None:
    backoff = _compat.jitter_backoff(base=0.01, cap=0.25)
    assert isinstance(backoff, AbstractBackoff)
    assert all(0 <= backoff.compute(failures) <= 0.25 for failures in range(1, 30))


@pytest.mark.parametrize(("error", "expected_attempts"), [
    (RedisConnectionError("dropped"), 3),  # transient: retried twice
    (AuthenticationError("invalid password"), 1),  # permanent: raised at once
])
def test_fail_fast_retry_on_this_redis_version(error: Exception, expected_attempts: int) -> None:
    attempts: list[int] = []
    failed: list[Any] = []
    retry = FailFastRetry(_compat.jitter_backoff(base=0.0, cap=0.0), 2)

    def do() -> None:
        attempts.append(1)
        raise error

    with pytest.raises(type(error)) as raised:
        retry.call_with_retry(do, failed.append)
    assert raised.value is error
    assert len(attempts) == expected_attempts, f"{REDIS}: Retry.call_with_retry"
    assert len(failed) == (expected_attempts if expected_attempts > 1 else 0)  # fail() only for retried ones


@pytest.mark.parametrize("fails", [0, 1, 2])
def test_fail_fast_retry_counts_attempts_exactly_with_an_unwrapped_first_one(fails: int) -> None:
    """The first attempt runs outside redis-py's loop; a failure of it is
    that loop's first failure: the same fail() calls and attempt count."""
    attempts: list[int] = []
    failed: list[Any] = []
    retry = FailFastRetry(_compat.jitter_backoff(base=0.0, cap=0.0), 2)

    def do() -> str:
        attempts.append(1)
        if len(attempts) <= fails:
            raise RedisConnectionError("dropped")
        return "answer"

    assert retry.call_with_retry(do, failed.append) == "answer"
    assert len(attempts) == fails + 1, f"{REDIS}: Retry.call_with_retry"
    assert len(failed) == fails


@pytest.mark.parametrize(("error", "expected_attempts"), [
    (RedisConnectionError("dropped"), 3),  # transient: retried twice
    (AuthenticationError("invalid password"), 1),  # permanent: raised at once
])
def test_async_fail_fast_retry_on_this_redis_version(error: Exception, expected_attempts: int) -> None:
    """The asyncio twin awaits the first attempt itself (no coroutine layers
    on success) and hands a transient failure to redis-py's schedule: the
    same attempts and fail() calls as the sync policy."""
    attempts: list[int] = []
    failed: list[Any] = []
    retry = AsyncFailFastRetry(_compat.jitter_backoff(base=0.0, cap=0.0), 2)

    async def do() -> None:
        attempts.append(1)
        raise error

    async def fail(error: Exception) -> None:
        failed.append(error)

    with pytest.raises(type(error)) as raised:
        asyncio.run(retry.call_with_retry(do, fail))
    assert raised.value is error
    assert len(attempts) == expected_attempts, f"{REDIS}: asyncio Retry.call_with_retry"
    assert len(failed) == (expected_attempts if expected_attempts > 1 else 0)  # fail() only for retried ones


@pytest.mark.parametrize("failures", [0, 1, 2])
def test_async_fail_fast_retry_returns_the_attempt_that_succeeds(failures: int) -> None:
    attempts: list[int] = []
    failed: list[Any] = []
    retry = AsyncFailFastRetry(_compat.jitter_backoff(base=0.0, cap=0.0), 2)

    async def do() -> str:
        attempts.append(1)
        if len(attempts) <= failures:
            raise RedisConnectionError("dropped")
        return "answer"

    async def fail(error: Exception) -> None:
        failed.append(error)

    assert asyncio.run(retry.call_with_retry(do, fail)) == "answer"
    assert len(attempts) == failures + 1
    assert len(failed) == failures


def test_fail_fast_retry_keeps_a_permanent_errors_cause() -> None:
    import ssl

    retry = FailFastRetry(_compat.jitter_backoff(base=0.0, cap=0.0), 2)
    cause = ssl.SSLError("CERTIFICATE_VERIFY_FAILED")

    def do() -> None:
        try:
            raise cause
        except ssl.SSLError as exc:
            raise RedisConnectionError("TLS failed") from exc

    with pytest.raises(RedisConnectionError) as raised:
        retry.call_with_retry(do, lambda error: None)
    assert raised.value.__cause__ is cause


# --------------------------------------------------------------------------
# redis-py and dogpile: fork safety and the keep-alive
# --------------------------------------------------------------------------

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
    connection = _compat.pooled_connection(pool)
    pool.release(connection)
    assert require(pool, "_available_connections", list) == [connection]


def test_pool_in_use_connections(pool: ConnectionPool) -> None:
    connection = _compat.pooled_connection(pool)
    assert connection in require(pool, "_in_use_connections", set)
    pool.release(connection)


def test_pool_reset_records_the_pid(pool: ConnectionPool) -> None:
    pool.reset()
    assert require(pool, "pid") == os.getpid(), "ConnectionPool.reset() no longer records the pid"
    assert pool._available_connections == [] and pool._in_use_connections == set()


# -- redis-py: Connection ----------------------------------------------------------------------


def test_connection_sock(pool: ConnectionPool) -> None:
    connection = _compat.pooled_connection(pool)
    assert require(connection, "_sock") is not None
    pool.release(connection)
    connection.disconnect()
    assert connection._sock is None, "Connection._sock is no longer None once disconnected"


def test_connection_next_health_check(pool: ConnectionPool) -> None:
    connection = _compat.pooled_connection(pool)
    connection.send_command("PING")
    connection.read_response()
    assert require(connection, "health_check_interval") == 1
    assert require(connection, "next_health_check", float) > 0, "Connection.next_health_check: no longer set"
    pool.release(connection)


def test_disconnect_in_a_child_leaves_the_parents_socket_alone(pool: ConnectionPool) -> None:
    """renew_pool_in_child relies on Connection.disconnect() skipping the
    socket shutdown in another process than the one that connected (its
    ``pid`` check)."""
    connection = _compat.pooled_connection(pool)
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
    first, second = _compat.pooled_connection(pool), _compat.pooled_connection(pool)
    pool.release(first)
    pool.release(second)
    seen: set[int] = set()
    with _compat.borrow_idle_connection(pool, 0.0, seen) as borrowed:
        assert borrowed in pool._in_use_connections and borrowed not in pool._available_connections
    assert borrowed in pool._available_connections
    with _compat.borrow_idle_connection(pool, 3600.0, set()) as none:
        assert none is None  # nobody idle that long


# -- redis.asyncio: a write bounded without a Task (timed_send) ---------------------------------


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """The server's process stopped (SIGSTOP): connections stay open, nothing is read."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_redis_asyncio_bounds_writes_with_wait_for() -> None:
    """What :func:`librecache._compat.timed_send` stands in for: redis-py's
    asyncio ``Connection.send_packed_command`` wraps a write in
    ``asyncio.wait_for`` (a Task per command) when a socket time-out is set.
    When this fails, redis-py changed how it bounds writes: look again
    whether ``timed_send`` is still needed."""
    from redis.asyncio.connection import Connection as AsyncConnection

    source = inspect.getsource(AsyncConnection.send_packed_command)
    assert "wait_for" in source and "self.socket_timeout" in source, f"{REDIS}: asyncio send_packed_command"


def writelines_pauses() -> bool:
    """Whether this interpreter's asyncio ``StreamWriter.writelines`` pauses
    the protocol past the high-water mark, so that ``drain()`` waits: CPython
    3.12.0-3.12.8 and 3.13.0-3.13.1 do not (CPython gh-127655, fixed in
    December 2024), and redis-py's asyncio connections write with
    ``writelines``."""
    import socket

    async def probe() -> bool:
        ours, peer = socket.socketpair()  # the peer never reads
        _, writer = await asyncio.open_connection(sock=ours)
        writer.writelines([b"x" * (16 << 20)])
        try:
            await asyncio.wait_for(writer.drain(), 0.2)
            return False  # drain() returned with megabytes unsent
        except asyncio.TimeoutError:
            return True
        finally:
            writer.transport.abort()
            peer.close()

    return bool(asyncio.run(probe()))


@pytest.mark.skipif(not _compat.TIMED_SEND, reason="asyncio.timeout exists from Python 3.11 on")
def test_timed_send_fails_a_stuck_write_as_redis_py_does(own_server: RedisServer) -> None:
    """A write the server does not take (its process stopped, 64 MB sent):
    redis-py's TimeoutError("Timeout writing to socket") within the socket
    time-out, and the connection dropped (redis-py disconnects a connection
    whose write was interrupted), as with redis-py's own wait_for."""
    if not writelines_pauses():
        pytest.skip("needs an asyncio whose writelines() pauses the protocol: this CPython's drain() returns with "
                    "the data still buffered (gh-127655, fixed in 3.12.9 and 3.13.2), so no time-out can see a stuck write")
    from redis.asyncio.connection import Connection as AsyncConnection
    from redis.exceptions import TimeoutError as RedisTimeoutError

    timed = _compat.timed_send(AsyncConnection)
    assert _compat.timed_send(AsyncConnection) is timed  # one class per base

    async def main() -> tuple[BaseException | None, bool, float, Any]:
        connection = timed(host="127.0.0.1", port=own_server.port, socket_timeout=0.5, socket_connect_timeout=2)
        await connection.connect()
        await connection.send_command("PING")
        assert await connection.read_response() in (b"PONG", "PONG")
        raised: BaseException | None = None
        started = time.monotonic()
        with frozen(own_server):
            try:
                await connection.send_packed_command(connection.pack_command("SET", "big", b"x" * (64 << 20)))
            except BaseException as exc:
                raised = exc
            took = time.monotonic() - started
        connected = connection.is_connected
        timeout = connection.socket_timeout
        await connection.disconnect()
        return raised, connected, took, timeout

    raised, connected, took, timeout = asyncio.run(main())
    assert isinstance(raised, RedisTimeoutError) and "writing" in str(raised)
    assert not connected
    assert timeout == 0.5  # the connection's own time-out is back
    assert took < 0.5 + 2.0  # the socket time-out, with an honest margin on a loaded machine


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
    if REDIS_MAJOR < 8:  # these locks came in later redis-py versions (event dispatcher, load balancer, ...)
        expected -= {"EventDispatcher._lock", "LoadBalancer._lock", "NodesManager._initialization_lock"}
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


def test_redis_is_a_version_these_names_were_checked_on() -> None:
    """The names above were read in redis-py 8.1 and dogpile.cache 1.5."""
    assert int(redis.__version__.split(".")[0]) >= 5


def test_cluster_pipelines_carry_scripts_where_compat_says_so(redis_cluster: RedisClusterFarm) -> None:
    """``CLUSTER_PIPELINE_SCRIPTS`` (from redis-py's public
    ``PIPELINE_BLOCKED_COMMANDS``) says whether this redis-py sends EVALSHA in
    a cluster pipeline: where it says yes, one does; where no, redis-py refuses."""
    from redis.exceptions import RedisClusterException

    client = RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        sha = client.script_load("return KEYS[1]")
        pipe = client.pipeline()
        if _compat.CLUSTER_PIPELINE_SCRIPTS:
            pipe.evalsha(sha, 1, "compat-key")
            assert pipe.execute() == [b"compat-key"]
        else:
            with pytest.raises(RedisClusterException, match="evalsha"):
                pipe.evalsha(sha, 1, "compat-key")
    finally:
        client.close()
