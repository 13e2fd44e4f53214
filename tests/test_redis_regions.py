"""What only Redis regions do: key names, server-side expiry, locks and
invalidation across processes, prefix isolation, corrupt data."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import redis
from dogpile.cache.api import NO_VALUE

import librecache
from tests import processes
from tests.conformance import in_threads
from tests.conftest import Deployment
from tests.servers import RedisServer
from tests.test_speed import monitored

Make = Callable[..., librecache.Caches]


def test_value_keys_are_prefix_namespace_key(make_caches: Make, deployment: Deployment, prefix: str) -> None:
    caches = make_caches(deployment.env)
    caches.region("ROLES").set("admin", {"can": "all"})
    assert deployment.raw.exists(f"{prefix}::ROLES:admin") == 1

    @caches.region("CONFIG_STORE").cache_on_arguments()
    def load(name: str) -> str:
        return name.upper()

    load("x")
    assert deployment.keys(f"{prefix}::CONFIG_STORE:*") == [f"{prefix}::CONFIG_STORE:{__name__}:load|x".encode()]


def test_without_prefix_keys_are_namespace_key(make_caches: Make, bare_redis_server, raw: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    caches = make_caches(USE_REDIS="true", REDIS_URI=bare_redis_server.url)
    caches.region("ROLES").set("admin", 1)
    plain = redis.Redis(port=bare_redis_server.port)
    assert plain.keys("*") == [b"ROLES:admin"]
    plain.close()


def test_long_keys_keep_a_readable_head_and_hash_the_rest(make_caches: Make, deployment: Deployment, prefix: str) -> None:
    region = make_caches(deployment.env).region("TOOLS")
    region.set("q" * 1000, "long")
    (key,) = deployment.keys(f"{prefix}::TOOLS:*")
    assert key.startswith(f"{prefix}::TOOLS:{'q' * 64}~".encode())
    assert len(key) <= 250
    assert region.get("q" * 1000) == "long"


def test_namespaces_with_a_ttl_expire_on_the_server(make_caches: Make, deployment: Deployment, prefix: str) -> None:
    caches = make_caches({**deployment.env, "BAN_DURATION": "1000 * 60 * 60"})
    caches.region("MESSAGES").set("m", 1)
    caches.region("BANS").set("ip", 1)
    caches.region("ROLES").set("r", 1)
    assert 60_000 < deployment.raw.pttl(f"{prefix}::MESSAGES:m") <= 66_000
    assert 3_600_000 < deployment.raw.pttl(f"{prefix}::BANS:ip") <= 3_660_000
    assert 600_000 < deployment.raw.pttl(f"{prefix}::ROLES:r") / 1000 <= 604_800  # retention
    caches.region("MESSAGES").set_multi({"a": 1, "b": 2})
    assert all(60_000 < deployment.raw.pttl(f"{prefix}::MESSAGES:{k}") <= 66_000 for k in "ab")


def test_retention_zero_means_no_expiry_for_ttl_less_namespaces(make_caches: Make, deployment: Deployment, prefix: str) -> None:
    make_caches({**deployment.env, "LIBRECACHE_REDIS_RETENTION": "0"}).region("ROLES").set("r", 1)
    assert deployment.raw.pttl(f"{prefix}::ROLES:r") == -1


def test_the_creation_lock_lives_under_the_prefix_and_expires(make_caches: Make, deployment: Deployment, prefix: str) -> None:
    region = make_caches(deployment.env).region("ROLES")
    seen: list[list[bytes]] = []

    def creator() -> str:
        seen.append(deployment.keys("*" + prefix + "*lock*"))
        seen.append([deployment.raw.pttl(key) for key in seen[0]])  # type: ignore[misc]
        return "v"

    region.get_or_create("k", creator)
    assert seen[0] == [f"{prefix}::librecache:lock:{{{prefix}::ROLES:k}}".encode()]
    assert 0 < seen[1][0] <= 30_000  # type: ignore[operator]
    assert deployment.keys(f"{prefix}::librecache:lock:*") == []  # released


def test_shared_connection_pool(make_caches: Make, redis_env: dict[str, str]) -> None:
    caches = make_caches(redis_env)
    clients = {id(caches.region(name).backend.client) for name, _ in caches}
    assert len(clients) == 1
    assert caches.redis is not None
    assert caches.redis.connection_pool is caches.region("ROLES").backend.client.connection_pool


def test_forced_namespaces_stay_in_memory(make_caches: Make, deployment: Deployment, prefix: str) -> None:
    caches = make_caches({**deployment.env, "FORCED_IN_MEMORY_CACHE_NAMESPACES": "ROLES,MESSAGES"})
    assert caches.backend_name("ROLES") == "memory" and caches.backend_name("TOOLS") == "redis"
    caches.region("ROLES").set("r", 1)
    caches.region("TOOLS").set("t", 1)
    assert deployment.keys(f"{prefix}::*") == [f"{prefix}::TOOLS:t".encode()]


# -- isolation -----------------------------------------------------------------


def test_prefixes_isolate_deployments(make_caches: Make, redis_server, raw: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    blue = make_caches(USE_REDIS="1", REDIS_URI=redis_server.url, REDIS_KEY_PREFIX="blue-iso")
    green = make_caches(USE_REDIS="1", REDIS_URI=redis_server.url, REDIS_KEY_PREFIX_VAR="REV", REV="green-iso")
    blue.region("ROLES").set("admin", "blue")
    green.region("ROLES").set("admin", "green")
    assert blue.region("ROLES").get("admin") == "blue"
    assert green.region("ROLES").get("admin") == "green"
    green.region("ROLES").invalidate()
    assert blue.region("ROLES").get("admin") == "blue"
    assert green.clear("ROLES") == 1
    assert blue.region("ROLES").get("admin") == "blue"
    assert blue.stored_keys("ROLES") == ["blue-iso::ROLES:admin"]
    assert blue.redis is not None and green.redis is not None
    blue.redis.set("shared", "b")
    assert green.redis.get("shared") is None
    blue.clear("ROLES")
    blue.redis.delete("shared")


# -- across processes ------------------------------------------------------------


@pytest.mark.slow
def test_stampede_across_processes_runs_the_creator_once(deployment: Deployment, make_caches: Make) -> None:
    env = {**deployment.env, "KEY": "cold", "START_AT": repr(time.time() + 2.5), "THREADS": "16"}
    workers = [processes.start("stampede", env) for _ in range(4)]
    reports = [processes.read_line(worker) for worker in workers]
    for worker in workers:
        assert worker.wait(30) == 0
    assert [report["results"] for report in reports] == [["the value"] * 16] * 4
    caches = make_caches(deployment.env)
    assert caches.redis is not None
    assert int(caches.redis.get("creator-calls")) == 1


@pytest.mark.slow
def test_invalidation_reaches_other_processes(deployment: Deployment, make_caches: Make) -> None:
    caches = make_caches(deployment.env)
    region = caches.region("ROLES")
    region.set("k", "before")
    watcher = processes.start("watch", {**deployment.env, "KEY": "k"})
    assert processes.read_line(watcher) == {"ready": True, "value": "before"}
    time.sleep(0.05)
    invalidated_at = time.time()
    region.invalidate()
    report = processes.read_line(watcher)
    assert watcher.wait(10) == 0
    assert report["invalidated"] is True
    assert report["at"] - invalidated_at < 1.0
    # a registry started afterwards sees the invalidation too
    assert make_caches(deployment.env).region("ROLES").get("k") is NO_VALUE
    # and so does this process, at once
    assert region.get("k") is NO_VALUE


def test_an_invalidation_is_stored_before_it_is_announced(redis_server: RedisServer, redis_env: dict[str, str],
                                                           make_caches: Make) -> None:
    """A process whose listener subscribes after the announcement reads the
    stored marks once subscribed: had it read them before the mark was
    stored, it would miss both. So the mark is stored first (a full Redis
    refuses it and the message still goes: ``test_faults``)."""
    caches = make_caches(redis_env)
    region = caches.region("ROLES")
    region.set("k", 1)
    assert caches.invalidations is not None and caches.invalidations.wait_subscribed(5)
    with monitored([redis_server.port], "librecache:invalidations") as seen:
        region.invalidate()
    assert [command.upper() for command in seen if command.upper() in ("EVAL", "PUBLISH")] == ["EVAL", "PUBLISH"]


def test_invalidation_applies_to_its_namespace_only(make_caches: Make, deployment: Deployment) -> None:
    one, two = make_caches(deployment.env), make_caches(deployment.env)
    one.region("ROLES").set("k", 1)
    one.region("TOOLS").set("k", 2)
    time.sleep(0.01)
    assert two.invalidations is not None and two.invalidations.wait_subscribed(5)
    one.region("ROLES").invalidate()
    deadline = time.monotonic() + 2
    while two.region("ROLES").get("k") is not NO_VALUE and time.monotonic() < deadline:
        time.sleep(0.005)
    assert two.region("ROLES").get("k") is NO_VALUE
    assert two.region("TOOLS").get("k") == 2


@pytest.mark.slow
def test_a_killed_lock_holder_does_not_block_the_key_for_ever(deployment: Deployment, make_caches: Make) -> None:
    env = {**deployment.env, "LIBRECACHE_LOCK_TIMEOUT": "1.5", "KEY": "stuck"}
    holder = processes.start("hold_lock", env)
    assert processes.read_line(holder) == {"creating": True}
    holder.kill()
    holder.wait()
    region = make_caches(env).region("ROLES")
    started = time.monotonic()
    assert region.get_or_create("stuck", lambda: "recovered") == "recovered"
    assert time.monotonic() - started < 5


# -- corrupt data ------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"garbage", b"{not json|x", b'{"ct": 1}|\x80\x04not a pickle', b'{"v": 2}|' + b"\x80\x04K\x01.", b""],
)
def test_corrupt_values_are_misses(make_caches: Make, deployment: Deployment, prefix: str, payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    region = make_caches(deployment.env).region("ROLES")
    deployment.raw.set(f"{prefix}::ROLES:bad", payload)
    with caplog.at_level(logging.WARNING, logger="librecache"):
        assert region.get("bad") is NO_VALUE
        assert region.get_multi(["bad"]) == [NO_VALUE]
        assert region.get_or_create("bad", lambda: "fresh") == "fresh"
    assert "ROLES" in caplog.text and "treated as a miss" in caplog.text
    assert region.get("bad") == "fresh"


# -- the shared registry under threads ---------------------------------------------


def test_many_threads_many_keys(make_caches: Make, deployment: Deployment) -> None:
    region = make_caches(deployment.env).region("TOOLS")

    def work(n: int) -> None:
        for i in range(50):
            key = f"k{(n * 7 + i) % 40}"
            assert region.get_or_create(key, lambda key=key: key.upper()) == key.upper()

    assert in_threads(work) == []


def test_multi_key_operations_span_every_master(make_caches: Make, deployment: Deployment, prefix: str) -> None:
    region = make_caches(deployment.env).region("TOOLS")
    mapping = {f"k{i}": i for i in range(1000)}
    region.set_multi(mapping)
    if deployment.cluster:
        raw = deployment.raw
        per_master = [
            len(raw.get_redis_connection(node).keys(f"{prefix}::TOOLS:*")) for node in raw.get_primaries()
        ]
        assert len(per_master) == 3 and all(count > 200 for count in per_master), per_master
    assert region.get_multi(list(mapping)) == list(mapping.values())
    assert region.get_or_create_multi(["k1", "new"], lambda *keys: [f"made {k}" for k in keys]) == [1, "made new"]
    region.delete_multi(list(mapping))
    assert deployment.keys(f"{prefix}::TOOLS:k*") == []


def test_clear_removes_its_namespace_only_on_every_master(make_caches: Make, deployment: Deployment, prefix: str) -> None:
    caches = make_caches(deployment.env)
    caches.region("TOOLS").set_multi({f"t{i}": i for i in range(2500)})
    caches.region("ROLES").set("keep", 1)
    assert len(caches.stored_keys("TOOLS")) == 2500
    assert len(caches.stored_keys("TOOLS", limit=10)) == 10
    assert caches.clear("TOOLS") == 2500
    assert deployment.keys(f"{prefix}::TOOLS:*") == []
    assert caches.region("ROLES").get("keep") == 1


@pytest.mark.parametrize("prefix", ["p", "", "lib-chat.prod_2"])
@pytest.mark.parametrize("key", ["p::ROLES:k", "p::ROLES:{tag}k", "p::ROLES:k}", "p::ROLES:{}k", "p::ROLES:{a{b}c",
                                 "p::ROLES:}{x}", "raw", "r{aw", "{}", "{", "}", "a{b}::ROLES:z", "p::ROLES:\u00e9{\u00e9}"])
def test_a_creation_lock_lives_in_its_values_cluster_slot(prefix: str, key: str) -> None:
    """Whatever braces a value key holds (a hash tag, an empty one, an
    unclosed one), its lock hashes to the same cluster slot, so that one
    script reads the value and takes the lock, and one stores the value
    only while the lock holds."""
    from redis.crc import key_slot

    from librecache.keyspace import KeySpace

    name = KeySpace(prefix).lock(key)
    assert key_slot(name.encode()) == key_slot(key.encode()), (key, name)
    assert name.startswith(f"{prefix}::librecache:lock" if prefix else "librecache:lock")
    assert name != KeySpace(prefix).lock(key + "x")  # one lock per value key


def test_a_key_space_refuses_a_prefix_with_braces() -> None:
    """The configuration refuses such a prefix (its hash tag would change
    the slots of every key); the key space relies on it."""
    from librecache.keyspace import KeySpace

    for prefix in ("a{b}", "x}y", "{"):
        with pytest.raises(ValueError, match="brace"):
            KeySpace(prefix)
