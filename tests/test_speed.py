"""What the speed work (issue 18, and issue 10's near hits) must not
change, asserted by counting what happens on real servers, never by
timing: the round trips of a memoised miss (MONITOR), ``get_multi``'s
results against dogpile's own implementation on the same region, and near
hits as independent as Redis reads."""

from __future__ import annotations

import asyncio
import enum
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from dogpile.cache.api import NO_VALUE, CachedValue
from dogpile.cache.proxy import ProxyBackend
from dogpile.cache.region import CacheRegion
from redis.cluster import RedisCluster

import librecache
from librecache.backends.memory import MemoryBackend
from librecache.backends.redis import READ_OR_LOCK, STORE_AND_RELEASE
from librecache.nearcache import NearCache, copier_of
from tests.conftest import Deployment
from tests.servers import RedisClusterFarm
from tests.test_nearcache import subscribed

Make = Callable[..., librecache.Caches]


# -- round trips of a memoised miss -------------------------------------------------------------


@contextmanager
def monitored(ports: list[int], marker: str) -> Iterator[list[str]]:
    """The commands (sent by clients; not those a script runs) that name
    ``marker``, seen by MONITOR on the servers at ``ports`` while the block
    runs."""
    seen: list[str] = []
    done = f"monitor-end-{uuid.uuid4().hex}"
    ready = threading.Barrier(len(ports) + 1)

    def watch(port: int) -> None:
        client = redis.Redis(port=port)
        with client.monitor() as monitor:
            ready.wait()
            for command in monitor.listen():
                text = command["command"]
                if done in text:
                    break
                if marker in text and command.get("client_type") != "lua":
                    seen.append(text.split(" ", 1)[0])
        client.close()

    threads = [threading.Thread(target=watch, args=(port,), daemon=True) for port in ports]
    for thread in threads:
        thread.start()
    ready.wait(10)
    yield seen
    for port in ports:
        client = redis.Redis(port=port)
        client.echo(done)
        client.close()
    for thread in threads:
        thread.join(10)


def master_ports(deployment: Deployment) -> list[int]:
    raw = deployment.raw
    if isinstance(raw, RedisCluster):
        return [int(node.port) for node in raw.get_primaries()]
    return [int(raw.connection_pool.connection_kwargs["port"])]


def test_a_memoised_miss_costs_three_round_trips_where_the_lock_meets_the_value(
        make_caches: Make, deployment: Deployment, prefix: str) -> None:
    """GET (miss); one script that reads the value again and takes the lock
    (its answer is dogpile's re-check); one script that stores the value and
    releases the lock. Before: GET, SET NX, GET, SET, EVAL (five). On a
    cluster too: the lock's name carries the value key as its hash tag."""
    region = make_caches(deployment.env).region("ROLES")
    created: list[str] = []

    @region.cache_on_arguments()
    def load(name: str) -> dict[str, str]:
        created.append(name)
        return {"name": name}

    load("warm")
    for port in master_ports(deployment):  # the scripts are known to every master from now on
        with redis.Redis(port=port) as node:
            node.script_load(READ_OR_LOCK.text)
            node.script_load(STORE_AND_RELEASE.text)
    cold = f"cold-{uuid.uuid4().hex[:8]}"
    with monitored(master_ports(deployment), cold) as seen:
        assert load(cold) == {"name": cold}
    assert seen == ["GET", "EVALSHA", "EVALSHA"], seen
    assert created == ["warm", cold]
    assert deployment.keys(f"{prefix}::librecache:lock:*") == []  # released
    with monitored(master_ports(deployment), cold) as seen:
        assert load(cold) == {"name": cold}
    assert seen == ["GET"] and created == ["warm", cold]  # a hit: one GET


def test_a_key_with_braces_on_a_cluster_is_created_in_three_round_trips_too(
        make_caches: Make, cluster_env: dict[str, str], redis_cluster: RedisClusterFarm, prefix: str) -> None:
    """A value key holding a hash tag of its own: its lock follows a hash
    tag of the value's slot, so the miss is the same three round trips
    (GET, READ_OR_LOCK, STORE_AND_RELEASE), the value is created once and
    stored, and the lock is released."""
    region = make_caches(cluster_env).region("ROLES")
    created: list[str] = []

    @region.cache_on_arguments()
    def load(name: str) -> str:
        created.append(name)
        return name.upper()

    key = f"{{tag}}-{uuid.uuid4().hex[:8]}"
    raw = RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        ports = [int(node.port) for node in raw.get_primaries()]
        for port in ports:
            with redis.Redis(port=port) as node:
                node.script_load(READ_OR_LOCK.text)
                node.script_load(STORE_AND_RELEASE.text)
        with monitored(ports, key) as seen:
            assert load(key) == key.upper()
        assert seen == ["GET", "EVALSHA", "EVALSHA"], seen
        assert load(key) == key.upper() and created == [key]
        assert all(redis.Redis(port=port).keys(f"{prefix}::librecache:lock*") == [] for port in ports)
    finally:
        raw.close()


def test_the_lock_script_tells_a_waiter_the_value_another_process_stored(
        make_caches: Make, redis_env: dict[str, str], raw: redis.Redis, prefix: str) -> None:
    """A blocking acquisition that finds the value stored meanwhile (another
    process created it) returns it without creating and without leaving a
    lock behind."""
    caches = make_caches(redis_env)
    region = caches.region("ROLES")
    other = make_caches(redis_env).region("ROLES")
    lock = f"{prefix}::librecache:lock:{{{prefix}::ROLES:k}}"
    raw.set(lock, "another-process", px=5000)  # another process is creating "k"

    def create_elsewhere() -> None:
        time.sleep(0.2)
        other.set("k", "theirs")
        raw.delete(lock)

    thread = threading.Thread(target=create_elsewhere)
    thread.start()
    assert region.get_or_create("k", lambda: "ours") == "theirs"
    thread.join()
    assert raw.exists(lock) == 0
    assert caches.stats()["ROLES"]["lock_waits"] == 1 and caches.stats()["ROLES"]["creations"] == 0


def test_a_creator_that_ran_past_the_lock_timeout_returns_its_value_stores_nothing_and_warns(
        make_caches: Make, redis_env: dict[str, str], raw: redis.Redis, prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Past the lock timeout its lease is gone (another creator may have
    stored a newer value meanwhile): the value is returned, not stored,
    and the warning names the setting to raise."""
    region = make_caches({**redis_env, "LIBRECACHE_LOCK_TIMEOUT": "0.2"}).region("ROLES")

    def slow() -> str:
        time.sleep(0.4)
        return "late"

    assert region.get_or_create("slow", slow) == "late"
    assert region.get("slow") is NO_VALUE
    assert "expired before the value was stored" in caplog.text and "LIBRECACHE_LOCK_TIMEOUT" in caplog.text
    assert raw.keys(f"{prefix}::librecache:lock*") == []


def test_a_creator_of_another_key_in_the_same_thread_keeps_both_locks_apart(make_caches: Make,
                                                                           deployment: Deployment,
                                                                           prefix: str) -> None:
    """A creator that itself misses another memoised key (nested creation):
    each value lands under its own key, each lock is released."""
    region = make_caches(deployment.env).region("ROLES")

    @region.cache_on_arguments()
    def inner(name: str) -> str:
        return f"inner-{name}"

    @region.cache_on_arguments()
    def outer(name: str) -> str:
        region.set(f"plain-{name}", "set by the creator")  # a plain write meanwhile
        return "outer+" + inner(name)

    assert outer("x") == "outer+inner-x" and outer("x") == "outer+inner-x"
    assert inner("x") == "inner-x" and region.get("plain-x") == "set by the creator"
    assert deployment.keys(f"{prefix}::librecache:lock:*") == []


class RecordingProxy(ProxyBackend):
    """A dogpile proxy that records the backend's reads and writes, in order."""

    calls: list[str] = []

    def get(self, key: Any) -> Any:  # a memory backend's read
        RecordingProxy.calls.append("get")
        return self.proxied.get(key)

    def get_serialized(self, key: Any) -> Any:  # a Redis backend's read
        RecordingProxy.calls.append("get")
        return self.proxied.get_serialized(key)

    def set(self, key: Any, value: Any) -> None:
        RecordingProxy.calls.append("set")
        self.proxied.set(key, value)

    def set_serialized(self, key: Any, value: Any) -> None:
        RecordingProxy.calls.append("set")
        self.proxied.set_serialized(key, value)


@pytest.mark.parametrize("kind", ["memory", "single"])
def test_a_memoised_call_reads_and_writes_as_dogpiles_get_or_create(kind: str, request: pytest.FixtureRequest) -> None:
    """On memory (and behind proxies) a memoised call reads the value itself
    and creates a missing or invalidated one without dogpile's lock
    machinery: the same reads and writes, in the same order, as dogpile's
    get_or_create (a stale value: one read more, the first)."""
    env = {**request.getfixturevalue("redis_env"), "REDIS_KEY_PREFIX": uuid.uuid4().hex} if kind == "single" else {}
    caches = librecache.Caches(env, wrap=[RecordingProxy])
    try:
        region = caches.region("MESSAGES")
        expiry = [60.0]

        @region.cache_on_arguments(function_key_generator=lambda namespace, fn, **kw: lambda name: f"ours-{name}",
                                   expiration_time=lambda: expiry[0])
        def ours(name: str) -> str:
            return f"created-{name}-{len(RecordingProxy.calls)}"

        def theirs(name: str) -> str:
            return CacheRegion.get_or_create(region, f"theirs-{name}",  # type: ignore[no-any-return]
                                             lambda: f"created-{name}-{len(RecordingProxy.calls)}", expiry[0])

        def recorded(call: Callable[[str], str]) -> tuple[str, list[str]]:
            RecordingProxy.calls = []
            return call("a"), RecordingProxy.calls

        cold = recorded(ours)
        assert cold == recorded(theirs) == ("created-a-2", ["get", "get", "set"])
        assert recorded(ours) == recorded(theirs) == ("created-a-2", ["get"])  # a hit
        region.invalidate(hard=True)
        assert recorded(ours) == recorded(theirs) == ("created-a-2", ["get", "get", "set"])
        time.sleep(0.02)
        expiry[0] = 0.01
        stale, theirs_stale = recorded(ours), recorded(theirs)
        assert stale[1] == ["get", *theirs_stale[1]] and theirs_stale[1][-1] == "set"
        assert stale[0] == f"created-a-{len(stale[1]) - 1}" and theirs_stale[0] == f"created-a-{len(theirs_stale[1]) - 1}"
    finally:
        caches.close()


# -- get_multi: the same results as dogpile's own implementation -------------------------------


@pytest.fixture(params=["memory", "single", "cluster"])
def any_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "memory":
        return {}
    return dict(request.getfixturevalue("redis_env" if request.param == "single" else "cluster_env"))


def test_get_multi_answers_as_dogpiles_get_multi(make_caches: Make, any_env: dict[str, str]) -> None:
    caches = make_caches({**any_env, "LIBRECACHE_NAMESPACE_TTLS": "MESSAGES=60"})
    region = caches.region("MESSAGES")
    keys: list[Any] = ["a", "b", "é", 7, 1.5, "q" * 400, "missing", "none"]
    region.set_multi({key: {"v": str(key)} for key in keys if key != "missing"})
    region.set("none", None)

    def both(*args: Any, **kwargs: Any) -> list[Any]:
        ours = region.get_multi(keys, *args, **kwargs)
        assert ours == CacheRegion.get_multi(region, keys, *args, **kwargs)
        return ours

    found = both()
    assert found[:3] == [{"v": "a"}, {"v": "b"}, {"v": "é"}] and found[6] is NO_VALUE and found[7] is None
    assert both(ignore_expiration=True) == found
    time.sleep(0.05)
    assert all(value is NO_VALUE for value in both(expiration_time=0.01))  # older than asked for
    assert both(expiration_time=60) == found
    assert region.get_multi([]) == [] and region.get_multi(iter(["a"])) == [{"v": "a"}]
    region.invalidate(hard=False)  # soft: gone for get_multi, as dogpile reads it
    assert all(value is NO_VALUE for value in both())
    assert both(ignore_expiration=True) == found
    region.set("a", "new")
    assert both()[0] == "new"
    region.invalidate(hard=True)
    assert all(value is NO_VALUE for value in both())


def test_get_multi_reads_foreign_bytes_as_misses(make_caches: Make, deployment: Deployment, prefix: str) -> None:
    region = make_caches(deployment.env).region("TOOLS")
    region.set_multi({"good": 1, "json": 2, "garbage": 3, "badpickle": 4})
    deployment.raw.set(f"{prefix}::TOOLS:json", b'{"v": 2, "ct": 1.0}|' + CachedValue.__name__.encode())
    deployment.raw.set(f"{prefix}::TOOLS:garbage", b"not dogpile at all")
    deployment.raw.set(f"{prefix}::TOOLS:badpickle", b'{"ct": 1.0, "v": 2}|\x80\x05garbage')
    assert region.get_multi(["good", "json", "garbage", "badpickle"]) == [1, NO_VALUE, NO_VALUE, NO_VALUE]


def test_get_multi_judges_creation_times_of_every_form_as_dogpile(make_caches: Make, deployment: Deployment,
                                                                     prefix: str) -> None:
    """get_multi compares dogpile's usual headers as text (no float parsed):
    headers holding times in other forms (few or many digits, an exponent,
    a trailing zero, the boundary itself), with and without invalidation
    marks, are judged as dogpile's own get_multi judges them."""
    caches = make_caches({**deployment.env, "LIBRECACHE_NAMESPACE_TTLS": "TOOLS=300"})
    region = caches.region("TOOLS")
    now = time.time()
    pickled = pickle.dumps("value")
    forms = creation_time_forms(now)
    for key, created in forms.items():
        deployment.raw.set(f"{prefix}::TOOLS:{key}", b'{"ct": ' + created.encode() + b', "v": 2}|' + pickled)
    keys = list(forms)
    for expiration in (None, 10, 1000, 10**9 * 2, -1):
        assert region.get_multi(keys, expiration_time=expiration) == \
            CacheRegion.get_multi(region, keys, expiration_time=expiration), expiration
    assert region.get_multi(keys)[:2] == ["value", NO_VALUE]
    region.invalidate(hard=True)
    region.set("after", "new")
    keys.append("after")
    for expiration in (None, 1000, -1):
        assert region.get_multi(keys, expiration_time=expiration) == \
            CacheRegion.get_multi(region, keys, expiration_time=expiration), expiration
    assert region.get_multi(keys)[-1] == "new" and region.get_multi(keys)[0] is NO_VALUE


def creation_time_forms(now: float) -> dict[str, str]:
    """Creation times as a header may hold them: dogpile's (repr of a float)
    and others that JSON reads or refuses, some of which float() reads."""
    return {
        "recent": repr(now - 5), "old": repr(now - 400), "zero": "0.0", "tiny": "5",
        "future": repr(now + 1e10), "exponent": f"{now - 5:e}", "trailing": f"{now - 5:.7f}0",
        "whole": str(int(now - 5)), "integer-digits": f"{int(now - 5)}.", "nine-digits": repr(now - 9e8),
        "Infinity": "Infinity", "negative": repr(-now),
        # float() reads these, JSON (dogpile) does not
        "infinite": "inf", "underscores": f"{int(now - 5):_}.5", "plus": f"+{now - 5!r}", "space": f" {now - 5!r}",
        "leading-zero": f"0{now - 5!r}", "leading-dot": f".{int(now - 5)}", "nan": "nan",
    }


def test_a_memoised_hit_judges_creation_times_of_every_form_as_dogpile(
        make_caches: Make, deployment: Deployment, prefix: str) -> None:
    """A memoised call and aget_or_create read a stored value without dogpile's
    parser when its header is in dogpile's usual form: a header holding its
    time in any other form is judged as dogpile judges it (served, or
    created again), with and without an invalidation mark."""
    caches = make_caches({**deployment.env, "LIBRECACHE_NAMESPACE_TTLS": "TOOLS=300"})
    region = caches.region("TOOLS")
    pickled = pickle.dumps("stored")

    @region.cache_on_arguments(function_key_generator=lambda namespace, fn, **kw: lambda name: f"form-{name}")
    def value_of(name: str) -> str:
        return "created"

    async def created() -> str:
        return "created"

    for invalidated in (False, True):
        if invalidated:
            region.invalidate(hard=True)
            time.sleep(0.01)
        for name, form in creation_time_forms(time.time()).items():
            stored = b'{"ct": ' + form.encode() + b', "v": 2}|' + pickled
            deployment.raw.set(f"{prefix}::TOOLS:form-{name}", stored)
            dogpile = CacheRegion.get(region, f"form-{name}")
            expected = "stored" if dogpile == "stored" else "created"
            for asynchronous in (False, True):
                deployment.raw.set(f"{prefix}::TOOLS:form-{name}", stored)
                answer = asyncio.run(librecache.aio.aget_or_create(region, f"form-{name}", created)) \
                    if asynchronous else value_of(name)
                assert answer == expected, (name, invalidated, asynchronous)
    assert CacheRegion.get(region, "form-recent") == "created"  # the invalidation applied


def test_get_multi_of_a_large_batch_answers_as_dogpile_when_a_value_spoils_it(
        make_caches: Make, deployment: Deployment, prefix: str) -> None:
    """A batch of values all fresh and in dogpile's usual form is judged and
    unpickled at once; one value that is missing, stale, corrupt, or whose
    header only looks usual (two headers in one, digits that are not) sends
    the batch to the judgement of each value: the answers are dogpile's own
    get_multi's on the same region, with and without invalidation marks,
    and so are aget_multi's."""
    caches = make_caches({**deployment.env, "LIBRECACHE_NAMESPACE_TTLS": "TOOLS=300"})
    region = caches.region("TOOLS")
    keys = [f"k{n}" for n in range(200)]
    region.set_multi({key: {"n": key} for key in keys})
    now = repr(time.time()).encode()
    pickled = pickle.dumps("odd")
    spoilers = {
        "missing": None,
        "stale": b'{"ct": ' + repr(time.time() - 400).encode() + b', "v": 2}|' + pickled,
        "corrupt": b'{"ct": ' + now + b', "v": 2}|\x80\x05garbage',
        "two headers": b'{"ct": ' + now + b', "v": 2}\n{"ct": ' + now + b', "v": 2}|' + pickled,
        "not digits": b'{"ct": ' + now + b'x1, "v": 2}|' + pickled,
        "version": b'{"ct": ' + now + b', "v": 1}|' + pickled,  # dogpile's get_multi reads it
    }

    def both(batch: list[str], **kwargs: Any) -> list[Any]:
        ours = region.get_multi(batch, **kwargs)
        assert ours == CacheRegion.get_multi(region, batch, **kwargs), kwargs
        assert asyncio.run(region.aget_multi(batch, **kwargs)) == ours, kwargs  # the async door judges alike
        return ours

    assert both(keys) == [{"n": key} for key in keys]
    for name, spoiler in spoilers.items():
        batch = keys[:100] + [name] + keys[100:]
        if spoiler is not None:
            deployment.raw.set(f"{prefix}::TOOLS:{name}", spoiler)
        found = both(batch)
        assert found[100] == ("odd" if name == "version" else NO_VALUE), name
        assert found[:100] + found[101:] == [{"n": key} for key in keys], name
        assert both(batch, expiration_time=1000)[:100] == found[:100]
        assert both(batch, expiration_time=-1) == [NO_VALUE] * 201  # dogpile: every value older than -1 s
        assert both(batch, ignore_expiration=True)[101:] == found[101:]
    region.delete_multi(keys[::2])  # gaps in a batch otherwise fresh
    assert both(keys) == [NO_VALUE if n % 2 == 0 else {"n": key} for n, key in enumerate(keys)]
    assert both(keys[::2]) == [NO_VALUE] * 100
    region.invalidate(hard=True)
    region.set_multi({key: {"n": key} for key in keys[:50]})
    assert both(keys)[:50] == [{"n": key} for key in keys[:50]] and both(keys)[50:] == [NO_VALUE] * 150


def test_get_multi_with_signed_values(make_caches: Make, redis_env: dict[str, str], raw: redis.Redis,
                                      prefix: str) -> None:
    region = make_caches({**redis_env, "LIBRECACHE_SIGNING_KEY": "k1:" + "s" * 32}).region("TOOLS")
    region.set_multi({"a": 1, "b": 2})
    assert raw.get(f"{prefix}::TOOLS:a").startswith(b"LCS1")  # type: ignore[union-attr]
    raw.set(f"{prefix}::TOOLS:b", raw.get(f"{prefix}::TOOLS:b")[:-1] + b"x")  # type: ignore[index]
    assert region.get_multi(["a", "b"]) == [1, NO_VALUE]


# -- near hits ------------------------------------------------------------------------------------


class Box:
    def __init__(self, items: list[int]) -> None:
        self.items = items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and other.items == self.items

    def __repr__(self) -> str:  # the test's id: the same in every pytest-xdist worker (no address)
        return f"Box({self.items!r})"


IMMUTABLE = ["text", b"bytes", 1, 2.5, None, True, ("a", (1, None)), frozenset({"x"})]
MUTABLE = [{"perms": ["read"], "n": 1, "nested": {"deep": [{"x": {1, 2}}]}}, [[1], [2]], {"s"}, [], {}]
PICKLED = [Box([1]), ("tuple", ["holding", "a list"]), {"ordered": __import__("collections").OrderedDict(a=1)}]


@pytest.mark.parametrize("value", IMMUTABLE + MUTABLE + PICKLED, ids=repr)
def test_each_near_hit_is_its_own_copy_and_immutable_values_are_shared(value: Any) -> None:
    near = NearCache("ROLES", 10)
    near.clear(enabled=True)
    given = __import__("copy").deepcopy(value)
    near.store("k", CachedValue(given, {"ct": time.time(), "v": 2}), near.generation)  # type: ignore[call-arg]
    first, second = near.fetch("k", None), near.fetch("k", None)
    assert first == value and second == value
    if any(value is v for v in IMMUTABLE):
        assert first is second
        return
    assert first is not second
    if isinstance(given, dict) and "perms" in given:
        given["perms"].append("changed by the writer after set")  # the near copy is its own
        first["perms"].append("write")
        first["nested"]["deep"][0]["x"].add(3)
        assert near.fetch("k", None) == value
    if isinstance(value, Box):
        first.items.append(2)
        assert near.fetch("k", None) == value


def test_copiers_fit_plain_containers_only() -> None:
    assert copier_of("x") is None and copier_of(("a", 1)) is None
    assert copier_of({"a": 1}) is dict.copy and copier_of([1, "x"]) is list.copy
    constant = ("shared", 1)
    assert copier_of([constant, constant]) is list.copy  # immutable: may be reached twice
    assert copier_of({("k",): [1]}) is not None
    shared = [1]
    for unfit in (Box([1]), [shared, shared], ("t", []), list(range(2000)), {"a": bytearray()}):
        with pytest.raises(TypeError):
            copier_of(unfit)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(TypeError):
        copier_of(cyclic)


class Colour(str, enum.Enum):
    RED = "red"


def test_memoised_near_hits_keep_keys_of_equal_arguments_apart(make_caches: Make,
                                                               redis_env: dict[str, str]) -> None:
    """The near path remembers the key of str arguments; arguments equal to
    a str as dict keys (a str enum member) have other key text."""
    caches = make_caches({**redis_env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES"})
    subscribed(caches)
    region = caches.region("ROLES")
    calls: list[str] = []

    @region.cache_on_arguments()
    def describe(colour: Any) -> str:
        calls.append(str(colour))
        return f"{type(colour).__name__}:{colour}"

    for _ in range(3):
        assert describe("red") == "str:red"
        assert describe(Colour.RED) == f"Colour:{Colour.RED}"
    assert len(calls) == 2
    near = caches.invalidations.near_caches["ROLES"]  # type: ignore[union-attr]
    assert near.hits >= 4


def test_memory_get_multi_marks_what_it_read_as_recently_used_and_drops_expired_entries() -> None:
    backend = MemoryBackend({"name": "ROLES", "max_entries": 3, "expires_after": 60})
    for key in "abc":
        backend.set(key, CachedValue(key, {"ct": time.time(), "v": 2}))  # type: ignore[call-arg]
    found = backend.get_multi(["a", "missing", "b"])  # a and b are now the most recent
    assert [v if v is NO_VALUE else v.payload for v in found] == ["a", NO_VALUE, "b"]
    backend.set("d", CachedValue("d", {"ct": time.time(), "v": 2}))  # type: ignore[call-arg]
    assert backend.get("c") is NO_VALUE and len(backend) == 3
    backend.expires_after = 0.01
    backend.set("e", CachedValue("e", {"ct": time.time(), "v": 2}))  # type: ignore[call-arg]
    time.sleep(0.02)
    assert backend.get_multi(["e"]) == [NO_VALUE]
    held = backend.keys()
    assert "e" not in held
