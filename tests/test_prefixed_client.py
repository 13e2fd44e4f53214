"""The raw client of Caches.redis: every key under '{prefix}::'."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from redis.cluster import RedisCluster

import librecache


@pytest.fixture(params=["single", "cluster"])
def pair(request: pytest.FixtureRequest, make_caches: Callable[..., librecache.Caches]):  # type: ignore[no-untyped-def]
    """(the prefixed client, a plain client to look at the server)."""
    if request.param == "single":
        server = request.getfixturevalue("redis_server")
        env = request.getfixturevalue("redis_env")
        plain = redis.Redis(host=server.host, port=server.port)
    else:
        cluster = request.getfixturevalue("redis_cluster")
        env = request.getfixturevalue("cluster_env")
        plain = RedisCluster(host=cluster.nodes[0].host, port=cluster.nodes[0].port)
    caches = make_caches(env)
    assert caches.redis is not None
    yield caches.redis, plain
    plain.close()


@pytest.fixture
def client(pair):  # type: ignore[no-untyped-def]
    return pair[0]


@pytest.fixture
def raw(pair):  # type: ignore[no-untyped-def]
    return pair[1]


def stored(raw: redis.Redis | RedisCluster, prefix: str) -> set[bytes]:
    """Every key under the prefix, on every master."""
    if isinstance(raw, RedisCluster):
        nodes = [raw.get_redis_connection(node) for node in raw.get_primaries()]
    else:
        nodes = [raw]
    return {key for node in nodes for key in node.keys(f"{prefix}::*")}


def test_strings_and_multi_key_commands(client, raw: redis.Redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    client.set("a", "1", px=60_000)
    client.mset({"b": "2", "c": "3"})
    assert client.get("a") == b"1"
    assert client.mget("a", "b", "c", "d") == [b"1", b"2", b"3", None]
    assert client.exists("a", "b", "nope") == 2
    assert stored(raw, prefix) == {f"{prefix}::{k}".encode() for k in "abc"}
    assert 0 < raw.pttl(f"{prefix}::a") <= 60_000
    client.set("{r}c", "3")
    client.rename("{r}c", "{r}c2")
    assert client.get("{r}c2") == b"3"
    assert client.delete("a", "b", "c", "{r}c2") == 4
    assert stored(raw, prefix) == set()


def test_bytes_and_int_keys(client, raw: redis.Redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    client.set(b"bin", 1)
    client.set(42, 2)
    assert stored(raw, prefix) == {f"{prefix}::bin".encode(), f"{prefix}::42".encode()}


def test_hashes_lists_sets_sorted_sets(client, raw: redis.Redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    client.hset("h", mapping={"f": "v"})
    client.rpush("{t}l", 1, 2)
    client.lmove("{t}l", "{t}l2")
    client.sadd("{t}s1", "x", "y")
    client.sadd("{t}s2", "y")
    assert set(client.sinter("{t}s1", "{t}s2")) == {b"y"}  # a list before redis-py 6, a set after
    client.zadd("{t}z1", {"m": 1})
    client.zadd("{t}z2", {"m": 2})
    assert client.zunionstore("{t}zu", ["{t}z1", "{t}z2"]) == 1
    assert client.zscore("{t}zu", "m") == 3
    assert client.object("encoding", "h") is not None
    names = {key.decode().removeprefix(f"{prefix}::") for key in stored(raw, prefix)}
    assert names == {"h", "{t}l", "{t}l2", "{t}s1", "{t}s2", "{t}z1", "{t}z2", "{t}zu"}


def test_scripts_get_their_keys_prefixed(client, raw: redis.Redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[2])"
    client.set("{e}other", "o")
    assert client.eval(script, 2, "{e}target", "{e}other", "value") == b"o"
    assert raw.get(f"{prefix}::{{e}}target") == b"value"
    registered = client.register_script("return redis.call('INCR', KEYS[1])")
    assert registered(keys=["counter"]) == 1
    assert registered(keys=["counter"]) == 2  # EVALSHA this time
    assert raw.get(f"{prefix}::counter") == b"2"


def test_streams(client, raw: redis.Redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    first = client.xadd("{x}events", {"n": "1"})
    client.xadd("{x}events", {"n": "2"})
    client.xadd("{x}more", {"n": "3"})
    replies = client.xread({"{x}events": first, "{x}more": "0"})
    # replies other than KEYS and SCAN come as the server sends them
    assert [(name, len(entries)) for name, entries in replies] == [
        (f"{prefix}::{{x}}events".encode(), 1), (f"{prefix}::{{x}}more".encode(), 1)
    ]
    assert client.xinfo_stream("{x}events")["length"] == 2
    assert stored(raw, prefix) == {f"{prefix}::{{x}}events".encode(), f"{prefix}::{{x}}more".encode()}


def test_sort_with_store(client, raw: redis.Redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    if isinstance(client, RedisCluster):
        pytest.skip("SORT BY patterns are refused by Redis Cluster")
    client.rpush("nums", 3, 1, 2)
    client.mset({"w_1": 3, "w_2": 2, "w_3": 1})
    assert client.sort("nums", by="w_*", store="sorted") == 3
    assert client.lrange("sorted", 0, -1) == [b"3", b"2", b"1"]
    assert raw.exists(f"{prefix}::sorted")


def test_keys_and_scan_stay_inside_the_prefix(client, raw: redis.Redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    raw.set("outside-key", 1)
    raw.set(f"{prefix}x::inside-lookalike", 1)
    # KEYS and SCAN cover every master of a cluster
    client.mset({"k1": 1, "k2": 2, "j": 3})
    assert sorted(client.keys("*")) == [b"j", b"k1", b"k2"]
    assert sorted(client.keys("k*")) == [b"k1", b"k2"]
    assert sorted(client.scan_iter()) == [b"j", b"k1", b"k2"]
    assert sorted(client.scan_iter(match="k*")) == [b"k1", b"k2"]
    raw.delete("outside-key", f"{prefix}x::inside-lookalike")


def test_pipelines_and_transactions(client, raw: redis.Redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    with client.pipeline(transaction=False) as pipe:
        pipe.set("p1", 1).incr("p1").get("p1")
        assert pipe.execute() == [True, 2, b"2"]
    if not isinstance(client, RedisCluster):
        with client.pipeline() as pipe:
            pipe.watch("p1")
            assert pipe.get("p1") == b"2"
            pipe.multi()
            pipe.set("p2", 5)
            pipe.execute()
    else:
        with client.pipeline(transaction=False) as pipe:
            pipe.set("p2", 5).execute()
    assert stored(raw, prefix) == {f"{prefix}::p1".encode(), f"{prefix}::p2".encode()}


def test_multi_key_helpers_split_across_slots(client, raw: redis.Redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    mapping = {f"spread-{i}": str(i) for i in range(500)}
    assert client.mset(mapping) is True
    assert client.mget(list(mapping)) == [value.encode() for value in mapping.values()]
    assert client.exists(*mapping) == 500
    assert client.unlink(*list(mapping)[:250]) == 250
    assert client.delete(*mapping) == 250
    assert stored(raw, prefix) == set()


def test_locks_are_prefixed(client, raw: redis.Redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    lock = client.lock("job", timeout=5)
    assert lock.acquire(blocking=False)
    assert raw.exists(f"{prefix}::job")
    lock.release()
    assert not raw.exists(f"{prefix}::job")


def test_keyless_commands_pass_through(client) -> None:  # type: ignore[no-untyped-def]
    assert client.ping() is True
    assert "redis_version" in client.info("server")
    assert client.publish("channel", "hello") == 0


def test_an_unknown_command_is_a_clear_error(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(redis.ResponseError, match="unknown command 'nosuchcommand'"):
        client.execute_command("NOSUCHCOMMAND", "x")
