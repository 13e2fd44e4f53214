"""The near cache: hits from process memory, coherent across instances."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from dogpile.cache.api import NO_VALUE, CachedValue

import librecache
from librecache import CacheKeys
from librecache.nearcache import NearCache
from tests import processes
from tests.conformance import RegionConformance
from tests.load import wait_until
from tests.servers import RedisServer, ServerFarm

Make = Callable[..., librecache.Caches]
ALL = ",".join(CacheKeys.__members__)


class TestNearCacheRegions(RegionConformance):
    """The whole conformance suite with a near cache on every namespace."""

    expected_backend = "redis"

    @pytest.fixture(params=["single", "cluster"])
    def environment(self, request: pytest.FixtureRequest) -> dict[str, str]:
        env = request.getfixturevalue("redis_env" if request.param == "single" else "cluster_env")
        return {**env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": ALL}


def subscribed(caches: librecache.Caches) -> Any:
    bus = caches.invalidations
    assert bus is not None and bus.wait_subscribed(5)
    deadline = time.monotonic() + 5
    while not all(near.enabled for near in bus.near_caches.values()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return bus


def test_hits_come_from_memory(make_caches: Make, deployment: Any) -> None:
    caches = make_caches({**deployment.env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES"})
    bus = subscribed(caches)
    region = caches.region("ROLES")
    calls: list[str] = []

    @region.cache_on_arguments()
    def permissions(role: str) -> list[str]:
        calls.append(role)
        return ["read"]

    assert permissions("admin") == ["read"] and permissions("admin") == ["read"]
    near = bus.near_caches["ROLES"]
    hits = near.hits
    for _ in range(100):
        assert permissions("admin") == ["read"]
    assert near.hits == hits + 100 and calls == ["admin"]
    assert "TOOLS" not in bus.near_caches  # opt-in per namespace


def test_an_awaited_write_drops_the_other_instances_near_copies(make_caches: Make, deployment: Any) -> None:
    """aset and adelete announce their drops too (on a cluster through any
    node: redis-py's asyncio cluster client has no publish() before 5.2)."""
    import asyncio

    env = {**deployment.env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES"}
    reader, writer = make_caches(env), make_caches(env)
    subscribed(reader)
    region = reader.region("ROLES")
    region.set("k", "old")
    assert region.get("k") == "old" and region.get("k") == "old"  # the second from the near copy
    asyncio.run(writer.region("ROLES").aset("k", "new"))
    wait_until(lambda: region.get("k") == "new", 5)
    asyncio.run(writer.region("ROLES").adelete("k"))
    wait_until(lambda: region.get("k") is NO_VALUE, 5)


@pytest.mark.slow
def test_writes_in_another_process_reach_this_near_cache_within_milliseconds(make_caches: Make, deployment: Any) -> None:
    env = {**deployment.env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES", "KEY": "config", "COUNT": "20"}
    caches = make_caches(env)
    near = subscribed(caches).near_caches["ROLES"]
    region = caches.region("ROLES")
    writer = processes.start("near_writer", env)
    assert processes.read_line(writer) == {"ready": True}
    region.set("config", -1)
    assert writer.stdin is not None
    writer.stdin.write("go\n")
    writer.stdin.flush()
    lags = []
    for n in range(20):
        report = processes.read_line(writer)
        assert report["wrote"] == n
        while region.get("config") != n:
            assert time.time() - report["at"] < 2, "a write did not reach the near cache"
            time.sleep(0.0005)
        lags.append(time.time() - report["at"])
        while True:  # and soon from memory again (a late drop message may evict it once more)
            hits = near.hits
            assert region.get("config") == n
            if near.hits == hits + 1:
                break
            assert time.time() - report["at"] < 2
    deleted = processes.read_line(writer)
    while region.get("config") is not NO_VALUE:
        assert time.time() - deleted["at"] < 2
        time.sleep(0.0005)
    assert writer.wait(10) == 0
    print(f"NEAR-CACHE staleness over {len(lags)} writes: max {max(lags) * 1000:.1f} ms, "
          f"median {sorted(lags)[len(lags) // 2] * 1000:.1f} ms")
    assert max(lags) < 0.25


def test_a_lost_channel_stops_the_near_cache(make_caches: Make, farm: ServerFarm) -> None:
    server: RedisServer = farm.server()
    caches = make_caches(USE_REDIS="true", REDIS_URI=server.url, LIBRECACHE_NEAR_CACHE_NAMESPACES="ROLES",
                         REDIS_RETRY_MAX_DELAY="100", LIBRECACHE_SOCKET_TIMEOUT="1", REDIS_CONNECT_TIMEOUT="500")
    near = subscribed(caches).near_caches["ROLES"]
    region = caches.region("ROLES")
    region.set("k", "v")
    assert region.get("k") == "v" and len(near) == 1
    server.stop()
    deadline = time.monotonic() + 5
    while near.enabled:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(near) == 0
    assert region.get("k") is NO_VALUE  # not served from memory while the channel is down
    server.restart()
    subscribed(caches)
    deadline = time.monotonic() + 5
    while not caches.health()["up"]:  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    region.set("k", "w")
    assert region.get("k") == "w"
    server.stop()


def test_a_read_that_raced_a_drop_is_not_kept() -> None:
    near = NearCache("ROLES", 10)
    near.clear(enabled=True)
    value = CachedValue("old", {"ct": time.time(), "v": 2})
    generation = near.generation  # a read starts
    near.drop(["k"])  # another instance writes meanwhile
    near.store("k", value, generation)  # the read ends: its value is stale
    assert len(near) == 0
    near.store("k", value, near.generation)
    assert len(near) == 1
    near.clear(enabled=False)
    near.store("k", value, near.generation)
    assert len(near) == 0  # never while not serving


def test_the_near_cache_is_bounded() -> None:
    near = NearCache("ROLES", 3)
    near.clear(enabled=True)
    for n in range(10):
        near.store(f"k{n}", CachedValue(n, {"ct": time.time(), "v": 2}), near.generation)
    assert len(near) == 3


def test_an_invalidation_elsewhere_stops_near_hits(make_caches: Make, redis_env: dict[str, str]) -> None:
    env = {**redis_env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "CONFIG_STORE"}
    one, two = make_caches(env), make_caches(env)
    subscribed(one)
    near = subscribed(two).near_caches["CONFIG_STORE"]
    one.region("CONFIG_STORE").set("cfg", "v1")
    time.sleep(0.05)  # the write's announcement has arrived: reads are kept from now on
    assert two.region("CONFIG_STORE").get("cfg") == "v1" and two.region("CONFIG_STORE").get("cfg") == "v1"
    assert near.hits >= 1
    time.sleep(0.01)
    started = time.monotonic()
    one.region("CONFIG_STORE").invalidate()
    while two.region("CONFIG_STORE").get("cfg") is not NO_VALUE:
        assert time.monotonic() - started < 1
        time.sleep(0.0005)


# -- near hits are as independent as Redis reads (issue 10, found 11) --------------------------


def test_a_near_hit_is_a_copy_the_caller_may_change(make_caches: Make, redis_env: dict[str, str]) -> None:
    caches = make_caches({**redis_env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES"})
    bus = subscribed(caches)
    region = caches.region("ROLES")
    region.set("admin", {"perms": ["read"]})
    region.get("admin")  # from Redis, kept near
    first = region.get("admin")
    assert first == {"perms": ["read"]} and bus.near_caches["ROLES"].hits == 1
    first["perms"].append("write")
    assert region.get("admin") == {"perms": ["read"]}

    @region.cache_on_arguments()
    def perms(role: str) -> dict[str, list[str]]:
        return {"perms": ["read"]}

    perms("user")["perms"].append("write")  # the memoised fast path too
    perms("user")["perms"].append("write")
    assert perms("user") == {"perms": ["read"]}
    shared = ("read", 1, None)
    region.set("tuple", shared)
    assert region.get("tuple") is region.get("tuple")  # immutable values are shared, not copied


def test_expiration_time_zero_regenerates_as_dogpile_does(make_caches: Make, redis_env: dict[str, str]) -> None:
    caches = make_caches({**redis_env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES"})
    subscribed(caches)
    region = caches.region("ROLES")
    calls: list[int] = []

    @region.cache_on_arguments(expiration_time=0)
    def always(n: int) -> int:
        calls.append(n)
        return n

    @region.cache_on_arguments(expiration_time=-1)
    def never(n: int) -> int:
        calls.append(-n)
        return n

    time.sleep(0.01)
    assert [always(1), always(1), always(1)] == [1, 1, 1]
    assert calls == [1, 1, 1]  # dogpile regenerates a value whose age exceeds 0
    assert region.get_or_create("k", lambda: "a", expiration_time=0) == "a"
    time.sleep(0.01)
    assert region.get_or_create("k", lambda: "b", expiration_time=0) == "b"
    calls.clear()
    assert [never(2), never(2)] == [2, 2] and calls == [-2]  # -1: never expires


# -- near hits and invalidation marks (issue 18: a near hit reads one number) -----------------


def test_near_hits_follow_every_invalidation_mark(make_caches: Make, redis_env: dict[str, str]) -> None:
    """A near cache keeps the latest of its namespace's marks (``valid_from``)
    and serves nothing created before it: marks stored before the instance
    started, marks set here (hard and soft) and marks set in another
    instance; nothing at all while the marks are not read."""
    env = {**redis_env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "GEN_TITLE"}
    one = make_caches(env)
    subscribed(one)
    one.region("GEN_TITLE").invalidate()  # stored before two starts
    two = make_caches(env)
    bus = subscribed(two)
    near, region = bus.near_caches["GEN_TITLE"], two.region("GEN_TITLE")
    strategy = region.region_invalidator
    assert near.valid_from == strategy.hard > 0

    calls: list[str] = []

    @region.cache_on_arguments()
    def title(name: str) -> dict[str, Any]:
        calls.append(name)
        return {"name": name, "version": len(calls)}

    def served(version: int) -> bool:
        hits = near.hits
        return title("a") == {"name": "a", "version": version} and near.hits == hits + 1

    title("a")
    assert served(1) and len(calls) == 1
    region.invalidate(hard=True)  # here, hard
    assert near.valid_from == strategy.hard
    assert title("a")["version"] == 2 and served(2)
    region.invalidate(hard=False)  # here, soft
    assert near.valid_from == strategy.soft > strategy.hard
    assert title("a")["version"] == 3 and served(3)
    before = near.valid_from
    one.region("GEN_TITLE").invalidate()  # elsewhere
    wait_until(lambda: near.valid_from > before, 5)
    assert near.valid_from == strategy.hard
    assert title("a")["version"] == 4 and served(4)

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child: marks not read yet, then read by its first call
        try:
            seen = [near.valid_from]
            title("a")
            seen.append(near.valid_from)
            os.write(write, " ".join(map(repr, seen)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = [float(number) for number in pipe.read().split()]
    os.waitpid(child, 0)
    assert seen == [float("inf"), strategy.hard]
