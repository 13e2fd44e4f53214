"""Redis Sentinel: a master, its replica and three real sentinels
(``redis-server --sentinel``) started by the suite. Reads and writes reach
the master; everything a single server does works; failovers (SENTINEL
FAILOVER and SIGKILL) under load lose no call and serve no wrong value; a
sentinel that is down is skipped; bad configurations fail at startup."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from dogpile.cache.api import NO_VALUE

import librecache
from librecache import CacheKeys
from librecache.cli import main
from librecache.streams import open_streams
from tests.certs import TestCA
from tests.conformance import RegionConformance
from tests.conftest import ACL_PASSWORD, ACL_PREFIX, ACL_USER
from tests.servers import RedisSentinelFarm, ServerFarm
from tests.test_nearcache import subscribed
from tests.test_resilience import FAST_RETRY, Load, wait_until
from tests.test_streams import StreamConformance

Make = Callable[..., librecache.Caches]
ALL = ",".join(CacheKeys.__members__)
FAILOVER: dict[str, float] = {}  # measured failover times, printed at the end of the module
COUNTED: dict[str, object] = {}  # what the failover tests counted, printed with them


def plain(farm: RedisSentinelFarm, role: str = "master") -> redis.Redis:
    """A plain client of the current master (or replica), by its port."""
    node = farm.master if role == "master" else farm.replica
    return redis.Redis(host=node.host, port=node.port)


@pytest.fixture
def sentinel_env(redis_sentinel: RedisSentinelFarm, prefix: str) -> dict[str, str]:
    return redis_sentinel.env(prefix)


@pytest.fixture
def own_sentinel(farm: ServerFarm) -> Iterator[RedisSentinelFarm]:
    """A sentinel farm this test may kill a master of."""
    sentinel = RedisSentinelFarm(farm.root)
    farm.servers.extend(sentinel.servers)
    yield sentinel.start()
    sentinel.stop()


# -- the conformance suites over Sentinel ----------------------------------------------


class TestSentinelRegions(RegionConformance):
    expected_backend = "redis"

    @pytest.fixture(params=["plain", "near cache"])
    def environment(self, request: pytest.FixtureRequest, sentinel_env: dict[str, str]) -> dict[str, str]:
        if request.param == "near cache":
            return {**sentinel_env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": ALL}
        return sentinel_env


class TestSentinelStreams(StreamConformance):
    """Streams, asyncio and sync, through Sentinel."""

    @pytest.fixture
    def environment(self, sentinel_env: dict[str, str]) -> dict[str, str]:
        return sentinel_env


# -- where reads and writes go -------------------------------------------------------------


def test_reads_and_writes_reach_the_master(make_caches: Make, redis_sentinel: RedisSentinelFarm,
                                           sentinel_env: dict[str, str], prefix: str) -> None:
    caches = make_caches(sentinel_env)
    region = caches.region("ROLES")
    region.set("admin", {"can": "all"})
    master, replica = plain(redis_sentinel), plain(redis_sentinel, "replica")
    assert master.exists(f"{prefix}::ROLES:admin") == 1
    master.set(f"{prefix}::ROLES:admin", master.get(f"{prefix}::ROLES:admin") or b"")  # same value, by the master
    assert region.get("admin") == {"can": "all"}
    # the raw prefixed client, locks and memoisation go to the master too
    assert caches.redis is not None
    caches.redis.set("raw", "r")
    assert master.get(f"{prefix}::raw") == b"r" and caches.redis.get("raw") == b"r"
    seen: list[int] = []

    @caches.region("TOOLS").cache_on_arguments()
    def load(name: str) -> str:
        seen.append(master.exists(f"{prefix}::librecache:lock:{{{prefix}::TOOLS:{__name__}:load|x}}"))
        return name.upper()

    assert load("x") == "X" and load("x") == "X"
    assert seen == [1]  # the creation lock was taken on the master
    # the replica follows (asynchronously)
    wait_until(lambda: replica.get(f"{prefix}::raw") == b"r", 5)
    with pytest.raises(redis.ReadOnlyError):
        replica.set(f"{prefix}::raw", "never")
    master.close()
    replica.close()


def test_the_database_number_of_the_uris_is_used(make_caches: Make, redis_sentinel: RedisSentinelFarm,
                                                 prefix: str) -> None:
    env = {**redis_sentinel.env(prefix), "REDIS_URI": redis_sentinel.uri(db=3)}
    make_caches(env).region("ROLES").set("k", 1)
    master = redis.Redis(port=redis_sentinel.master.port, db=3)
    assert master.exists(f"{prefix}::ROLES:k") == 1
    assert plain(redis_sentinel).exists(f"{prefix}::ROLES:k") == 0  # not in db 0
    master.close()


def test_invalidation_and_near_caches_across_registries(make_caches: Make, sentinel_env: dict[str, str]) -> None:
    env = {**sentinel_env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES"}
    one, two = make_caches(env), make_caches(env)
    subscribed(one)
    subscribed(two)
    one.region("ROLES").set("k", "first")
    assert two.region("ROLES").get("k") == "first"  # now held near
    one.region("ROLES").set("k", "second")  # published on the master: two drops its copy
    wait_until(lambda: two.region("ROLES").get("k") == "second", 5)
    one.region("TOOLS").set("t", 1)
    one.region("TOOLS").invalidate()
    wait_until(lambda: two.region("TOOLS").get("t") is NO_VALUE, 5)


def test_an_acl_user_on_the_data_nodes(make_caches: Make, redis_sentinel: RedisSentinelFarm) -> None:
    env = {**redis_sentinel.env(ACL_PREFIX), "REDIS_USERNAME": ACL_USER, "REDIS_PASSWORD": ACL_PASSWORD,
           "LIBRECACHE_STRICT": "true"}
    caches = make_caches(env)
    caches.region("ROLES").set("acl", "yes")
    assert caches.redis is not None and caches.redis.execute_command("ACL WHOAMI") in ("tenant", b"tenant")
    master = plain(redis_sentinel)
    assert master.get(f"{ACL_PREFIX}::ROLES:acl") is not None
    master.delete(f"{ACL_PREFIX}::ROLES:acl")
    master.close()


def test_a_sentinel_that_is_down_is_skipped(make_caches: Make, redis_sentinel: RedisSentinelFarm,
                                            sentinel_env: dict[str, str], prefix: str) -> None:
    redis_sentinel.stop_sentinel(0)  # the first seed
    try:
        caches = make_caches({**sentinel_env, **FAST_RETRY, "LIBRECACHE_STRICT": "true"})
        caches.region("ROLES").set("k", "v")
        assert caches.region("ROLES").get("k") == "v"
        master = plain(redis_sentinel)
        assert master.exists(f"{prefix}::ROLES:k") == 1
        master.close()
        health = caches.health()
        assert health is not None and health["errors"] == 0
    finally:
        redis_sentinel.start_sentinel(0)
        redis_sentinel.wait_healthy()


def test_no_sentinel_reachable_degrades_then_recovers(make_caches: Make, farm: ServerFarm, prefix: str) -> None:
    sentinel = RedisSentinelFarm(farm.root)
    farm.servers.extend(sentinel.servers)
    env = {**sentinel.env(prefix), **FAST_RETRY}
    try:
        caches = make_caches(env)  # nothing is running yet: no exception
        region = caches.region("ROLES")
        assert region.get_or_create("k", lambda: "computed") == "computed"
        assert caches.health()["up"] is False  # type: ignore[index]
        sentinel.start()
        wait_until(lambda: caches.health()["up"] is True, 20)  # type: ignore[index]
        region.set("k", "cached")
        assert region.get("k") == "cached"
        with pytest.raises(redis.ConnectionError, match="No master found"):
            make_caches({**env, "LIBRECACHE_STRICT": "true", "REDIS_SENTINEL_MASTER": "unknown"}).region(
                "ROLES").set("k", 1)
    finally:
        sentinel.stop()


def test_sentinels_that_require_a_password(make_caches: Make, farm: ServerFarm, prefix: str) -> None:
    password = "sentinel-Pa55!word"
    sentinel = RedisSentinelFarm(farm.root, sentinel_password=password)
    farm.servers.extend(sentinel.servers)
    sentinel.start()
    try:
        env = {**sentinel.env(prefix), "LIBRECACHE_STRICT": "true", **FAST_RETRY}
        with pytest.raises(redis.ConnectionError, match="No master found"):
            make_caches(env).region("ROLES").set("k", 1)  # no password: every sentinel refuses
        caches = make_caches({**env, "REDIS_SENTINEL_PASSWORD": password})
        caches.region("ROLES").set("k", 1)
        assert caches.region("ROLES").get("k") == 1
        assert password not in repr(caches.config) + str(list(caches.config.describe()))
    finally:
        sentinel.stop()


def test_tls_to_the_data_nodes_verified_against_redis_ca(make_caches: Make, farm: ServerFarm, test_ca: TestCA,
                                                         prefix: str) -> None:
    cert, key = test_ca.issue("redis-sentinel-data", dns=("localhost",), ips=("127.0.0.1",))
    sentinel = RedisSentinelFarm(farm.root, tls=(cert, key, test_ca.path))
    farm.servers.extend(sentinel.servers)
    sentinel.start()
    try:
        env = {**sentinel.env(prefix), "REDIS_URI": sentinel.uri("rediss+sentinel"), "LIBRECACHE_STRICT": "true",
               **FAST_RETRY}
        caches = make_caches({**env, "REDIS_CA": str(test_ca.path)})
        caches.region("ROLES").set("k", "over TLS")
        assert caches.region("ROLES").get("k") == "over TLS"
        master = sentinel.client(sentinel.master, decode_responses=False)
        assert master.exists(f"{prefix}::ROLES:k") == 1
        master.close()

        async def stream() -> list[Any]:
            store = open_streams({**env, "REDIS_CA": str(test_ca.path)})
            await store.create("tls-1")
            await store.append("tls-1", {"n": 1})
            await store.finish("tls-1")
            events = [event.data async for event in store.subscribe("tls-1")]
            await store.close()
            return events

        assert asyncio.run(stream())[0] == {"n": 1}
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            make_caches(env).region("ROLES").get("k")  # the system's CAs do not know the test CA
    finally:
        sentinel.stop()


# -- failover --------------------------------------------------------------------------------


@pytest.mark.slow
def test_sentinel_failover_under_load(make_caches: Make, redis_sentinel: RedisSentinelFarm,
                                      sentinel_env: dict[str, str], prefix: str) -> None:
    caches = make_caches({**sentinel_env, **FAST_RETRY})
    other = make_caches(sentinel_env)  # another instance, to invalidate from
    region = caches.region("TOOLS")
    region.set("moved", "before")
    load = Load(region, threads=4, keys=100)
    wait_until(lambda: load.creations >= 100, 15)
    redis_sentinel.wait_healthy()
    old = redis_sentinel.master

    def written_to(port: int) -> Callable[[], bool]:
        def check() -> bool:
            key = f"probe-{time.monotonic()}"  # a new key each time: only this write can put it there
            region.set(key, "written")
            client = redis.Redis(port=port, socket_timeout=2)
            try:
                return client.exists(f"{prefix}::TOOLS:{key}") == 1 and region.get(key) == "written"
            finally:
                client.close()
        return check

    def invalidation_heard() -> bool:
        region.set("invalidated", 1)
        other.region("TOOLS").invalidate()
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            if region.get("invalidated") is NO_VALUE:
                return True
            time.sleep(0.01)
        return False

    started = time.monotonic()
    new = redis_sentinel.failover()
    assert new is not old
    named = time.monotonic() - started
    FAILOVER["SENTINEL FAILOVER: sentinels name the new master"] = named
    # the invalidation channel follows the master at once, not when Sentinel
    # reconfigures the demoted master (8 to 10 s later, which drops its clients)
    heard = wait_until(invalidation_heard, 5)
    FAILOVER["SENTINEL FAILOVER: invalidations heard again, after the sentinels named the master"] = heard
    # writes follow the sentinels' announcement, not the demoted master's reconfiguration
    wait_until(written_to(new.port), 5)
    FAILOVER["SENTINEL FAILOVER: writes reach the new master"] = time.monotonic() - started
    wait_until(lambda: load.creations_during(0.3) == 0, 20)  # cached again, on the new master
    load.stop()
    assert load.wrong == [] and load.errors == []
    # a value written after the failover is the one served, from the new master
    region.set("moved", "after")
    master = redis.Redis(port=new.port)
    assert region.get("moved") == "after"
    assert master.get(f"{prefix}::TOOLS:moved") is not None
    master.close()
    # no connection of the library is left on the demoted master (only the
    # sentinels', its link to the new master and this observer)
    demoted = redis.Redis(port=old.port, client_name="observer")
    wait_until(lambda: [c for c in demoted.client_list() if not c["name"].startswith("sentinel-")
                        and c["name"] != "observer" and "M" not in c["flags"]] == [], 10)
    demoted.close()
    health = caches.health()
    assert health is not None and health["up"] is True
    COUNTED["SENTINEL FAILOVER under load: errors met, calls answered without Redis, calls made"] = (
        health["errors"], health["fallthroughs"], load.calls)


@pytest.mark.slow
def test_an_idle_registry_follows_the_announcement_not_the_demotion(
    make_caches: Make, redis_sentinel: RedisSentinelFarm, sentinel_env: dict[str, str], prefix: str
) -> None:
    """After SENTINEL FAILOVER the demoted master still answers as a master
    for about ten seconds, until Sentinel reconfigures it. An idle pooled
    connection would keep writing there (writes then lost): the sentinel
    watch must move it at the announcement."""
    caches = make_caches(sentinel_env)
    region = caches.region("ROLES")
    region.set("k", "before")  # one pooled connection, idle from now on
    redis_sentinel.wait_healthy()
    old = redis_sentinel.master
    started = time.monotonic()
    new = redis_sentinel.failover()
    named = time.monotonic() - started
    client = redis.Redis(port=new.port)
    demoted = redis.Redis(port=old.port)

    def reached() -> bool:
        key = f"after-{time.monotonic()}"  # a new key each time: only this write can put it there
        region.set(key, "after")
        return client.exists(f"{prefix}::ROLES:{key}") == 1 and region.get(key) == "after"

    wait_until(reached, 5)
    FAILOVER["idle registry: writes reach the new master, after the sentinels named it"] = (
        time.monotonic() - started - named)
    COUNTED["idle registry: the demoted master's role when writes reached the new master"] = (
        demoted.info("replication")["role"])
    client.close()
    demoted.close()


@pytest.mark.slow
def test_a_readonly_reply_sends_the_next_attempt_to_the_sentinels(
    make_caches: Make, redis_sentinel: RedisSentinelFarm, sentinel_env: dict[str, str], prefix: str
) -> None:
    """Without the sentinel watch (stopped here), a pooled connection to the
    demoted master gets READONLY once it is a replica: the command goes to
    the master the sentinels name, and no error is counted."""
    caches = make_caches(sentinel_env)
    region = caches.region("ROLES")
    region.set("k", "before")
    assert caches._connection is not None and caches._connection._sentinel_watch is not None
    caches._connection._sentinel_watch.stop()
    redis_sentinel.wait_healthy()
    old = redis_sentinel.master
    new = redis_sentinel.failover()
    demoted = redis.Redis(port=old.port)
    if demoted.info("replication")["role"] == "master":  # as Sentinel will do, without dropping clients
        demoted.replicaof("127.0.0.1", new.port)
    region.set("k", "after")
    master = redis.Redis(port=new.port)
    assert region.get("k") == "after" and master.exists(f"{prefix}::ROLES:k") == 1
    health = caches.health()
    assert health is not None and health["errors"] == 0 and health["fallthroughs"] == 0
    caches._connection.reset()  # what guard does on READONLY: the next connection asks the sentinels
    region.set("k", "again")
    assert b"again" in (master.get(f"{prefix}::ROLES:k") or b"")
    demoted.close()
    master.close()


@pytest.mark.slow
def test_event_loops_end_promptly_however_many_there_are(make_caches: Make, sentinel_env: dict[str, str]) -> None:
    """Each ``asyncio.run`` cancels the tasks its loop left; none of ours may
    outlive that (a task following the sentinels' channel once could: its
    cancellation was swallowed by the pub/sub read, and the loop's exit
    waited for ever). 60 loops, each given 10 s to end."""
    import threading

    region = make_caches(sentinel_env).region("ROLES")
    for n in range(60):
        loop = threading.Thread(target=lambda n=n: asyncio.run(region.aset("k", n)), daemon=True)
        loop.start()
        loop.join(10)
        assert not loop.is_alive(), f"event loop {n} did not end"
    assert region.get("k") == 59


def test_streams_follow_a_failover(redis_sentinel: RedisSentinelFarm, sentinel_env: dict[str, str],
                                   prefix: str) -> None:
    """Appends made just after the sentinels name the new master reach it
    (not the demoted master, which still answers as a master for a while)."""
    events_key = f"{prefix}::stream:{{s1}}:events"
    redis_sentinel.wait_healthy()
    replica = plain(redis_sentinel, "replica")

    async def scenario() -> int:
        store = open_streams(sentinel_env)
        await store.create("s1")
        for n in range(5):
            await store.append("s1", {"n": n})
        wait_until(lambda: replica.xlen(events_key) == 5, 5)
        new = await asyncio.to_thread(redis_sentinel.failover)
        await asyncio.sleep(0.2)
        for n in range(5, 10):
            await store.append("s1", {"n": n})
        await store.finish("s1")
        events = [event async for event in store.subscribe("s1")]
        assert [event.data.get("n") for event in events[:-1]] == list(range(10)) and events[-1].is_end
        await store.close()
        return new.port

    port = asyncio.run(scenario())
    master = redis.Redis(port=port)
    assert master.xlen(events_key) == 11
    master.close()
    replica.close()


@pytest.mark.slow
def test_master_killed_under_load(make_caches: Make, own_sentinel: RedisSentinelFarm, prefix: str) -> None:
    caches = make_caches({**own_sentinel.env(prefix), **FAST_RETRY})
    region = caches.region("TOOLS")
    load = Load(region, threads=4, keys=100)
    wait_until(lambda: load.creations >= 100, 15)
    victim, survivor = own_sentinel.master, own_sentinel.replica
    killed = time.monotonic()
    victim.kill()

    def promoted() -> bool:
        key = f"probe-{time.monotonic()}"  # a new key each time: only this write can put it there
        region.set(key, "after the crash")
        region.set("probe", "after the crash")
        client = redis.Redis(port=survivor.port, socket_timeout=2)
        try:
            return client.exists(f"{prefix}::TOOLS:{key}") == 1 and region.get(key) == "after the crash"
        except redis.ConnectionError:  # this probe's own connection, cut by Sentinel while it promotes
            return False
        finally:
            client.close()

    wait_until(promoted, 60)
    FAILOVER["SIGKILL of the master: writes reach the new master"] = time.monotonic() - killed
    wait_until(lambda: load.creations_during(0.3) == 0, 20)
    # the old master comes back: Sentinel makes it a replica, and nothing it held is served
    victim.restart()
    own_sentinel.wait_healthy()
    wait_until(lambda: load.creations_during(0.3) == 0, 20)
    load.stop()
    assert load.wrong == [] and load.errors == []
    # A loaded machine may see a second failover, back to the restarted node
    # (no persistence, so it comes back empty) before it has synced all:
    # Redis replicates asynchronously, so the probe may then be lost. A
    # cache may lose a value; it never serves another one.
    moved_back = own_sentinel.master.port != survivor.port
    assert region.get("probe") == "after the crash" or (moved_back and region.get("probe") is NO_VALUE), \
        f"master now {own_sentinel.master.port}, promoted {survivor.port}"
    health = caches.health()
    assert health is not None and health["up"] is True
    COUNTED["SIGKILL under load: errors met, calls answered without Redis, calls made"] = (
        health["errors"], health["fallthroughs"], load.calls)
    # a value written on the new master is what is served, near caches or not
    master = redis.Redis(port=own_sentinel.master.port)
    region.set("fresh", "old")
    master.set(f"{prefix}::TOOLS:fresh", master.get(f"{prefix}::TOOLS:probe") or b"")
    assert region.get("fresh") == "after the crash"
    master.close()


# -- configuration ---------------------------------------------------------------------------------


SEEDS = "redis+sentinel://127.0.0.1:26379/0,redis+sentinel://127.0.0.1:26380/0"


@pytest.mark.parametrize(
    ("environ", "variable", "says"),
    [
        ({"REDIS_URI": SEEDS}, "REDIS_SENTINEL_MASTER", "required"),
        ({"REDIS_URI": SEEDS + ",redis://127.0.0.1:6379", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_URI", "mixes"),
        ({"REDIS_URI": "redis+sentinel://127.0.0.1:26379/0,rediss+sentinel://127.0.0.1:26380/0",
          "REDIS_SENTINEL_MASTER": "m"}, "REDIS_URI", "same protocol"),
        ({"REDIS_URI": "redis+sentinel://127.0.0.1:26379/0,redis+sentinel://127.0.0.1:26380/2",
          "REDIS_SENTINEL_MASTER": "m"}, "REDIS_URI", "same database"),
        ({"REDIS_URI": SEEDS, "REDIS_SENTINEL_MASTER": "m", "USE_REDIS_CLUSTER": "true"}, "USE_REDIS_CLUSTER",
         "Sentinel"),
        ({"REDIS_URI": "redis://127.0.0.1:6379", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_MASTER", "no redis+sentinel"),
        ({"REDIS_URI": "redis://127.0.0.1:6379", "REDIS_SENTINEL_USERNAME": "u"}, "REDIS_SENTINEL_USERNAME",
         "no redis+sentinel"),
        ({"REDIS_URI": "redis://127.0.0.1:6379", "REDIS_SENTINEL_PASSWORD": "pw-0123456789"}, "REDIS_SENTINEL_PASSWORD",
         "no redis+sentinel"),
        ({"REDIS_URI": "redis+sentinel://127.0.0.1:26379/0", "REDIS_SENTINEL_MASTER": "m",
          "REDIS_CA": "/missing/ca.pem"}, "REDIS_CA", "existing file"),
        ({"REDIS_URI": "redis+sentinel://127.0.0.1:26379/x", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_URI",
         "database number"),
        ({"REDIS_URI": "redis+sentinal://127.0.0.1:26379", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_URI",
         "redis+sentinel://"),
    ],
)
def test_bad_configurations_fail_at_startup(environ: dict[str, str], variable: str, says: str) -> None:
    with pytest.raises(librecache.ConfigurationError, match=re.escape(says)) as caught:
        librecache.Caches({"USE_REDIS": "true", **environ})
    assert caught.value.variable == variable and variable in str(caught.value)
    assert "pw-0123456789" not in str(caught.value)


def test_sentinel_configuration_is_described_and_passwords_never_shown() -> None:
    config = librecache.CacheConfig.from_env({
        "USE_REDIS": "true", "REDIS_URI": "rediss+sentinel://app:data-secret-1@10.0.0.5:26379/2,"
                                          "rediss+sentinel://app:data-secret-1@10.0.0.6:26379/2",
        "REDIS_SENTINEL_MASTER": "mymaster", "REDIS_SENTINEL_USERNAME": "watcher",
        "REDIS_SENTINEL_PASSWORD": "sentinel-secret-2",
    })
    assert config.sentinel and config.tls and not config.cluster
    settings = dict(config.describe())
    assert settings["topology"] == "sentinel" and settings["sentinel master"] == "mymaster"
    assert settings["sentinel user"] == "watcher" and settings["sentinel password"] == "***"
    assert settings["uris"] == "rediss+sentinel://***@10.0.0.5:26379/2, rediss+sentinel://***@10.0.0.6:26379/2"
    shown = repr(config) + str(settings)
    assert "data-secret-1" not in shown and "sentinel-secret-2" not in shown


# -- the command ------------------------------------------------------------------------------------


def test_the_command_shows_the_master_its_replicas_and_each_sentinel(
    redis_sentinel: RedisSentinelFarm, sentinel_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in {**sentinel_env, "REDIS_SENTINEL_PASSWORD": ""}.items():
        monkeypatch.setenv(name, value)
    redis_sentinel.wait_healthy()  # a test before may have failed it over: the old master resyncing is no replica yet
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    master, replica = redis_sentinel.master, redis_sentinel.replica
    assert f"master 127.0.0.1:{master.port}" in out
    assert f"replica 127.0.0.1:{replica.port}" in out
    for sentinel in redis_sentinel.sentinels:
        assert f"sentinel 127.0.0.1:{sentinel.port}: names master 127.0.0.1:{master.port}" in out
    redis_sentinel.stop_sentinel(2)
    try:
        assert main(["check"]) == 1
        out = capsys.readouterr().out
        assert f"FAIL  sentinel 127.0.0.1:{redis_sentinel.sentinels[2].port}" in out
    finally:
        redis_sentinel.start_sentinel(2)
        redis_sentinel.wait_healthy()
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "never-shown-0123")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "never-shown-0123" not in out
    assert "sentinel master    mymaster" in out and redis_sentinel.uri().split(",")[0] in out


def test_failover_times_are_reported() -> None:
    """Runs last in this module: prints what the failover tests measured."""
    for name, seconds in FAILOVER.items():
        print(f"FAILOVER {name}: {seconds * 1000:.0f} ms")
    for name, counted in COUNTED.items():
        print(f"FAILOVER {name}: {counted}")
