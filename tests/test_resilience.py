"""Keep serving when Redis is sick: every test against real servers, asserting
that callers only ever received correct values, how many errors reached
them, and that caching resumed."""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from dogpile.cache.api import NO_VALUE
from redis.cluster import RedisCluster
from redis.crc import key_slot

import librecache
from tests.faults import FaultProxy
from tests.load import FAST_RETRY, Load, wait_until
from tests.servers import RedisClusterFarm, RedisServer, ServerFarm, SilentPeer

Make = Callable[..., librecache.Caches]
RECOVERY: dict[str, float] = {}  # measured recovery times, printed at the end of the module


# -- a server that stops and comes back --------------------------------------------


@pytest.mark.slow
def test_stop_and_restart_under_load(make_caches: Make, own_server: RedisServer) -> None:
    caches = make_caches(USE_REDIS="true", REDIS_URI=own_server.url, REDIS_KEY_PREFIX="restart", **FAST_RETRY)
    load = Load(caches.region("TOOLS"))
    wait_until(lambda: load.creations >= 100, 10)  # every key cached
    assert load.creations_during(0.3) == 0  # served from Redis

    own_server.stop()
    wait_until(lambda: caches.health()["up"] is False, 5)  # type: ignore[index]
    calls_before = load.calls
    time.sleep(1.0)
    assert load.calls - calls_before > 100  # callers kept being served: by the function itself

    restarted = time.monotonic()
    own_server.restart()  # empty: no persistence
    wait_until(lambda: caches.health()["up"] is True, 10)  # type: ignore[index]
    RECOVERY["single server restart: breaker closed"] = time.monotonic() - restarted
    wait_until(lambda: load.creations_during(0.2) == 0, 10)  # caching resumed by itself
    RECOVERY["single server restart: all keys cached again"] = time.monotonic() - restarted
    load.stop()
    health = caches.health()
    assert load.wrong == [] and load.errors == []
    assert health is not None and health["errors"] >= 1 and health["recoveries"] == 1 and health["fallthroughs"] > 0


def test_strict_mode_raises_instead(make_caches: Make, own_server: RedisServer) -> None:
    caches = make_caches(USE_REDIS="true", REDIS_URI=own_server.url, LIBRECACHE_STRICT="true", **FAST_RETRY)
    caches.region("TOOLS").set("k", 1)
    own_server.stop()
    with pytest.raises(redis.ConnectionError):
        caches.region("TOOLS").get("k")


def test_a_server_that_accepts_and_never_answers(make_caches: Make, caplog: pytest.LogCaptureFixture) -> None:
    with SilentPeer() as peer:
        caches = make_caches(USE_REDIS="true", REDIS_URI=f"redis://127.0.0.1:{peer.port}", **FAST_RETRY)
        region = caches.region("TOOLS")
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="librecache"):
            assert region.get_or_create("k", lambda: "computed") == "computed"
        first = time.monotonic() - started
        timings = []
        for n in range(200):
            started = time.monotonic()
            assert region.get_or_create(f"k{n}", lambda n=n: n) == n
            timings.append(time.monotonic() - started)
    RECOVERY["silent peer: first call (two attempts of 0.5 s connect time-out)"] = first
    RECOVERY["silent peer: median later call"] = sorted(timings)[100]
    assert first < 2.5  # LIBRECACHE_SOCKET_TIMEOUT=1 s, one retry at most
    assert sorted(timings)[100] < 0.001  # the breaker is open: no network at all
    assert "Redis unavailable" in caplog.text
    assert len([r for r in caplog.records if "Redis unavailable" in r.getMessage()]) == 1  # not flooded


def test_deletes_during_an_outage_are_replayed(make_caches: Make, own_server: RedisServer) -> None:
    with FaultProxy(own_server.port) as proxy:  # the library's way to Redis; the test's own is direct
        env = {"USE_REDIS": "true", "REDIS_URI": proxy.url, "REDIS_KEY_PREFIX": "deletes", **FAST_RETRY}
        caches = make_caches(env)
        region = caches.region("ROLES")
        region.set("stale", "old")
        proxy.blackhole()
        region.delete("stale")  # cannot reach Redis: remembered
        assert caches.health()["pending_deletes"] == 1  # type: ignore[index]
        admin = redis.Redis(port=own_server.port)
        admin.set("deletes::ROLES:stale", pickle.dumps("not this one"))  # the value survived the outage
        proxy.heal(deliver=False)
        wait_until(lambda: caches.health()["up"] is True and caches.health()["pending_deletes"] == 0, 10)  # type: ignore[index]
        assert admin.exists("deletes::ROLES:stale") == 0
        admin.close()


def test_invalidation_during_an_outage_is_announced_when_back(make_caches: Make, own_server: RedisServer) -> None:
    env = {"USE_REDIS": "true", "REDIS_URI": own_server.url, "REDIS_KEY_PREFIX": "inval", **FAST_RETRY}
    caches = make_caches(env)
    region = caches.region("ROLES")
    region.set("k", "v")
    own_server.stop()
    time.sleep(0.05)
    region.invalidate()  # no exception; effective here at once
    assert region.get("k") is NO_VALUE
    own_server.restart()
    wait_until(lambda: caches.health()["up"] is True, 10)  # type: ignore[index]
    region.set("k", "old value, written before the invalidation time")  # written now: valid
    other = make_caches(env)  # a process started after the outage sees the mark
    client = other.redis
    assert client is not None and client.hget("librecache:invalidations", "ROLES:hard") is not None


def test_reconnecting_never_gives_up(make_caches: Make, own_server: RedisServer) -> None:
    """REDIS_RETRY_MAX_ATTEMPTS bounds one quick burst; after it, attempts go
    on at REDIS_RETRY_MAX_DELAY and caching comes back by itself (the
    default's 10 attempts and 3 s cap, scaled down: 3 attempts, 200 ms)."""
    env = {**FAST_RETRY, "REDIS_RETRY_MAX_ATTEMPTS": "3", "REDIS_RETRY_MAX_DELAY": "200"}
    caches = make_caches(USE_REDIS="true", REDIS_URI=own_server.url, **env)
    region = caches.region("TOOLS")
    region.set("k", 1)
    own_server.stop()
    assert region.get_or_create("k", lambda: 2) == 2  # falls through
    wait_until(lambda: caches.health()["reconnect_attempts"] >= 3 + 3, 10)  # type: ignore[index]  # burst over
    restarted = time.monotonic()
    own_server.restart()
    wait_until(lambda: caches.health()["up"] is True, 10)  # type: ignore[index]
    RECOVERY["outage past the reconnect burst: breaker closed after restart"] = time.monotonic() - restarted
    region.set("k", 3)
    assert region.get("k") == 3
    health = caches.health()
    assert health is not None and health["recoveries"] == 1 and health["reconnect_attempts"] == 0
    # Caches.reconnect() still asks for an attempt right away
    caches.reconnect()
    assert region.get("k") == 3


# -- READONLY: the master moved -------------------------------------------------------


def test_readonly_reply_reconnects_to_the_current_master(make_caches: Make, farm: ServerFarm) -> None:
    old, new = farm.server(), farm.server()
    proxy = FaultProxy(old.port)  # the name the deployment uses
    try:
        caches = make_caches(USE_REDIS="true", REDIS_URI=f"redis://127.0.0.1:{proxy.port}", REDIS_KEY_PREFIX="ro")
        region = caches.region("TOOLS")
        region.set("before", 1)
        # failover: the new server takes over, the old one becomes its replica
        admin_old, admin_new = redis.Redis(port=old.port), redis.Redis(port=new.port)
        admin_new.execute_command("REPLICAOF", "NO", "ONE")
        admin_old.execute_command("REPLICAOF", "127.0.0.1", new.port)
        proxy.retarget(new.port)
        wait_until(lambda: admin_old.info("replication").get("master_link_status") == "up", 10)
        region.set("after", 2)  # the pooled connection reaches a replica: READONLY, then the new master
        assert admin_new.get("ro::TOOLS:after") is not None
        assert region.get("after") == 2
        health = caches.health()
        assert health is not None and health["errors"] == 0 and health["up"] is True
        admin_old.close()
        admin_new.close()
    finally:
        proxy.close()
        old.stop()
        new.stop()


# -- keep-alive ---------------------------------------------------------------------------


def test_keepalive_pings_idle_connections_and_drops_dead_ones(make_caches: Make, own_server: RedisServer) -> None:
    caches = make_caches(USE_REDIS="true", REDIS_URI=own_server.url, REDIS_PING_INTERVAL="0.3",
                         LIBRECACHE_SOCKET_TIMEOUT="0.5")
    caches.region("TOOLS").set("k", 1)
    admin = redis.Redis(port=own_server.port)
    wait_until(lambda: caches.health()["keepalive_pings"] >= 2, 5)  # type: ignore[index]
    assert int(admin.info("commandstats")["cmdstat_ping"]["calls"]) >= 2
    # the provider kills idle connections
    admin.client_kill_filter(_type="normal", skipme=True)
    wait_until(lambda: caches.health()["keepalive_drops"] >= 1, 5)  # type: ignore[index]
    # a hung server: pings get no answer and the connection is dropped
    assert caches.region("TOOLS").get("k") == 1  # a live connection again
    drops = caches.health()["keepalive_drops"]  # type: ignore[index]
    admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    wait_until(lambda: caches.health()["keepalive_drops"] > drops, 5)  # type: ignore[index]
    time.sleep(1.6)
    assert caches.region("TOOLS").get("k") == 1
    assert caches.health()["errors"] == 0  # type: ignore[index]
    connection = caches._connection
    assert connection is not None
    caches.close()
    assert not connection._thread.is_alive()  # the keep-alive stops with the registry
    admin.close()


# -- a cluster master dies under load ---------------------------------------------------------


@pytest.fixture
def doomed_cluster(farm: ServerFarm) -> Iterator[RedisClusterFarm]:
    cluster = farm.cluster()
    yield cluster
    cluster.stop()


@pytest.mark.slow
def test_cluster_master_killed_under_load(make_caches: Make, doomed_cluster: RedisClusterFarm) -> None:
    caches = make_caches(USE_REDIS="true", REDIS_URI=doomed_cluster.uri(3), REDIS_KEY_PREFIX="failover", **FAST_RETRY)
    load = Load(caches.region("TOOLS"), threads=4, keys=200)
    wait_until(lambda: load.creations >= 200, 15)
    observer = RedisCluster(host="127.0.0.1", port=doomed_cluster.nodes[0].port)
    master = observer.get_node_from_key("failover::TOOLS:probe")
    victim = next(node for node in doomed_cluster.nodes if node.port == master.port)
    observer.close()

    killed = time.monotonic()
    victim.kill()
    wait_until(lambda: caches.health()["up"] is False, 10)  # type: ignore[index]
    RECOVERY["cluster master SIGKILL: breaker closed again"] = wait_until(
        lambda: caches.health()["up"] is True, 30)  # type: ignore[index]
    region = caches.region("TOOLS")

    def slot_served() -> bool:
        region.set("probe", "after failover")
        return bool(caches.health()["up"]) and region.get("probe") == "after failover"  # type: ignore[index]

    wait_until(slot_served, 30)
    RECOVERY["cluster master SIGKILL: killed slots writable again"] = time.monotonic() - killed
    wait_until(lambda: load.creations_during(0.3) == 0, 20)
    load.stop()
    assert load.wrong == [] and load.errors == []
    assert key_slot(b"failover::TOOLS:probe") is not None


# -- signed payloads -----------------------------------------------------------------------------


class Boom:
    """A pickle that runs code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def test_signed_deployments_never_unpickle_forged_values(
    make_caches: Make, redis_server: RedisServer, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = "first-signing-key-0123456789"
    env = {"USE_REDIS": "true", "REDIS_URI": redis_server.url, "REDIS_KEY_PREFIX": prefix, "LIBRECACHE_SIGNING_KEY": key}
    region = make_caches(env).region("ROLES")
    region.set("admin", ["all"])
    raw = redis.Redis(port=redis_server.port)
    stored = raw.get(f"{prefix}::ROLES:admin")
    assert stored is not None and stored.startswith(b"LCS1") and region.get("admin") == ["all"]
    assert region.get("admin") == ["all"]  # verified before: remembered by its bytes and key
    raw.set(f"{prefix}::ROLES:moved", stored)  # the same bytes under another key
    assert region.get("moved") is NO_VALUE
    region.set("large", "x" * 10_000)  # larger than what is remembered: verified every time
    assert region.get("large") == "x" * 10_000 and region.get("large") == "x" * 10_000
    tampered = bytearray(raw.get(f"{prefix}::ROLES:large"))
    tampered[-20] ^= 1
    raw.set(f"{prefix}::ROLES:large", bytes(tampered))
    assert region.get("large") is NO_VALUE

    marker = tmp_path / "marker"
    forged = b'{"ct": 9999999999.0, "v": 2}|' + pickle.dumps(Boom(marker))
    raw.set(f"{prefix}::ROLES:admin", forged)
    with caplog.at_level(logging.WARNING, logger="librecache"):
        assert region.get("admin") is NO_VALUE
        assert region.get_or_create("admin", lambda: ["recomputed"]) == ["recomputed"]
    assert not marker.exists()  # never unpickled
    assert "not validly signed" in caplog.text and key not in caplog.text

    # a signed value moved to another key is refused too
    raw.set(f"{prefix}::ROLES:guest", raw.get(f"{prefix}::ROLES:admin"))
    assert region.get("guest") is NO_VALUE
    # tampering with one byte
    good = bytearray(raw.get(f"{prefix}::ROLES:admin"))
    good[-3] ^= 1
    raw.set(f"{prefix}::ROLES:admin", bytes(good))
    assert region.get("admin") is NO_VALUE

    # rotation: the new key signs, the old one still verifies
    region.set("kept", "from before the rotation")
    rotated = make_caches({**env, "LIBRECACHE_SIGNING_KEY": f"second-signing-key-abcdefgh,{key}"}).region("ROLES")
    assert rotated.get("kept") == "from before the rotation"
    # an unsigned deployment's values are not trusted by a signed one
    unsigned = make_caches({**env, "LIBRECACHE_SIGNING_KEY": ""}).region("ROLES")
    unsigned.set("plain", 1)
    assert region.get("plain") is NO_VALUE
    raw.close()


def test_signing_keys_are_checked_and_never_shown() -> None:
    with pytest.raises(librecache.ConfigurationError, match="at least 16 characters") as caught:
        librecache.CacheConfig.from_env({"LIBRECACHE_SIGNING_KEY": "short-secret"})
    assert "short-secret" not in str(caught.value)
    config = librecache.CacheConfig.from_env({"LIBRECACHE_SIGNING_KEY": "a-long-enough-secret-key"})
    assert "a-long-enough-secret-key" not in repr(config) + str(list(config.describe()))
    assert dict(config.describe())["signing"] == "on (1 key)"


def test_recovery_times_are_reported() -> None:
    """Runs last in this module: prints what the fault tests measured."""
    for name, seconds in RECOVERY.items():
        print(f"RECOVERY {name}: {seconds * 1000:.0f} ms")
