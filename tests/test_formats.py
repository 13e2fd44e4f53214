"""Value formats (LIBRECACHE_FORMATS): json, and keyv against a real keyv 5 /
@keyv/redis 4 client laid out as LibreChat's standardCache (tests/keyv.py)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from dogpile.cache.api import NO_VALUE

import librecache
from librecache import SerializationError
from tests.conformance import Counter
from tests.conftest import Deployment
from tests.keyv import UNDEFINED, KeyvClient
from tests.servers import RedisServer
from tests.test_nearcache import subscribed
from tests.test_resilience import wait_until

Make = Callable[..., librecache.Caches]

#: Values both sides must agree on: objects, strings that start with ':'
#: (keyv escapes them), unicode, Buffers, nesting, null, numbers.
SHARED_VALUES: dict[str, Any] = {
    "object": {"name": "admin", "permissions": {"PROMPTS": {"USE": True, "CREATE": False}}, "n": 3},
    "colon": ":starts with a colon",
    "double-colon": "::two",
    "base64-lookalike": ":base64:AAEC",
    "colons-inside": {"key": ":v", "list": [":a", "b:", "::c"]},
    "unicode": "héllo wörld ✓ 日本語 🙂",
    "buffer": b"\x00\x01\xfe\xffbinary",
    "nested-buffer": {"file": b"%PDF-1.7", "names": ["a", "b"]},
    "null": None,
    "number": 42,
    "float": 2.5,
    "bool": False,
    "list": [1, "two", None, [3, {"four": 4}]],
    "empty": "",
}


@pytest.fixture
def shared(deployment: Deployment) -> Deployment:
    """A deployment whose ROLES and APP_CONFIG are in keyv format, with a
    declared SEARCH_RESULTS in json format."""
    deployment.env.update({
        "LIBRECACHE_NAMESPACES": "SEARCH_RESULTS=300,SHORT=2",
        "LIBRECACHE_FORMATS": "ROLES=keyv,APP_CONFIG=keyv,SHORT=keyv,SEARCH_RESULTS=json",
    })
    return deployment


def stored(deployment: Deployment, key: str) -> Any:
    raw = deployment.raw.get(key)
    assert raw is not None, f"{key} is not in Redis"
    return json.loads(raw)


def full_key(deployment: Deployment, namespace: str, key: str) -> str:
    prefix = deployment.env.get("REDIS_KEY_PREFIX", "")
    return f"{prefix}::{namespace}:{key}" if prefix else f"{namespace}:{key}"


# -- keyv: both directions ------------------------------------------------------


def test_node_writes_python_reads(shared: Deployment, make_caches: Make) -> None:
    node = KeyvClient(shared.env, "ROLES")
    node.run(*({"op": "set", "key": name, "value": value} for name, value in _for_node(SHARED_VALUES).items()))
    region = make_caches(shared.env).region("ROLES")
    for name, value in SHARED_VALUES.items():
        assert region.get(name) == value, name
    names = list(SHARED_VALUES)
    assert region.get_multi([*names, "absent"]) == [*SHARED_VALUES.values(), NO_VALUE]
    # the key layout LibreChat's standardCache writes is the one librecache reads
    assert shared.raw.exists(full_key(shared, "ROLES", "object"))


def test_python_writes_node_reads_byte_compatible(shared: Deployment, make_caches: Make) -> None:
    region = make_caches(shared.env).region("ROLES")
    for name, value in SHARED_VALUES.items():
        region.set(f"py-{name}", value)
    node = KeyvClient(shared.env, "ROLES")
    got = node.run(*({"op": "get", "key": f"py-{name}"} for name in SHARED_VALUES))
    assert dict(zip(SHARED_VALUES, got, strict=True)) == SHARED_VALUES
    # the bytes are keyv's own, plus dogpile's creation time and version, which keyv ignores
    node.run(*({"op": "set", "key": f"node-{name}", "value": value} for name, value in _for_node(SHARED_VALUES).items()))
    for name in SHARED_VALUES:
        ours = shared.raw.get(full_key(shared, "ROLES", f"py-{name}"))
        theirs = shared.raw.get(full_key(shared, "ROLES", f"node-{name}"))
        assert ours is not None and theirs is not None
        assert ours.startswith(theirs[:-1] + b',"ct":'), (ours, theirs)
        assert set(json.loads(ours)) == {"value", "ct", "v"}


def test_python_set_multi_and_memoised_values_are_read_by_node(shared: Deployment, make_caches: Make) -> None:
    region = make_caches(shared.env).region("APP_CONFIG")
    region.set_multi({"a": {"x": 1}, "b": ":b", "c": b"\x07"})
    node = KeyvClient(shared.env, "APP_CONFIG")
    assert node.run({"op": "get", "key": "a"}, {"op": "get", "key": "b"}, {"op": "get", "key": "c"}) == [
        {"x": 1}, ":b", b"\x07"]

    counted = Counter(lambda name: {"name": name, "tags": ("a", ":b")})
    cached = region.cache_on_arguments()(lambda name: counted(name))
    assert cached("x") == {"name": "x", "tags": ("a", ":b")}  # the creator's own value
    assert cached("x") == {"name": "x", "tags": ["a", ":b"]}  # read back: JSON has lists only
    assert counted.calls == 1
    (key,) = [k.decode() for k in shared.keys(full_key(shared, "APP_CONFIG", "*<lambda>*"))]
    assert stored(shared, key)["value"] == {"name": "x", "tags": ["a", "::b"]}
    assert node.get(key[len(full_key(shared, "APP_CONFIG", "")):]) == {"name": "x", "tags": ["a", ":b"]}


def test_the_async_door_reads_and_writes_the_same_formats(shared: Deployment, make_caches: Make) -> None:
    caches = make_caches({**shared.env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "SEARCH_RESULTS"})
    subscribed(caches)
    roles, search = caches.region("ROLES"), caches.region("SEARCH_RESULTS")
    node = KeyvClient(shared.env, "ROLES")
    node.set("from-node", {"perms": [":read"]})
    counted = Counter(lambda name: {"name": name, "tags": ("a", ":b")})

    @roles.cache_on_arguments()
    async def load(name: str) -> Any:
        return counted(name)

    async def scenario() -> None:
        assert await roles.aget("from-node") == {"perms": [":read"]}
        await roles.aset("from-python", {"t": (1, ":x")})
        assert await load("y") == {"name": "y", "tags": ("a", ":b")}  # the creator's own value
        assert await load("y") == {"name": "y", "tags": ["a", ":b"]}  # read back through keyv's form
        await search.aset("k", {"t": (1, 2)})
        first = await search.aget("k")
        assert first == {"t": [1, 2]}  # the near copy in JSON's form, as a Redis read gives it
        first["t"].append(3)
        assert await search.aget("k") == {"t": [1, 2]}

    asyncio.run(scenario())
    assert counted.calls == 1
    assert node.get("from-python") == {"t": [1, ":x"]}
    assert stored(shared, full_key(shared, "ROLES", "from-python"))["value"] == {"t": [1, "::x"]}
    assert roles.get("from-python") == {"t": [1, ":x"]}  # and the sync door reads it alike


def test_deletes_are_seen_both_ways(shared: Deployment, make_caches: Make) -> None:
    region = make_caches(shared.env).region("ROLES")
    node = KeyvClient(shared.env, "ROLES")
    region.set("gone", 1)
    node.set("also-gone", 2)
    assert node.delete("gone") is True
    region.delete("also-gone")
    assert region.get("gone") is NO_VALUE and node.get("also-gone") is UNDEFINED


def test_empty_prefix_keys_are_librechats(bare_redis_server: RedisServer, make_caches: Make) -> None:
    """LibreChat sets the store's namespace to REDIS_KEY_PREFIX even when it
    is empty: @keyv/redis then adds no prefix, and keys are ``NS:key``, as
    librecache's without a prefix."""
    env = {"USE_REDIS": "true", "REDIS_URI": bare_redis_server.url, "LIBRECACHE_FORMATS": "ROLES=keyv"}
    node = KeyvClient(env, "ROLES")
    node.set("from-node", {"a": 1})
    region = make_caches(env).region("ROLES")
    region.set("from-python", [":x"])
    raw = redis.Redis(host=bare_redis_server.host, port=bare_redis_server.port)
    try:
        assert sorted(raw.keys("*ROLES*")) == [b"ROLES:from-node", b"ROLES:from-python"]
    finally:
        raw.close()
    assert region.get("from-node") == {"a": 1}
    assert node.get("from-python") == [":x"]


# -- keyv: TTLs both ways -------------------------------------------------------------


def test_node_ttl_python_sees_it_expire(shared: Deployment, make_caches: Make) -> None:
    node = KeyvClient(shared.env, "ROLES")
    node.set("short", {"v": 1}, ttl_ms=1500)
    key = full_key(shared, "ROLES", "short")
    assert 0 < shared.raw.pttl(key) <= 1500
    region = make_caches(shared.env).region("ROLES")
    assert region.get("short") == {"v": 1}
    wait_until(lambda: region.get("short") is NO_VALUE, timeout=10)


def test_an_entry_whose_expires_has_passed_is_a_miss_on_both_sides(shared: Deployment, make_caches: Make) -> None:
    """keyv judges ``expires`` itself, whatever the Redis expiry says."""
    key = full_key(shared, "ROLES", "stale")
    shared.raw.set(key, json.dumps({"value": "old", "expires": int(time.time() * 1000) - 1000}))
    assert make_caches(shared.env).region("ROLES").get("stale") is NO_VALUE
    assert KeyvClient(shared.env, "ROLES").get("stale") is UNDEFINED


def test_python_ttl_node_sees_the_same_expiry(shared: Deployment, make_caches: Make) -> None:
    """SHORT (TTL 2 s, keyv): Redis expires the key at the TTL exactly (no
    grace), ``expires`` says the same instant, and keyv sees it go."""
    caches = make_caches(shared.env)
    assert caches.config.storage_expiry("SHORT") == caches.config.ttl("SHORT") == 2
    region = caches.region("SHORT")
    node = KeyvClient(shared.env, "SHORT", ttl_ms=2000)
    key = full_key(shared, "SHORT", "k")
    envelope: dict[str, Any] = {}

    def write() -> None:  # once Node is connected: its read follows at once, whatever its start-up took
        region.set("k", "v")
        envelope.update(stored(shared, key))
        envelope["pttl"] = shared.raw.pttl(key)
        envelope["expire_time"] = shared.raw.execute_command("PEXPIRETIME", key)

    assert node.get_after(write, "k") == "v"
    assert envelope["value"] == "v" and envelope["expires"] == round((envelope["ct"] + 2) * 1000)
    assert 0 < envelope["pttl"] <= 2000
    assert abs(envelope["expire_time"] - envelope["expires"]) < 1000  # the same instant, give or take the round trip
    wait_until(lambda: node.get("k") is UNDEFINED, timeout=10)
    assert region.get("k") is NO_VALUE


def test_keyv_entry_without_creation_time_gets_it_from_expires(shared: Deployment, make_caches: Make) -> None:
    """An entry keyv wrote has no ``ct``: librecache takes ``expires`` minus
    the TTL, so dogpile's expiry agrees with keyv's."""
    caches = make_caches(shared.env)
    KeyvClient(shared.env, "SHORT").set("k", 1, ttl_ms=2000)
    value = caches.region("SHORT").get_value_metadata("k")
    envelope = stored(shared, full_key(shared, "SHORT", "k"))
    assert value is not None and value.payload == 1
    assert value.metadata["ct"] == pytest.approx(envelope["expires"] / 1000 - 2)
    KeyvClient(shared.env, "ROLES").set("k", 1)  # no TTL, no expires: fresh when read
    before = time.time()
    value = caches.region("ROLES").get_value_metadata("k")
    assert value is not None and value.metadata["ct"] >= before


# -- foreign and corrupt bytes ----------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"\x80\x05garbage", b"{\"ct\": 1.0, \"v\": 2}|\x80\x05K\x01.", b"[1, 2]", b'{"novalue": 1}', b"{", b"null",
    "\u00e9".encode("latin-1"),
])
def test_foreign_or_corrupt_bytes_are_misses(shared: Deployment, make_caches: Make, data: bytes) -> None:
    caches = make_caches(shared.env)
    for namespace in ("ROLES", "SEARCH_RESULTS"):
        shared.raw.set(full_key(shared, namespace, "bad"), data)
        assert caches.region(namespace).get("bad") is NO_VALUE
        assert caches.region(namespace).get_or_create("bad", lambda: "fresh") == "fresh"


def test_a_pickle_namespace_reads_keyv_entries_as_misses(shared: Deployment, make_caches: Make) -> None:
    KeyvClient(shared.env, "MESSAGES").set("k", {"a": 1})
    assert make_caches(shared.env).region("MESSAGES").get("k") is NO_VALUE


# -- json ------------------------------------------------------------------------------


def test_json_document_and_its_grace(shared: Deployment, make_caches: Make) -> None:
    caches = make_caches(shared.env)
    region = caches.region("SEARCH_RESULTS")
    region.set("q", {"hits": [{"id": 1, "title": ":x"}], "total": 1})
    key = full_key(shared, "SEARCH_RESULTS", "q")
    document = stored(shared, key)
    assert document["value"] == {"hits": [{"id": 1, "title": ":x"}], "total": 1}  # no keyv escapes
    assert set(document) == {"value", "ct", "v"}
    assert shared.raw.pttl(key) > 300_000  # the TTL plus the grace, as pickle namespaces
    assert region.get("q") == document["value"]


UNREPRESENTABLE: list[tuple[Any, str]] = [
    (object(), "object is not a JSON type"),
    ({1: "a"}, "dict key of type int"),
    ({"a": [1, {2, 3}]}, "value['a'][1] cannot be stored"),
    (float("nan"), "nan"),
    (float("inf"), "inf"),
    ("lone \ud800 surrogate", "not valid Unicode"),
]


@pytest.mark.parametrize(("value", "message"), UNREPRESENTABLE)
def test_unrepresentable_value_raises_and_nothing_is_cached(shared: Deployment, make_caches: Make, value: Any,
                                                            message: str) -> None:
    caches = make_caches(shared.env)
    for namespace in ("ROLES", "SEARCH_RESULTS"):
        region = caches.region(namespace)
        with pytest.raises(SerializationError, match=rf"namespace {namespace}: .*{re.escape(message)}"):
            region.set("k", value)
        with pytest.raises(SerializationError):
            region.set_multi({"fine": 1, "k": value})  # all or nothing
        with pytest.raises(SerializationError):
            region.get_or_create("k", lambda value=value: value)
        assert not shared.raw.exists(full_key(shared, namespace, "k"), full_key(shared, namespace, "fine"))


def test_format_specific_limits(shared: Deployment, make_caches: Make) -> None:
    caches = make_caches(shared.env)
    with pytest.raises(SerializationError, match="bytes is not a JSON type"):
        caches.region("SEARCH_RESULTS").set("k", b"raw")  # json has no bytes; keyv has Buffers
    with pytest.raises(SerializationError, match="beyond 2\\*\\*53"):
        caches.region("ROLES").set("k", 2**60)  # keyv: JavaScript would round it
    caches.region("SEARCH_RESULTS").set("big", 2**60)
    assert caches.region("SEARCH_RESULTS").get("big") == 2**60


def test_memory_namespace_behaves_as_redis(make_caches: Make) -> None:
    """The same formats in process memory: the same values back, the same errors."""
    caches = make_caches({"LIBRECACHE_NAMESPACES": "DOCS", "LIBRECACHE_FORMATS": "DOCS=json,ROLES=keyv"})
    for namespace in ("DOCS", "ROLES"):
        region = caches.region(namespace)
        region.set("t", {"pair": (1, 2)})
        assert region.get("t") == {"pair": [1, 2]}
        with pytest.raises(SerializationError):
            region.set("bad", {1: 2})
        assert region.get("bad") is NO_VALUE
    caches.region("ROLES").set("b", b"\x00")
    assert caches.region("ROLES").get("b") == b"\x00"


# -- near cache and signing ---------------------------------------------------------------


def test_near_cache_serves_the_formats_copy(shared: Deployment, make_caches: Make) -> None:
    caches = make_caches({**shared.env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES,SEARCH_RESULTS"})
    subscribed(caches)
    for namespace in ("ROLES", "SEARCH_RESULTS"):
        region = caches.region(namespace)
        region.get_or_create("k", lambda: {"t": (1, 2)})
        first = region.get("k")
        assert first == {"t": [1, 2]}  # as Redis would give it, not the creator's tuple
        first["t"].append(3)
        assert region.get("k") == {"t": [1, 2]}  # every hit its own copy
        near = region.near_cache
        assert near is not None and near.hits >= 2


def test_signed_keyv_values_are_read_by_keyv_and_verified_by_librecache(shared: Deployment, make_caches: Make) -> None:
    env = {**shared.env, "LIBRECACHE_SIGNING_KEY": "a-long-random-secret-key"}
    region = make_caches(env).region("ROLES")
    region.set("signed", {"role": ":admin"})
    key = full_key(shared, "ROLES", "signed")
    document = stored(shared, key)
    assert set(document) == {"value", "ct", "v", "lcs1"} and len(document["lcs1"]) == 64
    node = KeyvClient(shared.env, "ROLES")
    assert node.get("signed") == {"role": ":admin"}  # keyv does not verify: it ignores the field
    assert region.get("signed") == {"role": ":admin"}
    node.set("signed", {"role": ":root"})  # written without a signature: not trusted
    assert region.get("signed") is NO_VALUE
    tampered = json.dumps({**document, "value": {"role": "::root"}}, separators=(",", ":"))
    shared.raw.set(key, tampered)
    assert region.get("signed") is NO_VALUE
    shared.raw.set(full_key(shared, "ROLES", "moved"), shared.raw.get(key) or b"")
    assert region.get("moved") is NO_VALUE


def _for_node(values: dict[str, Any]) -> dict[str, Any]:
    from tests.keyv import to_node

    return {name: to_node(value) for name, value in values.items()}


@pytest.mark.parametrize(("document", "value"), [
    (b'{"value":"::x"}', ":x"),
    (b'{"value": [ ":x" , "y", {"k" :  "::z"} ]}', ["x", "y", {"k": ":z"}]),  # blanks, as other writers put them
    (b'{"value":{":key":"a:\\":b"}}', {":key": 'a:":b'}),  # keys are never unescaped; quotes inside strings
    (b'{"value":":base64:AAE="}', b"\x00\x01"),
    (b'{"value":"plain","expires":null}', "plain"),
])
def test_keyv_reads_what_keyvs_deserializer_reads(document: bytes, value: Any) -> None:
    """Unit check of the reading rules against keyv's deserializer (every
    string that starts with ':' loses one; ':base64:' strings are Buffers)."""
    from librecache.formats import KeyvFormat

    assert KeyvFormat("ROLES", None).decode(document).payload == value
