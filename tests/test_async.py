"""Async services (issue 13): awaitable region calls and memoised ``async
def`` on memory, a single Redis, the 6-node cluster and TLS, sharing keys,
bytes, locks, invalidation and the circuit breaker with the sync path.

No pytest plugin: each test runs its coroutine with :func:`asyncio.run`.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from dogpile.cache.api import NO_VALUE

import librecache
from librecache.backends.aio_redis import clients_of
from librecache.signing import Signer
from tests import processes
from tests.conformance import Counter, in_threads
from tests.conftest import ACL_PASSWORD, ACL_PREFIX, ACL_USER, Deployment
from tests.faults import FaultProxy
from tests.servers import RedisClusterFarm, RedisSentinelFarm, RedisServer, ServerFarm
from tests.test_resilience import wait_until

Make = Callable[..., librecache.Caches]
SIGNING_KEY = "async-and-sync-sign-alike"


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


@pytest.fixture(params=["memory", "single", "cluster", "tls", "tls-cluster", "acl"])
def environment(request: pytest.FixtureRequest, prefix: str) -> dict[str, str]:
    """Every backend and topology: memory, one server, the 6-node cluster,
    TLS with the suite's CA (a server and a cluster), and an ACL user
    restricted to its prefix."""
    if request.param == "memory":
        return {"USE_REDIS": "false"}
    if request.param == "single":
        return request.getfixturevalue("redis_env")  # type: ignore[no-any-return]
    if request.param == "cluster":
        return request.getfixturevalue("cluster_env")  # type: ignore[no-any-return]
    if request.param == "acl":
        server: RedisServer = request.getfixturevalue("redis_server")
        return {"USE_REDIS": "true", "REDIS_URI": server.url, "REDIS_KEY_PREFIX": ACL_PREFIX,
                "REDIS_USERNAME": ACL_USER, "REDIS_PASSWORD": ACL_PASSWORD, "LIBRECACHE_STRICT": "true"}
    ca: Path = request.getfixturevalue("ca_file")
    if request.param == "tls-cluster":
        tls_cluster: RedisClusterFarm = request.getfixturevalue("tls_cluster")
        uri = tls_cluster.uri(3)
    else:
        uri = request.getfixturevalue("tls_server").url
    return {"USE_REDIS": "true", "REDIS_URI": uri, "REDIS_CA": str(ca), "REDIS_KEY_PREFIX": prefix,
            "LIBRECACHE_STRICT": "true"}


@pytest.fixture
def caches(environment: dict[str, str], make_caches: Make) -> librecache.Caches:
    return make_caches(environment)


@pytest.fixture
def region(caches: librecache.Caches) -> librecache.LibreRegion:
    region = caches.region("ROLES")
    for key in ("k", "a", "b", "c"):
        region.delete(key)
    return region


def test_awaitable_calls_round_trip_and_return_no_value_on_a_miss(region: librecache.LibreRegion) -> None:
    async def main() -> None:
        assert await region.aget("k") is NO_VALUE
        await region.aset("k", {"role": "admin", "n": [1, 2]})
        assert await region.aget("k") == {"role": "admin", "n": [1, 2]}
        await region.adelete("k")
        assert await region.aget("k") is NO_VALUE
        await region.aset_multi({"a": 1, "b": None, "c": "three"})
        assert await region.aget_multi(["a", "b", "c", "missing"]) == [1, None, "three", NO_VALUE]
        await region.adelete_multi(["a", "c"])
        assert await region.aget_multi(["a", "b", "c"]) == [NO_VALUE, None, NO_VALUE]
        assert await region.aget_multi([]) == []

    run(main())


def test_one_cache_two_doors(region: librecache.LibreRegion) -> None:
    """A value set by one door is read by the other, both ways."""
    region.set("a", "from sync")
    region.set_multi({"b": "b from sync"})

    async def main() -> None:
        assert await region.aget("a") == "from sync"
        assert await region.aget_multi(["b"]) == ["b from sync"]
        await region.aset("c", ["from", "async"])
        await region.aset_multi({"k": 42})

    run(main())
    assert region.get("c") == ["from", "async"]
    assert region.get_multi(["k"]) == [42]
    assert region.get_or_create("c", lambda: "never") == ["from", "async"]


def test_memoised_async_def_runs_once_for_many_tasks(region: librecache.LibreRegion) -> None:
    calls: list[int] = []

    @region.cache_on_arguments()
    async def role(user: int, suffix: str = "!") -> str:
        calls.append(user)
        await asyncio.sleep(0.05)
        return f"role of {user}{suffix}"

    async def main() -> None:
        await role.invalidate(7)
        results = await asyncio.gather(*(role(7) for _ in range(20)))
        assert results == ["role of 7!"] * 20
        assert await role(7, "!") == "role of 7!"  # the default bound: the same key
        assert calls == [7]
        assert await role.get(7) == "role of 7!"
        await role.set("set by hand", 7)
        assert await role(7) == "set by hand"
        assert await role.refresh(7) == "role of 7!"
        assert await role(7) == "role of 7!"
        await role.invalidate(7)
        assert await role.get(7) is NO_VALUE
        assert await role.original(8) == "role of 8!"

    run(main())
    assert calls == [7, 7, 8]  # the first call, refresh, original
    assert asyncio.iscoroutinefunction(role)


def test_plain_def_is_unchanged(region: librecache.LibreRegion) -> None:
    @region.cache_on_arguments()
    def square(x: int) -> int:
        return x * x

    square.invalidate(3)
    assert square(3) == 9 and square.get(3) == 9
    assert not asyncio.iscoroutinefunction(square)


def test_sync_and_async_functions_of_one_name_share_an_entry(region: librecache.LibreRegion) -> None:
    def sync_version() -> Callable[..., Any]:
        @region.cache_on_arguments()
        def profile(user: str) -> str:
            return f"sync {user}"

        return profile

    def async_version() -> Callable[..., Any]:
        @region.cache_on_arguments()
        async def profile(user: str) -> str:
            return f"async {user}"

        return profile

    sync_profile, async_profile = sync_version(), async_version()
    sync_profile.invalidate("ann")
    assert sync_profile("ann") == "sync ann"
    assert run(async_profile("ann")) == "sync ann"
    run(async_profile.invalidate("bob"))
    assert run(async_profile("bob")) == "async bob"
    assert sync_profile("bob") == "async bob"


def test_get_or_create_takes_sync_and_async_creators(region: librecache.LibreRegion) -> None:
    async def create() -> str:
        await asyncio.sleep(0)
        return "async made"

    async def main() -> None:
        assert await region.aget_or_create("a", create) == "async made"
        assert await region.aget_or_create("a", lambda: "never") == "async made"
        assert await region.aget_or_create("b", lambda: "sync made") == "sync made"
        assert await region.aget_or_create("c", lambda: None, should_cache_fn=lambda v: v is not None) is None
        assert await region.aget("c") is NO_VALUE
        assert await region.aget_or_create("k", lambda x, y=0: x + y, creator_args=((1,), {"y": 2})) == 3

    run(main())
    assert region.get("b") == "sync made"


def test_cache_multi_on_arguments_on_async_def(region: librecache.LibreRegion) -> None:
    asked: list[tuple[int, ...]] = []

    @region.cache_multi_on_arguments()
    async def squares(*numbers: int) -> list[int]:
        asked.append(numbers)
        return [n * n for n in numbers]

    @region.cache_multi_on_arguments(asdict=True)
    async def cubes(*numbers: int) -> dict[int, int]:
        return {n: n ** 3 for n in numbers if n != 0}

    async def main() -> None:
        await squares.invalidate(1, 2, 3, 4)
        assert await squares(1, 2, 3) == [1, 4, 9]
        assert await squares(2, 3, 4) == [4, 9, 16]
        assert asked == [(1, 2, 3), (4,)]
        assert await squares.get(1, 4, 5) == [1, 16, NO_VALUE]
        await squares.set({5: "five"})
        assert await squares(5) == ["five"]
        assert await squares.refresh(5) == [25]
        await cubes.invalidate(0, 2)
        assert await cubes(0, 2) == {2: 8}
        assert await cubes.get(0, 2) == [NO_VALUE, 8]

    run(main())


def test_memory_namespaces_create_once_per_loop_too(make_caches: Make) -> None:
    region = make_caches(USE_REDIS="false").region("TOOLS")
    creator = Counter(lambda: "made")

    async def create() -> str:
        await asyncio.sleep(0.02)
        return str(creator())

    async def main() -> list[str]:
        return list(await asyncio.gather(*(region.aget_or_create("cold", create) for _ in range(30))))

    assert run(main()) == ["made"] * 30
    assert creator.calls == 1


def test_hard_and_soft_invalidation_from_sync_apply_to_async(caches: librecache.Caches) -> None:
    region = caches.region("ROLES")
    region.set("k", "old")
    time.sleep(0.01)
    region.invalidate()
    assert run(region.aget("k")) is NO_VALUE
    assert run(region.aget_or_create("k", lambda: "new")) == "new"
    assert region.get("k") == "new"
    messages = caches.region("MESSAGES")  # soft invalidation needs a TTL
    messages.set("m", "old")
    time.sleep(0.01)
    messages.invalidate(hard=False)
    assert run(messages.aget_or_create("m", lambda: "regenerated")) == "regenerated"


def test_expired_values_are_created_again(make_caches: Make, environment: dict[str, str]) -> None:
    if environment.get("USE_REDIS") == "true" and "REDIS_CA" not in environment:
        pytest.skip("the same judgement on every backend: memory and TLS are enough")
    region = make_caches(librecache.CacheConfig.from_env(environment).with_ttls({"ROLES": 1})).region("ROLES")

    async def set_then_read() -> Any:
        await region.aget("short")  # this loop's client connects first: loaded, TLS handshakes outlast the 1 s TTL
        region.set("short", "lived")
        return await region.aget_or_create("short", lambda: "new")

    assert run(set_then_read()) == "lived"
    time.sleep(1.2)
    assert run(region.aget("short")) is NO_VALUE
    assert run(region.aget_or_create("short", lambda: "new")) == "new"


def test_calls_are_counted_as_the_sync_ones(caches: librecache.Caches) -> None:
    region = caches.region("TOOLS")
    region.delete("x")
    before = caches.stats()["TOOLS"]

    async def main() -> None:
        assert await region.aget("x") is NO_VALUE  # a miss
        await asyncio.gather(*(region.aget_or_create("x", lambda: "v") for _ in range(5)))  # 1 creation, 4 hits

    run(main())
    after = caches.stats()["TOOLS"]
    assert after["misses"] - before["misses"] == 2
    assert after["creations"] - before["creations"] == 1
    assert after["hits"] - before["hits"] == 4


# --------------------------------------------------------------------------
# Redis: same bytes, same lock, clients per loop
# --------------------------------------------------------------------------


def test_same_bytes_as_the_sync_path(deployment: Deployment, make_caches: Make) -> None:
    region = make_caches({**deployment.env, "LIBRECACHE_SIGNING_KEY": SIGNING_KEY}).region("ROLES")
    region.set("sync", {"a": 1})
    run(region.aset("async", {"a": 1}))
    prefix = deployment.env["REDIS_KEY_PREFIX"]
    stored_sync = deployment.raw.get(f"{prefix}::ROLES:sync")
    stored_async = deployment.raw.get(f"{prefix}::ROLES:async")
    assert stored_sync is not None and stored_async is not None
    # dogpile's {"ct": ..., "v": ...}| header, then the same signed pickle
    # (the signature covers the key name, so compare the payload)
    signer = Signer([SIGNING_KEY])
    opened_sync = signer.verify(f"{prefix}::ROLES:sync", stored_sync)
    opened_async = signer.verify(f"{prefix}::ROLES:async", stored_async)
    assert opened_sync is not None and opened_async is not None
    header_sync, _, pickled_sync = opened_sync.partition(b"|")
    header_async, _, pickled_async = opened_async.partition(b"|")
    assert header_sync.startswith(b'{"ct": ') and header_async.startswith(b'{"ct": ')
    assert pickled_async == pickled_sync
    assert region.get("async") == {"a": 1} and run(region.aget("sync")) == {"a": 1}
    expiry_sync = deployment.raw.pttl(f"{prefix}::ROLES:sync")
    expiry_async = deployment.raw.pttl(f"{prefix}::ROLES:async")
    assert expiry_sync > 0 and abs(expiry_async - expiry_sync) < 60_000  # the same storage expiry


def test_cluster_multi_operations_split_per_slot(redis_cluster: RedisClusterFarm, cluster_env: dict[str, str],
                                                 make_caches: Make) -> None:
    caches = make_caches({**cluster_env, "LIBRECACHE_STRICT": "true"})  # a CROSSSLOT reply would raise
    region = caches.region("ROLES")
    keys = [f"user-{n}" for n in range(200)]  # in many slots of every master

    async def main() -> None:
        await region.aset_multi({key: key.upper() for key in keys})
        assert await region.aget_multi(keys) == [key.upper() for key in keys]
        await region.adelete_multi(keys[:100])
        assert await region.aget_multi(keys) == [NO_VALUE] * 100 + [key.upper() for key in keys[100:]]

    run(main())
    health = caches.health()
    assert health is not None and health["errors"] == 0
    assert region.get_multi(keys[100:]) == [key.upper() for key in keys[100:]]


def test_sync_and_async_callers_exclude_each_other(deployment: Deployment, make_caches: Make) -> None:
    """A sync thread and async tasks of another registry (as another
    process would be) meet at the same Redis creation lock."""
    sync_region = make_caches(deployment.env).region("ROLES")
    async_region = make_caches(deployment.env).region("ROLES")
    made = Counter(lambda: "made")

    def slow_creator() -> str:
        time.sleep(0.3)
        return str(made())

    async def async_creator() -> str:
        await asyncio.sleep(0.3)
        return str(made())

    started = threading.Event()

    def sync_side(n: int) -> None:
        started.set()
        assert sync_region.get_or_create("shared", slow_creator) == "made"

    async def async_side() -> list[str]:
        await asyncio.to_thread(started.wait)
        await asyncio.sleep(0.05)
        return list(await asyncio.gather(*(async_region.aget_or_create("shared", async_creator) for _ in range(5))))

    results: list[list[str]] = []
    thread = threading.Thread(target=lambda: results.append(run(async_side())))
    thread.start()
    assert in_threads(sync_side, 1) == []
    thread.join()
    assert results == [["made"] * 5]
    assert made.calls == 1


def test_async_stampede_across_processes_runs_the_creator_once(deployment: Deployment, make_caches: Make) -> None:
    env = {**deployment.env, "KEY": "cold", "START_AT": repr(time.time() + 2.5), "TASKS": "10"}
    reports = processes.reports_of([processes.start("async_stampede", env) for _ in range(3)])
    assert [report["results"] for report in reports] == [["the value of cold"] * 10] * 3
    caches = make_caches(deployment.env)
    assert caches.redis is not None
    calls = int(caches.redis.get("creator-calls"))
    # exactly once while Redis answers; a call that met an error (a loaded machine's
    # time-out) degrades to the process's own lock, as documented
    troubled = [report for report in reports if report["errors"] or report["fallthroughs"]]
    assert calls == 1 or (troubled and calls <= 1 + len(troubled)), (calls, reports)


def test_invalidation_from_a_sync_process_reaches_async_readers(deployment: Deployment, make_caches: Make) -> None:
    region = make_caches(deployment.env).region("ROLES")
    region.set("k", "before")
    watcher = processes.start("async_watch", {**deployment.env, "KEY": "k"})
    assert processes.read_line(watcher) == {"ready": True, "value": "before"}
    region.invalidate()
    report = processes.read_line(watcher)
    assert watcher.wait(10) == 0
    for pipe in (watcher.stdin, watcher.stdout, watcher.stderr):
        assert pipe is not None
        pipe.close()
    assert report["invalidated"] is True
    # and a registry started later, reading with its async door only
    assert run(make_caches(deployment.env).region("ROLES").aget("k")) is NO_VALUE


def test_near_cache_serves_async_reads_and_async_writes_drop_other_copies(redis_env: dict[str, str],
                                                                          make_caches: Make) -> None:
    env = {**redis_env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES"}
    writer, reader = make_caches(env), make_caches(env)
    for registry in (writer, reader):
        assert registry.invalidations is not None
        wait_until(lambda r=registry: all(n.enabled for n in r.invalidations.near_caches.values()), 5)  # type: ignore[misc]
    near = reader.invalidations.near_caches["ROLES"]  # type: ignore[union-attr]
    writer.region("ROLES").set("k", "v1")

    async def read() -> Any:
        return await reader.region("ROLES").aget("k")

    hits = near.hits
    # served from process memory (once the writer's drop message, which may
    # arrive after the first read, has gone by)
    wait_until(lambda: run(read()) == "v1" and near.hits > hits, 5)
    run(writer.region("ROLES").aset("k", "v2"))
    wait_until(lambda: run(read()) == "v2", 5)


def test_one_client_per_loop_closed_when_the_loop_ends(redis_env: dict[str, str], make_caches: Make) -> None:
    caches = make_caches(redis_env)
    region = caches.region("ROLES")
    assert caches._connection is not None
    clients = clients_of(caches._connection)
    seen: list[Any] = []

    async def use() -> None:
        await region.aset("k", 1)
        seen.append(clients.get())
        assert clients.get() is seen[-1]  # one per loop

    run(use())
    run(use())
    assert seen[0] is not seen[1]
    assert clients._loops == {}  # asyncio.run's shutdown_asyncgens closed them

    loop = asyncio.new_event_loop()  # a loop closed without shutdown_asyncgens
    loop.run_until_complete(use())
    loop.close()
    run(use())  # the closed loop's client is dropped
    gc.collect()
    started = time.monotonic()
    caches.close()  # neither fails nor hangs
    assert time.monotonic() - started < caches.config.connect_timeout


def test_aclose_from_a_coroutine(redis_env: dict[str, str]) -> None:
    async def main() -> None:
        async with librecache.Caches(redis_env) as caches:
            await caches.region("ROLES").aset("k", "v")
            assert await caches.region("ROLES").aget("k") == "v"
        assert caches.closed

    run(main())


# --------------------------------------------------------------------------
# The event loop stays free; Redis away
# --------------------------------------------------------------------------


async def _ticking(work: Coroutine[Any, Any, Any]) -> tuple[Any, int]:
    """Run ``work`` while a ticker task on the same loop counts its ticks."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        return await work, ticks
    finally:
        done.set()
        await task


def test_the_loop_keeps_ticking_while_redis_is_held(redis_server: RedisServer, redis_env: dict[str, str],
                                                     make_caches: Make) -> None:
    """``CLIENT PAUSE 2000 ALL`` holds every command 2 s server-side; a
    ticker sleeping 10 ms ticks dozens of times during the awaited calls
    (the sync client inside the loop lets it tick about once). 2 s, not
    600 ms: on a loaded machine (parallel workers, CPU burners) the ticker
    got 17 ticks in 600 ms; the bound of 20 stays."""
    region = make_caches(redis_env).region("ROLES")
    pauser = redis.Redis(host=redis_server.host, port=redis_server.port)

    @region.cache_on_arguments()
    async def value_of(n: int) -> int:
        return n * 2

    async def main() -> tuple[Any, int]:
        await region.aset("warm", "connections open")
        pauser.execute_command("CLIENT", "PAUSE", "2000", "ALL")
        return await _ticking(asyncio.gather(region.aget("warm"), *(value_of(n) for n in range(20))))

    try:
        (results, ticks) = run(main())
    finally:
        pauser.close()
    assert results == ["connections open", *(n * 2 for n in range(20))]
    assert ticks >= 20, ticks


def counted(region: Any) -> tuple[Counter, Callable[[int], Awaitable[int]]]:
    """A memoised ``async def`` of ``region`` giving ``n * 10``, and the counter of its runs."""
    calls = Counter(lambda n: n * 10)

    @region.cache_on_arguments()
    async def value_of(n: int) -> int:
        return int(calls(n))

    return calls, value_of


def test_redis_killed_async_calls_fall_through_and_caching_resumes(own_server: RedisServer, make_caches: Make) -> None:
    env = {"USE_REDIS": "true", "REDIS_URI": own_server.url, "REDIS_KEY_PREFIX": "down",
           "REDIS_RETRY_MAX_DELAY": "200", "LIBRECACHE_SOCKET_TIMEOUT": "1", "REDIS_CONNECT_TIMEOUT": "1000"}
    caches = make_caches(env)
    region = caches.region("ROLES")
    calls, value_of = counted(region)

    # an async-only service: nothing sync ever touches the region
    assert run(value_of(1)) == 10 and run(value_of(1)) == 10 and calls.calls == 1
    own_server.kill()

    async def while_down() -> list[int]:
        return [await value_of(2), await value_of(2), await value_of(1), await region.aget("x")]

    assert run(while_down()) == [20, 20, 10, NO_VALUE]  # no exception, the function runs
    assert calls.calls == 4
    health = caches.health()
    assert health is not None and not health["up"]
    own_server.restart()
    wait_until(lambda: caches.health()["up"], 10)  # type: ignore[index]
    assert run(value_of(3)) == 30 and run(value_of(3)) == 30
    assert calls.calls == 5  # caching resumed by itself


def test_strict_mode_raises_from_async_calls(own_server: RedisServer, make_caches: Make) -> None:
    env = {"USE_REDIS": "true", "REDIS_URI": own_server.url, "REDIS_KEY_PREFIX": "strict",
           "LIBRECACHE_STRICT": "true", "LIBRECACHE_SOCKET_TIMEOUT": "1", "REDIS_CONNECT_TIMEOUT": "1000"}
    region = make_caches(env).region("ROLES")

    @region.cache_on_arguments()
    async def value_of(n: int) -> int:
        return n

    assert run(value_of(1)) == 1
    own_server.kill()
    with pytest.raises(redis.ConnectionError):
        run(value_of(1))
    with pytest.raises(redis.ConnectionError):
        run(region.aset("k", 1))


def test_a_lock_held_elsewhere_past_the_budget_means_create_without_storing(redis_env: dict[str, str],
                                                                            make_caches: Make, raw: redis.Redis) -> None:
    """Another process holds the key's creation lock (the same lock key as
    the sync path's): the async caller waits at most the call budget, then
    runs the function itself and does not store its result."""
    env = {**redis_env, "REDIS_CONNECT_TIMEOUT": "100", "LIBRECACHE_SOCKET_TIMEOUT": "0.1"}  # a 0.4 s budget
    region = make_caches(env).region("ROLES")
    prefix = redis_env["REDIS_KEY_PREFIX"]
    raw.set(f"{prefix}::librecache:lock:{{{prefix}::ROLES:busy}}", "another process", px=30_000)
    made = Counter(lambda: "made here")
    assert run(region.aget_or_create("busy", made)) == "made here"
    assert made.calls == 1
    assert region.get("busy") is NO_VALUE  # not stored: the lock was never ours
    assert raw.get(f"{prefix}::librecache:lock:{{{prefix}::ROLES:busy}}") == b"another process"  # and not released either


def test_the_lock_is_released_and_the_value_stored(redis_env: dict[str, str], make_caches: Make,
                                                   raw: redis.Redis) -> None:
    region = make_caches(redis_env).region("ROLES")
    prefix = redis_env["REDIS_KEY_PREFIX"]
    seen: list[Any] = []

    async def create() -> str:
        seen.append(raw.get(f"{prefix}::librecache:lock:{{{prefix}::ROLES:fresh}}"))  # held while creating
        return "value"

    assert run(region.aget_or_create("fresh", create)) == "value"
    from librecache.backends.redis import lock_token

    assert seen[0] is not None and seen[0].decode().startswith(lock_token.prefix)  # a token, as RedisMutex writes
    assert raw.exists(f"{prefix}::librecache:lock:{{{prefix}::ROLES:fresh}}") == 0
    assert region.get("fresh") == "value"


def test_an_expired_value_is_served_while_one_task_recreates_it(make_caches: Make, redis_env: dict[str, str],
                                                               raw: redis.Redis) -> None:
    # a TTL of 1 s, kept 30 s past it: the value is stale, not gone, however slow the machine
    config = librecache.CacheConfig.from_env({**redis_env, "LIBRECACHE_NAMESPACE_GRACE": "ROLES=30"})
    region = make_caches(config.with_ttls({"ROLES": 1})).region("ROLES")
    region.set("k", "old")
    time.sleep(1.1)
    made = Counter(lambda: "new")
    prefix = redis_env["REDIS_KEY_PREFIX"]

    async def slow_create() -> str:
        await asyncio.sleep(0.2)
        return str(made())

    async def main() -> list[Any]:
        first = asyncio.create_task(region.aget_or_create("k", slow_create))
        deadline = time.monotonic() + 10
        while not raw.exists(f"{prefix}::librecache:lock:{{{prefix}::ROLES:k}}"):  # until the first task holds the lock
            assert time.monotonic() < deadline, "the first task never took the lock"
            await asyncio.sleep(0.005)
        others = await asyncio.gather(*(region.aget_or_create("k", slow_create) for _ in range(5)))
        return [await first, *others]

    assert run(main()) == ["new", *["old"] * 5]  # dogpile's rule: the expired value meanwhile
    assert made.calls == 1


@pytest.mark.usefixtures("fresh_default")
def test_the_default_registry_configures_itself_on_first_async_use() -> None:
    region = librecache.get_region("TOOLS")  # decorated before anything is configured

    @region.cache_on_arguments()
    async def tool(name: str) -> str:
        return name.upper()

    assert run(tool("search")) == "SEARCH"  # the first use configures the default from the environment
    assert run(tool.get("search")) == "SEARCH"
    assert librecache.get_caches().backend_name("TOOLS") == "memory"


def test_a_sync_close_inside_the_loop_neither_fails_nor_hangs(redis_env: dict[str, str]) -> None:
    caches = librecache.Caches(redis_env)

    async def main() -> None:
        await caches.region("ROLES").aset("k", 1)
        caches.close()  # sync code called from a coroutine: the loop's client closes in a task
        await asyncio.sleep(0.05)

    run(main())
    assert caches.closed


def test_a_sentinel_managed_master_through_the_async_door(redis_sentinel: RedisSentinelFarm, prefix: str,
                                                          make_caches: Make) -> None:
    """The asyncio client follows the same Sentinel configuration as the sync one."""
    region = make_caches({**redis_sentinel.env(prefix), "LIBRECACHE_STRICT": "true"}).region("ROLES")
    region.set("from sync", 1)

    @region.cache_on_arguments()
    async def doubled(n: int) -> int:
        return n * 2

    async def main() -> list[Any]:
        await region.aset("from async", 2)
        return [await region.aget("from sync"), await doubled(21), await doubled.get(21)]

    assert run(main()) == [1, 42, 42]
    assert region.get("from async") == 2


# --------------------------------------------------------------------------
# Concurrent reads of one key share one GET (single flight)
# --------------------------------------------------------------------------


def _reads(server: RedisServer) -> tuple[int, int]:
    """GET and MGET commands the server has run so far."""
    stats = redis.Redis(port=server.port).info("commandstats")
    return tuple(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("get", "mget"))  # type: ignore[return-value]


def test_concurrent_reads_share_round_trips(redis_server: RedisServer, redis_env: dict[str, str],
                                           make_caches: Make) -> None:
    """20 concurrent hits of one key: one GET. 10 concurrent hits of
    distinct keys: the first read is sent at once, the others that start
    while it is in flight go as one MGET. A lone read is a GET."""
    region = make_caches(redis_env).region("ROLES")
    calls = Counter(lambda key: {"key": key, "roles": ["a", "b"]})

    @region.cache_on_arguments()
    async def roles(key: str) -> Any:
        return calls(key)

    async def main() -> tuple[list[Any], list[Any], list[tuple[int, int]]]:
        for key in ["one", *(f"d{n}" for n in range(10))]:
            await roles(key)  # created and stored, one at a time
        await roles("one")
        counts = [_reads(redis_server)]
        same = await asyncio.gather(*(roles("one") for _ in range(20)))
        counts.append(_reads(redis_server))
        distinct = await asyncio.gather(*(roles(f"d{n}") for n in range(10)))
        counts.append(_reads(redis_server))
        await roles("one")
        counts.append(_reads(redis_server))
        return same, distinct, counts

    same, distinct, counts = run(main())
    steps = [(after[0] - before[0], after[1] - before[1]) for before, after in itertools.pairwise(counts)]
    assert steps == [(1, 0), (1, 1), (1, 0)]  # (GETs, MGETs) of each step
    assert calls.calls == 11  # every read was a hit
    assert distinct == [{"key": f"d{n}", "roles": ["a", "b"]} for n in range(10)]
    assert all(value == {"key": "one", "roles": ["a", "b"]} for value in same)
    assert len({id(value) for value in same}) == len(same)  # each caller decoded its own copy


def test_concurrent_reads_on_a_cluster_split_per_slot(redis_cluster: RedisClusterFarm, cluster_env: dict[str, str],
                                                     make_caches: Make) -> None:
    region = make_caches(cluster_env).region("ROLES")

    async def main() -> list[Any]:
        await region.aset_multi({f"k{n}": n for n in range(30)})
        return list(await asyncio.gather(*(region.aget(f"k{n}") for n in range(30))))

    assert run(main()) == list(range(30))


def test_a_write_is_seen_by_reads_that_start_after_it(redis_env: dict[str, str], make_caches: Make) -> None:
    """A read in flight when this loop writes the key is not shared with
    reads that start after the write."""
    region = make_caches(redis_env).region("ROLES")

    async def main() -> list[Any]:
        await region.aset("k", "old")
        early = asyncio.ensure_future(region.aget("k"))  # starts its GET, not answered yet
        await asyncio.sleep(0)
        await region.aset("k", "new")
        return [await region.aget("k"), await early]

    late, early = run(main())
    assert late == "new"
    assert early in ("old", "new")


@pytest.fixture
def link(farm: ServerFarm) -> Iterator[FaultProxy]:
    """A server of the test's own behind a :class:`FaultProxy`."""
    server = farm.server()
    with FaultProxy(server.port) as proxy:
        yield proxy
    server.stop()


def _flight(region: librecache.LibreRegion, key: str) -> Any:
    """The shared GET of ``key`` in flight in the running loop, if any (what
    the test waits for)."""
    from librecache.backends.routing import async_port

    store = async_port(region)
    flights = store._flights.get(asyncio.get_running_loop(), {})
    return flights.get(region.key_mangler(key) if region.key_mangler else key)


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.001)


def test_cancelling_one_reader_of_a_shared_get_cancels_no_other(link: FaultProxy, make_caches: Make) -> None:
    proxy = link
    region = make_caches({"USE_REDIS": "true", "REDIS_URI": proxy.url, "REDIS_KEY_PREFIX": "flight",
                          "LIBRECACHE_SOCKET_TIMEOUT": "5"}).region("ROLES")

    async def main() -> list[Any]:
        await region.aset_multi({"k": {"v": 1}, "o1": 1, "o2": 2, "o3": 3})
        proxy.latency(to_server=0.05, to_client=0.05)
        first = asyncio.ensure_future(region.aget("k"))
        await _until(lambda: _flight(region, "k") is not None)
        readers = [asyncio.ensure_future(region.aget("k")) for _ in range(5)]
        await _until(lambda: _flight(region, "k")[0] is not None)  # the others joined it
        others = [asyncio.ensure_future(region.aget(key)) for key in ("o1", "o2", "o3")]  # one MGET
        await _until(lambda: _flight(region, "o1") is not None)
        readers[0].cancel()  # a waiter
        first.cancel()  # the reader that sent the GET
        others[0].cancel()  # a reader of the MGET
        results = await asyncio.gather(*readers[1:], *others[1:])
        assert first.cancelled() and readers[0].cancelled() and others[0].cancelled()
        return results

    assert run(main()) == [{"v": 1}] * 4 + [2, 3]


def test_a_failure_while_shared_degrades_every_reader(link: FaultProxy, make_caches: Make) -> None:
    proxy = link
    caches = make_caches({"USE_REDIS": "true", "REDIS_URI": proxy.url, "REDIS_KEY_PREFIX": "flightfail",
                          "LIBRECACHE_SOCKET_TIMEOUT": "5", "REDIS_RETRY_MAX_DELAY": "200"})
    region = caches.region("ROLES")
    calls = Counter(lambda key: f"made {key}")

    @region.cache_on_arguments()
    async def made(key: str) -> Any:
        return calls(key)

    async def main() -> list[Any]:
        for key in ("k", "o1", "o2", "o3"):
            await made(key)
        proxy.reset_replies(1.0)  # every reply cut: the GET, the MGET and their retries fail
        return list(await asyncio.gather(*(made(key) for key in ["k"] * 10 + ["o1", "o2", "o3"])))

    # no exception: each reader, of the shared GET and of the MGET, fell through to the function
    assert run(main()) == ["made k"] * 10 + ["made o1", "made o2", "made o3"]
    assert proxy.resets >= 1
    health = caches.health()
    assert health is not None and not health["up"]
    proxy.clear()
    wait_until(lambda: caches.health()["up"], 10)  # type: ignore[index]
    assert run(made("k")) == "made k"


def test_a_black_holed_link_bounds_async_calls_and_caching_comes_back(link: FaultProxy, make_caches: Make) -> None:
    """Redis stops answering with every connection left open (a black
    hole): awaited calls return within the call budget with no exception
    (the function runs), the breaker opens so later calls fall through at
    once, and caching resumes by itself when the link heals."""
    caches = make_caches({"USE_REDIS": "true", "REDIS_URI": link.url, "REDIS_KEY_PREFIX": "hole",
                          "LIBRECACHE_SOCKET_TIMEOUT": "0.5", "REDIS_CONNECT_TIMEOUT": "500",
                          "REDIS_RETRY_MAX_DELAY": "200"})
    region = caches.region("ROLES")
    calls, value_of = counted(region)

    assert run(value_of(1)) == 10 and run(value_of(1)) == 10 and calls.calls == 1
    link.blackhole()

    async def during() -> tuple[list[Any], float]:
        started = time.monotonic()
        values = [await value_of(1), await value_of(2), await region.aget("x")]
        return values, time.monotonic() - started

    values, took = run(during())
    assert values == [10, 20, NO_VALUE]  # no exception: the function ran
    assert calls.calls == 3
    budget = 2 * (0.5 + 0.5)  # connection.call_budget: two attempts of connect and reply time-outs
    assert took < budget + 2.0, took  # one bounded failure, then the breaker: an honest margin
    health = caches.health()
    assert health is not None and not health["up"]
    link.heal(deliver=False)
    wait_until(lambda: caches.health()["up"], 15)  # type: ignore[index]
    assert run(value_of(3)) == 30 and run(value_of(3)) == 30
    assert calls.calls == 4  # caching resumed by itself
