"""Tags: ``tags=`` on writes and memoised functions, ``invalidate_tags``
everywhere, on memory, a single Redis, the cluster and Sentinel, through
both doors; other processes (spawned), near caches, the channel down, the
commands one invalidation sends."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from dogpile.cache.api import NO_VALUE

import librecache
from librecache import ConfigurationError
from librecache.cli import main as cli
from librecache.tags import TagBook, checked_tags
from tests.load import wait_until

Make = Callable[..., librecache.Caches]

ONE, TWO = "ROLES", "CONFIG_STORE"
DOORS = ("sync", "async")


def ready(caches: librecache.Caches) -> librecache.Caches:
    """``caches`` once its tags' record is live (its listener subscribed)."""
    bus = caches.invalidations
    if bus is not None:
        assert bus.wait_subscribed(10)
        wait_until(lambda: caches.tag_book.live, 10)
    return caches


def write(door: str, region: Any, key: str, value: Any, tags: list[str] | None = None) -> None:
    if door == "sync":
        region.set(key, value, tags=tags)
    else:
        asyncio.run(region.aset(key, value, tags=tags))


def read(door: str, region: Any, key: str) -> Any:
    if door == "sync":
        return region.get(key)
    return asyncio.run(region.aget(key))


def invalidate(door: str, caches: librecache.Caches, *tags: str) -> int:
    if door == "sync":
        return caches.invalidate_tags(*tags)
    return asyncio.run(caches.ainvalidate_tags(*tags))


# -- one process --------------------------------------------------------------------------------


@pytest.mark.parametrize("door", DOORS)
def test_an_invalidated_tag_drops_its_entries_in_every_namespace(make_caches: Make, topology: dict[str, str],
                                                                  door: str) -> None:
    caches = ready(make_caches(topology))
    one, two = caches.region(ONE), caches.region(TWO)
    write(door, one, "a", "A", ["user:42"])
    write(door, two, "b", "B", ["user:42", "org:7"])
    write(door, two, "c", "C", ["org:7"])
    write(door, one, "plain", "P")
    assert [read(door, one, "a"), read(door, two, "b"), read(door, two, "c")] == ["A", "B", "C"]
    assert invalidate(door, caches, "user:42") == 1
    # at once, in this process: both namespaces; other tags and untagged entries untouched
    assert read(door, one, "a") is NO_VALUE and read(door, two, "b") is NO_VALUE
    assert read(door, two, "c") == "C" and read(door, one, "plain") == "P"
    write(door, one, "a", "A2", ["user:42"])  # written after the invalidation: valid
    assert read(door, one, "a") == "A2"
    assert caches.stats()["tag_invalidations"] == 1
    assert caches.stats()[ONE]["tag_misses"] >= 1 and caches.stats()[TWO]["tag_misses"] >= 1


@pytest.mark.parametrize("door", DOORS)
def test_get_or_create_and_batches_carry_their_tags(make_caches: Make, topology: dict[str, str], door: str) -> None:
    caches = ready(make_caches(topology))
    region = caches.region(ONE)
    runs: list[str] = []

    def create(value: str) -> Callable[..., Any]:
        def creator(*keys: str) -> Any:
            runs.append(value)
            return [f"{value}:{key}" for key in keys] if keys else value
        return creator

    def get_or_create(value: str) -> Any:
        if door == "sync":
            return region.get_or_create("k", create(value), tags=["t"])
        return asyncio.run(region.aget_or_create("k", create(value), tags=["t"]))

    def many(value: str) -> Any:
        if door == "sync":
            return region.get_or_create_multi(["x", "y"], create(value), tags=["t"])
        return asyncio.run(region.aget_or_create_multi(["x", "y"], create(value), tags=["t"]))

    assert get_or_create("v1") == "v1" and many("v1") == ["v1:x", "v1:y"]
    assert get_or_create("v2") == "v1" and many("v2") == ["v1:x", "v1:y"]  # hits
    invalidate(door, caches, "t")
    assert get_or_create("v3") == "v3" and many("v3") == ["v3:x", "v3:y"]  # created again, stored
    assert get_or_create("v4") == "v3" and runs == ["v1", "v1", "v3", "v3"]
    if door == "sync":  # set_multi and get_multi too
        region.set_multi({"m1": 1, "m2": 2}, tags=["m"])
        assert region.get_multi(["m1", "m2"]) == [1, 2]
        caches.invalidate_tags("m")
        assert region.get_multi(["m1", "m2"]) == [NO_VALUE, NO_VALUE]
    else:
        async def batch() -> list[Any]:
            await region.aset_multi({"m1": 1, "m2": 2}, tags=["m"])
            before = await region.aget_multi(["m1", "m2"])
            await caches.ainvalidate_tags("m")
            return [before, await region.aget_multi(["m1", "m2"])]

        assert asyncio.run(batch()) == [[1, 2], [NO_VALUE, NO_VALUE]]


def test_memoised_functions_take_their_tags_from_their_arguments(make_caches: Make, topology: dict[str, str]) -> None:
    caches = ready(make_caches(topology))
    region = caches.region(ONE)
    calls: list[Any] = []

    @region.cache_on_arguments(tags=lambda user_id, query: [f"user:{user_id}"])
    def search(user_id: int, query: str) -> str:
        calls.append(("search", user_id, query))
        return f"{user_id}:{query}:{len(calls)}"

    @region.cache_on_arguments(tags=["static"])
    async def page(user_id: int) -> str:
        calls.append(("page", user_id))
        return f"page:{user_id}:{len(calls)}"

    @region.cache_multi_on_arguments(tags=lambda *ids: [f"user:{i}" for i in ids])
    def profiles(*ids: int) -> list[str]:
        calls.append(("profiles", *ids))
        return [f"profile:{i}:{len(calls)}" for i in ids]

    @region.cache_multi_on_arguments(tags=lambda *ids: [f"user:{i}" for i in ids])
    async def aprofiles(*ids: int) -> list[str]:
        calls.append(("aprofiles", *ids))
        return [f"aprofile:{i}:{len(calls)}" for i in ids]

    first = [search(42, "q"), search(7, "q"), asyncio.run(page(42)), profiles(42), asyncio.run(aprofiles(42))]
    again = [search(42, "q"), search(7, "q"), asyncio.run(page(42)), profiles(42), asyncio.run(aprofiles(42))]
    assert first == again and len(calls) == 5
    librecache_calls = len(calls)
    caches.invalidate_tags("user:42")
    after = [search(42, "q"), search(7, "q"), asyncio.run(page(42)), profiles(42), asyncio.run(aprofiles(42))]
    assert after[1] == first[1] and after[2] == first[2]  # user:7 and "static" untouched
    assert after[0] != first[0] and after[3] != first[3] and after[4] != first[4]
    assert len(calls) == librecache_calls + 3
    # the companions write with the tags too
    search.set("set by hand", 42, "q")  # type: ignore[attr-defined]
    profiles.set({42: "set by hand"})  # type: ignore[attr-defined]
    assert search(42, "q") == "set by hand" and profiles(42) == ["set by hand"]
    caches.invalidate_tags("user:42")
    assert search(42, "q") != "set by hand" and profiles(42) != ["set by hand"]


@pytest.mark.parametrize("door", DOORS)
def test_a_creation_that_began_before_the_invalidation_is_never_served_after(
        make_caches: Make, topology: dict[str, str], door: str) -> None:
    """The engine's rule: the value's creation time is when its creation
    began, so an invalidation made while the creator ran covers it."""
    caches = ready(make_caches(topology))
    region = caches.region(ONE)

    def creator() -> str:
        caches.invalidate_tags("t")  # while the creator runs
        return "made before"

    async def acreator() -> str:
        await caches.ainvalidate_tags("t")
        return "made before"

    if door == "sync":
        assert region.get_or_create("k", creator, tags=["t"]) == "made before"  # its caller gets it
    else:
        assert asyncio.run(region.aget_or_create("k", acreator, tags=["t"])) == "made before"
    assert read(door, region, "k") is NO_VALUE
    assert region.get_or_create("k", lambda: "after", tags=["t"]) == "after"


def test_the_fail_safe_never_serves_an_entry_whose_tag_was_invalidated(make_caches: Make,
                                                                       topology: dict[str, str]) -> None:
    caches = ready(make_caches(topology))
    region = caches.region(ONE)
    region.get_or_create("k", lambda: "old", 0.2, tags=["t"], fail_safe=60)
    wait_until(lambda: region.get("k", expiration_time=0.2) is NO_VALUE, 5)

    def failing() -> str:
        raise RuntimeError("the database is down")

    caches.invalidate_tags("t")
    with pytest.raises(RuntimeError, match="down"):
        region.get_or_create("k", failing, 0.2, tags=["t"], fail_safe=60)


def test_json_entries_carry_their_tags(make_caches: Make, topology: dict[str, str]) -> None:
    caches = ready(make_caches(topology, LIBRECACHE_FORMATS=f"{ONE}=json"))
    region = caches.region(ONE)
    region.set("k", {"a": [1, 2]}, tags=["t"])
    assert region.get("k") == {"a": [1, 2]}
    caches.invalidate_tags("t")
    assert region.get("k") is NO_VALUE


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("tags", "error", "message"), [
    ("user:42", TypeError, "one tag: tags=\\['user:42'\\]"),
    ([42], TypeError, "tag 42 is a int"),
    ([""], ValueError, "empty"),
    (None, None, None),
])
def test_bad_tags_are_refused_at_the_call_naming_the_tag(make_caches: Make, tags: Any, error: Any,
                                                         message: str | None) -> None:
    caches = make_caches()
    region = caches.region(ONE)
    if error is None:
        region.set("k", "v", tags=tags)
        return
    for call in (lambda: region.set("k", "v", tags=tags),
                 lambda: region.get_or_create("k", lambda: "v", tags=tags),
                 lambda: region.cache_on_arguments(tags=tags),
                 lambda: asyncio.run(region.aset("k", "v", tags=tags))):
        with pytest.raises(error, match=message):
            call()
    assert region.get("k") is NO_VALUE  # nothing was written
    if isinstance(tags, list):  # invalidate_tags takes the tags themselves
        with pytest.raises(error, match=message):
            caches.invalidate_tags(*tags)


def test_a_callable_s_bad_tags_are_refused_when_it_is_called(make_caches: Make) -> None:
    region = make_caches().region(ONE)

    @region.cache_on_arguments(tags=lambda user: user)  # a string, not a list of them
    def profile(user: str) -> str:
        return user

    with pytest.raises(TypeError, match="tags='bob'"):
        profile("bob")
    with pytest.raises(ValueError, match="at least one tag"):
        make_caches().invalidate_tags()


def test_keyv_namespaces_refuse_tags(make_caches: Make, redis_env: dict[str, str]) -> None:
    region = make_caches(redis_env, LIBRECACHE_FORMATS=f"{ONE}=keyv").region(ONE)
    with pytest.raises(ValueError, match=f"{ONE} uses the keyv format"):
        region.set("k", "v", tags=["t"])
    region.set("k", "v")  # untagged: as before


def test_the_tag_retention_must_outlive_the_entries(make_caches: Make) -> None:
    with pytest.raises(ConfigurationError, match="LIBRECACHE_TAG_RETENTION: 60 s is shorter than the storage"):
        make_caches(LIBRECACHE_TAG_RETENTION="60")
    config = make_caches(LIBRECACHE_TAG_RETENTION="604800").config
    assert config.tag_retention_seconds == 604800
    assert make_caches().config.tag_retention_seconds == 86400  # the default: a day, at least


def test_the_book_judges_by_creation_time_and_retention() -> None:
    book = TagBook(retention=100.0, live=False)
    now = time.time()
    assert not book.valid(["t"], now)  # not live: nothing vouched for
    book.load([("t", now - 5)])
    assert book.valid(["t"], now) and not book.valid(["t"], now - 10) and book.valid(["u"], now - 10)
    assert not book.valid(["u"], now - 101)  # older than the retention
    book.invalidated(["t"], now - 50)  # an older announcement does not lower it
    assert not book.valid(["t"], now - 10)
    book.lost()
    assert not book.valid(["u"], now)
    assert checked_tags(["b", "a", "b"]) == ("a", "b")


def test_the_book_forgets_records_past_the_retention() -> None:
    from librecache.tags import PRUNE_EVERY

    book = TagBook(retention=100.0, live=True)
    now = time.time()
    book.invalidated([f"old{n}" for n in range(10)], now - 200)  # past the retention
    book.invalidated([f"new{n}" for n in range(PRUNE_EVERY)], now)
    assert len(book.times) == PRUNE_EVERY and "old0" not in book.times


# -- other processes ----------------------------------------------------------------------------


@pytest.fixture(params=["single", "cluster", "sentinel"])
def shared(request: pytest.FixtureRequest, prefix: str) -> dict[str, str]:
    """A deployment with Redis, shared by several processes."""
    if request.param == "single":
        return dict(request.getfixturevalue("redis_env"))
    if request.param == "cluster":
        return dict(request.getfixturevalue("cluster_env"))
    return dict(request.getfixturevalue("redis_sentinel").env(prefix))


@pytest.mark.parametrize("door", DOORS)
def test_another_process_invalidates_and_the_near_cache_drops_its_copy(make_caches: Make, shared: dict[str, str],
                                                                        door: str) -> None:
    from tests import processes

    env = {**shared, "LIBRECACHE_NEAR_CACHE_NAMESPACES": ONE}
    caches = ready(make_caches(env))
    region = caches.region(ONE)
    region.set("a", "A", tags=["user:42"])
    region.set("b", "B", tags=["org:7"])
    assert region.get("a") == "A" and region.get("a") == "A"  # the second from the near copy
    assert region.near_cache is not None and region.near_cache.hits >= 1
    [report] = processes.run("tag_invalidator", {**env, "TAGS": "user:42", "DOOR": door})
    assert report["invalidated"] == 1
    wait_until(lambda: region.get("a") is NO_VALUE, 5)  # within the channel's delivery bound
    assert region.get("b") == "B"


def test_a_process_started_after_the_invalidation_sees_it(make_caches: Make, shared: dict[str, str]) -> None:
    from tests import processes

    caches = ready(make_caches(shared))
    caches.region(ONE).set("a", "A", tags=["user:42"])
    caches.region(TWO).set("b", "B", tags=["user:42"])
    caches.region(TWO).set("c", "C", tags=["org:7"])
    caches.invalidate_tags("user:42")
    [report] = processes.run("tag_reader", {**shared, "READS": f"{ONE}/a,{TWO}/b,{TWO}/c"})
    assert report["found"] == {f"{ONE}/a": False, f"{TWO}/b": False, f"{TWO}/c": True}


def test_an_announcement_missed_is_read_when_the_listener_subscribes_again(make_caches: Make,
                                                                          deployment: Any) -> None:
    """The record is stored before it is announced: a process whose
    listener missed the message reads it when it resubscribes."""
    caches = ready(make_caches(deployment.env))
    region = caches.region(ONE)
    region.set("a", "A", tags=["user:42"])
    bus = caches.invalidations
    assert bus is not None
    # another process's invalidation whose message this one never got: only the stored record
    deployment.raw.zadd(bus.tags_key, {"user:42": time.time()})
    assert region.get("a") == "A"
    nodes = [deployment.raw.get_redis_connection(node) for node in deployment.raw.get_primaries()] \
        if deployment.cluster else [deployment.raw]
    for node in nodes:  # the listener's connection is lost: it subscribes again and reads the record
        node.client_kill_filter(_type="pubsub")
    wait_until(lambda: region.get("a") is NO_VALUE, 10)


def test_while_the_channel_is_down_tagged_entries_are_misses(make_caches: Make, deployment: Any) -> None:
    caches = ready(make_caches(deployment.env))
    region = caches.region(ONE)
    region.set("tagged", "T", tags=["t"])
    region.set("plain", "P")
    bus = caches.invalidations
    assert bus is not None
    bus.stop()  # the listener ends: invalidations may be missed from now on
    wait_until(lambda: not caches.tag_book.live, 5)
    assert region.get("tagged") is NO_VALUE and region.get("plain") == "P"
    assert region.get_or_create("tagged", lambda: "created", tags=["t"]) == "created"  # created, and stored
    assert caches.stats()[ONE]["tag_misses"] >= 2


def test_an_invalidation_while_redis_is_away_is_announced_when_it_is_back(make_caches: Make, own_server: Any,
                                                                          prefix: str) -> None:
    env = {"USE_REDIS": "true", "REDIS_URI": own_server.url, "REDIS_KEY_PREFIX": prefix,
           "REDIS_RETRY_MAX_ATTEMPTS": "1", "REDIS_CONNECT_TIMEOUT": "200", "LIBRECACHE_SOCKET_TIMEOUT": "0.5"}
    writer, other = ready(make_caches(env)), ready(make_caches(env))
    writer.region(ONE).set("a", "A", tags=["t"])
    assert other.region(ONE).get("a") == "A"
    own_server.stop()
    assert writer.invalidate_tags("t") == 1  # no exception; here at once
    assert writer.region(ONE).get("a") is NO_VALUE
    own_server.start()
    writer.reconnect()
    client = redis.Redis(host=own_server.host, port=own_server.port)
    try:
        wait_until(lambda: client.zscore(f"{prefix}::librecache:tags", "t") is not None, 20)
    finally:
        client.close()
    ready(other)
    wait_until(lambda: other.region(ONE).get("a") is NO_VALUE, 20)


# -- cost ---------------------------------------------------------------------------------------


def commands(nodes: list[redis.Redis]) -> dict[str, int]:
    """Calls per command, summed over ``nodes`` (INFO commandstats)."""
    total: dict[str, int] = {}
    for node in nodes:
        for name, stats in node.info("commandstats").items():
            total[name] = total.get(name, 0) + int(stats["calls"])
    return total


def test_one_invalidation_of_2000_entries_sends_a_handful_of_commands(make_caches: Make, deployment: Any) -> None:
    caches = ready(make_caches(deployment.env))
    region = caches.region(ONE)
    region.set_multi({f"k{n}": n for n in range(2000)}, tags=["big"])
    nodes = [deployment.raw.get_redis_connection(node) for node in deployment.raw.get_primaries()] \
        if deployment.cluster else [deployment.raw]
    before = commands(nodes)
    caches.invalidate_tags("big")
    after = commands(nodes)
    sent = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    sent.pop("cmdstat_info", None)  # our own INFO calls
    assert "cmdstat_scan" not in sent and "cmdstat_keys" not in sent
    assert sum(sent.values()) <= 5, sent
    assert region.get_multi(["k0", "k1999"]) == [NO_VALUE, NO_VALUE]


def test_the_record_has_a_bounded_lifetime(make_caches: Make, deployment: Any) -> None:
    caches = ready(make_caches(deployment.env))
    caches.invalidate_tags("t")
    bus = caches.invalidations
    assert bus is not None
    ttl = deployment.raw.ttl(bus.tags_key)
    assert 0 < ttl <= caches.config.tag_retention_seconds
    stores, (channel, message) = bus.tag_commands({"t": 1.0})
    assert [method for method, _, _ in stores] == ["zadd", "zremrangebyscore", "expire"]
    assert channel == bus.tags_channel and json.loads(message) == {"tags": {"t": 1.0}}


# -- the command --------------------------------------------------------------------------------


def test_the_command_invalidates_tags(make_caches: Make, redis_env: dict[str, str],
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    caches = ready(make_caches(redis_env))
    region = caches.region(ONE)
    region.set("a", "A", tags=["user:42"])
    region.set("b", "B", tags=["org:7"])
    for name, value in redis_env.items():
        monkeypatch.setenv(name, value)
    assert cli(["invalidate", "--tag", "user:42", "--tag", "org:7"]) == 0
    assert "2 tags invalidated" in capsys.readouterr().out
    wait_until(lambda: region.get("a") is NO_VALUE and region.get("b") is NO_VALUE, 5)
    assert cli(["invalidate", "--tag", ""]) == 2
    assert "empty" in capsys.readouterr().err
